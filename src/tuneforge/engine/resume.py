"""Run folders that can be continued: fresh / --overwrite / --resume, putting the loop back exactly where the
latest checkpoint left it, rolling back on NaN, and never leaving a half-written folder after a user error."""
from __future__ import annotations

import json
import shutil
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import yaml

from tuneforge.engine.callbacks import TrainState
from tuneforge.engine.checkpoint import (Checkpointer, atomic_write_text, clean_partial, list_checkpoints,
                                        read_checkpoint)
from tuneforge.engine.guards import NanGuard, is_oom, oom_error
from tuneforge.engine.state import TrainerState
from tuneforge.errors import ConfigError, TuneforgeError

IGNORED_ON_RESUME = ("output",)  # config sections that may differ between a run and its resume


@dataclass
class RunFolder:
    path: Path
    created: bool  # made (or emptied) by this call: removed again if training fails before any checkpoint
    checkpoint: Optional[Path] = None  # resume from here
    finished: bool = False  # summary.json exists: nothing left to do


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_same_config(run_dir: Path, cfg) -> None:
    from tuneforge.config import validate

    path = run_dir / "config.yaml"
    try:
        saved = validate(yaml.safe_load(path.read_text(encoding="utf-8")), str(path)).model_dump(mode="json")
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot resume '{run_dir}': {path.name} is unreadable ({str(e)[:80]})") from None
    now = cfg.model_dump(mode="json")
    a = {k: v for k, v in _flat(saved).items() if k.split(".")[0] not in IGNORED_ON_RESUME}
    b = {k: v for k, v in _flat(now).items() if k.split(".")[0] not in IGNORED_ON_RESUME}
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if diff:
        shown = ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in diff[:4]) + (" ..." if len(diff) > 4 else "")
        raise ConfigError(f"cannot resume '{run_dir}': the recipe differs from its config.yaml in {shown}; "
                          "use `tuneforge resume RUN_DIR`, or --overwrite to start over")


def open_run_dir(cfg, output: Optional[str], overwrite: bool, resume: bool) -> RunFolder:
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run or replace it")
    if output or cfg.output.dir:
        run_dir = Path(output or cfg.output.dir).expanduser()
    else:
        run_dir = Path("runs") / f"{cfg.output.name or 'run'}-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        busy = run_dir.exists() and any(run_dir.iterdir())
    except OSError as e:
        raise ConfigError(f"output folder '{run_dir}' cannot be read ({e.strerror}); choose another with "
                          "--output or output.dir") from None
    if busy and resume:
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"cannot resume '{run_dir}': it is not a tuneforge run folder (no config.yaml)")
        check_same_config(run_dir, cfg)
        if (run_dir / "summary.json").is_file():
            return RunFolder(run_dir, created=False, finished=True)
        clean_partial(run_dir)
        clean_partial(run_dir / "checkpoints")
        found = list_checkpoints(run_dir / "checkpoints")
        return RunFolder(run_dir, created=False, checkpoint=found[-1] if found else None)
    if busy:
        if not overwrite:
            raise ConfigError(f"output folder '{run_dir}' already exists and is not empty; pass --resume to "
                              "continue it, --overwrite to replace it, or --output to choose another")
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ".write-test").touch()
        (run_dir / ".write-test").unlink()
    except OSError as e:
        raise ConfigError(f"output folder '{run_dir}' cannot be written ({e.strerror}); "
                          "choose another with --output or output.dir") from None
    return RunFolder(run_dir, created=True)


def write_history(run_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl as of a checkpoint: lines written after it (by a run that then crashed) are dropped."""
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


class _Attrs:
    """state_dict / load_state_dict over some attributes of an object (early stopping's best and patience)."""

    def __init__(self, obj, names: tuple[str, ...]):
        self.obj, self.names = obj, names

    def state_dict(self) -> dict:
        return {n: getattr(self.obj, n) for n in self.names}

    def load_state_dict(self, d: dict) -> None:
        for n in self.names:
            setattr(self.obj, n, d[n])


class _Phase:
    def __init__(self, index: int):
        self.index = index

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, d: dict) -> None:
        pass


class Resumer:
    """Binds checkpointing and NaN rollback to each phase's loop components and, when resuming, puts the loop
    back exactly where the latest checkpoint left it (phases before the checkpoint's are skipped)."""

    def __init__(self, folder: RunFolder, checkpointer: Checkpointer, guard: NanGuard, cfg, model, log):
        self.folder, self.checkpointer, self.guard, self.log = folder, checkpointer, guard, log
        self.config, self.model = cfg.model_dump(mode="json"), model
        self.loaded = read_checkpoint(folder.checkpoint) if folder.checkpoint is not None else None
        self.phase = self.loaded[2]["callbacks"].get("phase", {}).get("index", 0) if self.loaded else 0
        self.resumed_from = self.loaded[2]["step"] if self.loaded else None
        if self.loaded is None and not folder.created:  # resuming a run that crashed before its first checkpoint
            write_history(folder.path, [])
            log("resume: no complete checkpoint yet; starting this run from the beginning")

    def skip_phase(self, index: int) -> bool:
        return self.loaded is not None and index < self.phase

    def start(self, c, state: TrainState, phase: int, early_stopping, extra_stateful: Optional[dict] = None) -> None:
        """Call once per phase after its Components exist and right before `fit` (restoring sets the RNG)."""
        stateful = {"phase": _Phase(phase), "early_stopping": _Attrs(early_stopping, ("best", "bad")),
                    "nan_guard": self.guard, **(extra_stateful or {})}
        trainer = TrainerState(c, self.model, stateful, self.config)
        self.checkpointer.trainer = trainer
        if self.loaded is not None and phase == self.phase:
            trainer.restore(state, *self.loaded)
            self.loaded = None
            write_history(self.folder.path, state.history)
            # the loop sets this right after the evaluation the checkpoint was written in
            if state.step >= state.total_steps and not state.should_stop:
                state.should_stop, state.stop_reason = True, f"reached {state.total_steps} steps"
            self.log(f"resumed from {self.folder.checkpoint.relative_to(self.folder.path)}: step {state.step}, "
                     f"epoch {state.epoch} batch {state.batch_in_epoch}, {len(state.history)} evaluations so far")
        # NaN rollback goes to this phase's latest checkpoint, or to where this phase started
        initial = trainer.capture(state) if self.guard.policy == "rollback" else None
        at_start = self.checkpointer.latest()

        def restore(state: TrainState) -> None:
            latest = self.checkpointer.latest()
            model, tensors, meta = initial if latest == at_start else read_checkpoint(latest)
            trainer.restore(state, model, tensors, meta)
            write_history(self.folder.path, state.history)

        self.guard.restore, self.guard.optimizer, self.guard.scheduler = restore, c.optimizer, c.scheduler


@dataclass
class RunContext:
    """What the error handler around a run needs to know (filled in as the run gets that far)."""

    cfg: Any = None
    folder: Optional[RunFolder] = None
    checkpointer: Optional[Checkpointer] = None


@contextmanager
def user_errors(ctx: RunContext):
    """Out-of-memory becomes a one-line error with a batch size to try. After any user error a folder this run
    created is removed unless it holds a checkpoint (then `tuneforge resume` can continue it)."""
    try:
        yield
    except Exception as e:
        if is_oom(e) and ctx.cfg is not None:
            tc = ctx.cfg.train
            in_eval = any(f.name == "evaluate" for f in traceback.extract_tb(e.__traceback__))
            err: TuneforgeError = oom_error(tc.batch_size, tc.grad_accum, ctx.cfg.eval.batch_size or 2 * tc.batch_size,
                                            "eval" if in_eval else "training")
        elif isinstance(e, TuneforgeError):
            err = e
        else:
            raise
        folder = ctx.folder
        if folder is not None and folder.created and (ctx.checkpointer is None or ctx.checkpointer.latest() is None):
            shutil.rmtree(folder.path, ignore_errors=True)
        if err is e:
            raise
        raise err from None
