"""End-to-end training of tiny models: learning, the run folder, determinism, save → load → predict."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import tuneforge
from tuneforge.config import load_config
from tuneforge.errors import ConfigError
from tuneforge.predict import Predictor

SUMMARY_KEYS = ("eval", "best_step", "train_seconds", "samples_per_second", "peak_rss_mb", "stop_reason", "steps")
CHANCE_LOSS = math.log(2)  # cross-entropy of a 50/50 guess on a balanced binary task


def quiet(*_a, **_k):
    pass


def metrics_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, text_recipe):
    return tuneforge.train(text_recipe(), output=str(tmp_path_factory.mktemp("runs") / "text"), quiet=True)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, image_recipe, timm_weights_file):
    # model.weights: a timm state dict with a 1000-class head; the head is replaced, the rest loaded
    return tuneforge.train(image_recipe(weights=timm_weights_file),
                           output=str(tmp_path_factory.mktemp("runs") / "image"), quiet=True)


# ------------------------------------------------------------------ learning


def assert_learnt(run) -> None:
    records = metrics_records(run.run_dir)
    assert len(records) >= 3
    first, last = records[0]["metrics"]["loss"], records[-1]["metrics"]["loss"]
    assert last < first, f"eval loss did not go down: {[r['metrics']['loss'] for r in records]}"
    assert run.metrics["loss"] < 0.5 * CHANCE_LOSS, run.metrics["loss"]
    assert run.metrics["accuracy"] >= 0.9, run.metrics["accuracy"]  # chance is 0.5
    assert all(math.isfinite(r["train_loss"]) for r in records)


def test_tiny_bert_learns(text_run):
    assert_learnt(text_run)
    assert text_run.summary["model"]["source"] == "hf"
    assert text_run.summary["tokens_per_second"] > 0


def test_tiny_timm_learns_from_weights_file(image_run):
    assert_learnt(image_run)
    assert image_run.summary["model"] == {"name": "test_efficientnet", "source": "timm"}
    log = (image_run.run_dir / "train.log").read_text()
    assert "loaded" in log and "pretrained tensors" in log and "classifier.weight" in log


def test_random_init_timm_trains(tmp_path, image_recipe):
    run = tuneforge.train(image_recipe(train={"max_steps": 4}, eval={"every_steps": 2}),
                          output=str(tmp_path / "run"), quiet=True)
    assert run.summary["steps"] == 4 and len(metrics_records(run.run_dir)) == 2
    assert load_config(str(run.run_dir / "config.yaml")).model.pretrained is False
    assert math.isfinite(run.metrics["loss"]) and run.summary["params"]["trainable"] == 99710


# ------------------------------------------------------------------ the run folder


@pytest.mark.parametrize("which", ["text_run", "image_run"])
def test_summary(which, request):
    run = request.getfixturevalue(which)
    summary = read_summary(run.run_dir)
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert summary == run.summary
    assert summary["eval"] == run.metrics
    for key in ("accuracy", "macro_f1", "loss", "balanced_accuracy"):
        assert isinstance(summary["eval"][key], float)
    assert 0.0 <= summary["eval"]["macro_f1"] <= 1.0
    assert summary["best_step"] in [r["step"] for r in metrics_records(run.run_dir)]
    assert summary["train_seconds"] > 0 and summary["samples_per_second"] > 0 and summary["peak_rss_mb"] > 0
    assert summary["stop_reason"].startswith("reached")
    assert summary["precision"] == "fp32"


@pytest.mark.parametrize("which, labels", [("text_run", ["0", "1"]), ("image_run", ["blue", "red"])])
def test_run_folder_contents(which, labels, request):
    run = request.getfixturevalue(which)
    d = run.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "train.log", "checkpoints/best.safetensors",
                 "model/labels.json", "model/tuneforge.json", "model/config.json", "model/model.safetensors"):
        assert (d / name).is_file(), name
    assert json.loads((d / "model" / "labels.json").read_text()) == labels
    assert len(list((d / "checkpoints").glob("step-*/trainer.json"))) == 1  # output.keep_checkpoints: 1
    assert not list(d.rglob("*.tmp"))  # atomic writes leave nothing behind
    cfg = load_config(str(d / "config.yaml"))  # the resolved recipe is itself a valid recipe
    assert cfg.train.seed == 0 and cfg.train.precision == "fp32"
    records = metrics_records(d)
    for r in records:
        for key in ("step", "epoch", "wall_seconds", "samples_seen", "train_loss", "metrics"):
            assert key in r, key
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and steps[-1] == run.summary["steps"]
    assert [r["samples_seen"] for r in records] == sorted(r["samples_seen"] for r in records)
    assert all(b["wall_seconds"] >= a["wall_seconds"] for a, b in zip(records, records[1:]))


def test_model_folder_holds_the_best_checkpoint(text_run):
    best = load_file(str(text_run.run_dir / "checkpoints" / "best.safetensors"))
    saved = load_file(str(text_run.run_dir / "model" / "model.safetensors"))
    shared = set(best) & set(saved)
    assert len(shared) >= len(saved) - 2
    for k in shared:
        assert torch.equal(best[k], saved[k]), k


# ------------------------------------------------------------------ determinism


def strip_times(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("wall_seconds", "rss_mb")} for r in records]


@pytest.mark.parametrize("which", ["text_run", "image_run"])
def test_same_seed_same_metrics(which, request, tmp_path, text_recipe, image_recipe, timm_weights_file):
    first = request.getfixturevalue(which)
    recipe = text_recipe() if which == "text_run" else image_recipe(weights=timm_weights_file)
    second = tuneforge.train(recipe, output=str(tmp_path / "again"), quiet=True)
    assert strip_times(metrics_records(second.run_dir)) == strip_times(metrics_records(first.run_dir))
    assert second.metrics == first.metrics


def test_different_seed_different_run(tmp_path, text_recipe, text_run):
    other = tuneforge.train(text_recipe(train={"seed": 1, "max_steps": 20}, eval={"every_steps": 20}),
                            output=str(tmp_path / "seed1"), quiet=True)
    assert metrics_records(other.run_dir)[0]["train_loss"] != metrics_records(text_run.run_dir)[0]["train_loss"]


# ------------------------------------------------------------------ save → load → predict


def test_text_predictor_reproduces_eval(text_run, text_data_dir):
    pred = Predictor(text_run.run_dir, log=quiet)
    again = pred.evaluate(text_data_dir / "dev.tsv")
    for key in ("accuracy", "loss", "macro_f1", "confusion_matrix", "samples"):
        assert again[key] == text_run.summary["eval"][key], key


def test_image_predictor_reproduces_eval(image_run, image_data_dir):
    pred = Predictor(image_run.run_dir, log=quiet)
    assert pred.modality == "image"
    again = pred.evaluate(image_data_dir / "val")
    for key in ("accuracy", "loss", "macro_f1", "confusion_matrix", "samples"):
        assert again[key] == image_run.summary["eval"][key], key


TEXTS = ["the movie was good", "an awful film", "it was really boring and too long", "a lovely story !",
         "hello world", "the plot was poor but the cast was fine", "great"]


def test_plain_transformers_loads_model_folder(text_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = text_run.run_dir / "model"
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    assert model.config.id2label == {0: "0", 1: "1"}
    with torch.no_grad():
        logits = model(**tok(TEXTS, padding=True, return_tensors="pt")).logits
    hf_labels = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    hf_probs = logits.softmax(-1)

    preds = Predictor(text_run.run_dir, log=quiet).predict(TEXTS)
    assert [p["label"] for p in preds] == hf_labels
    for p, probs in zip(preds, hf_probs):
        assert set(p["probabilities"]) == {"0", "1"}
        assert p["score"] == pytest.approx(float(probs.max()), abs=1e-4)
        assert p["probabilities"]["1"] == pytest.approx(float(probs[1]), abs=1e-4)
    # the model really separates the two kinds of sentence
    assert [p["label"] for p in preds[:4]] == ["1", "0", "0", "1"]


def test_predict_top_k_and_input_order(text_run):
    pred = Predictor(text_run.run_dir, log=quiet)
    texts = ["good", "bad " * 20, "fine fine", "awful"]  # different lengths: batching sorts them by length
    out = pred.predict(texts, top_k=1)
    assert [o["label"] for o in out] == ["1", "0", "1", "0"]
    assert all(len(o["probabilities"]) == 1 and o["probabilities"][o["label"]] == o["score"] for o in out)
    assert out == pred.predict(texts, top_k=1)


def test_plain_timm_loads_model_folder(image_run):
    import timm

    model_dir = image_run.run_dir / "model"
    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
    assert model.num_classes == 2
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architecture"] == "test_efficientnet"
    assert config.get("label_names") == ["blue", "red"]
    pred = Predictor(image_run.run_dir, log=quiet)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), pred.bundle.model(x), atol=1e-6)
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert list(data_cfg["mean"]) == pytest.approx(pred.bundle.image_cfg["mean"])


def test_image_predict_on_files(image_run, image_data_dir):
    pred = Predictor(image_run.run_dir, log=quiet)
    files = pred.read_inputs(image_data_dir / "val")
    assert len(files) == 20
    out = pred.predict(files, top_k=2)
    assert [o["label"] for o in out] == [Path(f).parent.name for f in files]
    assert all(sum(o["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) for o in out)


# ------------------------------------------------------------------ output folder, overrides, early stopping


def test_existing_output_folder(tmp_path, text_recipe):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError) as info:
        tuneforge.train(text_recipe(), output=str(out), quiet=True)
    assert "already exists" in str(info.value) and "--overwrite" in str(info.value)
    assert (out / "keep.txt").read_text() == "precious" and not (out / "config.yaml").exists()

    with pytest.raises(ConfigError, match="not a tuneforge run folder"):  # --overwrite never deletes user files
        tuneforge.train(text_recipe(), output=str(out), overwrite=True, quiet=True)
    assert (out / "keep.txt").read_text() == "precious"

    (out / "keep.txt").unlink()
    tuneforge.train(text_recipe(), output=str(out), quiet=True, train__max_steps=2, eval__every_steps=2)
    run = tuneforge.train(text_recipe(), output=str(out), overwrite=True, quiet=True,
                          train__max_steps=2, eval__every_steps=2, train__lr=1e-4)
    assert run.summary["steps"] == 2
    cfg = load_config(str(out / "config.yaml"))
    assert cfg.train.max_steps == 2 and cfg.train.lr == 1e-4


def test_empty_existing_output_folder_is_fine(tmp_path, text_recipe):
    out = tmp_path / "empty"
    out.mkdir()
    run = tuneforge.train(text_recipe(train={"max_steps": 1}, eval={"every_steps": 1}), output=str(out), quiet=True)
    assert run.run_dir == out and (out / "summary.json").is_file()


def test_output_dir_from_recipe(tmp_path, text_recipe):
    out = tmp_path / "from-recipe"
    run = tuneforge.train(text_recipe(train={"max_steps": 1}, eval={"every_steps": 1}, output={"dir": str(out)}),
                          quiet=True)
    assert run.run_dir == out and (out / "summary.json").is_file()


def test_early_stopping_at_target(tmp_path, text_recipe):
    run = tuneforge.train(text_recipe(train={"max_steps": 300}, eval={"every_steps": 10},
                                      early_stopping={"target": 0.9}), output=str(tmp_path / "es"), quiet=True)
    s = run.summary
    assert s["stop_reason"].startswith("target accuracy 0.9 reached"), s["stop_reason"]
    assert s["steps"] < 300
    records = metrics_records(run.run_dir)
    assert records[-1]["metrics"]["accuracy"] >= 0.9
    assert all(r["metrics"]["accuracy"] < 0.9 for r in records[:-1])


def test_early_stopping_patience(tmp_path, image_recipe):
    # min_delta above any possible accuracy gain: the second evaluation is already "no improvement"
    run = tuneforge.train(image_recipe(train={"max_steps": 50}, eval={"every_steps": 2},
                                       early_stopping={"enabled": True, "patience": 1, "min_delta": 1.0}),
                          output=str(tmp_path / "es"), quiet=True)
    assert run.summary["stop_reason"].startswith("early stopping")
    assert run.summary["steps"] == 4 and len(metrics_records(run.run_dir)) == 2


def test_eval_metric_choice_and_mode(tmp_path, text_recipe):
    run = tuneforge.train(text_recipe(train={"max_steps": 4}, eval={"every_steps": 2, "metric": "loss"}),
                          output=str(tmp_path / "loss"), quiet=True)
    records = metrics_records(run.run_dir)
    best = min(records, key=lambda r: r["metrics"]["loss"])
    assert run.summary["best_step"] == best["step"] and run.summary["metric"] == "loss"


def test_unknown_eval_metric(tmp_path, text_recipe):
    with pytest.raises(ConfigError) as info:
        tuneforge.train(text_recipe(train={"max_steps": 2}, eval={"every_steps": 2, "metric": "bleu"}),
                        output=str(tmp_path / "bleu"), quiet=True)
    assert "eval.metric 'bleu'" in str(info.value) and "accuracy" in str(info.value)


def test_skipped_rows_are_counted_in_summary(tmp_path, text_recipe, text_data_dir):
    data = tmp_path / "data"
    data.mkdir()
    lines = (text_data_dir / "train.tsv").read_text().splitlines()
    (data / "train.tsv").write_text("\n".join(lines[:3] + ["  \t1"] + lines[3:]) + "\n")
    (data / "dev.tsv").write_text((text_data_dir / "dev.tsv").read_text())
    run = tuneforge.train(text_recipe(data={"dir": str(data), "on_bad_sample": "skip"}, train={"max_steps": 1},
                                      eval={"every_steps": 1}), output=str(tmp_path / "run"), quiet=True)
    data = run.summary["data"]
    assert (data["train"], data["val"], data["skipped"]) == (120, 40, 1)


def test_val_split_when_no_val_file(tmp_path, text_recipe, text_data_dir):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text((text_data_dir / "train.tsv").read_text())
    run = tuneforge.train(text_recipe(data={"dir": str(data), "val_split": 0.25}, train={"max_steps": 1},
                                      eval={"every_steps": 1}), output=str(tmp_path / "run"), quiet=True)
    assert run.summary["data"]["train"] == 90 and run.summary["data"]["val"] == 30
    assert np.array(run.metrics["confusion_matrix"]).sum(axis=1).tolist() == [15, 15]  # stratified
