"""Small process-level helpers: logging, seeding, threads, precision, memory."""
from __future__ import annotations

import ctypes
import functools
import os
import random
import resource
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import psutil
import torch
from rich.console import Console

console = Console(stderr=True, highlight=False)


class RunLog:
    """Prints to stderr and keeps everything in run_dir/train.log. Until the run folder exists (every check on
    recipe, data and model has passed) lines are held back, so a user error prints as its one line alone."""

    def __init__(self, quiet: bool = False):
        self.lines: list[str] = []
        self.path: Optional[Path] = None
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if self.path is None:
            self.lines.append(msg)
            return
        if not self.quiet:
            console.print(msg, markup=False, soft_wrap=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(msg + "\n")

    def attach(self, path: Path, append: bool = False) -> None:
        if not self.quiet:
            for line in self.lines:
                console.print(line, markup=False, soft_wrap=True)
        with path.open("a" if append else "w", encoding="utf-8") as f:  # append: a resumed run keeps its log
            f.write("".join(line + "\n" for line in self.lines))
        self.path = path


class SilentLog(RunLog):
    """The log of a process that is not rank 0: rank 0 prints and keeps train.log for every process."""

    def __call__(self, msg: str) -> None:
        pass

    def attach(self, path: Path, append: bool = False) -> None:
        pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: Optional[int]) -> int:
    n = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def loader_workers(requested: int, log=print) -> int:
    """data.num_workers, at most one worker process per CPU core this process may use: more only compete for the
    same cores (and each holds a copy of the dataset)."""
    cores = len(os.sched_getaffinity(0))
    if requested > cores:
        log(f"data.num_workers: {requested} requested, {cores} used (one per CPU core available)")
        return cores
    return requested


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str) -> str:
    """auto → bf16 where the hardware runs it natively (CUDA with bf16, or a CPU with AVX512-BF16/AMX); fp16 on a
    CUDA device without bf16; fp32 on other CPUs (bf16 is emulated there, and slow)."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's entries: a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        fsync_path(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def flatten(d: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} → {"train.lr": 1} (nested dicts only; lists stay values)."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def cache_dir(kind: str) -> Path:
    """`$TUNEFORGE_CACHE/<kind>` (an empty variable counts as unset), else `~/.cache/tuneforge/<kind>`."""
    return Path(os.environ.get("TUNEFORGE_CACHE") or Path.home() / ".cache" / "tuneforge") / kind


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_device_memory_mb(device) -> Optional[float]:
    """Peak memory torch allocated on a CUDA device (None on the CPU: peak_rss_mb covers it)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)


def rss_mb() -> float:
    """Resident memory now."""
    return psutil.Process().memory_info().rss / 2 ** 20


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def held_rss_mb() -> float | None:
    """Resident memory once glibc's malloc_trim has handed the free heap back: what live objects hold, without the
    freed blocks the allocator keeps. None where there is no glibc (the measure would mix the two)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return None
    libc.malloc_trim(0)
    return rss_mb()


def count_params(model: torch.nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}
