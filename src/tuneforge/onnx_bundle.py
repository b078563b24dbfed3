"""An exported ONNX model behind the ModelBundle interface, so `Predictor` runs it through the same preprocessing
and decoding as the PyTorch model (`Predictor(run_dir, onnx=True)`, `tuneforge predict RUN --onnx`).

The export folder (written by `tuneforge export`, default RUN/export/onnx) holds model.onnx (and
model.int8.onnx), the tokenizer files or the image preprocessing, labels.json, task.json, manifest.json and
tuneforge.json (the run's model meta with `source: onnx`). It is self-contained: it loads without the run folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tuneforge.errors import ModelError
from tuneforge.models.base import HeadSpec, ModelBundle

EXPORT_SUBDIR = Path("export") / "onnx"
MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
META_FILE = "tuneforge.json"


class OrtModule(nn.Module):
    """An onnxruntime session called like a module: batch dict (torch tensors) → logits (torch, CPU).
    It has no parameters, so `.to(device)` / `.eval()` from Predictor are no-ops."""

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        # the same thread budget as torch: side-by-side latencies compare runtimes, not core counts
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise ModelError(f"onnxruntime cannot load '{path}' ({str(e).splitlines()[0][:120]}); "
                             "export again with `tuneforge export`") from None
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, batch: dict) -> torch.Tensor:
        missing = [k for k in self.input_names if k not in batch]
        if missing:
            raise ModelError(f"the ONNX model needs input(s) {', '.join(missing)} that the preprocessing did not "
                             "produce; export again from the same run")
        feed = {k: np.ascontiguousarray(batch[k].detach().cpu().numpy()) for k in self.input_names}
        return torch.from_numpy(self.session.run(None, feed)[0])


@dataclass
class OnnxBundle(ModelBundle):
    siamese: bool = False  # pair texts tokenized separately (tasks read this flag, as on SiameseBundle)

    def logits(self, batch: dict) -> torch.Tensor:
        return self.model(batch)

    def save(self, out_dir: Path) -> None:
        raise ModelError("an ONNX bundle is already an export; copy its folder instead of saving it")


def find_export_dir(path: str | Path) -> Path:
    """A run folder → its export/onnx; an export folder (holding tuneforge.json and model.onnx) → itself."""
    p = Path(path).expanduser()
    for d in (p, p / EXPORT_SUBDIR):
        if (d / META_FILE).is_file() and (d / MODEL_FILES["fp32"]).is_file():
            return d
    raise ModelError(f"no ONNX export in '{p}' (looked for {EXPORT_SUBDIR}/{MODEL_FILES['fp32']}); "
                     f"run `tuneforge export {p} --format onnx` first")


def load_onnx_model(path: str | Path, variant: str | bool = "fp32", threads: int | None = None
                    ) -> tuple[OnnxBundle, dict]:
    """(bundle, meta) like models.load_saved_model, from an export folder or the run folder holding one.
    variant: "fp32" (True) or "int8" (needs `tuneforge export --quantize dynamic`)."""
    from transformers import AutoTokenizer

    variant = "fp32" if variant is True else variant
    if variant not in MODEL_FILES:
        raise ModelError(f"unknown ONNX variant '{variant}'; choose one of: {', '.join(MODEL_FILES)}")
    d = find_export_dir(path)
    model_file = d / MODEL_FILES[variant]
    if not model_file.is_file():
        raise ModelError(f"'{model_file}' does not exist; export with `--quantize dynamic` to get the int8 model")
    try:
        meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"'{d / META_FILE}' is not valid JSON ({str(e)[:80]}); export again") from None
    tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True) if meta["modality"] == "text" else None
    bundle = OnnxBundle(model=OrtModule(model_file, threads), modality=meta["modality"], source="onnx",
                        name=meta["name"], head=HeadSpec(**meta["head"]), tokenizer=tokenizer,
                        image_cfg=meta.get("image_cfg"), siamese=meta.get("exported_source") == "hf-siamese")
    return bundle, meta
