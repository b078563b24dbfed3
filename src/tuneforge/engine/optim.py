"""Optimizer and LR schedule from the `train` section."""
from __future__ import annotations

import math

import torch
from transformers import get_scheduler

SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases and norm weights (all 1-D tensors) are not decayed."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def create_optimizer(model: torch.nn.Module, tcfg, groups: list[dict] | None = None) -> torch.optim.Optimizer:
    groups = groups or param_groups(model, tcfg.weight_decay)
    if tcfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=tcfg.lr, momentum=tcfg.momentum, foreach=True)
    # fused AdamW: one kernel for all parameters instead of a Python loop over them
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=tuple(tcfg.betas), fused=True)


def total_steps(tcfg, batches_per_epoch: int) -> int:
    per_epoch = math.ceil(batches_per_epoch / tcfg.grad_accum)
    return tcfg.max_steps or max(1, math.ceil(tcfg.epochs * per_epoch))


def create_scheduler(optimizer, tcfg, steps: int):
    warmup = tcfg.warmup_steps if tcfg.warmup_steps is not None else int(tcfg.warmup_ratio * steps)
    return get_scheduler(SCHEDULES[tcfg.schedule], optimizer, num_warmup_steps=warmup, num_training_steps=steps)
