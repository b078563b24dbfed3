"""Model folders built once into the cache from packaged files (split zips, GGUF, CTranslate2) and then reused.

`cached_folder(dest, build, meta)` returns `dest` (normally `<cache>/models/<name>`) when its manifest checks out:
the same `meta` (what it was built from, e.g. pinned source hashes), and every file at its recorded size and
SHA-256 (hashed once per process, then only re-stat'ed). Otherwise `build(out, scratch)` writes the folder into a
temp folder beside `dest` (`.<name>.tmp-<host>-<pid>-*`, removed later if its process died or it is a day old), a
manifest is written and the folder is moved into place in one rename (a concurrent build that finished first
wins). Nothing here imports or executes what it reads."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from tuneforge.errors import ModelError

MANIFEST = "tuneforge_manifest.json"
STALE_AFTER_S = 24 * 3600  # a temp folder from another host (or a reused pid) older than this is abandoned
_verified: dict[Path, tuple] = {}  # folder -> manifest stamp, hashed in this process already


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(folder: Path, meta: dict) -> None:
    files = {f.relative_to(folder).as_posix(): {"size": f.stat().st_size, "sha256": sha256_file(f)}
             for f in sorted(folder.rglob("*")) if f.is_file() and f.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"meta": meta, "files": files}, indent=1) + "\n", encoding="utf-8")


def _stamp(folder: Path, files: dict) -> tuple:
    return tuple((name, (folder / name).stat().st_size, (folder / name).stat().st_mtime_ns) for name in files)


def manifest_ok(folder: Path, meta: Optional[dict] = None) -> bool:
    """The folder is what its manifest says (and was built from `meta`, when given): every file's size and hash."""
    try:
        record = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = record["files"]
        if (meta is not None and record["meta"] != meta) or not files:
            return False
        if any((folder / n).stat().st_size != f["size"] for n, f in files.items()):
            return False
        stamp = _stamp(folder, files)
        if _verified.get(folder) != stamp:
            if any(sha256_file(folder / n) != f["sha256"] for n, f in files.items()):
                return False
            _verified[folder] = stamp
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _is_stale(folder: Path, prefix: str) -> bool:
    """A temp folder whose process is gone (same host), or old enough to be abandoned (any host)."""
    m = re.fullmatch(re.escape(prefix) + r"(.+)-(\d+)-[^-]+", folder.name)
    try:
        if time.time() - folder.stat().st_mtime > STALE_AFTER_S:
            return True
    except OSError:
        return False
    if m is None or m.group(1) != socket.gethostname():
        return False
    try:
        os.kill(int(m.group(2)), 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:  # it exists, owned by another user
        pass
    return False


def remove_stale_temps(root: Path, name: str) -> list[Path]:
    prefix = f".{name}.tmp-"
    stale = [p for p in root.glob(prefix + "*") if p.is_dir() and _is_stale(p, prefix)] if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def _move_into_place(out: Path, dest: Path, work: Path, meta: dict) -> None:
    if dest.exists():
        if manifest_ok(dest, meta):  # a concurrent build finished first
            return
        os.replace(dest, work / "replaced")  # a broken folder goes with `work`
    try:
        os.replace(out, dest)
    except OSError:
        if not manifest_ok(dest, meta):
            raise ModelError(f"cannot create model folder '{dest}': something else is there; delete it and run "
                             "again") from None


def cached_folder(dest: Path, build: Callable[[Path, Path], None], meta: dict) -> Path:
    """`dest`, reused when intact, else built by `build(out_dir, scratch_dir)` (see the module docstring)."""
    if manifest_ok(dest, meta):
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(dest.parent, dest.name)
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{socket.gethostname()}-{os.getpid()}-",
                                     dir=dest.parent))
    except OSError as e:
        raise ModelError(f"cannot build model folder '{dest}' ({e.strerror or e}); set TUNEFORGE_CACHE to a "
                         "writable folder") from None
    try:
        out, scratch = work / "out", work / "scratch"
        out.mkdir()
        scratch.mkdir()
        build(out, scratch)
        write_manifest(out, meta)
        _move_into_place(out, dest, work, meta)
        return dest
    except OSError as e:
        raise ModelError(f"cannot build model folder '{dest}' ({e.strerror or e}); free disk space or set "
                         "TUNEFORGE_CACHE to a writable folder") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
