"""Where a batch goes: the training step, the epoch loop and evaluation, on HF Accelerate."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader

from tuneforge.data.sampling import EpochBatchSampler
from tuneforge.engine.callbacks import CallbackList, TrainState
from tuneforge.engine import chaos
from tuneforge.engine.guards import Rollback
from tuneforge.errors import ConfigError
from tuneforge.metrics import scalars
from tuneforge.tasks.base import Built, Task


@dataclass
class Components:
    """Everything the loop touches, built once by the runner from the validated config."""

    bundle: object  # ModelBundle: .model, .logits(batch)
    task: Task
    train_loader: DataLoader
    val_loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: object
    accelerator: object
    callbacks: CallbackList
    grad_accum: int = 1
    grad_clip: Optional[float] = None
    eval_every: Optional[int] = None  # optimizer steps; None = every epoch
    metric: str = "accuracy"
    mode: str = "max"
    t0: float = 0.0  # perf_counter at which wall_seconds would be 0
    train_mode: Callable[[torch.nn.Module], None] = torch.nn.Module.train  # see strategies.set_train_mode
    eval_weights: Callable[[], object] = nullcontext  # context manager that swaps in the weights to evaluate
    nan_guard: Optional[object] = None  # engine.guards.NanGuard: checks every step's loss and gradients


def make_loader(built: Built, batch_size: int, train: bool, seed: int, num_workers: int = 0,
                group_by_length: bool = True) -> DataLoader:
    lengths = built.lengths if group_by_length else None  # None: plain shuffled batches
    sampler = EpochBatchSampler(len(built.dataset), batch_size, seed, lengths=lengths, shuffle=train,
                                weights=built.sample_weights if train else None)
    return DataLoader(built.dataset, batch_sampler=sampler, collate_fn=built.collate, num_workers=num_workers,
                      persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed) if train else None)


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


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


@torch.no_grad()
def evaluate(bundle, task: Task, loader: DataLoader, accelerator) -> dict:
    """Streams the metrics: per batch only argmax / small summaries go to the CPU accumulator.
    Leaves the model in eval mode; the training loop switches back."""
    model = bundle.model
    model.eval()
    metrics = task.new_metrics()
    for batch in loader:
        chaos.point("eval_batch")
        batch = _to_device(batch, accelerator.device)
        with accelerator.autocast():
            logits = bundle.logits(batch)
            loss = task.loss(logits, batch)
        logits = logits.float()
        if accelerator.num_processes > 1:
            logits, batch = accelerator.gather_for_metrics((logits, batch))
        metrics.update(logits, batch, float(loss))
    return metrics.compute()


def run_eval(c: Components, state: TrainState) -> dict:
    t = time.perf_counter()
    with c.eval_weights():  # e.g. the EMA weights
        metrics = evaluate(c.bundle, c.task, c.val_loader, c.accelerator)
    state.eval_seconds += time.perf_counter() - t
    if c.metric not in metrics:
        raise ConfigError(f"eval.metric '{c.metric}' is not computed by task '{c.task.name}'; choose one of: "
                          f"{', '.join(scalars(metrics))}")
    value = metrics[c.metric]
    sign = 1 if c.mode == "max" else -1
    state.is_best = state.best_metric is None or sign * (value - state.best_metric) > 0
    if state.is_best:
        state.best_metric, state.best_step = value, state.step
    batches = len(c.train_loader.batch_sampler) + c.train_loader.batch_sampler.skip
    record = {"step": state.step, "epoch": round(state.epoch + state.batch_in_epoch / max(batches, 1), 4),
              "wall_seconds": round(state.wall_seconds, 3), "samples_seen": state.samples_seen,
              "train_loss": state.last_loss, "metrics": metrics}
    state.history.append(record)
    c.callbacks.fire("on_eval_end", state, record)
    return metrics


def train_one_epoch(c: Components, state: TrainState) -> None:
    model, acc = c.bundle.model, c.accelerator
    sampler: EpochBatchSampler = c.train_loader.batch_sampler
    sampler.set_epoch(state.epoch, skip=state.batch_in_epoch)
    if c.train_loader.generator is not None:  # worker seeds: a function of (seed, epoch), so resume replays them
        c.train_loader.generator.manual_seed(sampler.seed * 1_000_003 + state.epoch)
    n_batches = len(sampler) + sampler.skip
    c.train_mode(model)
    for batch in c.train_loader:
        i = state.batch_in_epoch
        sync = (i + 1) % c.grad_accum == 0 or i + 1 == n_batches
        batch = _to_device(batch, acc.device)
        with nullcontext() if sync else acc.no_sync(model):
            with acc.autocast(), attention_backend(batch, acc.device):
                logits = c.bundle.logits(batch)
                loss = c.task.train_loss(logits, batch)
            acc.backward(loss / c.grad_accum)
        state.batch_in_epoch += 1
        state.samples_seen += len(batch["labels"])
        if "attention_mask" in batch:
            state.tokens_seen += int(batch["attention_mask"].sum())
        if not sync:
            continue
        norm = acc.clip_grad_norm_(model.parameters(), c.grad_clip) if c.grad_clip else None
        if c.nan_guard is not None and not c.nan_guard.ok(state, loss, norm, model):
            c.optimizer.zero_grad(set_to_none=True)  # train.nan_policy: skip
            continue
        c.optimizer.step()
        c.scheduler.step()
        c.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.last_loss = float(loss.detach())
        state.wall_seconds = time.perf_counter() - c.t0
        c.callbacks.fire("on_step_end", state)
        if c.eval_every and state.step % c.eval_every == 0:
            run_eval(c, state)
            c.train_mode(model)
        if state.step >= state.total_steps and not state.should_stop:
            state.should_stop, state.stop_reason = True, f"reached {state.total_steps} steps"
        if state.should_stop:
            return
    state.epoch += 1
    state.batch_in_epoch = 0
    state.wall_seconds = time.perf_counter() - c.t0
    if c.eval_every is None:
        run_eval(c, state)
    c.callbacks.fire("on_epoch_end", state)


def fit(c: Components, state: TrainState) -> TrainState:
    c.t0 = time.perf_counter() - state.wall_seconds  # a resumed run continues its clock
    c.callbacks.fire("on_fit_start", state)
    try:
        while not state.should_stop:
            try:
                train_one_epoch(c, state)
            except Rollback:  # train.nan_policy: rollback
                c.nan_guard.rollback(state)
        if not state.history or state.history[-1]["step"] != state.step:
            run_eval(c, state)  # the final weights are always evaluated
    finally:
        c.callbacks.fire("on_fit_end", state)
    return state


def steps_per_epoch(loader: DataLoader, grad_accum: int) -> int:
    return math.ceil(len(loader.batch_sampler) / grad_accum)
