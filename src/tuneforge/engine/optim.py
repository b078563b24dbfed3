"""Optimizer and LR schedule from the `train` section: decay rules, head LR and layer-wise LR decay."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

from tuneforge.engine.trainable import layer_depths

SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def param_groups(model: torch.nn.Module, tcfg, head: Optional[set[str]] = None) -> list[dict]:
    """Weight decay on matrices only (biases and norm weights, all 1-D, are not decayed);
    per-depth LRs when train.layer_decay is set, and train.head_lr for the new head."""
    head = head or set()
    depths, top = layer_depths(model, head) if tcfg.layer_decay else ({}, 0)
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr = tcfg.lr * (tcfg.layer_decay ** (top - depths[name]) if tcfg.layer_decay else 1.0)
        if name in head and tcfg.head_lr:
            lr = tcfg.head_lr
        wd = tcfg.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((lr, wd), {"params": [], "lr": lr, "weight_decay": wd})["params"].append(p)
    return list(groups.values())


def create_optimizer(model: torch.nn.Module, tcfg, head: Optional[set[str]] = None) -> torch.optim.Optimizer:
    groups = param_groups(model, tcfg, head)
    if tcfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=tcfg.lr, momentum=tcfg.momentum, foreach=True)
    # fused AdamW: one kernel for all parameters instead of a Python loop over them
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=tuple(tcfg.betas), fused=True)


def total_steps(tcfg, batches_per_epoch: int) -> int:
    per_epoch = math.ceil(batches_per_epoch / tcfg.grad_accum)
    return tcfg.max_steps or max(1, math.ceil(tcfg.epochs * per_epoch))


def create_scheduler(optimizer, tcfg, steps: int, horizon: Optional["Horizon"] = None):
    """transformers' schedule over `steps`; with a `horizon` (train.time_budget) the same shapes over a horizon that
    is set while training runs."""
    if horizon is not None:
        return LambdaLR(optimizer, horizon)
    warmup = tcfg.warmup_steps if tcfg.warmup_steps is not None else int(tcfg.warmup_ratio * steps)
    return get_scheduler(SCHEDULES[tcfg.schedule], optimizer, num_warmup_steps=warmup, num_training_steps=steps)


class Horizon:
    """The LR multiplier of train.schedule (linear / cosine / constant, with warm-up; the formulas of transformers'
    get_scheduler) over `steps` that can change while training runs (train.time_budget sets them once the step time
    is known). A callable object, not a function: LambdaLR's state_dict keeps its attributes, so every checkpoint
    holds the horizon and a resumed run continues on the same schedule."""

    def __init__(self, tcfg, steps: int):
        self.shape, self.steps, self.fixed = tcfg.schedule, steps, False
        self.warmup_ratio, self.warmup_steps = tcfg.warmup_ratio, tcfg.warmup_steps

    def set(self, steps: int, fixed: bool) -> None:
        self.steps, self.fixed = max(1, steps), fixed

    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else int(self.warmup_ratio * self.steps)

    def __call__(self, step: int) -> float:
        warmup = self.warmup()
        if step < warmup:
            return step / max(1, warmup)
        if self.shape == "constant":
            return 1.0
        progress = (step - warmup) / max(1, self.steps - warmup)
        if self.shape == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
