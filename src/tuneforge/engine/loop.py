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
from tuneforge.engine.distributed import SINGLE, World, gather_rows, reduce_step
from tuneforge.engine.guards import NanGuard, Rollback
from tuneforge.engine.state import LoopState
from tuneforge.metrics import scalars
from tuneforge.tasks.base import Built, Task
from tuneforge.utils import rss_mb


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
                group_by_length: bool = True, world: World = SINGLE) -> DataLoader:
    """`batch_size` per process; on several processes each rank loads its slice of every global batch."""
    lengths = built.lengths if group_by_length else None  # None: plain shuffled batches
    sampler = EpochBatchSampler(len(built.dataset), batch_size, seed, lengths=lengths, shuffle=train,
                                weights=built.sample_weights if train else None, rank=world.rank, world=world.size)
    # its own generator, always: a loader without one draws its base seed from the global RNG, so evaluating or
    # computing cached features would shift every later dropout mask. Pinned host memory on CUDA: the batch's
    # copy to the GPU (non_blocking, in to_device) overlaps with compute
    return DataLoader(built.dataset, batch_sampler=sampler, collate_fn=built.collate, num_workers=num_workers,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed),
                      pin_memory=torch.cuda.is_available())


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


def forward_backward(task: Task, bundle, batch: dict, accelerator, grad_accum: int = 1,
                     share: Optional[float] = None) -> tuple[torch.Tensor, dict]:
    """A training micro-batch: forward, the task's training loss, backward (gradients accumulate) → (loss, batch).
    `share`: this rank's share of the global batch, when several processes train (data/sampling.py)."""
    outputs, batch = forward(task, bundle, batch, accelerator, train=True)
    loss = task.train_loss(outputs, batch)
    with attention_backend(batch, accelerator.device):  # checkpointed blocks recompute with the forward's kernel
        accelerator.backward((loss if share is None else loss * share) / grad_accum)
    return loss, batch


@torch.no_grad()
def evaluate(bundle, task: Task, loader: DataLoader, accelerator) -> dict:
    """Streams the metrics: per batch only argmax / small summaries go to the CPU accumulator.
    Leaves the model in eval mode; the training loop switches back. On several processes every rank evaluates
    its slice and the metrics (the loss too) are computed from all ranks' rows, on every rank."""
    bundle.model.eval()
    metrics = task.new_metrics(bundle)
    for i, batch in enumerate(loader):
        chaos.point("eval_batch")
        outputs, batch = forward(task, bundle, batch, accelerator)
        if accelerator.num_processes > 1:
            outputs, batch = gather_rows(accelerator, (outputs, batch), loader.batch_sampler.rows(i))
        loss = task.loss(outputs, batch)
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
    # the clock includes this evaluation (wall_seconds - eval_seconds is the training time; without this the final
    # evaluation was counted in eval_seconds only, and a short run's samples/s came out inflated or infinite)
    wall_at_step, state.wall_seconds = state.wall_seconds, time.perf_counter() - c.t0
    value = metrics[c.metric]
    sign = 1 if c.mode == "max" else -1
    state.is_best = state.best_metric is None or sign * (value - state.best_metric) > 0
    if state.is_best:
        state.best_metric, state.best_step = value, state.step
    record = {"step": state.step, "epoch": state.epoch_progress(c.train_loader.batch_sampler.total),
              "wall_seconds": round(wall_at_step, 3), "samples_seen": state.samples_seen,
              "train_loss": state.last_loss, "lr": None if math.isnan(state.last_lr) else state.last_lr,
              "rss_mb": round(rss_mb(), 1), "metrics": metrics}
    # the history (kept in every checkpoint) holds the scalars only: per-class tables and confusion matrices
    # (classes² numbers per evaluation) stay in metrics.jsonl
    state.history.append({**record, "metrics": scalars(metrics)})
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


def batch_tokens(batch: dict) -> int:
    """Real (not padding) tokens of a micro-batch; packed SFT rows have no attention mask: the collator counts."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch.get("num_tokens", 0))


def _micro_step(c: Components, state: LoopState, batch: dict, sync: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch (gradients all-reduced when `sync`); → the loss to log and
    guard. On several processes each rank's loss is weighed by its share of the global batch (data/sampling.py),
    and the logged loss, samples and tokens are those of the global batch."""
    model, acc, sampler = c.bundle.model, c.accelerator, c.train_loader.batch_sampler
    i = state.batch_in_epoch
    share = sampler.share(i) if acc.num_processes > 1 else None
    with nullcontext() if sync else acc.no_sync(model):
        loss, batch = forward_backward(c.task, c.bundle, batch, acc, c.grad_accum, share)
    state.batch_in_epoch += 1
    tokens = batch_tokens(batch)
    if share is not None:
        loss, tokens = reduce_step(acc, loss, share, tokens)
    state.samples_seen += len(batch["labels"]) if share is None else sampler.rows(i)
    state.tokens_seen += tokens
    return loss


def train_one_epoch(c: Components, state: LoopState) -> None:
    model, acc = c.bundle.model, c.accelerator
    sampler: EpochBatchSampler = c.train_loader.batch_sampler
    sampler.set_epoch(state.epoch, skip=state.batch_in_epoch)
    # worker seeds: a function of (seed, epoch), so resume replays them
    c.train_loader.generator.manual_seed(sampler.seed * 1_000_003 + state.epoch)
    c.train_mode(acc.unwrap_model(model))  # the plain model (DDP: its wrapper has no train mode of its own)
    for batch in c.train_loader:
        i = state.batch_in_epoch
        sync = (i + 1) % c.grad_accum == 0 or i + 1 == sampler.total
        loss = _micro_step(c, state, batch, sync)
        if not sync or not _optimizer_step(c, state, loss):
            continue
        c.callbacks.fire("on_step_end", state)
        if c.eval_every and state.step % c.eval_every == 0:
            run_eval(c, state)
            c.train_mode(acc.unwrap_model(model))
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
