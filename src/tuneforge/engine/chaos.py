"""Test-only fault injection at named points of a run, so crash tests are deterministic instead of timed.

Off unless TUNEFORGE_CHAOS is set to `<point>:<n>[:<action>]`: the n-th time the process reaches `<point>`
it runs `<action>`. Points: step (after an optimizer step), epoch_end, eval_batch (inside evaluation),
checkpoint_write (checkpoint files written, not yet made visible), fit_end (training done, model not saved).
Actions: pause (default: write the file named by TUNEFORGE_CHAOS_MARKER, then sleep until killed),
kill (SIGKILL itself), oom (raise torch.OutOfMemoryError), interrupt (raise KeyboardInterrupt: an in-process
stand-in for a crash). On several processes, TUNEFORGE_CHAOS_RANK=<r> arms the point in rank r only (every rank
arms it when unset)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tuneforge.engine.callbacks import Callback

ENV, MARKER_ENV, RANK_ENV = "TUNEFORGE_CHAOS", "TUNEFORGE_CHAOS_MARKER", "TUNEFORGE_CHAOS_RANK"
_counts: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec or os.environ.get(RANK_ENV, os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        return
    want, _, rest = spec.partition(":")
    if want != name:
        return
    nth, _, action = rest.partition(":")
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] != int(nth or 1):
        return
    action = action or "pause"
    if action == "oom":
        import torch

        raise torch.OutOfMemoryError("chaos: simulated out of memory")
    if action == "interrupt":
        raise KeyboardInterrupt(f"chaos: {name}:{nth}")
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    marker = os.environ.get(MARKER_ENV)
    if marker:  # written whole, then renamed: the watcher never reads it half-written
        Path(marker + ".tmp").write_text(f"{name}:{nth}\n", encoding="utf-8")
        os.replace(marker + ".tmp", marker)
    while True:  # wait for the test's SIGKILL
        time.sleep(60)


class ChaosPoints(Callback):
    """Exposes the loop's events as chaos points (added to a run only when TUNEFORGE_CHAOS is set)."""

    def on_step_end(self, state) -> None:
        point("step")

    def on_epoch_end(self, state) -> None:
        point("epoch_end")

    def on_fit_end(self, state) -> None:
        point("fit_end")


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def reset() -> None:
    """Forget the counts (tests that run several trainings in one process)."""
    _counts.clear()
