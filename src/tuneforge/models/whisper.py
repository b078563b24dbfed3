"""A CTranslate2 Whisper folder (faster-whisper format) → a Hugging Face `WhisperForConditionalGeneration` folder.

Input: a folder with CTranslate2's `model.bin` (spec `WhisperSpec`), its `config.json` (suppress_ids, lang_ids,
alignment_heads) and the Hugging Face `tokenizer.json` it was converted with (`vocabulary.txt`/`.json`, when present,
is checked against it). Output: config.json + model.safetensors + generation_config.json + tokenizer files +
preprocessor_config.json, loadable offline by `WhisperForConditionalGeneration.from_pretrained` and
`WhisperProcessor.from_pretrained`.

The weights map one to one: every CTranslate2 variable is used exactly once (fused q/k/v and k/v projections are
split; the zero key bias CTranslate2 adds when fusing is checked and dropped) and the HF model must take every tensor
by name and shape, so a variable this converter does not know, or one HF needs and the file lacks, is a
`ModelError`, never a silent random init. int8/int16 weights are dequantized with their saved `_scale`.

Weights are written as float32 by default: tuneforge trains on CPU, where fp16 weights would either be upcast on
every load or trained in fp16 (no fp16 GEMM speed-up on most CPUs, and AdamW updates below fp16's resolution are
lost). `dtype="float16"` keeps the shipped precision (half the disk) for inference-only use."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from tuneforge.errors import ModelError
from tuneforge.models.ct2 import CT2Model, read_model_bin, to_float32

GELU = 3  # CTranslate2's Activation enum: RELU, GELUTanh, SWISH, GELU, ...
# Flags of CTranslate2's Whisper spec and the value a HF Whisper model implies (anything else cannot be mapped).
FLAGS = {"decoder/activation": GELU, "decoder/pre_norm": 1, "decoder/alibi": 0, "decoder/scale_embeddings": 0,
         "decoder/start_from_zero_embedding": 0}
# Which attention CT2 returns for word timestamps (HF reads alignment_heads from generation_config instead), and
# ALiBi options that mean nothing while decoder/alibi is 0 (checked above).
IGNORED_FLAGS = ("decoder/alignment_heads", "decoder/alignment_layer", "decoder/alibi_use_positive_positions",
                 "decoder/scale_alibi")
NON_LANG_SPECIALS = {"<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
                     "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"}
TIME_PRECISION = 0.02  # seconds per timestamp token
MAX_INITIAL_TIMESTAMP_INDEX = 50  # openai/whisper's max_initial_timestamp=1.0 s at 0.02 s per token


class _Variables:
    """Hands out CTranslate2 variables as float32 arrays and remembers which were used."""

    def __init__(self, ct2: CT2Model, path: Path):
        self.ct2, self.path, self.used = ct2, path, set()

    def take(self, name: str) -> np.ndarray:
        if name not in self.ct2:
            raise ModelError(f"'{self.path}' has no variable '{name}'; it is not a CTranslate2 Whisper model this "
                             f"converter knows (spec {self.ct2.spec or '?'} revision {self.ct2.revision})")
        target = self.ct2.aliases.get(name, name)
        self.used.update({name, target})
        value = self.ct2.variables[target]
        scale = f"{target}_scale"
        if value.dtype.kind != "i":
            return to_float32(value)
        if scale not in self.ct2.variables:
            raise ModelError(f"'{self.path}': variable '{name}' is {value.dtype} without '{scale}'; "
                             f"it cannot be dequantized")
        self.used.add(scale)  # CTranslate2 quantizes as q = round(w * scale), one scale per row (int8)
        s = self.ct2.variables[scale].astype(np.float32)
        return value.astype(np.float32) / (s.reshape(-1, *[1] * (value.ndim - 1)) if s.ndim else s)

    def scalar(self, name: str) -> float:
        if name not in self.ct2.variables or self.ct2.variables[name].ndim:
            raise ModelError(f"'{self.path}' has no scalar '{name}'; it is not a CTranslate2 Whisper model")
        self.used.add(name)
        return float(self.ct2.variables[name])

    def check_all_used(self) -> None:
        left = sorted((set(self.ct2.variables) | set(self.ct2.aliases)) - self.used)
        if left:
            raise ModelError(f"'{self.path}' has {len(left)} variable(s) the Whisper converter does not map "
                             f"(first: '{left[0]}'); refusing to drop weights silently")


def _linear(v: _Variables, src: str, dst: str, sd: dict) -> None:
    sd[f"{dst}.weight"] = v.take(f"{src}/weight")
    sd[f"{dst}.bias"] = v.take(f"{src}/bias")


def _layer_norm(v: _Variables, src: str, dst: str, sd: dict) -> None:
    sd[f"{dst}.weight"] = v.take(f"{src}/gamma")
    sd[f"{dst}.bias"] = v.take(f"{src}/beta")


def _split_fused(v: _Variables, src: str, dst: str, parts: list[str], sd: dict) -> None:
    """A fused projection (rows [q;k;v] or [k;v]) → one HF Linear per part; k has no bias in HF Whisper."""
    weights = np.split(v.take(f"{src}/weight"), len(parts))
    biases = np.split(v.take(f"{src}/bias"), len(parts))
    for part, w, b in zip(parts, weights, biases):
        sd[f"{dst}.{part}_proj.weight"] = w
        if part != "k":
            sd[f"{dst}.{part}_proj.bias"] = b
        elif np.any(b != 0):
            raise ModelError(f"'{v.path}': {src} has a non-zero key bias, which HF Whisper cannot hold")


def _layer(v: _Variables, src: str, dst: str, sd: dict, cross: bool) -> None:
    _split_fused(v, f"{src}/self_attention/linear_0", f"{dst}.self_attn", ["q", "k", "v"], sd)
    _linear(v, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj", sd)
    _layer_norm(v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", sd)
    if cross:
        _linear(v, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj", sd)
        _split_fused(v, f"{src}/attention/linear_1", f"{dst}.encoder_attn", ["k", "v"], sd)
        _linear(v, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj", sd)
        _layer_norm(v, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", sd)
    _linear(v, f"{src}/ffn/linear_0", f"{dst}.fc1", sd)
    _linear(v, f"{src}/ffn/linear_1", f"{dst}.fc2", sd)
    _layer_norm(v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm", sd)


def num_layers(ct2: CT2Model, stack: str) -> int:
    found = {int(m.group(1)) for n in ct2.variables if (m := re.match(rf"{stack}/layer_(\d+)/", n))}
    if found != set(range(len(found))):
        raise ModelError(f"CTranslate2 Whisper {stack} layers are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def _check_flags(v: _Variables) -> None:
    if v.ct2.spec != "WhisperSpec":
        raise ModelError(f"'{v.path}' holds a CTranslate2 '{v.ct2.spec}' model, not WhisperSpec")
    for name, expected in FLAGS.items():
        if name in v.ct2.variables and v.scalar(name) != expected:
            raise ModelError(f"'{v.path}': {name} is {v.scalar(name)}, but HF Whisper needs {expected}")
    for name in IGNORED_FLAGS:
        if name in v.ct2.variables:
            v.scalar(name)


def whisper_state_dict(ct2: CT2Model, path: Path | str = "model.bin") -> tuple[dict[str, np.ndarray], bool]:
    """CTranslate2 Whisper variables → (HF state dict as float32 arrays, whether proj_out is tied to the
    token embeddings). Raises ModelError unless every variable maps."""
    v = _Variables(ct2, Path(path))
    _check_flags(v)
    v.scalar("encoder/num_heads"), v.scalar("decoder/num_heads")
    sd: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        _linear(v, f"encoder/{conv}", f"model.encoder.{conv}", sd)
    for stack, cross in (("encoder", False), ("decoder", True)):
        sd[f"model.{stack}.embed_positions.weight"] = v.take(f"{stack}/position_encodings/encodings")
        _layer_norm(v, f"{stack}/layer_norm", f"model.{stack}.layer_norm", sd)
        for i in range(num_layers(ct2, stack)):
            _layer(v, f"{stack}/layer_{i}", f"model.{stack}.layers.{i}", sd, cross)
    sd["model.decoder.embed_tokens.weight"] = v.take("decoder/embeddings/weight")
    projection = v.take("decoder/projection/weight")
    tied = ct2.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight"
    if not tied:  # CTranslate2 aliases equal tensors, so a separate projection differs from the embeddings
        sd["proj_out.weight"] = projection
    if "decoder/projection/bias" in ct2 and np.any(v.take("decoder/projection/bias") != 0):
        raise ModelError(f"'{path}': decoder/projection/bias is non-zero, which HF Whisper cannot hold")
    v.check_all_used()
    return sd, tied


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"'{path}' is missing; a CTranslate2 Whisper folder needs model.bin, config.json and "
                         f"tokenizer.json") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"'{path}' is not valid JSON ({str(e)[:80]}); re-copy the model folder") from None


def _ct2_vocabulary(ct2_dir: Path) -> list[str] | None:
    """The token list CTranslate2 saved next to model.bin (vocabulary.json in new releases, .txt in old)."""
    if (ct2_dir / "vocabulary.json").is_file():
        return json.loads((ct2_dir / "vocabulary.json").read_text(encoding="utf-8"))
    if (ct2_dir / "vocabulary.txt").is_file():
        return (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
    return None


def _at(items: list, i: int):
    return items[i] if i < len(items) else None


def _first_difference(a: list, b: list) -> int | None:
    return next((i for i in range(max(len(a), len(b))) if _at(a, i) != _at(b, i)), None)


def write_tokenizer_json(ct2_dir: Path, out_dir: Path, vocab_size: int) -> list[str]:
    """tokenizer.json plus the timestamp tokens <|0.00|> ... up to the model's vocabulary (as CTranslate2's
    converter names them), checked token by token against CTranslate2's vocabulary file; → the special tokens."""
    from tokenizers import AddedToken, Tokenizer

    source = ct2_dir / "tokenizer.json"
    specials = [t["content"] for t in read_json(source).get("added_tokens", []) if t.get("special")]
    tokenizer = Tokenizer.from_file(str(source))
    n = tokenizer.get_vocab_size(with_added_tokens=True)
    if n > vocab_size or "<|notimestamps|>" not in specials:
        raise ModelError(f"'{source}' has {n} tokens for a model with {vocab_size} embeddings (or lacks "
                         f"<|notimestamps|>); it is not this Whisper model's tokenizer")
    tokenizer.add_tokens([AddedToken("<|%.2f|>" % (i * TIME_PRECISION), special=False, normalized=False)
                          for i in range(vocab_size - n)])
    expected = _ct2_vocabulary(ct2_dir)
    if expected is not None:
        ids = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
        got = [ids.get(i) for i in range(vocab_size)]
        bad = _first_difference(got, expected)
        if bad is not None:
            raise ModelError(f"'{source}' gives token {bad} as {_at(got, bad)!r} but CTranslate2's vocabulary has "
                             f"{_at(expected, bad)!r}; the tokenizer does not belong to this model")
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    return specials


def whisper_config(ct2: CT2Model, sd: dict[str, np.ndarray], tied: bool, token_ids: dict[str, int]):
    """The `WhisperConfig` implied by the tensor shapes and CTranslate2's head counts."""
    from transformers import WhisperConfig

    eot, sot = token_ids["<|endoftext|>"], token_ids["<|startoftranscript|>"]
    conv1 = sd["model.encoder.conv1.weight"]
    return WhisperConfig(
        vocab_size=sd["model.decoder.embed_tokens.weight"].shape[0], num_mel_bins=conv1.shape[1],
        d_model=conv1.shape[0], encoder_layers=num_layers(ct2, "encoder"), decoder_layers=num_layers(ct2, "decoder"),
        encoder_attention_heads=int(ct2.variables["encoder/num_heads"]),
        decoder_attention_heads=int(ct2.variables["decoder/num_heads"]),
        encoder_ffn_dim=sd["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=sd["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=sd["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=sd["model.decoder.embed_positions.weight"].shape[0],
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        # generation settings live in generation_config.json only (transformers 5 warns when both carry them)
        suppress_tokens=None, begin_suppress_tokens=None, tie_word_embeddings=tied,
        architectures=["WhisperForConditionalGeneration"])


def whisper_generation_config(config, ct2_config: dict, token_ids: dict[str, int]):
    """CTranslate2's config.json (suppress_ids, lang_ids, alignment_heads) in HF's Whisper generation config."""
    from transformers import GenerationConfig

    names = {i: t for t, i in token_ids.items()}
    lang_ids = ct2_config.get("lang_ids") or []
    if any(names.get(i) is None or names[i] in NON_LANG_SPECIALS for i in lang_ids):
        raise ModelError("CTranslate2 config.json lists lang_ids that are not language tokens of tokenizer.json")
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, max_length=config.max_target_positions,
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []),
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads") or []],
        is_multilingual=bool(lang_ids), lang_to_id={names[i]: i for i in lang_ids},
        task_to_id={t: token_ids[f"<|{t}|>"] for t in ("transcribe", "translate") if f"<|{t}|>" in token_ids},
        no_timestamps_token_id=token_ids["<|notimestamps|>"], prev_sot_token_id=token_ids.get("<|startofprev|>"),
        max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX, return_timestamps=False)


def _write_processor(out_dir: Path, specials: list[str], num_mel_bins: int, max_length: int) -> None:
    """tokenizer_config.json + preprocessor_config.json, re-saved through transformers so the files are its own."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    eot = "<|endoftext|>"
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "WhisperTokenizer", "bos_token": eot, "eos_token": eot, "unk_token": eot,
        "pad_token": eot, "additional_special_tokens": specials, "model_max_length": max_length,
        "add_prefix_space": False, "errors": "replace"}, indent=2) + "\n", encoding="utf-8")
    tokenizer = WhisperTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    features = WhisperFeatureExtractor(feature_size=num_mel_bins)
    WhisperProcessor(features, tokenizer).save_pretrained(str(out_dir))
    features.save_pretrained(str(out_dir))  # preprocessor_config.json too, for AutoFeatureExtractor and older readers


def _save_model(config, sd: dict[str, np.ndarray], out_dir: Path, dtype: str) -> None:
    """Load the tensors into a real HF model (names and shapes must match exactly) and save it as safetensors."""
    import torch
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(getattr(torch, dtype)) for k, v in sd.items()}
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    except RuntimeError as e:  # a shape that does not fit the config read from the other tensors
        raise ModelError(f"CTranslate2 Whisper weights have inconsistent shapes: "
                         f"{str(e).strip().splitlines()[-1][:160]}") from None
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "proj_out.weight")]
    if missing or unexpected:
        raise ModelError(f"CTranslate2 Whisper weights do not fit WhisperForConditionalGeneration: missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    model.save_pretrained(str(out_dir), safe_serialization=True)


def convert_ct2_whisper(ct2_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Convert a CTranslate2 Whisper folder into a transformers folder at `out_dir` (see the module docstring)."""
    if dtype not in ("float32", "float16"):
        raise ModelError(f"Whisper conversion dtype must be float32 or float16, not {dtype!r}")
    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    ct2 = read_model_bin(ct2_dir / "model.bin")
    sd, tied = whisper_state_dict(ct2, ct2_dir / "model.bin")
    ct2_config = read_json(ct2_dir / "config.json")
    vocab_size = sd["model.decoder.embed_tokens.weight"].shape[0]
    specials = write_tokenizer_json(ct2_dir, out_dir, vocab_size)
    token_ids = _token_ids(out_dir / "tokenizer.json")
    config = whisper_config(ct2, sd, tied, token_ids)
    _save_model(config, sd, out_dir, dtype)
    whisper_generation_config(config, ct2_config, token_ids).save_pretrained(str(out_dir))
    _write_processor(out_dir, specials, config.num_mel_bins, config.max_target_positions)
    return out_dir


def _token_ids(tokenizer_json: Path) -> dict[str, int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_json)).get_vocab(with_added_tokens=True)
