"""Regression (texts, text pairs, images): target checks, losses, standardisation round trip, metrics."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import tuneforge
from conftest import FILLER, NEGATIVE, POSITIVE, THREADS, make_color_image
from tuneforge.config import load_config
from tuneforge.errors import ConfigError, DataError
from tuneforge.predict import Predictor
from tuneforge.tasks import create_task
from tuneforge.metrics import RegressionMetrics


def quiet(*_a, **_k):
    pass


def sentence(rng: random.Random, positive: bool) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
    words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if positive else NEGATIVE))
    return " ".join(words)


def write_pairs(path: Path, n: int, seed: int) -> None:
    """score = 100 + 10 × (first text positive) + 5 × (second text positive): far from 0, so standardisation
    matters, and both texts of the pair count."""
    rng = random.Random(seed)
    rows = ["id\tsentence1\tsentence2\tscore"]
    for i in range(n):
        a, b = i % 2 == 0, (i // 2) % 2 == 0
        rows.append(f"{i}\t{sentence(rng, a)}\t{sentence(rng, b)}\t{100 + 10 * a + 5 * b:.3f}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pairs")
    write_pairs(d / "train.tsv", 160, 1)
    write_pairs(d / "dev.tsv", 40, 2)
    return d


def recipe(model_dir, data_dir, **task) -> dict:
    return {"task": {"type": "regression", **task}, "model": {"name": str(model_dir)},
            "data": {"dir": str(data_dir), "text_column": "sentence1", "text_pair_column": "sentence2",
                     "label_column": "score", "max_length": 40},
            "train": {"lr": 3e-3, "max_steps": 160, "batch_size": 16, "precision": "fp32", "threads": THREADS,
                      "seed": 0, "schedule": "constant"},
            "eval": {"every_steps": 40}, "output": {"progress": False, "report": False}}


@pytest.fixture(scope="module")
def std_run(tmp_path_factory, tiny_bert_dir, pair_dir):
    return tuneforge.train(recipe(tiny_bert_dir, pair_dir, standardize=True),
                           output=str(tmp_path_factory.mktemp("runs") / "reg"), quiet=True)


def test_pairs_learn_with_standardised_targets(std_run):
    assert std_run.summary["metric"] == "mse"  # the task's default: lower is better
    m = std_run.metrics
    assert m["pearson"] > 0.9 and m["spearman"] > 0.8 and m["mse"] < 10.0, m  # target variance is 31


def test_standardisation_saved_and_inverted_at_predict(std_run, pair_dir):
    meta = json.loads((std_run.run_dir / "model" / "tuneforge.json").read_text())
    train_y = np.loadtxt(pair_dir / "train.tsv", delimiter="\t", skiprows=1, usecols=3)
    assert meta["task_state"]["target_mean"] == pytest.approx(train_y.mean())
    assert meta["task_state"]["target_std"] == pytest.approx(train_y.std())
    pred = Predictor(std_run.run_dir, log=quiet)
    rows = [line.split("\t") for line in (pair_dir / "dev.tsv").read_text().splitlines()[1:]]
    out = pred.predict([(r[1], r[2]) for r in rows])
    values, gold = np.array([o["value"] for o in out]), np.array([float(r[3]) for r in rows])
    assert 95 < values.mean() < 120  # original units, not standardised ones
    assert np.mean((values - gold) ** 2) == pytest.approx(std_run.metrics["mse"], rel=1e-4)
    again = pred.evaluate(pair_dir / "dev.tsv")
    assert again["mse"] == std_run.metrics["mse"] and again["pearson"] == std_run.metrics["pearson"]


def test_metrics_undo_standardisation():
    m = RegressionMetrics(mean=10.0, std=2.0)
    y = torch.tensor([-1.0, 0.0, 1.0, 2.0])  # standardised targets: 8, 10, 12, 14
    m.update(torch.tensor([[-1.0], [0.5], [1.0], [2.0]]), {"labels": y}, 0.1)  # predictions: 8, 11, 12, 14
    out = m.compute()
    assert out["mse"] == pytest.approx(0.25) and out["mae"] == pytest.approx(0.25)
    assert out["spearman"] == pytest.approx(1.0) and 0.9 < out["pearson"] < 1.0
    const = RegressionMetrics()
    const.update(torch.zeros(3, 1), {"labels": torch.tensor([1.0, 2.0, 3.0])}, 0.0)
    assert const.compute()["pearson"] == 0.0  # undefined correlation is 0, never NaN


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity", "abc", ""])
def test_bad_target_names_file_and_line(tmp_path, tiny_bert_dir, pair_dir, bad):
    rows = (pair_dir / "train.tsv").read_text().splitlines()
    parts = rows[5].split("\t")
    rows[5] = "\t".join(parts[:3] + [bad])
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "dev.tsv").write_text((pair_dir / "dev.tsv").read_text())
    with pytest.raises(DataError, match=rf"train.tsv line 6: target '{bad}' in column 'score' is "):
        tuneforge.train(recipe(tiny_bert_dir, tmp_path), output=str(tmp_path / "run"), quiet=True)


def test_empty_pair_text_names_file_and_line(tmp_path, tiny_bert_dir, pair_dir):
    (tmp_path / "train.tsv").write_text((pair_dir / "train.tsv").read_text())
    rows = (pair_dir / "dev.tsv").read_text().splitlines()
    parts = rows[3].split("\t")
    rows[3] = "\t".join([parts[0], parts[1], " ", parts[3]])
    (tmp_path / "dev.tsv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"dev.tsv line 4: empty text in column 'sentence2'"):
        tuneforge.train(recipe(tiny_bert_dir, tmp_path), output=str(tmp_path / "run"), quiet=True)


@pytest.mark.parametrize("loss", ["huber", "l1"])
def test_other_losses_train(tmp_path, tiny_bert_dir, pair_dir, loss):
    r = recipe(tiny_bert_dir, pair_dir, loss=loss, standardize=True)
    r["train"]["max_steps"] = 10
    run = tuneforge.train(r, output=str(tmp_path / "run"), quiet=True)
    assert np.isfinite(run.metrics["mse"]) and run.summary["eval"]["samples"] == 40


def test_classification_loss_is_rejected(tmp_path, tiny_bert_dir, pair_dir):
    r = recipe(tiny_bert_dir, pair_dir, loss="cross_entropy")
    r["train"]["max_steps"] = 2
    with pytest.raises(ConfigError, match="task.loss 'cross_entropy' does not fit task 'regression'"):
        tuneforge.train(r, output=str(tmp_path / "run"), quiet=True)


def test_pearson_can_pick_the_model(tmp_path, tiny_bert_dir, pair_dir):
    r = recipe(tiny_bert_dir, pair_dir)
    r["train"]["max_steps"] = 4
    r["eval"] = {"every_steps": 2, "metric": "pearson"}
    run = tuneforge.train(r, output=str(tmp_path / "run"), quiet=True)
    records = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert run.summary["best_metric"] == max(x["metrics"]["pearson"] for x in records)
    cfg = load_config(r)
    assert create_task(cfg, quiet).metric_mode("pearson") == "max"
    assert create_task(cfg, quiet).metric_mode("mae") == "min"


def test_image_regression(tmp_path, timm_weights_file):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 8)):
        rows = ["path,redness"]
        for i in range(n):
            color = "red" if i % 2 else "blue"
            Image.fromarray(make_color_image(rng, color, 32)).save(tmp_path / f"{split}{i}.png")
            rows.append(f"{split}{i}.png,{1.0 if color == 'red' else 0.0}")
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    r = {"task": "regression", "model": {"name": "test_efficientnet", "source": "timm",
                                         "weights": str(timm_weights_file)},
         "data": {"dir": str(tmp_path), "label_column": "redness", "image_size": 32},
         "train": {"lr": 3e-3, "max_steps": 6, "batch_size": 8, "precision": "fp32", "threads": THREADS},
         "output": {"progress": False, "report": False}}
    run = tuneforge.train(r, output=str(tmp_path / "run"), quiet=True)
    out = Predictor(run.run_dir, log=quiet).predict([str(tmp_path / "val0.png")])
    assert np.isfinite(run.metrics["mse"]) and isinstance(out[0]["value"], float)


def test_pair_swap_doubles_train_pairs_only(tiny_bert_dir, pair_dir):
    from tuneforge.models import create_model

    cfg = load_config(recipe(tiny_bert_dir, pair_dir))
    cfg.data.pair_swap = True
    task = create_task(cfg, quiet)
    train, val, _ = task.read_examples("text")
    task.fit_labels(train, val)
    bundle = create_model(cfg.model, task.head_spec(), log=quiet)
    built, val_built = task.build(train, bundle, "train"), task.build(val, bundle, "val")
    assert len(built.dataset) == 2 * len(train) and len(val_built.dataset) == len(val)
    a, b = built.dataset[0], built.dataset[len(train)]
    sep = bundle.tokenizer.sep_token_id
    first = a["input_ids"][1:a["input_ids"].index(sep)]
    assert b["input_ids"][-len(first) - 1:-1] == first and a["labels"] == b["labels"]  # (b, a) with a's target


def test_siamese_pairs_train_save_and_predict(tmp_path, tiny_bert_dir, pair_dir):
    r = recipe(tiny_bert_dir, pair_dir, standardize=True)
    r["model"]["pair_encoding"] = "siamese"
    r["train"]["max_steps"] = 6
    run = tuneforge.train(r, output=str(tmp_path / "run"), quiet=True)
    assert (run.run_dir / "model" / "siamese_head.safetensors").is_file()
    pred = Predictor(run.run_dir, log=quiet)
    a, b = "the movie was good", "a film with a very long plot and great acting and music"
    ab, ba = (o["value"] for o in pred.predict([(a, b), (b, a)]))
    assert ab == pytest.approx(ba, abs=1e-4)  # each side encoded alone: the order does not matter
    assert pred.evaluate(pair_dir / "dev.tsv")["mse"] == pytest.approx(run.metrics["mse"], rel=1e-6)


def test_siamese_head_starts_as_cosine():
    from transformers import BertConfig, BertModel

    from tuneforge.models.siamese import SiamesePairModel

    torch.manual_seed(0)
    enc = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32))
    model = SiamesePairModel(enc, 1).eval()
    ids, mask = torch.tensor([[2, 7, 9, 3]]), torch.ones(1, 4, dtype=torch.long)
    ids2, mask2 = torch.tensor([[2, 11, 3, 0]]), torch.tensor([[1, 1, 1, 0]])
    with torch.no_grad():
        out = model(ids, mask, ids2, mask2)
        cos = torch.cosine_similarity(model.embed(ids, mask), model.embed(ids2, mask2))
    assert out.item() == pytest.approx(cos.item(), abs=1e-6)


def test_siamese_needs_pairs(tmp_path, tiny_bert_dir, text_data_dir):
    r = {"task": "regression", "model": {"name": str(tiny_bert_dir), "pair_encoding": "siamese"},
         "data": {"dir": str(text_data_dir), "text_column": "sentence"},
         "train": {"max_steps": 1, "precision": "fp32", "threads": THREADS}, "output": {"progress": False, "report": False}}
    with pytest.raises(ConfigError, match="siamese needs text pairs"):
        tuneforge.train(r, output=str(tmp_path / "run"), quiet=True)
