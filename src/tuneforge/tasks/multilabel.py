"""Multi-label classification: any number of labels per text or image (sigmoid outputs, BCE-with-logits).

The decision threshold is tuned on validation at every evaluation (one global value or one per class),
so the kept checkpoint is chosen at the threshold it will be used with. The final validation of the kept
model fixes it; it is saved with the model and reused by test, `tuneforge eval` and predict."""
from __future__ import annotations

import json
import math
from typing import Optional

import numpy as np
import torch

from tuneforge.data.examples import Examples
from tuneforge.errors import ConfigError, DataError
from tuneforge.models.base import HeadSpec, ModelBundle
from tuneforge.tasks.base import TASKS, Built
from tuneforge.tasks.classification import Classification, _label_text, build_inputs

GRID = np.round(np.arange(0.02, 0.99, 0.01), 2)  # candidate thresholds


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
    return list(dict.fromkeys(t for t in (_label_text(x) for x in items) if t))


def _f1(tp, fp, fn) -> np.ndarray:
    return np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)


def _pick(scores: np.ndarray) -> float:
    """Best grid threshold; ties go to the one nearest 0.5 (least surprising)."""
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(GRID[best[np.argmin(np.abs(GRID[best] - 0.5))]])


def tune_thresholds(p: np.ndarray, y: np.ndarray, mode: str) -> list[float]:
    """Global: the grid value with the best micro-F1. Per class: each class's best F1 (classes with no
    positive example in this split keep the global value)."""
    counts = np.zeros((3, len(GRID), p.shape[1]))  # tp, fp, fn per grid value and class
    for g, t in enumerate(GRID):  # one rows × classes mask at a time (bounded memory)
        pred = p >= t
        counts[:, g] = (pred & y).sum(0), (pred & ~y).sum(0), (~pred & y).sum(0)
    tp, fp, fn = counts
    glob = _pick(_f1(tp.sum(1), fp.sum(1), fn.sum(1)))
    if mode == "global":
        return [glob] * p.shape[1]
    return [_pick(_f1(tp[:, c], fp[:, c], fn[:, c])) if y[:, c].any() else glob for c in range(p.shape[1])]


class MultiLabelMetrics:
    def __init__(self, task: "MultiLabel"):
        self.task = task
        self.probs: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.loss_sum, self.n = 0.0, 0

    def update(self, logits: torch.Tensor, batch: dict, loss: float) -> None:
        self.probs.append(logits.float().sigmoid().cpu().numpy())
        self.targets.append(batch["labels"].cpu().numpy() > 0.5)
        self.loss_sum += loss * len(logits)
        self.n += len(logits)

    @staticmethod
    def scores(p: np.ndarray, y: np.ndarray, thresholds) -> dict:
        pred = p >= np.asarray(thresholds)[None, :]
        tp, fp, fn = (pred & y).sum(0), (pred & ~y).sum(0), (~pred & y).sum(0)
        f1 = _f1(tp, fp, fn)
        present = y.sum(0) > 0  # macro-F1 over the classes present in this split
        return {"micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
                "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
                "micro_precision": float(tp.sum() / max(tp.sum() + fp.sum(), 1)),
                "micro_recall": float(tp.sum() / max(tp.sum() + fn.sum(), 1)),
                "subset_accuracy": float((pred == y).all(1).mean()) if len(y) else 0.0,
                "_f1": f1, "_tp": tp, "_fp": fp, "_fn": fn}

    def compute(self) -> dict:
        n_cls = len(self.task.labels)
        p = np.concatenate(self.probs) if self.probs else np.zeros((0, n_cls))
        y = np.concatenate(self.targets) if self.targets else np.zeros((0, n_cls), dtype=bool)
        if self.task.tuning and len(y):
            self.task.thresholds = tune_thresholds(p, y, self.task.mode)
        t = self.task.thresholds
        s = self.scores(p, y, t)
        per_class = {name: {"precision": float(s["_tp"][i] / max(s["_tp"][i] + s["_fp"][i], 1)),
                            "recall": float(s["_tp"][i] / max(s["_tp"][i] + s["_fn"][i], 1)),
                            "f1": float(s["_f1"][i]), "support": int(y[:, i].sum()), "threshold": t[i]}
                     for i, name in enumerate(self.task.labels)}
        out = {"loss": self.loss_sum / max(self.n, 1), **{k: v for k, v in s.items() if not k.startswith("_")}}
        out["micro_f1_at_0.5"] = self.scores(p, y, [0.5] * n_cls)["micro_f1"]
        if len(set(t)) == 1:
            out["threshold"] = t[0]
        return {**out, "per_class": per_class, "samples": int(self.n)}


@TASKS.register("multilabel")
class MultiLabel(Classification):
    """Reuses classification's input handling (texts, pairs, images); the label is a set."""

    name = "multilabel"
    default_loss = "bce"
    default_metric = "micro_f1"

    def __init__(self, cfg, log=print):
        super().__init__(cfg, log)
        fixed = cfg.task.threshold
        self.mode = "fixed" if isinstance(fixed, float) else fixed
        self.tuning = self.mode != "fixed"
        self.thresholds: list[float] = []

    def stratify_key(self, ex: Examples) -> Optional[list]:
        return None

    def label_sets(self, ex: Examples) -> list[list[str]]:
        return [parse_labels(v, self.cfg.data.label_delimiter) for v in ex.labels]

    def fit_labels(self, train: Examples, val: Examples) -> None:
        sets = self.label_sets(train)
        self.labels = sorted({label for s in sets for label in s})
        if not self.labels:
            raise DataError(f"no train row has a label in column '{self.cfg.data.label_column}' "
                            f"(lists, or strings split on data.label_delimiter '{self.cfg.data.label_delimiter}')")
        fixed = self.cfg.task.threshold
        self.thresholds = [fixed if self.mode == "fixed" else 0.5] * len(self.labels)
        for name, ex in (("train", train), ("val", val)):
            empty = sum(1 for s in self.label_sets(ex) if not s)
            self.report[f"{name}_rows_without_labels"] = empty
            if empty:
                self.log(f"data ({name}): {empty} of {len(ex)} rows have no label (kept: they teach 'none of these')")
        self.targets(val)

    def targets(self, ex: Examples) -> Optional[list[list[float]]]:
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

    def head_spec(self) -> HeadSpec:
        return HeadSpec(len(self.labels), list(self.labels), "sequence", "multi_label_classification")

    def class_counts(self, train: Examples) -> Optional[dict]:
        counts = {name: 0 for name in self.labels}
        for labels in self.label_sets(train):
            for label in labels:
                counts[label] += 1
        self._n_train = len(train)
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
        # BCE pos_weight = negatives / positives per label: rare labels' positives count as much as their negatives
        self._balanced = [(self._n_train - c) / c if c else 1.0 for c in counts.values()]
        return mode

    def build(self, ex: Examples, bundle: ModelBundle, train: bool) -> Built:
        ex = self.prepare_images(ex, bundle)
        built = build_inputs(ex, bundle, self.cfg, train, self.cache, self.targets(ex), label_dtype=torch.float)
        built.skipped = len(ex.skipped)
        return built

    def new_metrics(self):
        return MultiLabelMetrics(self)

    def finalize(self) -> None:
        self.tuning = False

    def decode(self, logits: torch.Tensor, top_k: Optional[int]) -> list[dict]:
        probs = logits.float().sigmoid().cpu()
        k = min(top_k or len(self.labels), len(self.labels))
        out = []
        for row in probs:
            chosen = [name for name, p, t in zip(self.labels, row.tolist(), self.thresholds) if p >= t]
            top = row.topk(k)
            out.append({"labels": chosen, "scores": {self.labels[i]: round(float(p), 6)
                                                     for p, i in zip(top.values, top.indices)}})
        return out

    def state(self) -> dict:
        return {**super().state(), "thresholds": list(self.thresholds), "threshold_mode": self.mode}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.thresholds = [float(t) for t in state.get("thresholds", [0.5] * len(self.labels))]
        self.tuning = False  # a saved model uses the thresholds it was saved with
