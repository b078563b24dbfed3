"""Step-time estimates, shared by `tuneforge plan` and `train.time_budget`.

`StepTimer` collects (seconds, size) per step, the first `warmup` steps left out (first kernels, allocations). A
step's size is its non-padding tokens for text (length-grouped batches differ a lot) and its rows otherwise. With
sizes that vary, seconds = a + b · size is fitted by least squares, so an epoch's time follows from its mean step
size however few steps were measured; otherwise the mean. The error is the standard error of that prediction.

`timed_steps` / `timed_eval` run real training steps (the loop's forward / backward / clip / optimizer step) and
evaluation batches on chosen batches; the caller restores weights and RNG (plan.py)."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from tuneforge.engine.loop import forward, forward_backward


@dataclass
class Estimate:
    per_step: float  # expected seconds of one step of the mean size
    error: float  # its standard error, seconds
    measured: int  # steps behind it

    @property
    def relative_error(self) -> float:
        return self.error / self.per_step

    def total(self, steps: float) -> tuple[float, float]:
        """Seconds for `steps` steps and the error (the mean's error is shared by every step)."""
        return steps * self.per_step, steps * self.error


class StepTimer:
    def __init__(self, warmup: int = 2):
        self.warmup, self.seen = warmup, 0
        self.seconds: list[float] = []
        self.sizes: list[float] = []

    def add(self, seconds: float, size: float) -> None:
        self.seen += 1
        if self.seen > self.warmup:
            self.seconds.append(seconds)
            self.sizes.append(size)

    @property
    def measured(self) -> int:
        return len(self.seconds)

    def estimate(self, mean_size: float) -> Estimate:
        """Seconds of a step of `mean_size` (an epoch's mean tokens or rows per step)."""
        y, x = np.asarray(self.seconds), np.asarray(self.sizes, dtype=float)
        n = len(y)
        if n == 0:
            raise ValueError("no step measured yet")
        if n >= 4 and x.std() > 0.05 * x.mean():
            fitted = _linear_fit(x, y, mean_size)
            if fitted is not None:
                return Estimate(fitted[0], fitted[1], n)
        error = y.std(ddof=1) / math.sqrt(n) if n > 1 else 0.5 * y[0]
        return Estimate(float(y.mean()), float(error), n)


def _linear_fit(x: np.ndarray, y: np.ndarray, at: float) -> Optional[tuple[float, float]]:
    """Least squares y = a + b x, evaluated at `at`, with its standard error; None when the slope is not positive
    (noise: the mean is then the better estimate)."""
    design = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    if coef[1] <= 0:
        return None
    resid = y - design @ coef
    cov = (resid @ resid / max(len(y) - 2, 1)) * np.linalg.inv(design.T @ design)
    v = np.array([1.0, at])
    return max(float(v @ coef), 1e-6), float(math.sqrt(max(v @ cov @ v, 0.0)))


def collate(built, indices: list[int]) -> dict:
    """The batch of these rows, as the DataLoader would build it."""
    from torch.utils.data import default_collate

    return (built.collate or default_collate)([built.dataset[j] for j in indices])


def batch_size_units(batch: dict) -> int:
    """A batch's size for the cost model: its non-padding tokens, else its rows."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if isinstance(mask, torch.Tensor) else len(batch["labels"])


def mean_step_size(built, steps_per_epoch: int, tokens: bool) -> float:
    """An epoch's mean step size: tokens (the built lengths) or rows, over its optimizer steps."""
    total = sum(built.lengths) if tokens and built.lengths is not None else len(built.dataset)
    return total / max(steps_per_epoch, 1)


def batch_shape(built, indices: list[int]) -> tuple[int, int | None]:
    """(rows, padded width) of the batch these rows make, without building it (the collator's rounding); width
    None without lengths (images, audio)."""
    if built.lengths is None:
        return len(indices), None
    longest = max(built.lengths[i] for i in indices)
    multiple, cap = getattr(built.collate, "multiple", 1), getattr(built.collate, "max_width", None)
    width = -(-longest // multiple) * multiple
    return len(indices), (width if cap is None else max(longest, min(width, cap)))


def spread_batches(batches: list[list[int]], lengths, count: int) -> list[list[int]]:
    """`count` of an epoch's batches spread over their sizes (largest first: its memory peak is then measured from
    the first step on), so the cost model sees small and large steps alike; repeated when there are fewer."""
    size = (lambda b: sum(lengths[i] for i in b)) if lengths is not None else len
    ordered = sorted(batches, key=size, reverse=True)
    if len(ordered) <= count:  # few batches: each is timed more than once
        return (ordered * count)[:count]
    picks = np.linspace(0, len(ordered) - 1, count).round().astype(int)
    return [ordered[i] for i in dict.fromkeys(picks.tolist())]


def timed_steps(task, bundle, built, index_batches: list[list[int]], optimizer, accelerator, grad_clip,
                train_mode, warmup: int = 2, max_seconds: float = 30.0,
                on_step: Callable[[int], None] | None = None) -> StepTimer:
    """Training steps on these batches, each timed: the loop's forward / backward, gradient clipping and the
    optimizer step. Stops early after `max_seconds` (at least warmup + 4 steps). `on_step(i)` runs after step i,
    outside the timing (plan.py measures memory there)."""
    timer, model = StepTimer(warmup), bundle.model
    train_mode(model)
    started = time.perf_counter()
    for i, indices in enumerate(index_batches):
        batch = collate(built, indices)
        t = time.perf_counter()
        _, batch = forward_backward(task, bundle, batch, accelerator)
        if grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer.add(time.perf_counter() - t, batch_size_units(batch))
        if on_step is not None:
            on_step(i)
        if i >= warmup + 4 and time.perf_counter() - started > max_seconds:
            break
    return timer


@torch.no_grad()
def timed_eval(task, bundle, built, index_batches: list[list[int]], accelerator, warmup: int = 1,
               on_step: Callable[[int], None] | None = None) -> StepTimer:
    """Evaluation batches (forward and loss, eval mode), each timed; `on_step(i)` as in timed_steps."""
    timer = StepTimer(warmup)
    bundle.model.eval()
    for i, indices in enumerate(index_batches):
        batch = collate(built, indices)
        t = time.perf_counter()
        outputs, batch = forward(task, bundle, batch, accelerator)
        task.loss(outputs, batch)
        timer.add(time.perf_counter() - t, batch_size_units(batch))
        if on_step is not None:
            on_step(i)
    return timer
