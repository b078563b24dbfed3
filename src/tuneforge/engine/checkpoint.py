"""Atomic safetensors writes: a crash never leaves a half-written checkpoint under the final name."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tuneforge.errors import ModelError


def atomic_write(path: Path, write) -> None:
    """`write(tmp_path)` then fsync and rename over `path` (rename is atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    # clone: tied weights share storage, which safetensors refuses
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"checkpoint '{path}' is truncated or corrupt ({str(e).splitlines()[0][:100]}); "
                         "use another checkpoint") from None


class Checkpointer:
    """Callback: after each evaluation write checkpoints/step-N.safetensors (keeping the last `keep`)
    and checkpoints/best.safetensors whenever the evaluation is the best so far."""

    def __init__(self, run_dir: Path, state_dict_fn, keep: int):
        self.dir = run_dir / "checkpoints"
        self.state_dict_fn, self.keep = state_dict_fn, keep

    def on_eval_end(self, state, record: dict) -> None:
        meta = {"step": str(state.step), "epoch": str(record["epoch"])}
        weights = None
        if self.keep > 0:
            weights = self.state_dict_fn()
            save_weights(self.dir / f"step-{state.step:08d}.safetensors", weights, meta)
            for old in sorted(self.dir.glob("step-*.safetensors"))[:-self.keep]:
                old.unlink()
        if state.is_best:
            save_weights(self.dir / "best.safetensors", weights or self.state_dict_fn(), meta)

    def best_path(self) -> Path:
        return self.dir / "best.safetensors"

    def __getattr__(self, name):  # the other callback events are no-ops
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)
