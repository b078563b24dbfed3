"""Shared fixtures: a tiny random-init BERT, a trivially learnable text task, a red-vs-blue image task,
and recipe builders for both. Everything is generated locally; nothing is downloaded."""
from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["good", "great", "fine", "nice", "lovely"]
NEGATIVE = ["bad", "awful", "poor", "boring", "terrible"]
FILLER = ["the", "movie", "film", "was", "is", "a", "really", "very", "plot", "acting", "story", "and", "with",
          "this", "it", "quite", "so", "of", "cast", "music", "ending", "script", "show", "scenes", "i", "thought",
          "found", "felt", "overall", "just", "too", "simply", "rather", "all", "in", "direction", "characters",
          "dialogue", "pace", "visuals", "performance", "but", "my", "friends", "said", "we", "watched", "last",
          "night", "its", "honestly", "truly", "pretty", "mostly", "an", "experience", "two", "hours", "at",
          "times", "seemed", "whole", "thing", "felt", "me", "to", "be", "one", "year", "sequel", "first", "part"]
PUNCT = [".", ",", "!", "?", "'", "-"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
TEST_WORDS = ["hello", "world", "second", "text"]

# Torch intra-op threads for every test run. 1, not 2: on a 2-core machine shared with other CPU-heavy jobs,
# 2 OpenMP threads spin-wait on each other and a 26k-parameter BERT step took 0.5 s instead of 0.02 s.
THREADS = int(os.environ.get("TUNEFORGE_TEST_THREADS", "1"))

# benchmarks/gpu_check.sh sets TUNEFORGE_TEST_DEVICE=cuda: the tiny tests then run on CUDA (the accelerator takes
# CUDA whenever it is visible), and a box where it is not visible fails here instead of passing on the CPU
if os.environ.get("TUNEFORGE_TEST_DEVICE") == "cuda":
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("TUNEFORGE_TEST_DEVICE=cuda, but torch sees no CUDA device")


def _vocab() -> list[str]:
    seen: dict[str, None] = {}
    for w in SPECIAL_TOKENS + POSITIVE + NEGATIVE + FILLER + TEST_WORDS + PUNCT + LETTERS:
        seen.setdefault(w, None)
    return list(seen)


def make_sentence(rng: random.Random, positive: bool) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 9))]
    words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if positive else NEGATIVE))
    return " ".join(words) + rng.choice([" .", "", " !"])


def write_sentiment_tsv(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    rows = ["sentence\tlabel"]
    for i in range(n):
        positive = i % 2 == 0
        rows.append(f"{make_sentence(rng, positive)}\t{1 if positive else 0}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def threads() -> int:
    return THREADS


# ------------------------------------------------------------------ models


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random-init BERT classifier + WordPiece tokenizer, in HF save_pretrained format."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-bert")
    vocab = _vocab()
    vocab_file = d / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5: the vocab file goes in `vocab=`; `vocab_file=` is silently ignored there (special tokens only).
    try:
        tok = BertTokenizerFast(vocab=str(vocab_file))
    except TypeError:  # transformers 4.x
        tok = BertTokenizerFast(vocab_file=str(vocab_file))
    if len(tok) != len(vocab):
        tok = BertTokenizerFast(vocab_file=str(vocab_file))
    assert len(tok) == len(vocab), "tiny tokenizer did not pick up vocab.txt"
    assert tok.unk_token_id not in tok("the movie was good")["input_ids"]
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    model = BertForSequenceClassification(config)
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    vocab_file.unlink()  # the saved tokenizer.json carries the vocabulary
    assert (d / "model.safetensors").is_file()
    return d


@pytest.fixture(scope="session")
def timm_weights_file(tmp_path_factory) -> Path:
    """State dict of a random-init timm `test_efficientnet` (1000-class head) as safetensors."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path_factory.mktemp("timm-weights") / "test_efficientnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# ------------------------------------------------------------------ data


@pytest.fixture(scope="session")
def text_data_dir(tmp_path_factory) -> Path:
    """train.tsv (120 rows) / dev.tsv (40 rows): label 1 iff the sentence holds a positive word."""
    d = tmp_path_factory.mktemp("text-data")
    write_sentiment_tsv(d / "train.tsv", 120, seed=1)
    write_sentiment_tsv(d / "dev.tsv", 40, seed=2)
    return d


def make_color_image(rng: np.random.Generator, color: str, size: int = 40) -> np.ndarray:
    arr = rng.integers(0, 90, size=(size, size, 3))
    channel = 0 if color == "red" else 2
    arr[..., channel] = rng.integers(150, 256, size=(size, size))
    return arr.astype(np.uint8)


@pytest.fixture(scope="session")
def image_data_dir(tmp_path_factory) -> Path:
    """ImageFolder tree train/{blue,red} (24 each) and val/{blue,red} (10 each) of noisy 40x40 PNGs."""
    from PIL import Image

    d = tmp_path_factory.mktemp("image-data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 10)):
        for color in ("red", "blue"):
            folder = d / split / color
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(make_color_image(rng, color)).save(folder / f"{color}_{i:03d}.png")
    return d


# ------------------------------------------------------------------ recipes


def _merge(base: dict, updates: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in updates.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


@pytest.fixture(scope="session")
def text_recipe(tiny_bert_dir, text_data_dir):
    """text_recipe(**sections) → recipe dict for the tiny BERT on the sentiment TSVs (sections merged in)."""

    def make(**updates) -> dict:
        base = {
            "task": "classification",
            "model": {"name": str(tiny_bert_dir)},
            "data": {"dir": str(text_data_dir), "text_column": "sentence", "max_length": 32},
            # a random-init BERT sits on a loss plateau (~0.693) for 20-40 steps before it finds the
            # sentiment word; 60 constant-lr steps get past it for every seed tried (0.5 s on one core)
            "train": {"lr": 3e-3, "max_steps": 60, "batch_size": 16, "precision": "fp32", "threads": THREADS,
                      "seed": 0, "schedule": "constant"},
            "eval": {"every_steps": 20},
            "output": {"progress": False, "report": False},
        }
        return _merge(base, updates)

    return make


@pytest.fixture(scope="session")
def image_recipe(image_data_dir):
    """image_recipe(weights=None, **sections) → recipe dict for a random-init timm test_efficientnet at 32 px."""

    def make(weights: Path | None = None, **updates) -> dict:
        model = {"name": "test_efficientnet", "source": "timm"}
        model.update({"weights": str(weights), "pretrained": True} if weights else {"pretrained": False})
        base = {
            "task": "classification",
            "model": model,
            "data": {"dir": str(image_data_dir), "image_size": 32, "augment": {"crop_scale": [0.5, 1.0]}},
            "train": {"lr": 3e-3, "max_steps": 15, "batch_size": 8, "precision": "fp32",
                      "threads": THREADS, "seed": 0, "schedule": "constant"},
            "eval": {"every_steps": 5},
            "output": {"progress": False, "report": False},
        }
        return _merge(base, updates)

    return make


@pytest.fixture
def crash_at(monkeypatch):
    """crash_at("step:6") → the next training raises KeyboardInterrupt there (a stand-in for a crash);
    crash_at(spec, action) for another chaos action; crash_at(None) disarms."""
    from tuneforge.engine import chaos

    def arm(spec: str | None, action: str = "interrupt") -> None:
        chaos.reset()
        if spec:
            monkeypatch.setenv(chaos.ENV, f"{spec}:{action}")
        else:
            monkeypatch.delenv(chaos.ENV, raising=False)
    yield arm
    chaos.reset()
