"""Shared by test_report / test_trackers / test_sweep: tiny NER and multi-label data."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from conftest import FILLER, NEGATIVE, POSITIVE, THREADS

NER_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "the visited with and met in at said today from john mary peter paris london new york acme globex , .").split()
PEOPLE, ORGS, PLACES = ["john", "mary", "peter"], ["acme", "globex"], [["paris"], ["london"], ["new", "york"]]
NER_FILLER = ["the", "visited", "with", "met", "said", "today", ",", "."]


def ner_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    words, tags = [], []
    for _ in range(rng.randint(2, 7)):
        r = rng.random()
        if r < 0.2:
            words.append(rng.choice(PEOPLE)), tags.append("B-PER")
        elif r < 0.35:
            place = rng.choice(PLACES)
            words.extend(place), tags.extend(["B-LOC"] + ["I-LOC"] * (len(place) - 1))
        elif r < 0.45:
            words.append(rng.choice(ORGS)), tags.append("B-ORG")
        else:
            words.append(rng.choice(NER_FILLER)), tags.append("O")
    return words, tags


def write_conll(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words, tags = ner_sentence(rng)
        lines += [f"{w} {t}" for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def ner_recipe(tmp_path_factory):
    """ner_recipe(**train) → recipe for a random-init 2-layer BERT token classifier on tiny CoNLL files."""
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    d = tmp_path_factory.mktemp("observe-ner")
    (d / "vocab.txt").write_text("\n".join(NER_VOCAB) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab=str(d / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(NER_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    BertForTokenClassification(config).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    write_conll(d / "train.txt", 120, 1)
    write_conll(d / "valid.txt", 30, 2)

    def make(**train) -> dict:
        return {"task": "token_classification", "model": {"name": str(d / "model")},
                "data": {"dir": str(d), "max_length": 16},
                "train": {"lr": 3e-3, "max_steps": 12, "batch_size": 16, "precision": "fp32", "threads": THREADS,
                          "schedule": "constant", "seed": 0, **train},
                "eval": {"every_steps": 6}, "output": {"progress": False, "report": False}}

    return make


def write_multilabel(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        labels = []
        for name, pool, on in (("pos", POSITIVE, i % 2 == 0), ("neg", NEGATIVE, i % 3 == 0)):
            if on:
                words.insert(rng.randint(0, len(words)), rng.choice(pool))
                labels.append(name)
        rows.append(json.dumps({"text": " ".join(words), "tags": labels}))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
