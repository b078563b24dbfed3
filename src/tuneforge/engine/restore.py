"""Putting training state back from checkpoints, on every run: a resumed run continues exactly where its latest
checkpoint left it (phases finished before it are skipped), and NaN rollback reloads a phase's latest checkpoint
(or the state the phase started from)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from tuneforge.engine.checkpoint import CheckpointError, latest_checkpoint, read_checkpoint
from tuneforge.engine.run_folder import RunFolder
from tuneforge.engine.snapshot import TrainingSnapshot
from tuneforge.engine.state import LoopState
from tuneforge.utils import atomic_write_text


def truncate_history(run_dir: Path, evaluations: int) -> None:
    """metrics.jsonl as of a checkpoint: its first `evaluations` lines (each complete: a checkpoint is written
    after its evaluation's line); lines a crashed run wrote after it are dropped."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []
    if len(lines) < evaluations:
        raise CheckpointError(f"'{path}' has {len(lines)} evaluations but the checkpoint has {evaluations}; it was "
                              "edited or truncated: restore it, or pass --overwrite to start over")
    atomic_write_text(path, "".join(lines[:evaluations]))


class StateRestorer:
    """`writer` False (ranks other than 0 of a multi-process run): restores this process's state but leaves
    metrics.jsonl to rank 0."""

    def __init__(self, folder: RunFolder, log=print, writer: bool = True):
        self.run_dir, self.log, self.writer = folder.path, log, writer
        self.source = folder.checkpoint
        self.loaded = read_checkpoint(folder.checkpoint) if folder.checkpoint is not None else None
        self.phase = self.loaded[2].get("phase", 0) if self.loaded else 0
        self.resumed_from = self.loaded[2]["step"] if self.loaded else None
        if self.loaded is None and not folder.created:  # resuming a run that crashed before its first checkpoint
            self._truncate_history(0)
            log("resume: no complete checkpoint yet; starting this run from the beginning")

    @property
    def resumed_wall_seconds(self) -> float:
        """Training time the checkpoint being resumed had already spent (0 for a fresh run)."""
        return float(self.loaded[2]["train_state"]["wall_seconds"]) if self.loaded else 0.0

    def skip_phase(self, index: int) -> bool:
        """True for phases that finished before the checkpoint being resumed."""
        return self.loaded is not None and index < self.phase

    def restore(self, snapshot: TrainingSnapshot, state: LoopState) -> None:
        """Call once per phase right before `fit` (restoring sets the RNG): resumes into the checkpoint's phase."""
        if self.loaded is None or snapshot.phase != self.phase:
            return
        try:
            snapshot.restore(state, *self.loaded)
        except (RuntimeError, KeyError, ValueError, IndexError, TypeError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise CheckpointError(f"checkpoint '{self.source}' does not fit this run ({reason}); resume it with the "
                                  "recipe and data it was written with, or start over with --overwrite") from None
        self.loaded = None
        self._truncate_history(len(state.history))
        state.stop_at_step_limit()  # the loop checks this right after the evaluation the checkpoint was written in
        self.log(f"resumed from {self.source.relative_to(self.run_dir)}: step {state.step}, epoch {state.epoch} "
                 f"batch {state.batch_in_epoch}, {len(state.history)} evaluations so far")

    def rollback_fn(self, snapshot: TrainingSnapshot, state: LoopState, enabled: bool) -> Callable[[LoopState], None]:
        """NaN rollback for this phase: to its latest checkpoint, or to where it started (captured now)."""
        initial = snapshot.capture(state) if enabled else None
        at_start = latest_checkpoint(self.run_dir)

        def rollback(state: LoopState) -> None:
            latest = latest_checkpoint(self.run_dir)
            model, tensors, meta = initial if latest == at_start else read_checkpoint(latest)
            snapshot.restore(state, model, tensors, meta)
            self._truncate_history(len(state.history))

        return rollback

    def _truncate_history(self, evaluations: int) -> None:
        if self.writer:
            truncate_history(self.run_dir, evaluations)
