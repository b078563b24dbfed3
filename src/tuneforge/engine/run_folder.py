"""The run folder: one writer at a time (a lock held for the whole run), fresh / --overwrite / --resume, and never
deleting what the user owns.

- `--overwrite` empties only a folder that is provably a tuneforge run (config.yaml and only entries tuneforge
  writes), never the cwd, $HOME, / or an ancestor of them or of the recipe and data.
- A folder this run created is removed again after an error only until training starts (`RunFolder.keep`); from
  then on its checkpoints, metrics.jsonl and train.log are the user's record of what happened.
- Default folders are `runs/<name>-<time>`, made with an exclusive mkdir (`-2`, `-3`, ... when taken).
- On several processes (`shared_run_folder`) rank 0 alone opens, locks, cleans and writes the folder; the other
  ranks wait for its outcome (the folder, or its one-line error, which they raise too) and only read."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import yaml

from tuneforge.engine.checkpoint import clean_partial, list_checkpoints
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.utils import atomic_write_text, flatten

IGNORED_ON_RESUME = ("output",)  # config sections that may differ between a run and its resume
LOCK_FILE = ".lock"
# what tuneforge writes into a run folder (features that add files add their names here)
RUN_ENTRIES = {"config.yaml", "data_report.json", "metrics.jsonl", "train.log", "summary.json", "checkpoints",
               "model", "adapter", "lr_find.png", "run.json", "report.html", "predictions", "tensorboard",
               "mlflow.db", "mlruns", "mlflow_run_id", "export", "generations.jsonl", LOCK_FILE}


class RunFolder:
    """An open run folder, locked by this process until `close()` (or the end of its `with` block). `owner`
    False: another process (rank 0) owns it; this one only reads it and never removes it."""

    def __init__(self, path: Path, created: bool, lock_fd: int, log=print, owner: bool = True):
        self.path, self.created, self._lock_fd, self.log, self.owner = path, created, lock_fd, log, owner
        self.kept = False
        self.finished = (path / "summary.json").is_file()
        found = list_checkpoints(path / "checkpoints")
        self.checkpoint: Optional[Path] = found[-1] if found else None  # resume from here

    def keep(self) -> None:
        """Training starts: from here on this folder is never removed after an error."""
        self.kept = True

    def close(self, failed: bool = False) -> None:
        if failed and self.created and not self.kept and self.owner:
            shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd >= 0:
            os.ftruncate(self._lock_fd, 0)  # released cleanly: a pid left in the file means its holder died
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, kind, err, tb) -> None:
        self.close(failed=kind is not None)


def _lock(run_dir: Path, log) -> int:
    """An exclusive flock on run_dir/.lock, with this process's pid in the file. The kernel drops the lock when its
    holder dies, so a stale lock (a killed run) is simply taken over."""
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    previous = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = f"process {previous[0]}" if previous else "another process"
        raise ConfigError(f"run folder '{run_dir}' is in use by {holder} (a run is writing it); wait for it to "
                          "finish, or choose another --output") from None
    if previous and previous[0] != str(os.getpid()):
        log(f"run folder: took over a stale lock of process {previous[0]}, which ended without releasing it")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {datetime.now():%Y-%m-%dT%H:%M:%S}\n".encode(), 0)
    return fd


def check_same_config(run_dir: Path, cfg) -> None:
    from tuneforge.config import validate

    path = run_dir / "config.yaml"
    try:
        saved = validate(yaml.safe_load(path.read_text(encoding="utf-8")), str(path)).model_dump(mode="json")
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot resume '{run_dir}': {path.name} is unreadable ({str(e)[:80]})") from None
    now = cfg.model_dump(mode="json")
    a = {k: v for k, v in flatten(saved).items() if k.split(".")[0] not in IGNORED_ON_RESUME}
    b = {k: v for k, v in flatten(now).items() if k.split(".")[0] not in IGNORED_ON_RESUME}
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if diff:
        shown = ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in diff[:4]) + (" ..." if len(diff) > 4 else "")
        raise ConfigError(f"cannot resume '{run_dir}': the recipe differs from its config.yaml in {shown}; "
                          "use `tuneforge resume RUN_DIR`, or --overwrite to start over")


def _protected(paths: Iterable[Path]) -> list[Path]:
    """Folders --overwrite must never empty: /, $HOME, the cwd, and (by the caller) the recipe's and data's."""
    return [p.resolve() for p in [Path("/"), Path.home(), Path.cwd(), *paths]]


def check_overwritable(run_dir: Path, protected: Iterable[Path] = ()) -> None:
    """--overwrite empties only a provable tuneforge run folder."""
    if run_dir.is_symlink():
        raise ConfigError(f"--overwrite: output folder '{run_dir}' is a symbolic link; give the real folder")
    real = run_dir.resolve()
    for p in _protected(protected):
        if real == p or real in p.parents:
            raise ConfigError(f"--overwrite refuses to empty '{run_dir}': it is or contains {p}; choose a "
                              "dedicated run folder with --output")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--overwrite refuses to empty '{run_dir}': it is not a tuneforge run folder (no "
                          "config.yaml); delete it yourself or choose another --output")
    foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_ENTRIES
                     and not (p.name.startswith(".") and p.name.endswith((".tmp", ".trash"))))
    if foreign:
        raise ConfigError(f"--overwrite refuses to empty '{run_dir}': it holds files tuneforge did not write "
                          f"({', '.join(foreign[:5])}); move them or choose another --output")


def _empty(run_dir: Path) -> None:
    for p in run_dir.iterdir():
        if p.name != LOCK_FILE:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _default_dir(name: str) -> Path:
    base = Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()  # exclusive: two runs started in the same second get different folders
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"cannot find a free run folder name next to '{base}'; pass --output")


def _writable_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output folder '{run_dir}' cannot be written ({e.strerror}); "
                          "choose another with --output or output.dir") from None


def open_run_folder(cfg, output: Optional[str], overwrite: bool, resume: bool, protected: Iterable[Path] = (),
                    log=print) -> RunFolder:
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run or replace it")
    explicit = output or cfg.output.dir
    run_dir = Path(explicit).expanduser() if explicit else _default_dir(cfg.output.name or "run")
    try:
        busy = run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir())
    except OSError as e:
        raise ConfigError(f"output folder '{run_dir}' cannot be read ({e.strerror}); choose another with "
                          "--output or output.dir") from None
    if busy and not (resume or overwrite):
        raise ConfigError(f"output folder '{run_dir}' already exists and is not empty; pass --resume to "
                          "continue it, --overwrite to replace it, or --output to choose another")
    if busy and resume and not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"cannot resume '{run_dir}': it is not a tuneforge run folder (no config.yaml)")
    if busy and overwrite:
        check_overwritable(run_dir, protected)
    _writable_dir(run_dir)
    fd = _lock(run_dir, log)
    try:
        if busy and resume:
            check_same_config(run_dir, cfg)
            clean_partial(run_dir)
            clean_partial(run_dir / "checkpoints")
        elif busy:
            _empty(run_dir)
    except BaseException:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise
    return RunFolder(run_dir, created=not busy or overwrite, lock_fd=fd, log=log)


# ---------------------------------------------------------------- what a run was started with (run.json)

RUN_RECORD = "run.json"


def environment(precision: str, threads: int, world_size: int = 1) -> dict:
    """What bit-identical resume needs besides the data: the resolved precision, the threads, the libraries and
    the number of processes (a different number is always refused: it changes the global batch)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("tuneforge", "torch", "transformers", "timm", "peft", "accelerate"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"precision": precision, "threads": threads, "versions": versions, "world_size": world_size}


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(saved.keys() | now.keys()):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key} ")
        elif a != b:
            out.append(f"{prefix}{key} {a} -> {b}" if not str(key) == "sha256" else f"{prefix}content")
    return out


def check_run_record(folder: RunFolder, data: dict, env: dict, accept_changes: bool, log=print,
                     write: bool = True) -> None:
    """A new run records its data fingerprint and environment; a resumed one must match them (the environment
    may differ with `accept_changes`: training continues, but is no longer bit-identical; the number of processes
    may not). write=False (ranks other than 0): only the checks."""
    path = folder.path / RUN_RECORD
    if folder.created or not path.is_file():
        if write:
            atomic_write_text(path, json.dumps({"data": data, "environment": env}, indent=1) + "\n")
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot resume '{folder.path}': {RUN_RECORD} is unreadable ({str(e)[:80]})") from None
    was = saved.get("environment", {}).pop("world_size", 1)  # absent: a run from before multi-process training
    now = env.get("world_size", 1)
    if was != now:
        raise ConfigError(f"cannot resume '{folder.path}': it was trained on {was} process(es), this launch has "
                          f"{now}; resume it with the same number (e.g. torchrun --nproc-per-node {was})")
    env = {k: v for k, v in env.items() if k != "world_size"}
    changed = _differences(saved.get("data", {}), data)
    if changed:
        raise ConfigError(f"cannot resume '{folder.path}': its data changed since the run started "
                          f"({'; '.join(changed[:4])}); restore the data, or start over with --overwrite")
    changed = _differences(saved.get("environment", {}), env)
    if changed and not accept_changes:
        raise ConfigError(f"cannot resume '{folder.path}' bit-identically: {'; '.join(changed[:4])} changed; pass "
                          "--accept-changes to continue anyway")
    if changed:
        log(f"resume: continuing although {'; '.join(changed[:4])} changed (--accept-changes)")


# ---------------------------------------------------------------- several processes


@contextmanager
def shared_run_folder(world, accelerator, open_folder: Callable[[], RunFolder]) -> Iterator[RunFolder]:
    """`open_folder()` on rank 0 only (lock, checks, cleaning); its outcome is broadcast, so every other rank gets
    a read-only view of the same folder, or raises the same one-line error. One process: `open_folder()` as is."""
    if not world.distributed:
        with open_folder() as folder:
            yield folder
        return
    from tuneforge.engine.distributed import broadcast_json

    folder, failure = None, None
    if world.main:
        try:
            folder = open_folder()
        except Exception as e:  # noqa: BLE001 (every rank must hear about it, then rank 0 raises it as it is)
            failure = e
    outcome = broadcast_json(accelerator, {"error": str(failure)} if failure else
                             {"path": str(folder.path), "created": folder.created} if folder else None)
    if failure is not None:
        raise failure
    if "error" in outcome:
        raise TuneforgeError(outcome["error"])
    with folder or RunFolder(Path(outcome["path"]), outcome["created"], lock_fd=-1, owner=False) as folder:
        yield folder
