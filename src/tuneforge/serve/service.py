"""The model side of `tuneforge serve`: request inputs checked against the model, predictions through the dynamic
batcher, and the model card (/info, /metrics). No HTTP here (see app.py).

`Service` checks a request's inputs (modality, pair arity, empty text, undecodable image, item count) before they
join a batch, so a bad input fails only its own request; it runs the predictor (PyTorch, or the ONNX export with
`onnx=`) through `Batcher`; it reports task, labels, validation metrics (summary.json) and training curves
(metrics.jsonl).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tuneforge.serve.batcher import Batcher


@dataclass
class ServeSettings:
    max_batch: int = 32  # items per forward pass
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    batching: bool = True
    max_items: int = 64  # inputs per request
    max_bytes: int = 16 * 2**20  # request body
    timeout_s: float = 30.0  # per request, queueing included


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Service:
    def __init__(self, predictor, run_dir: str | Path, settings: ServeSettings, backend: str = "torch"):
        self.predictor, self.run_dir, self.backend = predictor, Path(run_dir), backend
        self.arity = 2 if predictor.modality == "text" and predictor.cfg.data.text_pair_column else 1
        self.batcher = Batcher(predictor.predict, settings.max_batch, settings.max_wait_ms / 1000, settings.batching)
        self.settings = settings
        size = predictor.cfg.data.image_size or (predictor.bundle.image_cfg or {}).get("input_size", [0])[-1]
        crop = (predictor.bundle.image_cfg or {}).get("crop_pct", 0.875)
        self.short_side = int(size / crop) + 1 if size else None  # as training's image cache decodes

    # ------------------------------------------------------------------ inputs
    def parse_json(self, body: dict, max_items: int) -> tuple[list, list]:
        if self.predictor.modality == "image":
            if "images" not in body:
                raise RequestError(400, 'this is an image model: send {"images": ["<base64>", ...]} or upload files')
            images = self._items(body["images"], "images", max_items)
            return self.parse_uploads([(f"images[{i}]", decode_base64(v, f"images[{i}]"))
                                       for i, v in enumerate(images)], max_items)
        if "inputs" not in body:
            raise RequestError(400, f'this is a text model: send {{"inputs": [{self._example()}, ...]}}')
        items = self._items(body["inputs"], "inputs", max_items)
        inputs = [self._text(x, f"inputs[{i}]") for i, x in enumerate(items)]
        return inputs, [list(x) if isinstance(x, tuple) else x for x in inputs]

    def parse_uploads(self, files: list[tuple[str, bytes]], max_items: int) -> tuple[list, list]:
        if self.predictor.modality != "image":
            raise RequestError(400, f'this is a text model: send JSON {{"inputs": [{self._example()}, ...]}}')
        self._items(files, "images", max_items)
        return [image_pixels(data, name, self.short_side) for name, data in files], [name for name, _ in files]

    def _items(self, value, key: str, max_items: int) -> list:
        if not isinstance(value, list) or not value:
            raise RequestError(400, f"'{key}' must be a non-empty list")
        if len(value) > max_items:
            raise RequestError(413, f"{len(value)} {key} in one request; the limit is {max_items}")
        return value

    def _example(self) -> str:
        return '["text", "text pair"]' if self.arity == 2 else '"text"'

    def _text(self, x, where: str):
        parts = x if isinstance(x, list) else [x]
        if len(parts) != self.arity or not all(isinstance(p, str) for p in parts):
            want = "a pair of two strings [text, text_pair]" if self.arity == 2 else "one string"
            got = f"a list of {len(parts)}" if isinstance(x, list) else type(x).__name__
            raise RequestError(400, f"{where}: this model takes {want}, got {got}")
        if any(not p.strip() for p in parts):
            raise RequestError(400, f"{where}: empty text")
        return tuple(parts) if self.arity == 2 else parts[0]

    # ------------------------------------------------------------------ model card
    def info(self) -> dict:
        p, summary = self.predictor, _read_json(self.run_dir / "summary.json") or {}
        alias = (_read_json(self.run_dir / "model" / "tuneforge.json") or {}).get("alias")  # e.g. minilm-l6
        return {"model": alias or p.bundle.name, "task": p.task.name, "modality": p.modality, "labels": p.bundle.head.labels,
                "texts_per_example": self.arity if p.modality == "text" else 0, "backend": self.backend,
                "task_state": p.task.state(), "metric": summary.get("metric"), "best_step": summary.get("best_step"),
                "validation": _scalars(summary.get("eval")), "run_dir": str(self.run_dir),
                "limits": {"max_items": self.settings.max_items, "max_bytes": self.settings.max_bytes,
                           "timeout_s": self.settings.timeout_s},
                "batching": {"enabled": self.settings.batching, "max_batch": self.settings.max_batch,
                             "max_wait_ms": self.settings.max_wait_ms}}

    def curves(self) -> list[dict]:
        """One point per evaluation in metrics.jsonl: step, epoch, train_loss and the scalar metrics."""
        path = self.run_dir / "metrics.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        points = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash: the curve just has one point less
            points.append({"step": row.get("step"), "epoch": row.get("epoch"), "train_loss": row.get("train_loss"),
                           **_scalars(row.get("metrics"))})
        return points


def build_service(run_dir: str | Path, settings: ServeSettings, onnx: bool | str = False, log=None) -> Service:
    from tuneforge.predict import Predictor

    predictor = Predictor(run_dir, log=log, batch_size=settings.max_batch, onnx=onnx)
    backend = f"onnxruntime {'fp32' if onnx is True else onnx}" if onnx else "torch"
    return Service(predictor, run_dir, settings, backend)


def decode_base64(value, where: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise RequestError(400, f"{where}: expected a base64 string")
    if value.startswith("data:"):  # a data URL, as the browser's FileReader gives it
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where}: not valid base64") from None


def image_pixels(data: bytes, where: str, short_side: Optional[int]):
    """Bytes → HWC uint8 RGB, decoded as training decodes files (same downscale on the way in)."""
    from tuneforge.data.images import decode_image
    from tuneforge.errors import DataError

    try:
        return decode_image(io.BytesIO(data), short_side)
    except DataError:
        raise RequestError(400, f"{where}: not a readable image; send a PNG, JPEG, GIF, BMP, TIFF or WebP file") \
            from None
