"""Fine-tuning strategies on tiny models: freezing, feature cache, fine_tune phases, LoRA, imbalance, LR finder,
augmentation, layer-wise LR decay."""
from __future__ import annotations

import json
import random
import types

import pytest
import torch

from tuneforge.config import load_config
from tuneforge.data.sampling import EpochBatchSampler
from tuneforge.engine.optim import param_groups
from tuneforge.errors import ConfigError, DataError
from tuneforge.run import train

from chaos_helpers import history


def metrics_lines(run_dir):
    """metrics.jsonl without wall-clock and memory fields (they differ between identical runs)."""
    return history(run_dir)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))


def test_freeze_backbone_trains_only_the_head(text_recipe, tmp_path):
    r = train(text_recipe(train={"freeze": "backbone", "feature_cache": False, "max_steps": 10}),
              output=str(tmp_path / "run"), quiet=True)
    p = r.summary["params"]
    assert 0 < p["trainable"] < p["total"] / 10
    assert p["trainable"] == 32 * 2 + 2  # the classifier of the 32-wide tiny BERT


def test_freeze_pattern_that_matches_nothing_is_an_error(text_recipe, tmp_path):
    with pytest.raises(ConfigError, match="matches no parameter"):
        train(text_recipe(train={"freeze": ["no.such.module"]}), output=str(tmp_path / "run"), quiet=True)


def test_feature_cache_reproduces_uncached_head_training(text_recipe, tmp_path):
    recipe = dict(train={"freeze": "backbone", "max_steps": 30, "lr": 1e-2}, eval={"every_steps": 10})
    plain = train(text_recipe(**{**recipe, "train": {**recipe["train"], "feature_cache": False}}),
                  output=str(tmp_path / "plain"), quiet=True)
    cached = train(text_recipe(**recipe), output=str(tmp_path / "cached"), quiet=True)
    a, b = metrics_lines(plain.run_dir), metrics_lines(cached.run_dir)
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for x, y in zip(a, b):
        assert x["metrics"]["loss"] == pytest.approx(y["metrics"]["loss"], abs=1e-5)
        assert x["metrics"]["accuracy"] == y["metrics"]["accuracy"]
    assert "cached backbone features" in (cached.run_dir / "train.log").read_text()
    again = train(text_recipe(**recipe), output=str(tmp_path / "again"), quiet=True)
    assert "feature cache: hit" in (again.run_dir / "train.log").read_text()


def test_fine_tune_runs_a_head_phase_then_unfreezes(text_recipe, tmp_path):
    r = train(text_recipe(train={"head_epochs": 1, "epochs": 1, "max_steps": None}, eval={"every_steps": None}),
              output=str(tmp_path / "run"), quiet=True)
    assert r.summary["strategies"]["phases"] == ["head", "fine_tune"]
    log = (r.run_dir / "train.log").read_text()
    assert "phase head" in log and "phase fine_tune" in log
    assert len(metrics_lines(r.run_dir)) == 2  # one evaluation per epoch, one epoch per phase


def test_gradual_unfreezing_trains_more_groups_each_stage(text_recipe, tmp_path):
    r = train(text_recipe(train={"head_epochs": 1, "epochs": 3, "max_steps": None, "gradual_unfreeze": True},
                          eval={"every_steps": None}), output=str(tmp_path / "run"), quiet=True)
    assert r.summary["strategies"]["phases"] == ["head", "unfreeze_1", "unfreeze_2", "unfreeze_3"]
    log = (r.run_dir / "train.log").read_text()
    trainable = [int(line.split(" trainable /")[0].rsplit(" ", 1)[1].replace(",", ""))
                 for line in log.splitlines() if line.startswith("phase ") and " steps (" in line]
    assert len(trainable) == 4 and trainable == sorted(trainable) and len(set(trainable)) == 4
    assert trainable[-1] == r.summary["params"]["total"]  # the last stage trains everything
    assert "gradual unfreezing, the top" in log


def test_gradual_unfreezing_needs_a_head_phase(text_recipe, tmp_path):
    with pytest.raises(ConfigError, match="train.gradual_unfreeze"):
        train(text_recipe(train={"gradual_unfreeze": True}), output=str(tmp_path / "run"), quiet=True)


def test_lora_trains_saves_adapter_and_exports_merged(text_recipe, tmp_path):
    from transformers import AutoModelForSequenceClassification

    r = train(text_recipe(train={"lora": {"r": 4, "alpha": 8}, "max_steps": 20}), output=str(tmp_path / "run"),
              quiet=True)
    assert r.summary["params"]["trainable"] < r.summary["params"]["total"] / 3
    assert (r.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(r.run_dir / "model")
    assert not any("lora" in n for n in model.state_dict())
    assert r.summary["strategies"]["gradient_checkpointing"] is True  # auto: on with LoRA


@pytest.mark.parametrize("recipe", ["text_recipe", "image_recipe"])
def test_gradient_checkpointing_gives_the_same_training(recipe, request, tmp_path):
    """Recomputing activations in backward (dropout masks included) must not change what is learned."""
    make = request.getfixturevalue(recipe)
    runs = {on: train(make(train={"max_steps": 10, "gradient_checkpointing": on}, eval={"every_steps": 5}),
                      output=str(tmp_path / str(on)), quiet=True) for on in (False, True)}
    assert runs[True].summary["strategies"]["gradient_checkpointing"] is True
    assert runs[False].summary["strategies"]["gradient_checkpointing"] is False
    for a, b in zip(metrics_lines(runs[False].run_dir), metrics_lines(runs[True].run_dir)):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float) and "seconds" not in k and "per_second" not in k:
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k


def test_gradient_checkpointing_on_a_model_without_it(text_recipe, tmp_path, monkeypatch):
    from tuneforge.models.hf import HFBundle

    monkeypatch.setattr(HFBundle, "use_gradient_checkpointing", lambda self: False)
    with pytest.raises(ConfigError, match="gradient_checkpointing: false"):
        train(text_recipe(train={"gradient_checkpointing": True}), output=str(tmp_path / "a"), quiet=True)
    r = train(text_recipe(train={"lora": {"r": 4, "alpha": 8}, "max_steps": 5}), output=str(tmp_path / "b"),
              quiet=True)  # auto: LoRA still trains, with activations kept
    assert r.summary["strategies"]["gradient_checkpointing"] is False


def test_lora_with_unknown_target_modules_is_an_error(text_recipe, tmp_path):
    with pytest.raises(ConfigError, match="target_modules"):
        train(text_recipe(train={"lora": {"target_modules": ["nope"]}}), output=str(tmp_path / "run"), quiet=True)


def _imbalanced_dir(tmp_path, negatives: int = 6, positives: int = 60):
    from conftest import make_sentence

    rng = random.Random(0)
    d = tmp_path / "imb"
    d.mkdir()
    rows = [(make_sentence(rng, False), 0) for _ in range(negatives)] + \
        [(make_sentence(rng, True), 1) for _ in range(positives)]
    (d / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    dev = [(make_sentence(rng, i % 2 == 0), int(i % 2 == 0)) for i in range(20)]
    (d / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in dev))
    return d


def test_imbalance_auto_picks_class_weights_and_reports(text_recipe, tmp_path):
    d = _imbalanced_dir(tmp_path)
    r = train(text_recipe(data={"dir": str(d)}, train={"max_steps": 5}), output=str(tmp_path / "run"), quiet=True)
    report = json.loads((r.run_dir / "data_report.json").read_text())
    assert report["class_counts"] == {"0": 6, "1": 60} and report["imbalance_ratio"] == 10.0
    assert report["imbalance_remedy"] == "class_weights"
    assert "text_words" in report and "train_duplicates" in report and "val_in_train" in report
    assert "imbalance auto → class_weights" in (r.run_dir / "train.log").read_text()


@pytest.mark.parametrize("remedy", ["resample", "focal", "none"])
def test_each_imbalance_remedy_trains(text_recipe, tmp_path, remedy):
    d = _imbalanced_dir(tmp_path)
    r = train(text_recipe(data={"dir": str(d), "imbalance": remedy}, train={"max_steps": 5}),
              output=str(tmp_path / "run"), quiet=True)
    assert r.summary["data"]["imbalance_remedy"] == remedy
    assert "balanced_accuracy" in r.metrics and "per_class" in r.metrics


def test_resample_on_regression_is_an_error(text_recipe, tmp_path):
    with pytest.raises(ConfigError, match="needs class labels"):
        train(text_recipe(task="regression", data={"imbalance": "resample"}), output=str(tmp_path / "r"), quiet=True)


def test_class_without_training_examples_is_fatal_unless_allowed(text_recipe, tmp_path):
    recipe = text_recipe(data={"labels": ["0", "1", "2"]}, train={"max_steps": 3})
    with pytest.raises(DataError, match="no training example"):
        train(recipe, output=str(tmp_path / "a"), quiet=True)
    recipe["data"]["allow_empty_classes"] = True
    r = train(recipe, output=str(tmp_path / "b"), quiet=True)
    assert r.summary["params"]["total"] > 0


def test_weighted_sampler_is_seeded_and_follows_weights():
    w = [1.0] * 10 + [9.0] * 10  # the second half should be drawn ~9x as often
    s = EpochBatchSampler(20, 5, seed=3, weights=w)
    s.set_epoch(0)
    a = [i for b in s for i in b]
    s.set_epoch(0)
    assert a == [i for b in s for i in b] and len(a) == 20
    draws = []
    for e in range(50):
        s.set_epoch(e)
        draws += [i for b in s for i in b]
    heavy = sum(i >= 10 for i in draws) / len(draws)
    assert 0.8 < heavy < 0.98


def test_lr_auto_runs_the_range_test(text_recipe, tmp_path):
    r = train(text_recipe(train={"lr": "auto", "max_steps": 5}), output=str(tmp_path / "run"), quiet=True)
    assert isinstance(r.summary["lr"], float) and 1e-7 <= r.summary["lr"] <= 1.0
    assert (r.run_dir / "lr_find.png").stat().st_size > 1000


def test_image_augmentations_train(image_recipe, tmp_path):
    aug = {"crop_scale": [0.5, 1.0], "policy": "randaugment", "mixup": 0.2, "cutmix": 1.0, "random_erasing": 0.25}
    r = train(image_recipe(data={"augment": aug}), output=str(tmp_path / "run"), quiet=True)
    assert all(torch.isfinite(torch.tensor(x["train_loss"])) for x in metrics_lines(r.run_dir))


def test_layer_decay_gives_lower_lr_to_lower_layers(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    cfg = load_config({"model": "m", "data": {"dir": "x"}, "train": {"lr": 1e-3, "layer_decay": 0.5,
                                                                      "head_lr": 1e-2}})
    groups = param_groups(model, cfg.train, {"classifier.weight", "classifier.bias"})
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    emb = lr_of[id(named["bert.embeddings.word_embeddings.weight"])]
    top = lr_of[id(named["bert.encoder.layer.1.attention.self.query.weight"])]
    assert emb < top < 1e-3 + 1e-12 and lr_of[id(named["classifier.weight"])] == 1e-2


def test_lr_find_command_writes_plot_and_suggestion(text_recipe, tmp_path):
    import yaml

    from tuneforge.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(text_recipe()))
    assert main(["lr-find", str(recipe), "--output", str(tmp_path / "lr.png"), "--quiet"]) == 0
    assert (tmp_path / "lr.png").stat().st_size > 1000


def test_ema_weights_are_evaluated_and_kept(text_recipe, tmp_path):
    r = train(text_recipe(train={"ema": 0.9, "max_steps": 40}), output=str(tmp_path / "ema"), quiet=True)
    best = max(metrics_lines(r.run_dir), key=lambda x: x["metrics"]["accuracy"])
    assert r.summary["strategies"]["ema"] == 0.9
    assert r.metrics["loss"] == pytest.approx(
        next(x for x in metrics_lines(r.run_dir) if x["step"] == r.summary["best_step"])["metrics"]["loss"], abs=1e-6)
    plain = train(text_recipe(train={"max_steps": 40}), output=str(tmp_path / "plain"), quiet=True)
    # evaluation saw the averaged weights, not the live ones
    assert metrics_lines(plain.run_dir)[0]["metrics"]["loss"] != metrics_lines(r.run_dir)[0]["metrics"]["loss"]
    assert best["step"] in [x["step"] for x in metrics_lines(r.run_dir)]


def test_lora_default_targets_for_architectures_peft_does_not_know():
    """peft has no default for MPNet (the mpnet-base alias): tuneforge finds its q / v projections by name."""
    from transformers import BertConfig, BertForSequenceClassification, MPNetConfig, MPNetForSequenceClassification

    from tuneforge.engine.trainable import _default_targets

    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=50)
    assert _default_targets(BertForSequenceClassification(BertConfig(**small)), "classifier") is None  # peft's
    mpnet = MPNetForSequenceClassification(MPNetConfig(**small))
    assert _default_targets(mpnet, "classifier") == ["q", "v"]

    class Odd(torch.nn.Module):  # an HF-looking model whose attention names match nothing known
        def __init__(self):
            super().__init__()
            self.config = types.SimpleNamespace(model_type="odd")
            self.mix = torch.nn.Linear(4, 4)

    with pytest.raises(ConfigError, match="no default target modules for model type 'odd'.*mix"):
        _default_targets(Odd(), None)


def test_block_checkpointing_for_an_architecture_transformers_does_not_checkpoint():
    """MPNet (mpnet-base) has no checkpointing in transformers: tuneforge wraps its layers. Same loss and gradients
    (dropout on), far fewer saved activations, and a deep copy (EMA, export) stays bound to its own blocks."""
    import copy

    from transformers import MPNetConfig, MPNetForSequenceClassification

    from tuneforge.models.base import HeadSpec
    from tuneforge.models.hf import HFBundle

    torch.manual_seed(0)
    config = MPNetConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                         vocab_size=50)
    plain = MPNetForSequenceClassification(config)
    assert not plain.supports_gradient_checkpointing
    wrapped = copy.deepcopy(plain)
    bundle = HFBundle(model=wrapped, modality="text", source="hf", name="tiny-mpnet", head=HeadSpec(2, []))
    assert bundle.use_gradient_checkpointing()
    ids, labels = torch.randint(5, 50, (4, 12)), torch.tensor([0, 1, 0, 1])

    def step(model):
        model.train()
        torch.manual_seed(1)
        saved = [0]

        def pack(t):
            saved[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, saved[0]

    loss_a, grads_a, saved_a = step(plain)
    loss_b, grads_b, saved_b = step(wrapped)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], rtol=1e-5, atol=1e-6)
    assert saved_b < saved_a / 2, (saved_a, saved_b)
    twin = copy.deepcopy(wrapped)
    layer = twin.mpnet.encoder.layer[0]
    assert layer._unchecked_forward.__self__ is layer
