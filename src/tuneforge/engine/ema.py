"""Exponential moving average of the weights (`train.ema`): evaluation and the kept model use the average."""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

from tuneforge.engine.callbacks import Callback


class WeightEMA(Callback):
    """Updated after every optimizer step (buffers copied). Evaluation runs on it (`applied`), so the best
    checkpoint and the kept model are the averaged weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.model, self.decay = model, decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_step_end(self, state) -> None:
        self.update(self.model)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow}

    def load_state_dict(self, d: dict) -> None:
        for k, v in d["shadow"].items():
            self.shadow[k].copy_(v)

    def weights(self) -> dict:
        return self.shadow

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    @contextmanager
    def applied(self):
        backup = copy.deepcopy(self.model.state_dict())
        self.model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            self.model.load_state_dict(backup)
