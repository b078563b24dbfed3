"""The loop's own counters (LoopState): where training is, what it has seen, and the evaluation history."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class LoopState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # micro-batches consumed in the current epoch
    samples_seen: int = 0
    tokens_seen: int = 0  # non-padding tokens (text)
    wall_seconds: float = 0.0  # training wall time so far, evaluation included
    eval_seconds: float = 0.0  # of which spent in evaluation
    total_steps: int = 0
    last_loss: float = float("nan")
    last_lr: float = float("nan")  # the first parameter group's LR after the latest step
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    is_best: bool = False  # the latest evaluation is the best so far
    history: list = field(default_factory=list)  # one record per evaluation
    should_stop: bool = False
    stop_reason: str = ""
    evaluating: bool = False  # inside an evaluation (an out-of-memory error then names the eval batch size)

    def epoch_progress(self, batches_per_epoch: int) -> float:
        return round(self.epoch + self.batch_in_epoch / max(batches_per_epoch, 1), 4)

    def stop_at_step_limit(self) -> None:
        if self.step >= self.total_steps and not self.should_stop:
            self.should_stop, self.stop_reason = True, f"reached {self.total_steps} steps"

    def start_phase(self, steps: int) -> None:
        """A phase starts on a fresh epoch and runs `steps` more optimizer steps."""
        if self.batch_in_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.total_steps, self.should_stop, self.stop_reason = self.step + steps, False, ""
