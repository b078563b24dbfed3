"""Multi-label classification: any number of labels per text or image (sigmoid outputs, BCE-with-logits).

The decision threshold is tuned on validation at every evaluation (one global value or one per class),
so the kept checkpoint is chosen at the threshold it will be used with. The final validation of the kept
model fixes it; it is saved with the model and reused by test, `tuneforge eval` and predict."""
from __future__ import annotations

import json
import math
from typing import Optional

import torch

from tuneforge.data.examples import Examples
from tuneforge.errors import ConfigError, DataError
from tuneforge.metrics import MultiLabelMetrics, Thresholds
from tuneforge.models.base import HeadSpec, ModelBundle
from tuneforge.tasks.base import TASKS
from tuneforge.tasks.classification import label_text
from tuneforge.tasks.rows import RowTask


def parse_labels(v, delimiter: str) -> list[str]:
    """A label cell → its labels: a JSON list, a JSON-list string, or a delimited string ("" = none)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("["):
            try:
                v = json.loads(s)
            except json.JSONDecodeError:
                pass
    items = v.split(delimiter) if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else [v]
    return list(dict.fromkeys(t for t in (label_text(x) for x in items) if t))


@TASKS.register("multilabel")
class MultiLabel(RowTask):
    name = "multilabel"
    default_loss = "bce"
    allowed_losses = ("bce",)
    default_metric = "micro_f1"
    metric_names = ("loss", "micro_f1", "macro_f1", "micro_precision", "micro_recall", "subset_accuracy",
                    "micro_f1_at_0.5")
    label_dtype = torch.float

    def __init__(self, cfg, log=print):
        super().__init__(cfg, log)
        fixed = cfg.task.threshold
        mode = "fixed" if isinstance(fixed, float) else fixed
        self.thresholds = Thresholds(mode, [], tuning=mode != "fixed")
        self.pos_weight: list[float] = []  # BCE pos_weight per label: negatives / positives in train

    def label_sets(self, ex: Examples) -> list[list[str]]:
        return [parse_labels(v, self.cfg.data.label_delimiter) for v in ex.labels]

    def fit_labels(self, train: Examples, val: Examples) -> None:
        sets = self.label_sets(train)
        self.labels = sorted({label for s in sets for label in s})
        if not self.labels:
            raise DataError(f"no train row has a label in column '{self.cfg.data.label_column}' "
                            f"(lists, or strings split on data.label_delimiter '{self.cfg.data.label_delimiter}')")
        fixed = self.cfg.task.threshold
        self.thresholds.values = [fixed if self.thresholds.mode == "fixed" else 0.5] * len(self.labels)
        for name, ex in (("train", train), ("val", val)):
            empty = sum(1 for s in self.label_sets(ex) if not s)
            self.report[f"{name}_rows_without_labels"] = empty
            if empty:
                self.log(f"data ({name}): {empty} of {len(ex)} rows have no label (kept: they teach 'none of these')")
        self.encode_labels(val)

    def encode_labels(self, ex: Examples) -> Optional[list[list[float]]]:
        if ex.labels is None:
            return None
        index = {name: i for i, name in enumerate(self.labels)}
        out = []
        for labels, where in zip(self.label_sets(ex), ex.where):
            row = [0.0] * len(self.labels)
            for label in labels:
                if label not in index:
                    raise DataError(f"{where}: label '{label}' never appears in train (train labels: "
                                    f"{', '.join(self.labels[:20])}); fix the label or add training examples")
                row[index[label]] = 1.0
            out.append(row)
        return out

    def gold_labels(self, ex: Examples) -> list:
        return self.label_sets(ex)

    def head_spec(self) -> HeadSpec:
        return HeadSpec(len(self.labels), list(self.labels), "sequence", "multi_label_classification")

    def class_counts(self, train: Examples) -> Optional[dict]:
        counts = {name: 0 for name in self.labels}
        for labels in self.label_sets(train):
            for label in labels:
                counts[label] += 1
        return counts

    def choose_imbalance(self, report: dict) -> str:
        mode = self.cfg.data.imbalance
        if mode in ("resample", "focal"):
            raise ConfigError(f"data.imbalance: {mode} is for single-label classification; multilabel supports "
                              "class_weights (BCE pos_weight), auto or none")
        counts, ratio = report["class_counts"], report["imbalance_ratio"]
        if mode == "auto":
            mode = "class_weights" if ratio is not None and ratio >= self.cfg.data.imbalance_threshold else "none"
            self.log(f"data.imbalance auto → {mode} (label frequency ratio {ratio})")
        self.remedy = mode
        # rare labels' positives count as much as their negatives
        n = report["train_examples"]
        self.pos_weight = [(n - c) / c if c else 1.0 for c in counts.values()]
        return mode

    def class_weights(self) -> Optional[torch.Tensor]:
        if self.remedy != "class_weights":
            return None
        return torch.tensor(self.pos_weight, dtype=torch.float32)

    def new_metrics(self, bundle: ModelBundle):
        return MultiLabelMetrics(self.labels, self.thresholds)

    def finalize(self) -> None:
        self.thresholds.tuning = False

    def decode(self, logits: torch.Tensor, top_k: Optional[int]) -> list[dict]:
        probs = logits.float().sigmoid().cpu()
        k = min(top_k or len(self.labels), len(self.labels))
        out = []
        for row in probs:
            chosen = [name for name, p, t in zip(self.labels, row.tolist(), self.thresholds.values) if p >= t]
            top = row.topk(k)
            out.append({"labels": chosen, "scores": {self.labels[i]: round(float(p), 6)
                                                     for p, i in zip(top.values, top.indices)}})
        return out

    def state(self) -> dict:
        return {**super().state(), "thresholds": list(self.thresholds.values),
                "threshold_mode": self.thresholds.mode}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.thresholds.values = [float(t) for t in state.get("thresholds", [0.5] * len(self.labels))]
        self.thresholds.tuning = False  # a saved model uses the thresholds it was saved with
