"""Streaming metric accumulators: evaluation keeps predictions on the CPU, never every logit on the device."""
from __future__ import annotations

import numpy as np
import torch


class ClassificationMetrics:
    """Accuracy, macro-F1, balanced accuracy, per-class precision/recall/F1 and the confusion matrix (sklearn)."""

    def __init__(self, labels: list[str]):
        self.labels = labels
        self.preds: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.loss_sum, self.n = 0.0, 0

    def update(self, logits: torch.Tensor, batch: dict, loss: float) -> None:
        targets = batch["labels"]
        self.preds.append(logits.argmax(-1).cpu().numpy())
        self.targets.append(targets.cpu().numpy())
        self.loss_sum += loss * len(targets)
        self.n += len(targets)

    def compute(self) -> dict:
        from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

        y = np.concatenate(self.targets)
        p = np.concatenate(self.preds)
        ids = list(range(len(self.labels)))
        prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=ids, zero_division=0)
        present = support > 0  # macro-F1 over the classes present in this split
        return {
            "loss": self.loss_sum / max(self.n, 1),
            "accuracy": float((y == p).mean()),
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "balanced_accuracy": float(balanced_accuracy_score(y, p)),
            "per_class": {name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                                 "support": int(support[i])} for i, name in enumerate(self.labels)},
            "confusion_matrix": confusion_matrix(y, p, labels=ids).tolist(),
            "samples": int(self.n),
        }


def scalars(metrics: dict) -> dict:
    """The flat numeric part of a metrics dict (for progress bars and comparisons)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
