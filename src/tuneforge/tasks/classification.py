"""Single-label classification of texts, text pairs or images."""
from __future__ import annotations

from typing import Optional

import torch

from tuneforge.data.examples import Examples
from tuneforge.errors import DataError
from tuneforge.metrics import ClassificationMetrics
from tuneforge.models.base import HeadSpec, ModelBundle
from tuneforge.tasks.base import TASKS
from tuneforge.tasks.rows import RowTask


def label_text(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def _sorted_labels(values: set[str]) -> list[str]:
    try:  # numeric labels in numeric order (so "10" follows "9")
        return sorted(values, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(values)


@TASKS.register("classification")
class Classification(RowTask):
    name = "classification"
    allowed_losses = ("cross_entropy", "focal")
    metric_names = ("loss", "accuracy", "macro_f1", "balanced_accuracy")

    def __init__(self, cfg, log=print):
        super().__init__(cfg, log)
        self.balanced: list[float] = []  # n / (k * count) per class: every class weighs the same

    def stratify_key(self, ex: Examples) -> Optional[list]:
        return [label_text(v) for v in ex.labels]

    def fit_labels(self, train: Examples, val: Examples) -> None:
        for ex in (train, val):
            for v, where in zip(ex.labels, ex.where):
                if v is None or (isinstance(v, float) and v != v) or label_text(v) == "":
                    raise DataError(f"{where}: empty label in column '{self.cfg.data.label_column}'; "
                                    "every example needs a label")
        self.labels = _sorted_labels({label_text(v) for v in train.labels})
        given = self.cfg.data.labels
        if given:  # the full label set, in the user's order; train may lack some of it
            extra = [x for x in self.labels if x not in given]
            if extra:
                raise DataError(f"train has label(s) {', '.join(extra[:5])} that data.labels does not list")
            self.labels = [str(x) for x in given]
        if len(self.labels) < 2:
            raise DataError(f"train has a single class ('{self.labels[0]}'); classification needs at least 2 "
                            "classes (check data.label_column)")
        known = set(self.labels)
        for v, where in zip(val.labels, val.where):
            if label_text(v) not in known:
                raise DataError(f"{where}: label '{label_text(v)}' never appears in train (train labels: "
                                f"{', '.join(self.labels[:20])}); fix the label or add training examples")

    def encode_labels(self, ex: Examples) -> Optional[list[int]]:
        if ex.labels is None:
            return None
        index = {name: i for i, name in enumerate(self.labels)}
        out = []
        for v, where in zip(ex.labels, ex.where):
            key = label_text(v)
            if key not in index:
                raise DataError(f"{where}: label '{key}' is not one of the model's labels "
                                f"({', '.join(self.labels[:20])})")
            out.append(index[key])
        return out

    def gold_labels(self, ex: Examples) -> list:
        return [self.labels[i] for i in self.encode_labels(ex)]

    def head_spec(self) -> HeadSpec:
        return HeadSpec(len(self.labels), list(self.labels), "sequence", "single_label_classification")

    # ---------------------------------------------------------------- imbalance
    def class_counts(self, train: Examples) -> Optional[dict]:
        counts = {name: 0 for name in self.labels}
        for v in train.labels:
            counts[label_text(v)] += 1
        return counts

    def choose_imbalance(self, report: dict) -> str:
        counts = report["class_counts"]
        empty = [k for k, c in counts.items() if c == 0]
        if empty:
            msg = f"class(es) {', '.join(empty[:10])} have no training example"
            if not self.cfg.data.allow_empty_classes:
                raise DataError(f"{msg}; add examples, drop them from data.labels, or set "
                                "data.allow_empty_classes: true")
            self.log(f"data: warning: {msg} (allowed by data.allow_empty_classes)")
        mode, ratio = self.cfg.data.imbalance, report["imbalance_ratio"]
        if mode == "auto":
            threshold = self.cfg.data.imbalance_threshold
            mode = "class_weights" if ratio is not None and ratio >= threshold else "none"
            why = (f"imbalance ratio {ratio} >= {threshold}: class-weighted loss keeps every example and "
                   "needs no duplication" if mode != "none" else f"imbalance ratio {ratio} < {threshold}")
            self.log(f"data.imbalance auto → {mode} ({why})")
        self.remedy = mode
        nonzero = {k: c for k, c in counts.items() if c > 0}
        n, k = sum(nonzero.values()), len(nonzero)
        self.balanced = [n / (k * counts[name]) if counts[name] else 0.0 for name in self.labels]
        return mode

    def class_weights(self) -> Optional[torch.Tensor]:
        if self.remedy != "class_weights":
            return None
        return torch.tensor(self.balanced, dtype=torch.float32)

    def loss_name(self) -> str:
        if self.cfg.task.loss is None and self.remedy == "focal":
            return "focal"
        return super().loss_name()

    def sample_weights(self, labels: list) -> Optional[list[float]]:
        if self.remedy != "resample":
            return None
        return [self.balanced[i] for i in labels]  # each class drawn equally often

    def new_metrics(self, bundle: ModelBundle):
        return ClassificationMetrics(self.labels)

    def decode(self, logits: torch.Tensor, top_k: Optional[int]) -> list[dict]:
        probs = logits.float().softmax(-1).cpu()
        k = min(top_k or len(self.labels), len(self.labels))
        out = []
        for row in probs:
            p, idx = row.topk(k)
            out.append({"label": self.labels[idx[0]], "score": round(float(p[0]), 6),
                        "probabilities": {self.labels[i]: round(float(q), 6) for q, i in zip(p, idx)}})
        return out
