"""Atomic checkpoints: a crash never leaves a half-written checkpoint under its final name.

checkpoints/step-00000040/ holds model.safetensors, trainer.safetensors (optimizer + RNG tensors) and trainer.json
(everything else, with the SHA-256 of both tensor files). It is written as a hidden temp folder and renamed into
place once every file is fsynced, so a visible step-* folder is always complete. checkpoints/best.safetensors holds
the best weights. No pickle anywhere."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from tuneforge.engine import chaos
from tuneforge.engine.callbacks import Callback
from tuneforge.engine.snapshot import TrainingSnapshot, cpu_tensors
from tuneforge.errors import ModelError
from tuneforge.utils import atomic_write, fsync_path

STEP_DIR = re.compile(r"step-(\d{8})")
MODEL_FILE, TRAINER_FILE, META_FILE = "model.safetensors", "trainer.safetensors", "trainer.json"


class CheckpointError(ModelError):
    pass


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = cpu_tensors(state, copy=False)  # written right away: no copy needed
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_weights_into(model: torch.nn.Module, path: Path, window_mb: float = 16) -> None:
    """The weights file at `path` into `model` in place, `window_mb` at a time (large tensors in row slices), so
    loading the best checkpoint at the end of a run adds no second copy of the model to the peak memory.
    safetensors memory-maps the file and pages read stay resident until it is closed: it is reopened per window."""
    own = model.state_dict()
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
        if keys != set(own):
            missing, extra = sorted(set(own) - keys), sorted(keys - set(own))
            raise CheckpointError(f"checkpoint '{path}' does not match the model (missing {missing[:3]}, "
                                  f"unexpected {extra[:3]}); use the checkpoint of this run")
        pieces = []  # (key, row slice or None), each at most ~window_mb
        for key, t in own.items():
            row_bytes = t[0].numel() * t.element_size() if t.dim() > 1 and len(t) else 0
            step = max(1, int(window_mb * (1 << 20)) // row_bytes) if row_bytes else 0
            pieces += [(key, slice(a, a + step)) for a in range(0, len(t), step)] if step else [(key, None)]
        pieces.reverse()
        with torch.no_grad():
            while pieces:
                with safe_open(str(path), framework="pt") as f:
                    read = 0
                    while pieces and read < window_mb * (1 << 20):
                        key, rows = pieces.pop()
                        target = own[key] if rows is None else own[key][rows]
                        target.copy_(f.get_tensor(key) if rows is None else f.get_slice(key)[rows])
                        read += target.numel() * target.element_size()
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{path}' is truncated or corrupt ({str(e).splitlines()[0][:100]}); "
                              "use another checkpoint") from None


# ---------------------------------------------------------------- full checkpoints


def _write_synced(path: Path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _save_synced(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """safetensors straight to the file (no in-memory copy of the whole blob), fsynced; → its sha256."""
    save_file(tensors, str(path), metadata=metadata)
    digest = hashlib.sha256()
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checkpoint(folder: Path, step: int, model: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
                     meta: dict) -> Path:
    """Write checkpoints/step-N atomically: files into a hidden temp folder, then one rename."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        files = {MODEL_FILE: _save_synced(tmp / MODEL_FILE, model, {"step": str(step)}),
                 TRAINER_FILE: _save_synced(tmp / TRAINER_FILE, tensors, {"step": str(step)})}
        body = json.dumps({**meta, "step": step, "files": files})
        _write_synced(tmp / META_FILE, body.encode("utf-8"))
        fsync_path(tmp)
        chaos.point("checkpoint_write")
        if final.exists():  # the same step written again (after a rollback): swap, never a gap
            _discard(final)
        os.rename(tmp, final)
        fsync_path(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _discard(path: Path) -> None:
    """Rename out of sight first (atomic), then delete: a visible step-* folder is never half-deleted."""
    trash = path.with_name(f".{path.name}.trash")
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def publish_dir(tmp: Path, final: Path) -> None:
    """Make a fully written folder visible under its final name in one rename (replacing an older one)."""
    if final.exists():
        _discard(final)
    os.rename(tmp, final)
    fsync_path(final.parent)


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints (visible step-* folders), oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and STEP_DIR.fullmatch(p.name))


def clean_partial(folder: Path) -> int:
    """Remove what a crash left behind (hidden temp / trash folders and files); returns how many."""
    if not folder.is_dir():
        return 0
    leftovers = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".trash"))]
    for p in leftovers:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return len(leftovers)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """→ (model tensors, trainer tensors, meta); every file is checked against its recorded SHA-256. A sharded
    checkpoint (FSDP: meta "sharded" names its torch.distributed.checkpoint folder) has no model tensors here: its
    files are checked, and meta "dir" tells the snapshot where to load them from."""
    older = [p for p in list_checkpoints(path.parent) if p.name < path.name]
    hint = (f"delete it to resume from {older[-1].name}" if older else "delete it to start over") + \
        ", or pass --overwrite"
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        files = meta["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint '{path}' is unreadable ({META_FILE}: {str(e)[:80]}); {hint}") from None
    sharded = meta.get("sharded")
    for name in sorted(files) if sharded else ():
        if name != TRAINER_FILE and _file_sha256(path / name, path, hint) != files[name]:
            raise CheckpointError(f"checkpoint '{path}': {name} is truncated or modified (SHA-256 does not match "
                                  f"{META_FILE}); {hint}")
    loaded = [{}] if sharded else []
    for name in (TRAINER_FILE,) if sharded else (MODEL_FILE, TRAINER_FILE):
        try:
            data = (path / name).read_bytes()
        except OSError as e:
            raise CheckpointError(f"checkpoint '{path}': cannot read {name} ({e.strerror}); {hint}") from None
        if hashlib.sha256(data).hexdigest() != files.get(name):
            raise CheckpointError(f"checkpoint '{path}': {name} is truncated or modified (SHA-256 does not match "
                                  f"{META_FILE}); {hint}")
        try:
            loaded.append(load_bytes(data))
        except (SafetensorError, ValueError) as e:
            raise CheckpointError(f"checkpoint '{path}': {name} is corrupt ({str(e)[:80]}); {hint}") from None
    return loaded[0], loaded[1], {**meta, "dir": str(path)} if sharded else meta


def _file_sha256(file: Path, path: Path, hint: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    except OSError as e:
        raise CheckpointError(f"checkpoint '{path}': cannot read {file.name} ({e.strerror}); {hint}") from None
    return digest.hexdigest()


class Checkpointer(Callback):
    """After each evaluation write checkpoints/best.safetensors when it is the best so far, then a full
    checkpoint (keeping the last `keep`). Must run after the callbacks whose state it saves (early stopping).
    `best_weights`: the weights kept as best instead of the live ones (EMA)."""

    def __init__(self, run_dir: Path, keep: int, snapshot: TrainingSnapshot,
                 best_weights: Optional[Callable[[], dict]] = None):
        self.dir = run_dir / "checkpoints"
        self.keep, self.snapshot, self.best_weights = keep, snapshot, best_weights

    def on_eval_end(self, state, record: dict) -> None:
        if self.keep == 0 and not state.is_best:
            return
        model, tensors, meta = self.snapshot.capture(state, copy=False)  # written before training goes on
        if state.is_best:  # first: a full checkpoint never names a best step whose weights are missing
            best = self.best_weights() if self.best_weights else model
            save_weights(best_path(self.dir.parent), best, {"step": str(state.step), "epoch": str(record["epoch"])})
        if self.keep > 0:
            write_checkpoint(self.dir, state.step, model, tensors, meta)
            for old in list_checkpoints(self.dir)[:-self.keep]:
                _discard(old)


def best_path(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "best.safetensors"


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    found = list_checkpoints(run_dir / "checkpoints")
    return found[-1] if found else None
