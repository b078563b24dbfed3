"""Load a run folder's model/ and evaluate or predict with exactly the preprocessing used in training."""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Optional, Sequence

from tuneforge.config import apply_overrides, parse_override, validate
from tuneforge.data.examples import Examples
from tuneforge.data.images import image_files
from tuneforge.data.sources import FILE_READERS
from tuneforge.engine.device import make_accelerator
from tuneforge.engine.loop import evaluate, forward, make_loader
from tuneforge.errors import ConfigError, DataError
from tuneforge.models import load_saved_model
from tuneforge.onnx_bundle import load_onnx_model
from tuneforge.tasks import task_from_saved


def _stderr(*args, **kwargs) -> None:
    print(*args, file=sys.stderr, **kwargs)


class Predictor:
    """`data_overrides`: `data.*` keys (`["data.text_column=review"]`) for reading other files than training's;
    `onnx` (True / "fp32" / "int8"): run the `tuneforge export` ONNX model in onnxruntime instead."""

    def __init__(self, run_dir: str | Path, log=None, batch_size: Optional[int] = None,
                 data_overrides: Sequence[str] = (), trust_remote_code: bool = False, onnx: bool | str = False):
        self.bundle, meta = load_onnx_model(run_dir, onnx) if onnx else load_saved_model(run_dir, trust_remote_code)
        self.cfg = validate(_with_data_overrides(meta["config"], data_overrides), f"{run_dir} (saved config)")
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

    def _loader(self, ex: Examples, split: str):
        built = self.task.build(ex, self.bundle, split)
        return make_loader(built, self.batch_size, False, self.cfg.train.seed), built

    def evaluate(self, data_path: str | Path) -> dict:
        path = Path(data_path).expanduser()
        if not path.exists():
            raise DataError(f"--data '{path}' does not exist")
        ex = FILE_READERS.get(self.task.file_reader or self.modality)(path, self.cfg.data, self.log)
        return evaluate(self.bundle, self.task, self._loader(ex, "test")[0], self.accelerator)

    def predict(self, inputs: list, top_k: Optional[int] = None, **options) -> list[dict]:
        """One output per input, in input order (`options`: task-specific, e.g. generation settings)."""
        ex = Examples(list(inputs), None, [f"input #{i + 1}" for i in range(len(inputs))])
        loader, built = self._loader(ex, "predict")
        run = lambda batch: forward(self.task, self.bundle, batch, self.accelerator)  # noqa: E731
        outputs = iter(self.task.predict(self.bundle, loader, ex, run, top_k, **options))
        # inputs without a row (unreadable) get an error line in their place
        return [{"error": built.dropped[i]} if i in built.dropped else next(outputs) for i in range(len(inputs))]

    def read_inputs(self, path: str | Path) -> list:
        """Inputs for predict: a folder of images or audio files, a table (its text / image / audio column), or a .txt
        (one per line)."""
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"--input '{p}' does not exist")
        if self.modality == "image" and p.is_dir():
            return [str(f) for f in image_files(p)]
        if p.suffix.lower() == ".txt" and not (self.task.file_reader == "conll" and _looks_like_conll(p)):
            lines = [line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines()]
            items = [line for line in lines if line.strip()]
            if self.modality in ("image", "audio"):  # file paths, relative to the list
                return [str((p.parent / s).resolve()) if not Path(s).is_absolute() else s for s in items]
            return items
        return FILE_READERS.get(self.task.file_reader or self.modality)(p, self.cfg.data, self.log,
                                                                        need_label=False).inputs


def _with_data_overrides(config: dict, overrides: Sequence[str]) -> dict:
    parsed = [parse_override(o) for o in overrides]
    for path, _ in parsed:
        if path[0] != "data":
            raise ConfigError(f"--set {'.'.join(path)}: eval and predict take data.* keys only (e.g. "
                              "data.text_column=review); the model's other settings are fixed by training")
    return apply_overrides(copy.deepcopy(config), list(overrides)) if parsed else config


def _looks_like_conll(path: Path) -> bool:
    """A CoNLL .txt separates sentences with blank lines (or -DOCSTART-); one text per line has neither."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    body = [line for line in lines if line.strip()]
    return len(body) < len(lines) or any(line.startswith("-DOCSTART-") for line in body)
