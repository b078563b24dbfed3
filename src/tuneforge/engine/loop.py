"""Where a batch goes: the training step, the epoch loop and evaluation, on HF Accelerate.

The loop knows the Task and ModelBundle interfaces only (task.forward / loss / train_loss / new_metrics,
bundle.model); everything else reaches it through `Components`, built once per phase by the run."""
from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader

from tuneforge.data.sampling import EpochBatchSampler
from tuneforge.engine import chaos
from tuneforge.engine.callbacks import CallbackList
from tuneforge.engine.device import to_device
from tuneforge.engine.guards import NanGuard, Rollback
from tuneforge.engine.state import LoopState
from tuneforge.tasks.base import Built, Task


@dataclass
class Components:
    """Everything the loop touches for one phase, built by the run from the validated config."""

    bundle: object  # ModelBundle (or the head-only stand-in on cached features): .model, .logits(batch)
    task: Task
    train_loader: DataLoader
    val_loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: object
    accelerator: object
    callbacks: CallbackList
    nan_guard: NanGuard  # checks every step's loss and gradients
    rollback: Callable[[LoopState], None]  # train.nan_policy rollback: reload the phase's latest checkpoint
    train_mode: Callable[[torch.nn.Module], None]  # see trainable.Phase.train_mode
    eval_weights: Callable[[], object] = nullcontext  # context manager that swaps in the weights to evaluate
    grad_accum: int = 1
    grad_clip: Optional[float] = None
    eval_every: Optional[int] = None  # optimizer steps; None = every epoch
    metric: str = "accuracy"
    mode: str = "max"
    t0: float = 0.0  # perf_counter at which wall_seconds would be 0


def make_loader(built: Built, batch_size: int, train: bool, seed: int, num_workers: int = 0,
                group_by_length: bool = True) -> DataLoader:
    lengths = built.lengths if group_by_length else None  # None: plain shuffled batches
    sampler = EpochBatchSampler(len(built.dataset), batch_size, seed, lengths=lengths, shuffle=train,
                                weights=built.sample_weights if train else None)
    return DataLoader(built.dataset, batch_sampler=sampler, collate_fn=built.collate, num_workers=num_workers,
                      persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed) if train else None)


MATH_ATTENTION_BELOW = 192  # tokens


def attention_backend(batch: dict, device):
    """On CPU, PyTorch's flash-attention kernel is slower than the plain math path for short sequences (fwd+bwd,
    bf16, batch 32, 12 heads: 3.8 vs 23 ms at 16 tokens, 99 vs 130 ms at 128; flash wins from 256). It is picked
    whenever attention dropout is off, so short batches get the math path; both compute the same attention."""
    if device.type != "cpu":
        return nullcontext()
    lengths = [v.shape[-1] for k, v in batch.items() if k.endswith("input_ids") and isinstance(v, torch.Tensor)]
    if not lengths or max(lengths) >= MATH_ATTENTION_BELOW:
        return nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def forward(task: Task, bundle, batch: dict, accelerator, train: bool = False) -> tuple[object, dict]:
    """The one place a batch meets the model: onto the device, under autocast → (task outputs, device batch)."""
    batch = to_device(batch, accelerator.device)
    with accelerator.autocast(), attention_backend(batch, accelerator.device) if train else nullcontext():
        return task.forward(bundle, batch), batch


@torch.no_grad()
def evaluate(bundle, task: Task, loader: DataLoader, accelerator) -> dict:
    """Streams the metrics: per batch only argmax / small summaries go to the CPU accumulator.
    Leaves the model in eval mode; the training loop switches back."""
    bundle.model.eval()
    metrics = task.new_metrics(bundle)
    for batch in loader:
        chaos.point("eval_batch")
        outputs, batch = forward(task, bundle, batch, accelerator)
        loss = task.loss(outputs, batch)
        if accelerator.num_processes > 1:
            outputs, batch = accelerator.gather_for_metrics((outputs, batch))
        metrics.update(outputs, batch, float(loss))
    return metrics.compute()


@contextmanager
def evaluating(state: LoopState):
    """Marks the state while an evaluation runs (an out-of-memory error then names the eval batch size); an
    error leaves the mark for the handler to read."""
    state.evaluating = True
    yield
    state.evaluating = False


def run_eval(c: Components, state: LoopState) -> dict:
    t = time.perf_counter()
    with c.eval_weights(), evaluating(state):  # e.g. the EMA weights
        metrics = evaluate(c.bundle, c.task, c.val_loader, c.accelerator)
    state.eval_seconds += time.perf_counter() - t
    value = metrics[c.metric]
    sign = 1 if c.mode == "max" else -1
    state.is_best = state.best_metric is None or sign * (value - state.best_metric) > 0
    if state.is_best:
        state.best_metric, state.best_step = value, state.step
    record = {"step": state.step, "epoch": state.epoch_progress(c.train_loader.batch_sampler.total),
              "wall_seconds": round(state.wall_seconds, 3), "samples_seen": state.samples_seen,
              "train_loss": state.last_loss, "metrics": metrics}
    state.history.append(record)
    c.callbacks.fire("on_eval_end", state, record)
    return metrics


def _optimizer_step(c: Components, state: LoopState, loss: torch.Tensor) -> bool:
    """Clip, check, step; False when the NaN guard skipped the update."""
    model = c.bundle.model
    norm = c.accelerator.clip_grad_norm_(model.parameters(), c.grad_clip) if c.grad_clip else None
    if not c.nan_guard.ok(state, loss, norm, model):
        c.optimizer.zero_grad(set_to_none=True)  # train.nan_policy: skip
        return False
    c.optimizer.step()
    c.scheduler.step()
    c.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.last_loss = float(loss.detach())
    state.last_lr = float(c.optimizer.param_groups[0]["lr"])
    state.wall_seconds = time.perf_counter() - c.t0
    return True


def train_one_epoch(c: Components, state: LoopState) -> None:
    model, acc = c.bundle.model, c.accelerator
    sampler: EpochBatchSampler = c.train_loader.batch_sampler
    sampler.set_epoch(state.epoch, skip=state.batch_in_epoch)
    if c.train_loader.generator is not None:  # worker seeds: a function of (seed, epoch), so resume replays them
        c.train_loader.generator.manual_seed(sampler.seed * 1_000_003 + state.epoch)
    c.train_mode(model)
    for batch in c.train_loader:
        i = state.batch_in_epoch
        sync = (i + 1) % c.grad_accum == 0 or i + 1 == sampler.total
        with nullcontext() if sync else acc.no_sync(model):
            outputs, batch = forward(c.task, c.bundle, batch, acc, train=True)
            loss = c.task.train_loss(outputs, batch)
            with attention_backend(batch, acc.device):  # checkpointed blocks recompute with the forward's kernel
                acc.backward(loss / c.grad_accum)
        state.batch_in_epoch += 1
        state.samples_seen += len(batch["labels"])
        if "attention_mask" in batch:
            state.tokens_seen += int(batch["attention_mask"].sum())
        elif "num_tokens" in batch:  # packed SFT rows: no attention mask; the collator counts the real tokens
            state.tokens_seen += int(batch["num_tokens"])
        if not sync or not _optimizer_step(c, state, loss):
            continue
        c.callbacks.fire("on_step_end", state)
        if c.eval_every and state.step % c.eval_every == 0:
            run_eval(c, state)
            c.train_mode(model)
        state.stop_at_step_limit()
        if state.should_stop:
            return
    state.epoch += 1
    state.batch_in_epoch = 0
    state.wall_seconds = time.perf_counter() - c.t0
    if c.eval_every is None:
        run_eval(c, state)
    c.callbacks.fire("on_epoch_end", state)


def fit(c: Components, state: LoopState) -> LoopState:
    c.t0 = time.perf_counter() - state.wall_seconds  # a resumed run continues its clock
    c.callbacks.fire("on_fit_start", state)
    try:
        while not state.should_stop:
            try:
                train_one_epoch(c, state)
            except Rollback:  # train.nan_policy: rollback
                c.nan_guard.rollback(state, c.optimizer, c.scheduler, c.rollback)
        if not state.history or state.history[-1]["step"] != state.step:
            run_eval(c, state)  # the final weights are always evaluated
    finally:
        c.callbacks.fire("on_fit_end", state)
    return state


def steps_per_epoch(loader: DataLoader, grad_accum: int) -> int:
    return math.ceil(loader.batch_sampler.total / grad_accum)
