"""Tiny random speech models and synthetic clips for the speech tests and benchmarks' smoke checks.

Nothing is downloaded: a 64-wide Whisper (2 + 2 layers, a byte-level tokenizer with Whisper's special tokens,
the real WhisperFeatureExtractor) and a 32-wide AST classifier are built and saved with save_pretrained."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]  # ids 256..265
VOCAB = 300  # 256 bytes + 10 specials + room
TONES = {"low": 300.0, "mid": 900.0, "high": 2400.0}  # a class per tone
WORDS = {"low": "lo", "mid": "mi", "high": "hi"}  # ASR: a word per tone


def sine(freq: float, seconds: float, sr: int = 16000, amp: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, sr: int = 16000) -> str:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sr, subtype="PCM_16")
    return str(path)


def tone_tree(root: Path, per_class: dict[str, int], seconds=(0.3, 0.7)) -> Path:
    """root/{split}/{label}/*.wav with `per_class[split]` clips per tone, at 8 or 16 kHz."""
    for split, n in per_class.items():
        for label, freq in TONES.items():
            for i in range(n):
                sr = 8000 if i % 2 else 16000
                length = seconds[0] + (seconds[1] - seconds[0]) * ((i * 7) % n) / max(n - 1, 1)
                write_wav(root / split / label / f"{label}_{i}.wav", sine(freq, length, sr, seed=i), sr)
    return root


def tone_sentences(root: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """train.csv / val.csv of path,text: 1-3 tones in a row, the transcript one word per tone ("hi lo")."""
    rng = np.random.default_rng(seed)
    names = list(TONES)
    for split, n in (("train", n_train), ("val", n_val)):
        rows = ["path,text"]
        for i in range(n):
            seq = [names[j] for j in rng.integers(0, len(names), rng.integers(1, 4))]
            gap = np.zeros(1600, np.float32)
            wave = np.concatenate([x for name in seq for x in (sine(TONES[name], 0.25, seed=i), gap)])
            write_wav(root / "clips" / f"{split}_{i}.wav", wave)
            rows.append(f"clips/{split}_{i}.wav,{' '.join(WORDS[s] for s in seq)}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def _tokenizer_files(folder: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "WhisperTokenizer", "bos_token": SPECIALS[0], "eos_token": SPECIALS[0],
        "unk_token": SPECIALS[0], "pad_token": SPECIALS[0], "additional_special_tokens": SPECIALS}))


def tiny_whisper(folder: Path) -> Path:
    """A random WhisperForConditionalGeneration (d_model 64, 2 + 2 layers) with tokenizer, feature extractor and a
    generation config that knows the language and task tokens."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
                        max_source_positions=1500, max_target_positions=64, pad_token_id=256, bos_token_id=256,
                        eos_token_id=256, decoder_start_token_id=257, suppress_tokens=None,
                        begin_suppress_tokens=None)
    model = WhisperForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=257, eos_token_id=256, pad_token_id=256, bos_token_id=256, no_timestamps_token_id=265,
        lang_to_id={"<|en|>": 258, "<|de|>": 259}, task_to_id={"translate": 260, "transcribe": 261},
        is_multilingual=True, max_length=64)
    model.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    _tokenizer_files(folder)
    return folder


def tiny_ast(folder: Path, max_length: int = 128, n_mels: int = 32) -> Path:
    """A random AST audio classifier (hidden 32, 2 layers) on 1.28-s Kaldi fbank inputs, with its extractor."""
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(0)
    cfg = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    patch_size=16, frequency_stride=16, time_stride=16, max_length=max_length, num_mel_bins=n_mels,
                    num_labels=2)
    ASTForAudioClassification(cfg).save_pretrained(folder)
    ASTFeatureExtractor(num_mel_bins=n_mels, max_length=max_length).save_pretrained(folder)
    return folder
