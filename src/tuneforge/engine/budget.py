"""`train.time_budget`: the run ends within its wall-clock budget, final evaluation, test split and saving included.

The budget counts from the start of `tuneforge.train` (the CLI: from its process start, so the imports count too;
a resumed run adds the training time its checkpoint had already spent). Each phase's LR schedule spans a `Horizon` (engine/optim.py) that `TimeBudget` sets from the
measured step time (engine/timing.py: the same estimate as `tuneforge plan`):
- the first 2 steps are left out (first kernels, allocations); after 3 measured steps the estimate gives a
  provisional horizon: the steps that fit in the time left, less the evaluations they bring and the reserve;
- it is estimated again every 5 steps; the horizon is fixed once the step time's standard error is under 3 % and
  two successive horizons differ by under 3 % (at the latest after 50 measured steps, or once 10 % of the horizon
  has passed and 8 steps are measured). From then on the schedule does not move, and LambdaLR's state_dict holds
  the horizon in every checkpoint, so a resumed run follows the same schedule;
- whatever happens after (a slower machine, longer evaluations), the phase stops once the time left no longer
  covers the next step, its last evaluation and the reserve.
epochs / max_steps stay upper bounds. A phase that is not the last gets at most its share of the time left (its
planned epochs over those of the phases still to run); the last one gets the rest."""
from __future__ import annotations

import time
from typing import Optional

from tuneforge.engine.callbacks import Callback
from tuneforge.engine.optim import Horizon
from tuneforge.engine.timing import StepTimer

STOPPED = "time budget reached"  # the run ends: later phases do not start
SHARE_USED = "time budget: this phase's share used"
EVAL_SHARE_OF_STEP = 0.35  # an example's forward (evaluation) against its forward + backward + update
FIX_ERROR, FIX_AGREEMENT, FIX_MIN_MEASURED, FIX_MAX_MEASURED, FIX_SHARE = 0.03, 0.03, 8, 50, 0.1


class Deadline:
    """The run's budget and what the end of the run needs (`reserve`): the kept model's evaluation, the test
    split, report.html's pass over validation, saving, and a margin."""

    def __init__(self, seconds: float, started: float, spent_before: float = 0.0, end_passes: float = 1.0,
                 save_seconds: float = 3.0):
        self.seconds, self.started, self.spent_before = seconds, started, spent_before
        self.end_passes, self.save_seconds = end_passes, save_seconds
        self.eval_pass: Optional[float] = None  # a validation pass, once measured
        self.phases: list[dict] = []

    def used(self) -> float:
        return time.perf_counter() - self.started + self.spent_before

    def left(self) -> float:
        return self.seconds - self.used()

    def reserve(self, eval_pass: float) -> float:
        return self.end_passes * (self.eval_pass or eval_pass) + self.save_seconds + 0.01 * self.seconds + 0.5

    def summary(self) -> dict:
        return {"seconds": self.seconds, "used_seconds": round(self.used(), 1), "phases": self.phases}


class TimeBudget(Callback):
    """One phase's part of the budget (see the module docstring). `sizes`: an epoch's mean (tokens, rows) per
    optimizer step; `eval_rows`: validation rows per training row of a step (for the evaluation guess)."""

    def __init__(self, deadline: Deadline, horizon: Horizon, cap: int, share: float, steps_per_epoch: int,
                 eval_every: Optional[int], sizes: tuple[Optional[float], float], eval_rows: float, name: str,
                 log=print):
        self.deadline, self.horizon, self.cap, self.share = deadline, horizon, cap, share
        self.steps_per_epoch, self.eval_every = steps_per_epoch, eval_every
        self.sizes, self.eval_rows = sizes, eval_rows
        self.name, self.log = name, log
        self.timer = StepTimer(warmup=2)
        self.record = {"phase": name, "cap": cap}
        deadline.phases.append(self.record)

    # ---------------------------------------------------------------- events
    def on_fit_start(self, state) -> None:
        self.start_step = state.total_steps - self.horizon.steps  # the phase's first step (also when resumed)
        self.last, self.mark = time.perf_counter(), (state.tokens_seen, state.samples_seen)
        allowance = self.deadline.left() - self.deadline.reserve(0.0)
        self.phase_end = self.last + (allowance if self.share >= 1 else self.share * allowance)
        self.previous: Optional[int] = None

    def on_step_end(self, state) -> None:
        now = time.perf_counter()
        tokens, rows = state.tokens_seen - self.mark[0], state.samples_seen - self.mark[1]
        self.last_step = now - self.last
        self.timer.add(self.last_step, tokens if tokens else rows)
        self.last, self.mark = now, (state.tokens_seen, state.samples_seen)
        self.tokens = bool(tokens)
        if not self.horizon.fixed and self.timer.measured >= 3 and self.timer.measured % 5 in (3, 0):
            self.replan(state)
        self.check_time(state)

    def on_eval_end(self, state, record: dict) -> None:
        """Runs after the checkpointer: the pass and the checkpoint it wrote are one evaluation's cost."""
        now = time.perf_counter()
        self.deadline.eval_pass = now - self.last
        self.last = now

    # ---------------------------------------------------------------- the horizon
    def estimate(self):
        mean_tokens, mean_rows = self.sizes
        return self.timer.estimate(mean_tokens if self.tokens and mean_tokens else mean_rows)

    def per_step(self) -> float:
        return self.estimate().per_step

    def eval_pass(self, per_step: float) -> float:
        """A validation pass: measured once one ran, else guessed from the training step."""
        return self.deadline.eval_pass or self.eval_rows * EVAL_SHARE_OF_STEP * per_step

    def evals_between(self, done: int, total: int) -> int:
        """Evaluations a phase runs between its steps `done` and `total` (the one after its last step included)."""
        if self.eval_every:  # at global steps that are multiples of eval.every_steps
            first = self.start_step
            return (first + total) // self.eval_every - (first + done) // self.eval_every + 1
        return total // self.steps_per_epoch - done // self.steps_per_epoch + 1  # a phase starts a fresh epoch

    def affordable(self, state, per_step: float) -> int:
        """Phase steps (from its start) that fit in the time left, evaluations and the reserve included."""
        done = state.step - self.start_step
        left = self.time_left(per_step)
        steps = done + max(0, int(left / per_step))
        for _ in range(4):  # the evaluations depend on the steps: a few rounds settle it
            evals = self.evals_between(done, steps) * self.eval_pass(per_step)
            steps = done + max(0, int((left - evals) / per_step))
        return max(min(steps, self.cap), done + 1)

    def time_left(self, per_step: float) -> float:
        """Seconds this phase may still train (its share, less the end-of-run reserve for the last phase)."""
        phase_left = self.phase_end - time.perf_counter()
        run_left = self.deadline.left() - self.deadline.reserve(self.eval_pass(per_step))
        return min(phase_left, run_left)

    def replan(self, state) -> None:
        estimate = self.estimate()
        steps = self.affordable(state, estimate.per_step)
        done = state.step - self.start_step
        agree = self.previous is not None and abs(steps - self.previous) <= FIX_AGREEMENT * self.previous
        fixed = (estimate.relative_error < FIX_ERROR and agree) or self.timer.measured >= FIX_MAX_MEASURED or \
            (done >= FIX_SHARE * steps and self.timer.measured >= FIX_MIN_MEASURED)
        self.previous = steps
        self.horizon.set(steps, fixed)
        state.total_steps = self.start_step + steps
        if fixed:
            self.record.update({"horizon_steps": steps, "fixed_at_step": state.step, "per_step_s":
                                round(estimate.per_step, 4), "per_step_error": round(estimate.relative_error, 4)})
            self.log(f"time budget: {estimate.per_step:.3f} s/step ± {100 * estimate.relative_error:.1f}% "
                     f"({estimate.measured} steps measured), an evaluation {self.eval_pass(estimate.per_step):.1f} s"
                     f"{'' if self.deadline.eval_pass else ' (guess)'}; phase {self.name} horizon fixed at {steps} "
                     f"steps ({steps / self.steps_per_epoch:.2f} epochs, at most {self.cap}); "
                     f"{self.deadline.left():.0f} s left of {self.deadline.seconds:.0f} s")

    def check_time(self, state) -> None:
        """Stop when the next step, the phase's last evaluation and the reserve no longer fit."""
        if state.should_stop:
            return
        per_step = self.per_step() if self.timer.measured else self.last_step
        if self.time_left(per_step) >= 2 * per_step + self.eval_pass(per_step):
            return
        spent = self.deadline.left() - self.deadline.reserve(self.eval_pass(per_step)) < \
            2 * per_step + self.eval_pass(per_step)
        state.should_stop = True
        state.stop_reason = STOPPED if spent or self.share >= 1 else SHARE_USED
        self.record["stopped_at_step"] = state.step
        self.log(f"time budget: phase {self.name} stops at step {state.step}; {self.deadline.left():.0f} s left for "
                 "its last evaluation and the end of the run")
