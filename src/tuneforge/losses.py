"""Loss registry: `LOSSES.get(name)(task_cfg, class_weights) -> fn(logits, targets) -> scalar`."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from tuneforge.registry import Registry

LOSSES: Registry[Callable] = Registry("loss")


@LOSSES.register("cross_entropy")
def cross_entropy(task_cfg, weights: Optional[torch.Tensor] = None):
    def fn(logits, targets):
        if targets.is_floating_point():  # soft targets (mixup / cutmix)
            return F.cross_entropy(logits.float(), targets, weight=None if weights is None else
                                   weights.to(logits.device), label_smoothing=task_cfg.label_smoothing)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               weight=None if weights is None else weights.to(logits.device),
                               label_smoothing=task_cfg.label_smoothing, ignore_index=-100)
    return fn


@LOSSES.register("focal")
def focal(task_cfg, weights: Optional[torch.Tensor] = None, gamma: float = 2.0):
    """Focal loss (Lin et al. 2017): down-weights easy examples; `weights` act as the per-class alpha."""
    def fn(logits, targets):
        logits, targets = logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
        keep = targets != -100
        logits, targets = logits[keep], targets[keep]
        logp = F.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
        loss = -((1 - logp.exp()) ** gamma) * logp
        if weights is not None:
            loss = loss * weights.to(logits.device)[targets]
        return loss.mean()
    return fn


@LOSSES.register("bce")
def bce(task_cfg, weights: Optional[torch.Tensor] = None):
    def fn(logits, targets):
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(),
                                                  pos_weight=None if weights is None else weights.to(logits.device))
    return fn


def _regression(f):
    def make(task_cfg, weights=None):
        return lambda out, target: f(out.float().reshape(target.shape), target.float())
    return make


LOSSES.register("mse")(_regression(F.mse_loss))
LOSSES.register("huber")(_regression(F.huber_loss))
LOSSES.register("l1")(_regression(F.l1_loss))
