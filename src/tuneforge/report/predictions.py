"""RUN/predictions/val.jsonl: the kept model's prediction for every validation example, next to its gold target.

One JSON line per example, in validation order: {"input": ..., "target": ..., "output": <what predict prints>}.
The target is normalised per task: a class name (classification), a number (regression), a list of label names
(multilabel) or a list of tags (token classification). Image inputs are paths; in-memory images (built-in sources
such as sklearn-digits) are written as nested lists of pixel values."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tuneforge.errors import DataError
from tuneforge.utils import atomic_write_text

PREDICTIONS_FILE = Path("predictions") / "val.jsonl"


def _json_input(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, tuple):
        return list(x)
    return x


def write_val_predictions(run_dir: str | Path, predictor=None) -> Path:
    """Predict the run's validation split (found as in training: the val file, or the same seeded split) with the
    kept model and write RUN/predictions/val.jsonl atomically. Returns its path."""
    from tuneforge.predict import Predictor

    run_dir = Path(run_dir)
    pred = predictor or Predictor(run_dir, log=lambda *_a, **_k: None)
    try:
        _, val, _ = pred.task.read_examples(pred.modality)
    except DataError as e:
        raise DataError(f"cannot write {run_dir / PREDICTIONS_FILE}: the run's validation data is not readable "
                        f"({e})") from None
    outputs = pred.predict(val.inputs)
    targets = pred.task.gold_labels(val)
    path = run_dir / PREDICTIONS_FILE
    atomic_write_text(path, "".join(json.dumps({"input": _json_input(x), "target": y, "output": out},
                                               ensure_ascii=False) + "\n"
                                    for x, y, out in zip(val.inputs, targets, outputs)))
    return path


def read_predictions(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / PREDICTIONS_FILE
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
