"""Regression: one numeric target per text, text pair or image (MSE, Huber or L1 loss)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from tuneforge.data.examples import Examples
from tuneforge.errors import DataError
from tuneforge.metrics import RegressionMetrics
from tuneforge.models.base import HeadSpec, ModelBundle
from tuneforge.tasks.base import TASKS
from tuneforge.tasks.rows import RowTask


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


@TASKS.register("regression")
class Regression(RowTask):
    name = "regression"
    default_loss = "mse"
    allowed_losses = ("mse", "huber", "l1")
    default_metric = "mse"
    metric_names = ("loss", "mse", "rmse", "mae", "pearson", "spearman")
    label_dtype = torch.float

    def __init__(self, cfg, log=print):
        super().__init__(cfg, log)
        self.mean, self.std = 0.0, 1.0  # identity unless task.standardize

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

    def encode_labels(self, ex: Examples) -> Optional[list[float]]:
        if ex.labels is None:
            return None
        return [(y - self.mean) / self.std for y in self.targets(ex)]

    def gold_labels(self, ex: Examples) -> list:
        return self.targets(ex)

    def head_spec(self) -> HeadSpec:
        return HeadSpec(1, [], "sequence", "regression")

    def new_metrics(self, bundle: ModelBundle):
        return RegressionMetrics(self.mean, self.std)

    def decode(self, logits: torch.Tensor, top_k: Optional[int]) -> list[dict]:
        values = logits.float().reshape(len(logits), -1)[:, 0].cpu() * self.std + self.mean
        return [{"value": round(float(v), 6)} for v in values]

    def state(self) -> dict:
        return {**super().state(), "target_mean": self.mean, "target_std": self.std}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.mean, self.std = float(state.get("target_mean", 0.0)), float(state.get("target_std", 1.0))
