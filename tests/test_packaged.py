"""Split-zip model packages (models/packaged.py): assembly, integrity checks, and the mpnet-base alias."""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

import tuneforge
from tuneforge.errors import ModelError
from tuneforge.models import packaged
from tuneforge.models.packaged import MARKER, SplitArchive, assemble


def _split_zip(folder: Path, top: str, out: Path, n_parts: int = 3, extra: dict | None = None) -> list[Path]:
    """Zip `folder` as `top/...` (plus `extra` raw members) and cut the bytes into n parts."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f"{top}/{f.relative_to(folder).as_posix()}")
        zf.writestr(f"{top}/desktop.ini", "[.ShellClassInfo]\n")  # junk the real packages carry
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    data = buf.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // n_parts)
    parts = []
    for i in range(n_parts):
        p = out / f"{top}.zip.{i + 1:03d}"
        p.write_bytes(data[i * step:(i + 1) * step])
        parts.append(p)
    return parts


def _archive(folder: Path, name: str = "tiny", sha: str | None = None) -> SplitArchive:
    """Every file of `folder` pinned; `sha` replaces the weights' pinned hash."""
    files = {f.relative_to(folder).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
             for f in sorted(folder.rglob("*")) if f.is_file()}
    if sha:
        files["model.safetensors"] = sha
    return SplitArchive(name=name, packages=("pkg-part-001",), files=tuple(files.items()), extra="tiny")


def test_assemble_joins_parts_checks_hash_and_is_idempotent(tiny_bert_dir, tmp_path):
    parts = _split_zip(tiny_bert_dir, "tiny", tmp_path / "parts")
    dest = tmp_path / "cache" / "tiny"
    assert assemble(_archive(tiny_bert_dir), parts, dest) == dest
    assert (dest / "model.safetensors").read_bytes() == (tiny_bert_dir / "model.safetensors").read_bytes()
    assert (dest / MARKER).is_file() and not (dest / "desktop.ini").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["tiny"]  # the work folder is gone
    for p in parts:  # a second call reuses the folder without reading the parts
        p.unlink()
    assert assemble(_archive(tiny_bert_dir), parts, dest) == dest


def test_assemble_rejects_wrong_hash_and_leaves_nothing(tiny_bert_dir, tmp_path):
    parts = _split_zip(tiny_bert_dir, "tiny", tmp_path / "parts")
    with pytest.raises(ModelError, match="SHA-256"):
        assemble(_archive(tiny_bert_dir, sha="0" * 64), parts, tmp_path / "cache" / "tiny")
    assert list((tmp_path / "cache").iterdir()) == []


def test_assemble_refuses_members_outside_the_folder(tiny_bert_dir, tmp_path):
    parts = _split_zip(tiny_bert_dir, "tiny", tmp_path / "parts", extra={"tiny/../../evil.txt": "x"})
    with pytest.raises(ModelError, match="outside 'tiny/'"):
        assemble(_archive(tiny_bert_dir), parts, tmp_path / "cache" / "tiny")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "cache" / "evil.txt").exists()


def test_assemble_with_a_missing_part_is_a_clear_error(tiny_bert_dir, tmp_path):
    parts = _split_zip(tiny_bert_dir, "tiny", tmp_path / "parts")
    with pytest.raises(ModelError, match="do not form a valid zip.*tuneforge\\[tiny\\]"):
        assemble(_archive(tiny_bert_dir), parts[:-1], tmp_path / "cache" / "tiny")


def test_missing_package_names_it_and_the_extra():
    archive = SplitArchive(name="x", packages=("no-such-package-part-001",), files=(), extra="mpnet")
    with pytest.raises(ModelError, match="no-such-package-part-001.*pip install 'tuneforge\\[mpnet\\]'"):
        packaged.part_files(archive)


def test_mpnet_alias_trains_from_assembled_parts(tiny_bert_dir, tmp_path, text_recipe, monkeypatch):
    """The alias path end to end, with the tiny BERT standing in for the 400 MB packages."""
    parts = _split_zip(tiny_bert_dir, "all-mpnet-base-v2", tmp_path / "parts")
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(packaged, "ALL_MPNET_BASE_V2", _archive(tiny_bert_dir, name="all-mpnet-base-v2"))
    monkeypatch.setattr(packaged, "part_files", lambda archive: parts)
    result = tuneforge.train(text_recipe(model={"name": "mpnet-base"}), output=str(tmp_path / "run"), quiet=True)
    assert (tmp_path / "cache" / "models" / "all-mpnet-base-v2" / MARKER).is_file()
    assert result.metrics["accuracy"] >= 0.9


def _mpnet_installed() -> bool:
    try:
        packaged.part_files(packaged.ALL_MPNET_BASE_V2)
        return True
    except ModelError:
        return False


@pytest.mark.integration
@pytest.mark.skipif(not _mpnet_installed(), reason="the all-mpnet-base-v2 packages (tuneforge[mpnet]) are absent")
def test_real_mpnet_packages_assemble_and_load():
    from transformers import AutoConfig, AutoTokenizer

    folder = packaged.model_folder(packaged.ALL_MPNET_BASE_V2)
    assert AutoConfig.from_pretrained(folder).model_type == "mpnet"
    assert AutoTokenizer.from_pretrained(folder)("a fine film")["input_ids"][0] == 0  # <s>
