"""Guards that turn silent training failures into a policy or a clear error: non-finite loss / gradients
(train.nan_policy) and out-of-memory (a batch size to try)."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from tuneforge.errors import TuneforgeError

MAX_CONSECUTIVE_SKIPS = 20  # skip: this many bad steps in a row means the run is broken, not unlucky
MAX_ROLLBACKS = 5


class TrainingError(TuneforgeError):
    pass


class ResourceError(TuneforgeError):
    pass


class Rollback(Exception):
    """Raised inside the epoch loop; `fit` catches it and rolls back through the NaN guard."""


class NanGuard:
    """Checks each optimizer step's loss and gradient norm. stop: raise a one-line error naming the step;
    skip: drop the update (counted); rollback: reload the last checkpoint and multiply the LR by `lr_factor`."""

    def __init__(self, policy: str, lr_factor: float = 0.5, check_grads: bool = True, log=print):
        self.policy, self.lr_factor, self.check_grads, self.log = policy, lr_factor, check_grads, log
        self.skipped, self.rollbacks, self.lr_scale = 0, 0, 1.0
        self.consecutive = 0
        self.reason = ""

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "rollbacks": self.rollbacks, "lr_scale": self.lr_scale}

    def load_state_dict(self, d: dict) -> None:
        self.skipped, self.rollbacks, self.lr_scale = d["skipped"], d["rollbacks"], d["lr_scale"]

    def summary(self) -> dict:
        return {"policy": self.policy, "skipped_steps": self.skipped, "rollbacks": self.rollbacks,
                "lr_scale": self.lr_scale}

    def ok(self, state, loss: torch.Tensor, grad_norm: Optional[torch.Tensor], model: torch.nn.Module) -> bool:
        """True when the step may be taken. With a grad scaler (fp16) overflowing gradients are the scaler's
        business, so only the loss is checked."""
        bad = None
        if not math.isfinite(float(loss.detach())):
            bad = f"loss is {float(loss.detach())}"
        elif self.check_grads:
            if grad_norm is None:
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            if not math.isfinite(float(grad_norm)):
                bad = f"gradient norm is {float(grad_norm)}"
        if bad is None:
            self.consecutive = 0
            return True
        step = state.step + 1
        if self.policy == "skip":
            self.skipped += 1
            self.consecutive += 1
            if self.consecutive >= MAX_CONSECUTIVE_SKIPS:
                raise TrainingError(f"non-finite values at step {step} ({bad}) for {self.consecutive} steps in a "
                                    "row (train.nan_policy: skip); lower train.lr or check the data")
            return False
        if self.policy == "rollback":
            if self.rollbacks >= MAX_ROLLBACKS:
                raise TrainingError(f"non-finite values at step {step} ({bad}) after {self.rollbacks} rollbacks "
                                    f"(LR x{self.lr_scale:g}); lower train.lr or check the data")
            self.reason = f"step {step}: {bad}"
            raise Rollback()
        raise TrainingError(f"non-finite values at step {step} ({bad}); lower train.lr (now the LR x"
                            f"{self.lr_scale:g}) or set train.nan_policy: skip or rollback")

    def rollback(self, state, optimizer, scheduler, restore: Callable) -> None:
        """`restore(state)` reloads the last checkpoint (this guard's counters too); then the LR is lowered for
        good. The counters survive the reload."""
        skipped, rollbacks, scale = self.skipped, self.rollbacks + 1, self.lr_scale * self.lr_factor
        optimizer.zero_grad(set_to_none=True)  # the non-finite gradients must not leak into the replay
        restore(state)
        scale_lr(optimizer, scheduler, scale / self.lr_scale)  # the checkpoint's LRs carry its scale
        self.skipped, self.rollbacks, self.lr_scale, self.consecutive = skipped, rollbacks, scale, 0
        self.log(f"nan guard: {self.reason}; rolled back to step {state.step}, LR now x{scale:g} "
                 f"(rollback {rollbacks} of at most {MAX_ROLLBACKS})")


def scale_lr(optimizer, scheduler, factor: float) -> None:
    """Multiply every LR, including the scheduler's base LRs (else its next step would undo it)."""
    for g in optimizer.param_groups:
        g["lr"] *= factor
        if "initial_lr" in g:
            g["initial_lr"] *= factor
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


# ---------------------------------------------------------------- memory


def is_oom(e: BaseException) -> bool:
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def oom_error(batch_size: int, grad_accum: int, eval_batch: int, phase: str) -> ResourceError:
    if phase == "eval":
        return ResourceError(f"out of memory during evaluation at batch size {eval_batch}; try "
                             f"--set eval.batch_size={max(1, eval_batch // 2)}")
    half = max(1, batch_size // 2)
    keep = f" --set train.grad_accum={grad_accum * 2} (same effective batch)" if half < batch_size else ""
    return ResourceError(f"out of memory during {phase} at train.batch_size {batch_size}; try "
                         f"--set train.batch_size={half}{keep}")
