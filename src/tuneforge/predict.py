"""Load a run folder's model/ and evaluate or predict with exactly the preprocessing used in training."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from tuneforge.config import validate
from tuneforge.data.examples import Examples
from tuneforge.data.images import IMAGE_SUFFIXES
from tuneforge.data.sources import FILE_READERS
from tuneforge.engine.device import make_accelerator
from tuneforge.engine.loop import evaluate, forward, make_loader
from tuneforge.errors import DataError
from tuneforge.models import load_saved_model
from tuneforge.tasks import task_from_saved


def _stderr(*args, **kwargs) -> None:
    print(*args, file=sys.stderr, **kwargs)


class Predictor:
    def __init__(self, run_dir: str | Path, log=None, batch_size: Optional[int] = None):
        self.bundle, meta = load_saved_model(run_dir)
        self.cfg = validate(meta["config"], f"{run_dir} (saved config)")
        log = log or _stderr  # stdout carries the JSON results of eval / predict
        self.task = task_from_saved(self.cfg, meta["task_state"], log)
        if self.cfg.train.channels_last:
            self.bundle.use_channels_last()  # the same kernels as in training: identical numbers
        self.accelerator = make_accelerator(meta.get("precision", "fp32"))
        self.bundle.model.to(self.accelerator.device).eval()
        self.log = log
        self.batch_size = batch_size or self.cfg.eval_batch_size

    @property
    def modality(self) -> str:
        return self.bundle.modality

    def _loader(self, ex: Examples):
        built = self.task.build(ex, self.bundle, "predict")
        return make_loader(built, self.batch_size, False, self.cfg.train.seed)

    def evaluate(self, data_path: str | Path) -> dict:
        path = Path(data_path).expanduser()
        if not path.exists():
            raise DataError(f"--data '{path}' does not exist")
        ex = FILE_READERS.get(self.task.file_reader or self.modality)(path, self.cfg.data, self.log)
        return evaluate(self.bundle, self.task, self._loader(ex), self.accelerator)

    def predict(self, inputs: list, top_k: Optional[int] = None, **options) -> list[dict]:
        """One output per input, in input order (`options`: task-specific, e.g. generation settings)."""
        ex = Examples(list(inputs), None, [f"input #{i + 1}" for i in range(len(inputs))])
        run = lambda batch: forward(self.task, self.bundle, batch, self.accelerator)  # noqa: E731
        return self.task.predict(self.bundle, self._loader(ex), ex, run, top_k, **options)

    def read_inputs(self, path: str | Path) -> list:
        """Inputs for predict: a folder of images or audio files, a table (its text / image / audio column), or a .txt
        (one per line)."""
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"--input '{p}' does not exist")
        if self.modality == "image" and p.is_dir():
            return [str(f) for f in sorted(p.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        if p.suffix.lower() == ".txt":
            lines = [line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines()]
            items = [line for line in lines if line.strip()]
            if self.modality in ("image", "audio"):  # file paths, relative to the list
                return [str((p.parent / s).resolve()) if not Path(s).is_absolute() else s for s in items]
            return items
        return FILE_READERS.get(self.task.file_reader or self.modality)(p, self.cfg.data, self.log,
                                                                        need_label=False).inputs
