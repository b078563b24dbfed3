"""Pytest plugin for test_export / test_serve / test_browser: one tiny trained run per task kind, built once per
session (tiny random-init models from conftest, a few steps each) and exported to ONNX on demand."""
from __future__ import annotations

import json
import random
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import tuneforge
from conftest import FILLER, NEGATIVE, POSITIVE, THREADS

KINDS = ("text", "pair", "siamese", "ner", "multilabel", "image", "torchvision")


def _sentence(rng: random.Random, pool: list[str]) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
    words.insert(rng.randint(0, len(words)), rng.choice(pool))
    return " ".join(words)


def write_pairs(path: Path, n: int, seed: int) -> None:
    """score = 10 + 4 x (first positive) + 2 x (second positive); same = both texts have the same sentiment."""
    rng = random.Random(seed)
    rows = ["sentence1\tsentence2\tscore\tsame"]
    for i in range(n):
        a, b = i % 2 == 0, (i // 2) % 2 == 0
        rows.append(f"{_sentence(rng, POSITIVE if a else NEGATIVE)}\t{_sentence(rng, POSITIVE if b else NEGATIVE)}"
                    f"\t{10 + 4 * a + 2 * b}\t{int(a == b)}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def write_conll(path: Path, n: int, seed: int) -> None:
    """Positive words are POS entities, negative words NEG (one word each), filler is O."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        for w in _sentence(rng, POSITIVE + NEGATIVE).split():
            lines.append(f"{w} {'B-POS' if w in POSITIVE else 'B-NEG' if w in NEGATIVE else 'O'}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_multilabel(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words, tags = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))], []
        for name, pool, on in (("pos", POSITIVE, i % 2 == 0), ("neg", NEGATIVE, i % 3 == 0)):
            if on:
                words.insert(rng.randint(0, len(words)), rng.choice(pool))
                tags.append(name)
        rows.append(json.dumps({"text": " ".join(words), "tags": tags}))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def ship_dirs(tmp_path_factory):
    """Session cache folder (TUNEFORGE_CACHE) plus the data folders of the pair, NER and multi-label runs."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("ship")
    mp.setenv("TUNEFORGE_CACHE", str(root / "cache"))
    for name, writer, files in (("pairs", write_pairs, ("train.tsv", "dev.tsv")),
                                ("ner", write_conll, ("train.txt", "valid.txt")),
                                ("ml", write_multilabel, ("train.jsonl", "dev.jsonl"))):
        (root / name).mkdir()
        writer(root / name / files[0], 96, 1)
        writer(root / name / files[1], 24, 2)
    yield root
    mp.undo()


def _recipes(dirs: Path, text_recipe, image_recipe) -> dict:
    train = {"lr": 3e-3, "max_steps": 24, "batch_size": 16, "precision": "fp32", "threads": THREADS, "seed": 0,
             "schedule": "constant"}
    pairs = {"dir": str(dirs / "pairs"), "text_column": "sentence1", "text_pair_column": "sentence2",
             "max_length": 32}
    return {
        "text": text_recipe(),
        "pair": text_recipe(task={"type": "regression", "standardize": True}, train=train,
                            data={**pairs, "label_column": "score"}),
        "siamese": text_recipe(model={"pair_encoding": "siamese"}, train=train, data={**pairs, "label_column": "same"}),
        "ner": text_recipe(task="token_classification", train=train,
                           data={"dir": str(dirs / "ner"), "max_length": 16, "text_column": None}),
        "multilabel": text_recipe(task={"type": "multilabel", "threshold": "per_class"}, train=train,
                                  data={"dir": str(dirs / "ml"), "label_column": "tags", "text_column": None}),
        "image": image_recipe(train={"max_steps": 8}, eval={"every_steps": 4}),
        "torchvision": image_recipe(model={"name": "mobilenet_v3_small", "source": "torchvision"},
                                    train={"max_steps": 4}, eval={"every_steps": 4}),
    }


@pytest.fixture(scope="session")
def ship_run(ship_dirs, text_recipe, image_recipe):
    """ship_run(kind) → the run folder of that kind, trained on first use."""
    recipes, done = _recipes(ship_dirs, text_recipe, image_recipe), {}

    def get(kind: str) -> Path:
        if kind not in done:
            done[kind] = tuneforge.train(recipes[kind], output=str(ship_dirs / "runs" / kind), quiet=True).run_dir
        return Path(done[kind])

    return get


@pytest.fixture(scope="session")
def ship_export(ship_run):
    """ship_export(kind) → (run folder, manifest) of its ONNX export with int8, made on first use."""
    from tuneforge.export import export_onnx

    done: dict = {}

    def get(kind: str):
        if kind not in done:
            run = ship_run(kind)
            done[kind] = (run, export_onnx(run, quantize="dynamic", log=lambda *_: None))
        return done[kind]

    return get


@contextmanager
def running_server(app):
    """A real uvicorn serving `app` on a free loopback port, in a background thread → its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="session")
def live_server():
    """live_server(app) → a context manager giving the base URL of a real uvicorn serving app."""
    return running_server
