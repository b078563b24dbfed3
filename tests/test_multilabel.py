"""Multi-label classification: label parsing, threshold tuning, saved thresholds used by eval/predict, images."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import tuneforge
from conftest import FILLER, NEGATIVE, POSITIVE, THREADS, make_color_image
from tuneforge.errors import ConfigError, DataError
from tuneforge.predict import Predictor
from tuneforge.metrics import tune_thresholds
from tuneforge.tasks.multilabel import parse_labels


def quiet(*_a, **_k):
    pass


def write_rows(path: Path, n: int, seed: int) -> None:
    """Labels: pos (a positive word), neg (a negative word), music (the word music); some rows have none."""
    rng = random.Random(seed)
    filler = [w for w in FILLER if w != "music"]
    rows = []
    for i in range(n):
        words = [rng.choice(filler) for _ in range(rng.randint(3, 7))]
        labels = []
        for name, pool, on in (("pos", POSITIVE, i % 2 == 0), ("neg", NEGATIVE, i % 3 == 0),
                               ("music", ["music"], i % 5 == 0)):
            if on:
                words.insert(rng.randint(0, len(words)), rng.choice(pool))
                labels.append(name)
        rows.append(json.dumps({"text": " ".join(words), "tags": labels}))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def ml_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("multilabel")
    write_rows(d / "train.jsonl", 180, 1)
    write_rows(d / "dev.jsonl", 60, 2)
    return d


def recipe(model_dir, data_dir, **task) -> dict:
    return {"task": {"type": "multilabel", **task}, "model": {"name": str(model_dir)},
            "data": {"dir": str(data_dir), "label_column": "tags", "max_length": 24},
            "train": {"lr": 3e-3, "max_steps": 300, "batch_size": 16, "precision": "fp32", "threads": THREADS,
                      "seed": 0, "schedule": "constant"},
            "eval": {"every_steps": 100}, "output": {"progress": False, "report": False}}


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory, tiny_bert_dir, ml_dir):
    return tuneforge.train(recipe(tiny_bert_dir, ml_dir, threshold="per_class"),
                           output=str(tmp_path_factory.mktemp("runs") / "ml"), quiet=True)


def test_parse_labels():
    assert parse_labels(["b", "a", "b"], "|") == ["b", "a"]
    assert parse_labels("LOC|PER", "|") == ["LOC", "PER"]
    assert parse_labels(" x ; y ;", ";") == ["x", "y"]
    assert parse_labels('["LOC", "MISC"]', "|") == ["LOC", "MISC"]
    assert parse_labels("", "|") == [] and parse_labels([], "|") == [] and parse_labels(float("nan"), "|") == []


def test_threshold_tuning_global_and_per_class():
    p = np.array([[0.9, 0.35], [0.3, 0.32], [0.2, 0.05], [0.6, 0.31]])
    y = np.array([[1, 1], [0, 0], [0, 0], [1, 0]], dtype=bool)
    assert tune_thresholds(p, y, "global") == [0.35] * 2  # micro-F1 1.0 from 0.33 to 0.35: nearest to 0.5
    assert tune_thresholds(p, y, "per_class") == [0.5, 0.35]  # class 0: any of 0.31 .. 0.6
    y[:, 1] = False  # a class with no positive example keeps the global threshold
    assert tune_thresholds(p, y, "per_class") == [0.5, 0.5]  # global: any of 0.36 .. 0.6


def test_learns_and_counts_rows_without_labels(ml_run):
    s = ml_run.summary
    assert s["metric"] == "micro_f1"
    assert s["eval"]["micro_f1"] >= 0.75 and s["eval"]["macro_f1"] >= 0.75, s["eval"]  # chance: about 0.5
    assert s["data"]["train_rows_without_labels"] > 0 and s["data"]["val_rows_without_labels"] > 0
    assert "rows have no label" in (ml_run.run_dir / "train.log").read_text()
    assert {"subset_accuracy", "micro_f1_at_0.5"} <= set(s["eval"])


def test_thresholds_saved_and_reused_by_eval(ml_run, ml_dir):
    meta = json.loads((ml_run.run_dir / "model" / "tuneforge.json").read_text())
    saved = meta["task_state"]["thresholds"]
    assert meta["task_state"]["labels"] == ["music", "neg", "pos"] and len(saved) == 3
    assert saved == [ml_run.metrics["per_class"][k]["threshold"] for k in ("music", "neg", "pos")]
    pred = Predictor(ml_run.run_dir, log=quiet)
    again = pred.evaluate(ml_dir / "dev.jsonl")
    for k in ("micro_f1", "macro_f1", "subset_accuracy", "loss"):
        assert again[k] == ml_run.metrics[k], k
    pred.task.thresholds.values = [0.999] * 3  # eval really uses the task's thresholds, never re-tunes them
    assert pred.evaluate(ml_dir / "dev.jsonl")["micro_f1"] < again["micro_f1"]


def test_predict_applies_saved_thresholds(ml_run):
    pred = Predictor(ml_run.run_dir, log=quiet)
    saved = dict(zip(pred.task.labels, pred.task.thresholds.values))
    texts = ["the movie was good and the music was awful", "the plot was the plot", "a terrible film"]
    out = pred.predict(texts)
    # the tiny model has learnt the clear cues (mixed sentiment in one sentence is left to the thresholds below)
    assert "music" in out[0]["labels"] and "neg" in out[2]["labels"] and "music" not in out[2]["labels"]
    for row in out:
        assert row["labels"] == [k for k in pred.task.labels if row["scores"][k] >= saved[k]]
    pred.task.thresholds.values = [1.0 - 1e-9] * 3
    assert all(row["labels"] == [] for row in pred.predict(texts))
    pred.task.thresholds.values = [0.0] * 3
    assert all(row["labels"] == pred.task.labels for row in pred.predict(texts))


def test_fixed_threshold_is_not_tuned(tmp_path, tiny_bert_dir, ml_dir):
    r = recipe(tiny_bert_dir, ml_dir, threshold=0.4)
    r["train"]["max_steps"] = 4
    run = tuneforge.train(r, output=str(tmp_path / "run"), quiet=True)
    assert run.metrics["threshold"] == 0.4
    meta = json.loads((run.run_dir / "model" / "tuneforge.json").read_text())
    assert meta["task_state"]["thresholds"] == [0.4] * 3


def test_bad_threshold_value(tiny_bert_dir, ml_dir):
    with pytest.raises(ConfigError, match="task.threshold"):
        tuneforge.train(recipe(tiny_bert_dir, ml_dir, threshold=1.5), quiet=True)


def test_unknown_val_label_names_line(tmp_path, tiny_bert_dir, ml_dir):
    (tmp_path / "train.jsonl").write_text((ml_dir / "train.jsonl").read_text())
    (tmp_path / "dev.jsonl").write_text('{"text": "good", "tags": ["pos"]}\n{"text": "bad", "tags": ["angry"]}\n')
    with pytest.raises(DataError, match=r"dev.jsonl line 2: label 'angry' never appears in train"):
        tuneforge.train(recipe(tiny_bert_dir, tmp_path), output=str(tmp_path / "run"), quiet=True)


def test_delimited_string_labels_in_tsv(tmp_path, tiny_bert_dir):
    rows = ["good movie\tpos", "bad movie\tneg", "good and bad\tpos;neg", "the plot\t"]
    (tmp_path / "train.tsv").write_text("\n".join(["text\tlabels"] + rows * 4) + "\n")
    r = recipe(tiny_bert_dir, tmp_path)
    r["data"].update(label_column="labels", label_delimiter=";", val_split=0.25)
    r["train"]["max_steps"] = 2
    run = tuneforge.train(r, output=str(tmp_path / "run"), quiet=True)
    assert run.summary["eval"]["per_class"].keys() == {"neg", "pos"}
    assert run.summary["data"]["train_rows_without_labels"] + run.summary["data"]["val_rows_without_labels"] == 4


def test_image_multilabel(tmp_path, timm_weights_file):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 8)):
        rows = ["path,label"]
        for i in range(n):
            color = "red" if i % 2 else "blue"
            Image.fromarray(make_color_image(rng, color, 32)).save(tmp_path / f"{split}{i}.png")
            rows.append(f"{split}{i}.png,{color}|{'warm' if color == 'red' else 'cold'}")
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    r = {"task": "multilabel", "model": {"name": "test_efficientnet", "source": "timm",
                                         "weights": str(timm_weights_file)},
         "data": {"dir": str(tmp_path), "image_size": 32},
         "train": {"lr": 3e-3, "max_steps": 6, "batch_size": 8, "precision": "fp32", "threads": THREADS},
         "output": {"progress": False, "report": False}}
    run = tuneforge.train(r, output=str(tmp_path / "run"), quiet=True)
    assert set(run.metrics["per_class"]) == {"blue", "cold", "red", "warm"}
    out = Predictor(run.run_dir, log=quiet).predict([str(tmp_path / "val1.png")])
    assert set(out[0]["scores"]) == {"blue", "cold", "red", "warm"} and isinstance(out[0]["labels"], list)
    assert torch.isfinite(torch.tensor(run.metrics["loss"]))
