"""Load a run folder's model/ and evaluate or predict with exactly the preprocessing used in training."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch

from tuneforge.config import validate
from tuneforge.data.examples import Examples
from tuneforge.data.images import IMAGE_SUFFIXES
from tuneforge.data.sources import FILE_READERS
from tuneforge.engine.loop import _to_device, evaluate, make_loader
from tuneforge.errors import DataError
from tuneforge.models import load_saved_model
from tuneforge.onnx_bundle import load_onnx_model
from tuneforge.run import _accelerator
from tuneforge.tasks import task_from_saved


def _stderr(*args, **kwargs) -> None:
    print(*args, file=sys.stderr, **kwargs)


class Predictor:
    def __init__(self, run_dir: str | Path, log=None, batch_size: Optional[int] = None, onnx: bool | str = False):
        """onnx: True / "fp32" / "int8" runs the `tuneforge export` ONNX model in onnxruntime instead."""
        self.bundle, meta = load_onnx_model(run_dir, onnx) if onnx else load_saved_model(run_dir)
        self.cfg = validate(meta["config"], f"{run_dir} (saved config)")
        log = log or _stderr  # stdout carries the JSON results of eval / predict
        self.task = task_from_saved(self.cfg, meta["task_state"], log)
        if self.cfg.train.channels_last and hasattr(self.bundle, "use_channels_last"):
            self.bundle.use_channels_last()  # the same kernels as in training: identical numbers
        self.accelerator = _accelerator(meta.get("precision", "fp32"))
        self.bundle.model.to(self.accelerator.device).eval()
        self.log = log
        self.batch_size = batch_size or self.cfg.eval.batch_size or 2 * self.cfg.train.batch_size

    @property
    def modality(self) -> str:
        return self.bundle.modality

    def _loader(self, ex: Examples):
        built = self.task.build(ex, self.bundle, train=False)
        return make_loader(built, self.batch_size, False, self.cfg.train.seed)

    def evaluate(self, data_path: str | Path) -> dict:
        path = Path(data_path).expanduser()
        if not path.exists():
            raise DataError(f"--data '{path}' does not exist")
        ex = FILE_READERS.get(self.task.file_reader or self.modality)(path, self.cfg.data, self.log)
        return evaluate(self.bundle, self.task, self._loader(ex), self.accelerator)

    @torch.no_grad()
    def predict(self, inputs: list, top_k: Optional[int] = None) -> list[dict]:
        ex = Examples(list(inputs), None, [f"input #{i + 1}" for i in range(len(inputs))])
        loader = self._loader(ex)
        order = [i for batch in loader.batch_sampler.batches() for i in batch]

        def batches():
            for batch in loader:
                batch = _to_device(batch, self.accelerator.device)
                with self.accelerator.autocast():
                    logits = self.bundle.logits(batch)
                yield logits.float(), batch

        return self.task.decode_batches(ex, batches(), order, top_k)  # also undoes the length-sorted batching

    def read_inputs(self, path: str | Path) -> list:
        """Inputs for predict: a folder of images, a table (its text / image column), or a .txt (one per line)."""
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"--input '{p}' does not exist")
        if self.modality == "image" and p.is_dir():
            return [str(f) for f in sorted(p.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        if p.suffix.lower() == ".txt":
            lines = [line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines()]
            items = [line for line in lines if line.strip()]
            if self.modality == "image":
                return [str((p.parent / s).resolve()) if not Path(s).is_absolute() else s for s in items]
            return items
        return FILE_READERS.get(self.task.file_reader or self.modality)(p, self.cfg.data, self.log,
                                                                        need_label=False).inputs
