"""The data report, printed and saved before training: class balance, input sizes, duplicates, train↔val leakage."""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Optional

import numpy as np

from tuneforge.data.examples import Examples


def _text(x) -> str:
    """A text, a text pair, or a conversation (a list of {role, content} messages: task sft) as one string."""
    if isinstance(x, (tuple, list)):
        return " ".join(m["content"] if isinstance(m, dict) else str(m) for m in x)
    return str(x)


def _digest(x, modality: str) -> str:
    if isinstance(x, np.ndarray):
        return hashlib.sha1(x.tobytes()).hexdigest()
    if modality == "text":
        text = _text(x)
        return hashlib.sha1(text.strip().lower().encode("utf-8", "surrogatepass")).hexdigest()
    try:  # an image path: hash the file content, so copies under other names are found too
        with open(x, "rb") as f:
            return hashlib.sha1(f.read()).hexdigest()
    except (OSError, TypeError):
        return hashlib.sha1(repr(x).encode()).hexdigest()


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    q = np.percentile(values, [5, 50, 95])
    return {"p5": float(q[0]), "p50": float(q[1]), "p95": float(q[2]), "max": float(max(values))}


def _sizes(ex: Examples, modality: str) -> dict:
    if modality == "audio":
        return {}  # durations, rates and clipping come from the decoder (the task's add_to_report)
    if modality == "text":
        texts = [_text(x) for x in ex.inputs]
        return {"text_words": _percentiles([len(t.split()) for t in texts]),
                "text_chars": _percentiles([len(t) for t in texts])}
    from PIL import Image

    widths, heights = [], []
    for x in ex.inputs[:5000]:  # header reads only; a sample is enough for percentiles
        try:
            if isinstance(x, np.ndarray):
                h, w = x.shape[:2]
            else:
                with Image.open(x) as im:
                    w, h = im.size
        except OSError:
            continue
        widths.append(w)
        heights.append(h)
    return {"image_width": _percentiles(widths), "image_height": _percentiles(heights)}


def fingerprint(ex: Examples, keys: list[str], modality: str) -> dict:
    """Row count + a hash of every example (exact text, or the file content digests `keys`) and its label."""
    h = hashlib.sha256()
    for x, key, label in zip(ex.inputs, keys, ex.labels if ex.labels is not None else [None] * len(ex)):
        item = repr(x) if modality == "text" else key
        h.update(f"{item}\x00{label!r}\x01".encode("utf-8", "surrogatepass"))
    return {"rows": len(ex), "sha256": h.hexdigest()}


def build_report(train: Examples, val: Examples, modality: str, class_counts: Optional[dict]) -> dict:
    train_keys = [_digest(x, modality) for x in train.inputs]
    val_keys = [_digest(x, modality) for x in val.inputs]
    seen = Counter(train_keys)
    dup_rows = sum(c - 1 for c in seen.values() if c > 1)
    train_set = set(train_keys)
    leaked = sum(1 for k in val_keys if k in train_set)
    report = {"train_examples": len(train), "val_examples": len(val),
              "train_duplicates": dup_rows, "val_in_train": leaked, **_sizes(train, modality),
              "fingerprint": {"train": fingerprint(train, train_keys, modality),
                              "val": fingerprint(val, val_keys, modality)}}
    if class_counts is not None:
        nonzero = [c for c in class_counts.values() if c > 0]
        report["class_counts"] = class_counts
        report["imbalance_ratio"] = round(max(nonzero) / min(nonzero), 3) if nonzero else None
    return report


def describe(report: dict) -> list[str]:
    lines = [f"data report: {report['train_examples']} train / {report['val_examples']} val; "
             f"{report['train_duplicates']} exact-duplicate train rows; {report['val_in_train']} val examples "
             "also in train (leakage)"]
    if "class_counts" in report:
        counts = ", ".join(f"{k}: {v}" for k, v in list(report["class_counts"].items())[:20])
        lines.append(f"data report: class counts {counts}; imbalance ratio {report['imbalance_ratio']}")
    for key in ("text_words", "image_width", "image_height"):
        if report.get(key):
            p = report[key]
            lines.append(f"data report: {key.replace('_', ' ')} p5 {p['p5']:.0f} / median {p['p50']:.0f} / "
                         f"p95 {p['p95']:.0f} / max {p['max']:.0f}")
    return lines
