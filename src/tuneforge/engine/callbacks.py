"""Named events the loop fires; each feature that reacts to training (logging, checkpoints, stopping, EMA) is a
Callback subclass and overrides only the events it needs."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from tuneforge.engine.state import LoopState
from tuneforge.metrics import scalars


class Callback:
    """Events: on_fit_start, on_step_end, on_eval_end, on_epoch_end, on_fit_end (no-ops here)."""

    def on_fit_start(self, state: LoopState) -> None: ...
    def on_step_end(self, state: LoopState) -> None: ...
    def on_eval_end(self, state: LoopState, record: dict) -> None: ...
    def on_epoch_end(self, state: LoopState) -> None: ...
    def on_fit_end(self, state: LoopState) -> None: ...


class CallbackList:
    def __init__(self, callbacks: list[Callback]):
        self.callbacks = callbacks

    def fire(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(*args)


class MetricsLogger(Callback):
    """Appends every evaluation to metrics.jsonl (step, epoch, wall seconds, samples seen, metrics)."""

    def __init__(self, run_dir: Path, log=print):
        self.path = run_dir / "metrics.jsonl"
        self.log = log

    def on_eval_end(self, state: LoopState, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        m = scalars(record["metrics"])
        shown = " ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "samples")
        self.log(f"eval step {state.step} epoch {record['epoch']:.2f}: {shown}"
                 f"{'  (best)' if state.is_best else ''}")


class EarlyStopping(Callback):
    """Stops after `patience` evaluations without a `min_delta` improvement, or once `target` is reached."""

    def __init__(self, metric: str, mode: str, patience: int, min_delta: float, target: Optional[float],
                 enabled: bool = True):
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.target, self.enabled = target, enabled
        self.best: Optional[float] = None
        self.bad = 0

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, d: dict) -> None:
        self.best, self.bad = d["best"], d["bad"]

    def on_eval_end(self, state: LoopState, record: dict) -> None:
        value = record["metrics"][self.metric]
        sign = 1 if self.mode == "max" else -1
        if self.target is not None and sign * (value - self.target) >= 0:
            state.should_stop, state.stop_reason = True, f"target {self.metric} {self.target} reached ({value:.4f})"
            return
        if not self.enabled:
            return
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
            if self.bad >= self.patience:
                state.should_stop = True
                state.stop_reason = f"early stopping: no {self.metric} gain > {self.min_delta} in {self.patience} evals"


class ProgressBar(Callback):
    """A rich progress bar with ETA, loss and samples/s."""

    def __init__(self, console):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}"), console=console, transient=False)
        self.task_id = None
        self.t0 = 0.0
        self.samples0 = 0

    def on_fit_start(self, state: LoopState) -> None:
        self.progress.start()
        self.task_id = self.progress.add_task("train", total=state.total_steps, completed=state.step, info="")
        self.t0, self.samples0 = time.perf_counter(), state.samples_seen

    def on_step_end(self, state: LoopState) -> None:
        rate = (state.samples_seen - self.samples0) / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.task_id, completed=state.step,
                             info=f"loss {state.last_loss:.4f}  {rate:.1f} samples/s  epoch {state.epoch}")

    def on_fit_end(self, state: LoopState) -> None:
        self.progress.stop()
