"""Golden runs: the safety net for refactoring. Four tiny runs (text, image, token classification, two-phase
fine_tune) must reproduce the recorded metrics.jsonl, summary.json (minus timings and paths) and final weights.

Float results depend on the CPU's kernels, so the exact comparison runs only on the CPU kind the values were
recorded on (its flag set is stored with them); elsewhere a loose comparison still catches a broken run.
Regenerate (only for a deliberate change of results, and say why in the commit):
    TUNEFORGE_GOLDEN_WRITE=1 pytest tests/test_golden.py"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import pytest

import tuneforge
from test_token_classification import VOCAB, write_conll

GOLDEN = Path(__file__).parent / "golden"
WRITE = os.environ.get("TUNEFORGE_GOLDEN_WRITE") == "1"
# summary.json fields that measure time, memory or the process, or hold machine-specific paths
VOLATILE = {"train_seconds", "eval_seconds", "samples_per_second", "tokens_per_second", "gflops_per_second",
            "peak_rss_mb", "rss_at_train_start_mb", "finished_at", "resumed_from_step", "model"}


def cpu_kind() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted(set(re.findall(r"\b(avx512_bf16|amx_bf16|avx512f|avx2)\b", text)))


def weights_sha256(run_dir: Path) -> str:
    from safetensors.torch import load_file

    tensors = load_file(str(run_dir / "model" / "model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def observed(run_dir: Path) -> dict:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    history = [{k: v for k, v in json.loads(line).items() if k not in ("wall_seconds", "rss_mb")} for line in lines]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"history": history, "summary": {k: v for k, v in summary.items() if k not in VOLATILE},
            "weights_sha256": weights_sha256(run_dir)}


def _close(a, b, path: str, errors: list[str]) -> None:
    """Loose comparison across CPU kinds: numbers within 5% (or 0.05 absolute), everything else equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a:
            if k in b:
                _close(a[k], b[k], f"{path}.{k}", errors)
            else:
                errors.append(f"{path}.{k} missing")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            errors.append(f"{path}: length {len(b)} != {len(a)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]", errors)
    elif isinstance(a, float) and isinstance(b, (int, float)):
        if not (math.isclose(a, b, rel_tol=0.05, abs_tol=0.05) or (math.isnan(a) and math.isnan(b))):
            errors.append(f"{path}: {b} vs recorded {a}")
    elif a != b and not (isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b)):
        errors.append(f"{path}: {b!r} vs recorded {a!r}")


def check(name: str, run_dir: Path) -> None:
    got = observed(run_dir)
    path = GOLDEN / f"{name}.json"
    if WRITE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps({"cpu": cpu_kind(), **got}, indent=1) + "\n")
        return
    want = json.loads(path.read_text())
    if want["cpu"] == cpu_kind():  # same kernels: bit-identical
        assert got["history"] == want["history"]
        assert {k: v for k, v in got["summary"].items() if k in want["summary"]} == want["summary"]
        assert got["weights_sha256"] == want["weights_sha256"]
        return
    errors: list[str] = []
    _close(want["history"], got["history"], "history", errors)
    _close(want["summary"], got["summary"], "summary", errors)
    assert not errors, f"{name}: {errors[:5]}"


@pytest.fixture()
def cold_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))


def test_golden_text(tmp_path, text_recipe, cold_cache):
    run = tuneforge.train(text_recipe(), output=str(tmp_path / "run"), quiet=True)
    check("text", run.run_dir)


def test_golden_image(tmp_path, image_recipe, timm_weights_file, cold_cache):
    run = tuneforge.train(image_recipe(timm_weights_file), output=str(tmp_path / "run"), quiet=True)
    check("image", run.run_dir)


def test_golden_two_phase(tmp_path, text_recipe, cold_cache):
    recipe = text_recipe(train={"max_steps": None, "epochs": 3, "head_epochs": 1, "gradual_unfreeze": True,
                                "schedule": "linear", "batch_size": 32}, eval={"every_steps": 2})
    run = tuneforge.train(recipe, output=str(tmp_path / "run"), quiet=True)
    check("two_phase", run.run_dir)


def test_golden_token_classification(tmp_path, cold_cache):
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    model_dir.mkdir()
    data_dir.mkdir()
    (model_dir / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab=str(model_dir / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    BertForTokenClassification(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    for name, n, seed in (("train.txt", 200, 1), ("valid.txt", 40, 2), ("test.txt", 30, 3)):
        write_conll(data_dir / name, n, seed)
    recipe = {"task": "token_classification", "model": {"name": str(model_dir)},
              "data": {"dir": str(data_dir), "max_length": 6},
              "train": {"lr": 3e-3, "max_steps": 40, "batch_size": 16, "precision": "fp32", "threads": 1,
                        "schedule": "constant", "seed": 0},
              "eval": {"every_steps": 20}, "output": {"progress": False, "report": False}}
    run = tuneforge.train(recipe, output=str(tmp_path / "run"), quiet=True)
    check("token_classification", run.run_dir)
