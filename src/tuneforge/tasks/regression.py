"""Regression: one numeric target per text, text pair or image (MSE, Huber or L1 loss)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from tuneforge.data.examples import Examples
from tuneforge.errors import ConfigError, DataError
from tuneforge.models.base import HeadSpec, ModelBundle
from tuneforge.tasks.base import TASKS, Task, Built
from tuneforge.tasks.classification import Classification, build_inputs

REGRESSION_LOSSES = ("mse", "huber", "l1")


def parse_target(v, where: str, column: str) -> float:
    try:
        if isinstance(v, bool):
            raise ValueError
        y = float(str(v).strip()) if isinstance(v, str) else float(v)
    except (TypeError, ValueError):
        raise DataError(f"{where}: target {str(v)!r} in column '{column}' is not a number; "
                        "every row needs a numeric target") from None
    if not math.isfinite(y):
        raise DataError(f"{where}: target {str(v)!r} in column '{column}' is NaN or infinite; "
                        "give a finite number or remove the row")
    return y


def _corr(kind: str, p: np.ndarray, y: np.ndarray) -> float:
    """Pearson / Spearman; 0.0 when undefined (constant predictions), so model selection stays well-defined."""
    from scipy.stats import pearsonr, spearmanr

    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(y) == 0:
        return 0.0
    r = (pearsonr if kind == "pearson" else spearmanr)(p, y)[0]
    return float(r) if np.isfinite(r) else 0.0


class RegressionMetrics:
    """MSE, RMSE, MAE, Pearson and Spearman, in the target's own units (standardisation undone)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        self.mean, self.std = mean, std
        self.preds: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.loss_sum, self.n = 0.0, 0

    def update(self, logits: torch.Tensor, batch: dict, loss: float) -> None:
        y = batch["labels"].reshape(-1)
        self.preds.append(logits.reshape(len(y), -1)[:, 0].float().cpu().numpy())
        self.targets.append(y.float().cpu().numpy())
        self.loss_sum += loss * len(y)
        self.n += len(y)

    def compute(self) -> dict:
        p = np.concatenate(self.preds).astype(np.float64) * self.std + self.mean
        y = np.concatenate(self.targets).astype(np.float64) * self.std + self.mean
        err = p - y
        mse = float(np.mean(err ** 2)) if len(y) else 0.0
        return {"loss": self.loss_sum / max(self.n, 1), "mse": mse, "rmse": math.sqrt(mse),
                "mae": float(np.mean(np.abs(err))) if len(y) else 0.0,
                "pearson": _corr("pearson", p, y), "spearman": _corr("spearman", p, y), "samples": int(self.n)}


@TASKS.register("regression")
class Regression(Classification):
    """Reuses classification's input handling (texts, pairs, images); the label is a number."""

    name = "regression"
    default_loss = "mse"
    default_metric = "mse"

    def __init__(self, cfg, log=print):
        super().__init__(cfg, log)
        self.mean, self.std = 0.0, 1.0  # identity unless task.standardize

    def stratify_key(self, ex: Examples) -> Optional[list]:
        return None

    def class_counts(self, train: Examples) -> Optional[dict]:
        return None  # no classes: no class balance to report or correct

    choose_imbalance = Task.choose_imbalance

    def targets(self, ex: Examples) -> list[float]:
        col = self.cfg.data.label_column
        return [parse_target(v, where, col) for v, where in zip(ex.labels, ex.where)]

    def fit_labels(self, train: Examples, val: Examples) -> None:
        y = np.asarray(self.targets(train), dtype=np.float64)
        self.targets(val)  # checked now, before any model is loaded
        if self.cfg.task.standardize:
            self.mean, self.std = float(y.mean()), float(y.std())
            if self.std < 1e-12:
                self.log("data: every train target is equal; standardisation only centres them")
                self.std = 1.0
            self.log(f"data: targets standardised with train mean {self.mean:.4g}, std {self.std:.4g} "
                     "(predictions are mapped back)")
        self.labels = []

    def label_ids(self, ex: Examples) -> Optional[list[float]]:
        if ex.labels is None:
            return None
        return [(y - self.mean) / self.std for y in self.targets(ex)]

    def head_spec(self) -> HeadSpec:
        return HeadSpec(1, [], "sequence", "regression")

    def build(self, ex: Examples, bundle: ModelBundle, train: bool) -> Built:
        ex = self.prepare_images(ex, bundle)
        built = build_inputs(ex, bundle, self.cfg, train, self.cache, self.label_ids(ex), label_dtype=torch.float)
        built.skipped = len(ex.skipped)
        return built

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        name = self.cfg.task.loss or self.default_loss
        if name not in REGRESSION_LOSSES:
            raise ConfigError(f"task.loss '{name}' does not fit regression; choose one of: "
                              f"{', '.join(REGRESSION_LOSSES)}")
        return super().loss(logits, batch)

    def new_metrics(self):
        return RegressionMetrics(self.mean, self.std)

    def decode(self, logits: torch.Tensor, top_k: Optional[int]) -> list[dict]:
        values = logits.float().reshape(len(logits), -1)[:, 0].cpu() * self.std + self.mean
        return [{"value": round(float(v), 6)} for v in values]

    def state(self) -> dict:
        return {**super().state(), "target_mean": self.mean, "target_std": self.std}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.mean, self.std = float(state.get("target_mean", 0.0)), float(state.get("target_std", 1.0))
