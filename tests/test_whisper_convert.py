"""CTranslate2 reader (models/ct2.py), Whisper converter (models/whisper.py) and the packaged, cached whisper-base
folder (models/whisper_package.py). Everything is built in the test from a tiny random Whisper; CTranslate2's own
converter is used where installed; one test uses the real whisper-base packages and skips without them."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tuneforge.errors import ModelError
from tuneforge.models import ct2 as ct2_reader
from tuneforge.models import whisper_package as wp
from tuneforge.models.ct2 import parse_model_bin, read_model_bin
from tuneforge.models.whisper import convert_ct2_whisper

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]  # ids 256..265
VOCAB = 300  # 256 bytes + 10 specials + 34 timestamp tokens
DTYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4, "bfloat16": 5}
GEN = {"suppress_tokens": [1, 2, 263], "begin_suppress_tokens": [32, 256], "alignment_heads": [[1, 0], [1, 3]],
       "lang_to_id": {"<|en|>": 258, "<|de|>": 259}}


# ---------- builders ----------
def _tokenizer_json(path: Path) -> None:
    """A byte-level BPE with Whisper's special tokens and no timestamp tokens (like the shipped tokenizer.json)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


def _tiny_hf(folder: Path) -> torch.nn.Module:
    """A random WhisperForConditionalGeneration (64 wide, 2+2 layers, 4 heads) saved with its tokenizer."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
                        max_source_positions=1500, max_target_positions=64, pad_token_id=256, bos_token_id=256,
                        eos_token_id=256, decoder_start_token_id=257, suppress_tokens=None,
                        begin_suppress_tokens=None)
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # biases and norms random too, so a swapped tensor cannot go unnoticed
            p.normal_(0, 0.2)
    model.generation_config = GenerationConfig(decoder_start_token_id=257, eos_token_id=256, pad_token_id=256,
                                               no_timestamps_token_id=265, **GEN)
    model.save_pretrained(folder)
    _tokenizer_json(folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "WhisperTokenizer", "bos_token": SPECIALS[0], "eos_token": SPECIALS[0],
        "unk_token": SPECIALS[0], "pad_token": SPECIALS[0], "additional_special_tokens": SPECIALS}))
    return model


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def _model_bin(variables: dict, aliases: dict | None = None, version: int = 6, spec: str = "WhisperSpec") -> bytes:
    """CTranslate2's model.bin layout (python/ctranslate2/specs/model_spec.py `_serialize`), written here by hand."""
    out = [struct.pack("<I", version), _string(spec), struct.pack("<II", 3, len(variables))]
    for name, value in sorted(variables.items()):
        a = np.asarray(value)
        out += [_string(name), struct.pack(f"<B{a.ndim}I", a.ndim, *a.shape),
                struct.pack("<BI", DTYPE_IDS[a.dtype.name], a.nbytes), a.tobytes()]
    out.append(struct.pack("<I", len(aliases or {})))
    for alias, target in (aliases or {}).items():
        out += [_string(alias), _string(target)]
    return b"".join(out)


def _ct2_variables(sd: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """HF Whisper → CTranslate2 variable names, fusing q/k/v as CTranslate2's converter does (zero key bias)."""
    g = {k: v.numpy() for k, v in sd.items()}
    v = {"encoder/num_heads": np.int16(4), "decoder/num_heads": np.int16(4), "decoder/activation": np.int8(3),
         "decoder/pre_norm": np.int8(1), "decoder/scale_embeddings": np.int8(0), "decoder/alibi": np.int8(0),
         "decoder/alignment_heads": np.int16(1), "decoder/alignment_layer": np.int16(-1),
         "decoder/embeddings/weight": g["model.decoder.embed_tokens.weight"]}
    for c in ("conv1", "conv2"):
        v[f"encoder/{c}/weight"], v[f"encoder/{c}/bias"] = g[f"model.encoder.{c}.weight"], g[f"model.encoder.{c}.bias"]

    def lin(dst, src, parts=("",)):
        v[f"{dst}/weight"] = np.concatenate([g[f"{src}{p}.weight"] for p in parts])
        v[f"{dst}/bias"] = np.concatenate([g.get(f"{src}{p}.bias", np.zeros(64, np.float32)) for p in parts])

    def norm(dst, src):
        v[f"{dst}/gamma"], v[f"{dst}/beta"] = g[f"{src}.weight"], g[f"{src}.bias"]

    for stack in ("encoder", "decoder"):
        v[f"{stack}/position_encodings/encodings"] = g[f"model.{stack}.embed_positions.weight"]
        norm(f"{stack}/layer_norm", f"model.{stack}.layer_norm")
        for i in range(2):
            d, s = f"{stack}/layer_{i}", f"model.{stack}.layers.{i}"
            lin(f"{d}/self_attention/linear_0", f"{s}.self_attn.", ("q_proj", "k_proj", "v_proj"))
            lin(f"{d}/self_attention/linear_1", f"{s}.self_attn.out_proj")
            norm(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
            if stack == "decoder":
                lin(f"{d}/attention/linear_0", f"{s}.encoder_attn.q_proj")
                lin(f"{d}/attention/linear_1", f"{s}.encoder_attn.", ("k_proj", "v_proj"))
                lin(f"{d}/attention/linear_2", f"{s}.encoder_attn.out_proj")
                norm(f"{d}/attention/layer_norm", f"{s}.encoder_attn_layer_norm")
            lin(f"{d}/ffn/linear_0", f"{s}.fc1")
            lin(f"{d}/ffn/linear_1", f"{s}.fc2")
            norm(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")
    return v


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(the tiny HF model, its folder, a hand-written CTranslate2 folder of it)."""
    root = tmp_path_factory.mktemp("tiny_whisper")
    model = _tiny_hf(root / "hf")
    ct2_dir = root / "ct2"
    _tokenizer_json(ct2_dir / "tokenizer.json")
    (ct2_dir / "model.bin").write_bytes(_model_bin(_ct2_variables(model.state_dict()),
                                                   {"decoder/projection/weight": "decoder/embeddings/weight"}))
    (ct2_dir / "config.json").write_text(json.dumps({
        "suppress_ids": GEN["suppress_tokens"], "suppress_ids_begin": GEN["begin_suppress_tokens"],
        "lang_ids": [258, 259], "alignment_heads": GEN["alignment_heads"]}))
    return model, root / "hf", ct2_dir


def _assert_same_weights(out: Path, model, transform=lambda t: t) -> None:
    got = load_file(str(out / "model.safetensors"))
    want = {k: v for k, v in model.state_dict().items() if k != "proj_out.weight"}  # tied to embed_tokens
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert torch.equal(got[k], transform(v)), k


# ---------- the reader ----------
def test_reader_keeps_every_dtype_scalars_and_aliases(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes (bfloat16 for numpy) is not installed")

    arrays = {"a/f32": np.arange(6, dtype=np.float32).reshape(2, 3), "a/f16": np.array([1.5, -2], np.float16),
              "a/i8": np.array([[-128, 127]], np.int8), "a/i16": np.array([300], np.int16),
              "a/i32": np.array([1 << 20], np.int32), "a/bf16": np.array([0.5, 3.0], ml_dtypes.bfloat16),
              "n/scalar": np.int16(8)}
    (tmp_path / "model.bin").write_bytes(_model_bin(arrays, {"b/alias": "a/f32"}, spec="TestSpec"))
    m = read_model_bin(tmp_path / "model.bin")
    assert (m.binary_version, m.spec, m.revision) == (6, "TestSpec", 3)
    for name, a in arrays.items():
        assert m.variables[name].dtype == a.dtype and np.array_equal(m.variables[name], a), name
    assert m.aliases == {"b/alias": "a/f32"} and m.get("b/alias") is m.variables["a/f32"]


def test_reader_widens_bfloat16_bits_without_ml_dtypes(monkeypatch):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is needed to write the bfloat16 test data")

    data = _model_bin({"x": np.array([0.5, -3.0, 1e30], ml_dtypes.bfloat16)})
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import fails → raw bits
    x = parse_model_bin(data).variables["x"]
    assert x.dtype == np.uint16 and np.array_equal(ct2_reader.to_float32(x), np.array([0.5, -3.0, 1e30],
                                                                                       ml_dtypes.bfloat16))


def test_reader_old_binary_version_uses_item_sizes():
    a = np.arange(4, dtype=np.float32)
    data = (struct.pack("<I", 3) + _string("OldSpec") + struct.pack("<II", 1, 1) + _string("w")
            + struct.pack("<BIBI", 1, 4, 4, 4) + a.tobytes() + struct.pack("<I", 0))
    assert np.array_equal(parse_model_bin(data).variables["w"], a)


@pytest.mark.parametrize("cut", [2, 9, 40, -30, -1])
def test_truncated_model_bin_is_a_clear_error(tmp_path, cut):
    data = _model_bin({"w": np.ones((4, 4), np.float32), "b": np.zeros(4, np.float16)}, {"c": "w"})
    (tmp_path / "model.bin").write_bytes(data[:cut])
    with pytest.raises(ModelError, match="model.bin' is truncated"):
        read_model_bin(tmp_path / "model.bin")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: struct.pack("<I", 99) + d[4:], "binary version 99"),
    (lambda d: d.replace(struct.pack("<BI", 0, 64), struct.pack("<BI", 9, 64)), "unknown dtype id 9"),
    (lambda d: d + b"junk", "4 bytes after its last record"),
    (lambda d: d.replace(struct.pack("<BI", 0, 64), struct.pack("<BI", 0, 60)), "does not fit shape"),
])
def test_corrupt_model_bin_is_a_clear_error(tmp_path, mutate, message):
    (tmp_path / "model.bin").write_bytes(mutate(_model_bin({"w": np.ones((4, 4), np.float32)})))
    with pytest.raises(ModelError, match=message):
        read_model_bin(tmp_path / "model.bin")


# ---------- the converter ----------
def test_converter_output_loads_offline_and_matches_the_model(tiny, tmp_path, threads):
    from transformers import AutoTokenizer, WhisperForConditionalGeneration, WhisperProcessor

    torch.set_num_threads(threads)
    model, _, ct2_dir = tiny
    out = convert_ct2_whisper(ct2_dir, tmp_path / "hf")
    _assert_same_weights(out, model)
    loaded = WhisperForConditionalGeneration.from_pretrained(out, local_files_only=True).eval()
    processor = WhisperProcessor.from_pretrained(out, local_files_only=True)
    features = processor(np.sin(np.arange(16000) / 9).astype(np.float32), sampling_rate=16000,
                         return_tensors="pt").input_features
    decoder_ids = torch.tensor([[257, 258, 261, 265, 40, 41]])
    with torch.no_grad():
        assert torch.equal(loaded(features, decoder_input_ids=decoder_ids).logits,
                           model(features, decoder_input_ids=decoder_ids).logits)
        generated = loaded.generate(features, language="en", task="transcribe", max_new_tokens=4)
    assert isinstance(processor.batch_decode(generated, skip_special_tokens=True)[0], str)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    tokenizer.set_prefix_tokens(language="en", task="transcribe")
    hi = [sorted(__import__("tokenizers").pre_tokenizers.ByteLevel.alphabet()).index(c) for c in "hi"]
    assert tokenizer("hi").input_ids == [257, 258, 261, 265, *hi, 256]
    assert tokenizer.convert_ids_to_tokens([266, 299]) == ["<|0.00|>", "<|0.66|>"]
    gen = json.loads((out / "generation_config.json").read_text())
    assert {k: gen[k] for k in GEN} == GEN and gen["task_to_id"] == {"transcribe": 261, "translate": 260}
    assert json.loads((out / "preprocessor_config.json").read_text())["feature_size"] == 80


def test_converter_refuses_unknown_variables_and_wrong_vocabulary(tiny, tmp_path):
    model, _, ct2_dir = tiny
    bad = tmp_path / "extra"
    shutil.copytree(ct2_dir, bad)
    variables = _ct2_variables(model.state_dict()) | {"decoder/layer_0/ffn/adapter/weight": np.ones(2, np.float32)}
    (bad / "model.bin").write_bytes(_model_bin(variables, {"decoder/projection/weight": "decoder/embeddings/weight"}))
    with pytest.raises(ModelError, match="does not map.*adapter"):
        convert_ct2_whisper(bad, tmp_path / "out1")
    shutil.copyfile(ct2_dir / "model.bin", bad / "model.bin")
    (bad / "vocabulary.txt").write_text("\n".join(["x"] * VOCAB) + "\n")
    with pytest.raises(ModelError, match="does not belong to this model"):
        convert_ct2_whisper(bad, tmp_path / "out2")


@pytest.mark.parametrize("quantization", ["float32", "float16", "int8"])
def test_ctranslate2_round_trip(tiny, tmp_path, quantization, threads):
    """HF → CTranslate2's own converter → this reader + converter → HF: the weights come back."""
    converters = pytest.importorskip("ctranslate2.converters", reason="ctranslate2 is not installed")
    torch.set_num_threads(threads)
    model, hf_dir, _ = tiny
    ct2_dir = tmp_path / "ct2"
    converters.TransformersConverter(str(hf_dir)).convert(str(ct2_dir), quantization=quantization)
    shutil.copyfile(hf_dir / "tokenizer.json", ct2_dir / "tokenizer.json")
    out = convert_ct2_whisper(ct2_dir, tmp_path / "hf")
    if quantization == "float32":
        _assert_same_weights(out, model)
    elif quantization == "float16":  # CTranslate2 rounds to nearest fp16 like torch: exactly the same values
        _assert_same_weights(out, model, lambda t: t.half().float())
    else:  # int8 rows: w ≈ round(w * 127 / max|w_row|) * max|w_row| / 127, so within half a step per row
        got = load_file(str(out / "model.safetensors"))
        for k, v in model.state_dict().items():
            if k in got and v.ndim == 2:
                step = v.abs().amax(dim=1, keepdim=True) / 127
                assert ((got[k] - v).abs() <= step / 2 + 1e-6).all(), k
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["suppress_tokens"] == GEN["suppress_tokens"] and gen["lang_to_id"] == GEN["lang_to_id"]


# ---------- the packaged, cached folder ----------
def _install_fake_packages(site: Path, ct2_dir: Path, skip: str = "") -> wp.CT2Package:
    """Two distributions on sys.path laid out like the real ones (data/ files, model.bin split in two)."""
    data = (ct2_dir / "model.bin").read_bytes()
    half = len(data) // 2
    contents = {1: {"config.json": (ct2_dir / "config.json").read_bytes(), "model.bin.part1": data[:half],
                    "tokenizer.json": (ct2_dir / "tokenizer.json").read_bytes()},
                2: {"model.bin.part2": data[half:]}}
    for i, files in contents.items():
        module, info = f"tiny_whisper_part{i}", site / f"tiny_whisper_part{i}-1.0.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tiny-whisper-part{i}\nVersion: 1.0.0\n")
        (site / module / "data").mkdir(parents=True)
        for name, blob in files.items():
            if name != skip:
                (site / module / "data" / name).write_bytes(blob)
        record = [f"{module}/data/{n},," for n in files] + [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
        (info / "RECORD").write_text("\n".join(record) + "\n")
    pins = {"model.bin": data, "config.json": contents[1]["config.json"],
            "tokenizer.json": contents[1]["tokenizer.json"]}
    return wp.CT2Package(name="tiny-whisper", packages=("tiny-whisper-part1", "tiny-whisper-part2"),
                         sha256=tuple((n, hashlib.sha256(b).hexdigest()) for n, b in pins.items()),
                         extra="tiny", version="1.0.0")


@pytest.fixture
def fake_packages(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return _install_fake_packages(tmp_path / "site", tiny[2])


def test_packaged_folder_is_assembled_converted_and_reused(fake_packages, tiny, tmp_path, monkeypatch):
    models = tmp_path / "cache" / "models"
    models.mkdir(parents=True)
    # a crashed conversion's temp folder (its pid has exited) is removed; a running one's is left alone
    dead = models / f".tiny-whisper.tmp-{socket.gethostname()}-{_exited_pid()}-x"
    alive = models / f".tiny-whisper.tmp-{socket.gethostname()}-{os.getpid()}-y"
    dead.mkdir(), alive.mkdir()
    folder = wp.packaged_folder(fake_packages)
    assert folder == models / "tiny-whisper" and wp.manifest_ok(folder)
    _assert_same_weights(folder, tiny[0])
    assert not dead.exists() and alive.exists()
    assert sorted(p.name for p in models.iterdir()) == sorted([alive.name, "tiny-whisper"])
    manifest = json.loads((folder / wp.MANIFEST).read_text())
    assert set(manifest["files"]) == {p.name for p in folder.iterdir()} - {wp.MANIFEST}

    def no_conversion(*a, **k):
        raise AssertionError("converted again")

    def uninstalled(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(wp, "convert_ct2_whisper", no_conversion)
    monkeypatch.setattr(wp, "distribution", uninstalled)
    assert wp.packaged_folder(fake_packages) == folder  # reused: no conversion, packages not even needed


def _exited_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_damaged_cached_weights_are_rebuilt(fake_packages):
    folder = wp.packaged_folder(fake_packages)
    weights = folder / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    assert not wp.manifest_ok(folder)
    assert wp.packaged_folder(fake_packages) == folder and wp.manifest_ok(folder)


def test_hash_mismatch_is_an_error_and_leaves_nothing(fake_packages, tmp_path):
    pins = dict(fake_packages.sha256) | {"model.bin": "0" * 64}
    wrong = wp.CT2Package(**{**fake_packages.__dict__, "sha256": tuple(pins.items())})
    with pytest.raises(ModelError, match="model.bin of model 'tiny-whisper' has SHA-256 .*not the pinned release"):
        wp.packaged_folder(wrong)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    pkg = wp.CT2Package(name="x", packages=("no-such-whisper-part1",), sha256=(), extra="whisper", version="1.0.0")
    with pytest.raises(ModelError, match=r"needs package 'no-such-whisper-part1'.*pip install 'tuneforge\[whisper\]' "
                                         r"\(or: pip install no-such-whisper-part1==1.0.0\)"):
        wp.packaged_folder(pkg)


def test_missing_part_is_a_clear_error(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    pkg = _install_fake_packages(tmp_path / "site", tiny[2], skip="model.bin.part2")
    with pytest.raises(ModelError, match="data/model.bin.part2 is missing from its packages"):
        wp.packaged_folder(pkg)


def test_whisper_base_alias_is_registered_with_the_speech_source(monkeypatch, tmp_path):
    from tuneforge.models import MODEL_ALIASES

    assert "whisper-base" in MODEL_ALIASES
    monkeypatch.setattr(wp, "packaged_folder", lambda pkg: tmp_path / pkg.name)
    assert MODEL_ALIASES.get("whisper-base")() == ("hf-speech", {"name": str(tmp_path / "whisper-base")})


@pytest.mark.integration
def test_real_whisper_base_transcribes_a_synthetic_clip(tmp_path, monkeypatch, threads):
    for name in wp.WHISPER_BASE.packages:
        try:
            wp.distribution(name)
        except PackageNotFoundError:
            pytest.skip(f"{name} is not installed (pip install 'tuneforge[whisper]')")
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    torch.set_num_threads(threads)
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path))
    folder = wp.whisper_base_folder()
    model = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    processor = WhisperProcessor.from_pretrained(folder, local_files_only=True)
    t = np.arange(32000) / 16000
    clip = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)  # 2 s warble
    features = processor(clip, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features, language="en", task="transcribe", max_new_tokens=20)
    assert isinstance(processor.batch_decode(ids, skip_special_tokens=True)[0], str)
    assert model.config.num_mel_bins == 80 and model.config.vocab_size == 51865 and model.config.encoder_layers == 6
