"""preset: auto (presets.py), train.time_budget (engine/budget.py), tuneforge plan (plan.py) and the pieces they
share (the adjustable LR horizon, the step timer, explicit recipe keys). Tiny random-init models, synthetic data."""
from __future__ import annotations

import json
import math
import time

import pytest
import torch

import tuneforge
from chaos_helpers import history
from tuneforge.cli import main
from tuneforge.config import ConfigError, explicit_keys, load_config, parse_duration
from tuneforge.engine.optim import Horizon, create_scheduler
from tuneforge.engine.timing import StepTimer
from tuneforge.presets import Facts, ModelFacts, choose, size_class

MINILM = ModelFacts("minilm-l6", "text", sentence_embedding=True, hidden=384, params=22_000_000)
EFFNET = ModelFacts("efficientnet-lite0", "image", input_size=224)


def facts(rows: int, modality: str = "text", **kw) -> Facts:
    base = dict(task="classification", modality=modality, rows=rows, val_rows=max(rows // 10, 1), classes=2,
                imbalance=1.0, words_p95=20 if modality == "text" else None,
                image_side=300 if modality == "image" else None, model=MINILM if modality == "text" else EFFNET)
    return Facts(**{**base, **kw})


def chosen(f: Facts, strategy=None) -> tuple[str, str, dict]:
    size, strategy, choices = choose(f, strategy)
    assert all(c.reason for c in choices), "every choice carries its reason"
    return size, strategy, {c.key: c.value for c in choices}


# ---------------------------------------------------------------- choice logic, one size class at a time


@pytest.mark.parametrize("rows,size", [(999, "tiny"), (1000, "small"), (9_999, "small"), (10_000, "medium"),
                                       (100_000, "large")])
def test_size_classes(rows, size):
    assert size_class(rows) == size


def test_tiny_images_get_a_linear_probe_on_cached_features_at_higher_resolution():
    size, strategy, c = chosen(facts(400, "image"))
    assert (size, strategy) == ("tiny", "linear_probe")
    assert c["train.freeze"] == "backbone" and c["data.augment.enabled"] is False  # cacheable features
    assert c["data.image_size"] == 288 and c["early_stopping.enabled"] and c["train.weight_decay"] > 0.01
    _, _, small_images = chosen(facts(400, "image", image_side=120))
    assert "data.image_size" not in small_images  # no upsampling for the probe


def test_small_images_fine_tune_with_augmentation_and_frozen_norm_stats():
    size, strategy, c = chosen(facts(1_600, "image"))
    assert (size, strategy) == ("small", "fine_tune")
    assert c["train.head_epochs"] == 1 and 0 < c["train.layer_decay"] < 1 and c["train.freeze_norm_stats"]
    assert c["data.augment.enabled"] is True and c["train.head_lr"] > c["train.lr"]
    _, _, large = chosen(facts(200_000, "image"))
    assert large["train.epochs"] < c["train.epochs"] and "train.freeze_norm_stats" not in large


def test_text_sizes_scale_epochs_batch_and_regularisation():
    epochs = {}
    for rows in (500, 5_000, 50_000, 500_000):
        size, strategy, c = chosen(facts(rows))
        assert strategy == "full_fine_tune" and c["train.lr"] == 1e-4  # hidden 384
        assert c["early_stopping.enabled"] and c["train.warmup_ratio"] > 0
        epochs[size] = c["train.epochs"]
        if size == "tiny":
            assert c["train.batch_size"] == 16 and c["train.weight_decay"] > 0.01 and "eval.every_steps" not in c
        else:
            assert c["train.batch_size"] == 32 and c["eval.every_steps"] == math.ceil(math.ceil(rows / 32) / 2)
    assert epochs["tiny"] > epochs["small"] > epochs["medium"] > epochs["large"]


def test_wider_models_take_smaller_lrs_and_big_ones_lora():
    wide = ModelFacts("m", "text", hidden=1024, params=300_000_000)
    assert chosen(facts(5_000, model=wide))[2]["train.lr"] == 2e-5
    huge = ModelFacts("m", "text", hidden=2048, params=1_300_000_000)
    _, strategy, c = chosen(facts(5_000, model=huge))
    assert strategy == "lora" and c["train.lora"]["r"] == 8 and c["train.lr"] > 1e-4


def test_similarity_pairs_on_a_sentence_embedding_model_go_siamese():
    _, _, c = chosen(facts(5_000, task="regression", pairs=True, classes=None))
    assert c["model.pair_encoding"] == "siamese" and c["task.standardize"] and c["train.lr"] < 1e-4
    _, _, plain = chosen(facts(5_000, task="classification", pairs=True))
    assert "model.pair_encoding" not in plain


def test_long_texts_get_a_longer_max_length():
    assert chosen(facts(5_000, words_p95=30))[2]["data.max_length"] == 128
    assert chosen(facts(5_000, words_p95=150))[2]["data.max_length"] == 256
    assert chosen(facts(5_000, words_p95=900))[2]["data.max_length"] == 512


def test_a_strategy_given_by_the_recipe_steers_the_other_rules():
    _, strategy, c = chosen(facts(5_000, "image"), "linear_probe")
    assert strategy == "linear_probe" and "train.freeze" not in c  # the recipe's own strategy keys stay
    assert c["train.lr"] == 1e-2 and "data.augment.crop_scale" not in c


WHISPER = ModelFacts("whisper-base", "audio", audio_window=True)


def test_speech_cuts_clips_and_the_encoder_window_to_the_data():
    size, strategy, c = chosen(facts(2_700, "audio", clip_p99=0.96, clip_max=2.3, model=WHISPER, words_p95=None))
    assert (size, strategy) == ("small", "full_fine_tune")
    assert c["data.max_seconds"] == 1.0 and c["model.audio_ctx"] == 50  # 1 s of Whisper's 30-s window
    assert c["train.lr"] == 5e-5 and c["train.head_lr"] == 1e-3 and c["train.batch_size"] == 16
    _, _, asr = chosen(facts(700, "audio", task="asr", classes=None, clip_p99=4.0, clip_max=5.2, model=WHISPER))
    assert asr["data.max_seconds"] == 6.0 and asr["model.audio_ctx"] == 300  # recognition keeps every clip whole
    assert "train.head_lr" not in asr and asr["train.epochs"] == 10  # no new head; tiny set
    spectrogram = ModelFacts("efficientnet-lite0", "audio", spectrogram_cnn=True)  # no window to cut
    _, _, cnn = chosen(facts(2_700, "audio", clip_p99=3.2, clip_max=9.0, model=spectrogram))
    assert cnn["data.max_seconds"] == 4.0 and "model.audio_ctx" not in cnn and cnn["train.lr"] == 1e-3
    _, _, ast = chosen(facts(2_700, "audio", clip_p99=3.2, clip_max=9.0, model=ModelFacts("ast", "audio")))
    assert "model.audio_ctx" not in ast and ast["train.lr"] == 5e-5  # a speech transformer: the width rule
    _, _, long = chosen(facts(2_700, "audio", clip_p99=40.0, clip_max=60.0, model=WHISPER))
    assert long["data.max_seconds"] == 30.0 and "model.audio_ctx" not in long  # the full window


def test_clip_seconds_read_from_headers(tmp_path):
    from speech_helpers import sine, write_wav
    from tuneforge.data.audio import clip_seconds

    paths = [write_wav(tmp_path / f"{i}.wav", sine(440.0, 0.25 * (i + 1), sr), sr)
             for i, sr in enumerate((8000, 16000, 22050))]
    (tmp_path / "bad.wav").write_bytes(b"not audio")  # left to decoding, which names it
    got = clip_seconds(paths + [str(tmp_path / "bad.wav"), (torch.zeros(8000).numpy(), 16000)])
    assert got == pytest.approx([0.25, 0.5, 0.75, 0.5], abs=1e-3)
    assert len(clip_seconds(paths * 10, limit=5)) <= 6  # a sample, evenly spread


# ---------------------------------------------------------------- explicit keys and durations


def test_explicit_keys_are_what_the_recipe_and_overrides_gave():
    cfg = load_config({"task": "classification", "model": "m", "data": {"dir": "d", "augment": {"hflip": False}},
                       "train": {"lr": 1e-3}}, ["train.epochs=2"])
    keys = explicit_keys(cfg)
    assert {"task.type", "model.name", "data.dir", "data.augment.hflip", "train.lr", "train.epochs"} <= keys
    assert "train.batch_size" not in keys and "data.augment.enabled" not in keys


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("20m", 1200), ("1.5h", 5400), ("600", 600), ("2 min", 120)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert load_config({"model": "m", "data": {"dir": "d"}, "train": {"time_budget": text}}).train.time_budget \
        == seconds


def test_a_bad_duration_names_the_key():
    with pytest.raises(ConfigError, match="train.time_budget"):
        load_config({"model": "m", "data": {"dir": "d"}, "train": {"time_budget": "soon"}})


# ---------------------------------------------------------------- horizon and timer


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_horizon_follows_transformers_schedules(schedule):
    cfg = load_config({"model": "m", "data": {"dir": "d"}, "train": {"schedule": schedule, "warmup_ratio": 0.1,
                                                                      "lr": 1.0}}).train
    p = [torch.nn.Parameter(torch.zeros(1))]
    ours = create_scheduler(torch.optim.SGD(p, lr=1.0), cfg, 50, Horizon(cfg, 50))
    theirs = create_scheduler(torch.optim.SGD(p, lr=1.0), cfg, 50)
    for _ in range(55):
        assert ours.get_last_lr()[0] == pytest.approx(theirs.get_last_lr()[0], abs=1e-12)
        ours.step()
        theirs.step()


def test_horizon_survives_the_scheduler_state_dict():
    cfg = load_config({"model": "m", "data": {"dir": "d"}}).train
    p = [torch.nn.Parameter(torch.zeros(1))]
    horizon = Horizon(cfg, 1000)
    sched = create_scheduler(torch.optim.SGD(p, lr=1.0), cfg, 1000, horizon)
    horizon.set(120, fixed=True)
    saved = json.loads(json.dumps(sched.state_dict()))  # what a checkpoint's trainer.json holds
    fresh = Horizon(cfg, 1000)
    create_scheduler(torch.optim.SGD(p, lr=1.0), cfg, 1000, fresh).load_state_dict(saved)
    assert (fresh.steps, fresh.fixed) == (120, True)


def test_step_timer_fits_cost_against_size_and_skips_warmup():
    timer = StepTimer(warmup=2)
    timer.add(9.0, 100)  # a slow first step: left out
    timer.add(9.0, 100)
    for size in (100, 200, 300, 400, 500, 600):
        timer.add(0.01 + 0.001 * size, size)
    est = timer.estimate(350)
    assert est.per_step == pytest.approx(0.36, rel=1e-6) and est.error < 1e-6 and est.measured == 6
    flat = StepTimer(warmup=0)
    for s in (1.0, 1.2, 0.8, 1.0):
        flat.add(s, 32)
    assert flat.estimate(32).per_step == pytest.approx(1.0) and 0 < flat.estimate(32).relative_error < 0.2


# ---------------------------------------------------------------- runs


def test_preset_auto_run_records_choices_and_keeps_explicit_keys(text_recipe, tmp_path):
    recipe = text_recipe(train={"max_steps": None, "lr": 3e-3, "schedule": "constant"}, eval={"every_steps": None})
    recipe["preset"] = "auto"
    r = tuneforge.train(recipe, output=str(tmp_path / "run"), quiet=True)
    preset = r.summary["preset"]
    assert preset["size_class"] == "tiny" and preset["strategy"] == "full_fine_tune"
    by_key = {c["key"]: c for c in preset["choices"]}
    assert by_key["train.lr"]["source"] == "recipe" and by_key["train.lr"]["value"] == 3e-3
    assert by_key["train.epochs"]["source"] == "preset" and r.summary["epochs"] <= by_key["train.epochs"]["value"]
    saved = (r.run_dir / "config.yaml").read_text()
    assert "preset: auto" in saved and "lr: 0.003" in saved
    log = (r.run_dir / "train.log").read_text()
    assert "preset auto: train.lr = 0.003  (kept from the recipe)" in log
    assert "preset auto: early_stopping.enabled = true" in log
    assert "preset auto: small data (120 examples) is handled: batches of 16" in log
    assert r.metrics["accuracy"] >= 0.9


def test_train_with_data_only_picks_model_and_preset(text_data_dir, tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(text_data_dir), "--task", "classification", "--model", str(tiny_bert_dir),
               "--output", str(out), "--quiet", "--set", "train.threads=1", "--set", "train.epochs=2",
               "--set", "output.report=false"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"]["strategy"] == "full_fine_tune" and summary["epochs"] <= 2
    assert main(["train", "--quiet"]) == 2 and "--data" in capsys.readouterr().err


def test_default_model_by_modality(text_data_dir, image_data_dir):
    assert load_config({"preset": "auto", "data": {"dir": str(text_data_dir)}}).model.name == "minilm-l6"
    assert load_config({"preset": "auto", "data": {"dir": str(image_data_dir)}}).model.name == "efficientnet-lite0"


def test_default_model_for_speech(tmp_path):
    from speech_helpers import tone_sentences, tone_tree

    tones = tone_tree(tmp_path / "tones", {"recordings": 2})
    auto = {"preset": "auto", "data": {"dir": str(tones), "train": "recordings"}}  # train: relative to dir
    assert load_config(auto).model.name == "whisper-base"
    asr = tone_sentences(tmp_path / "asr", 2, 1)  # tables of path,text: recognition wants a speech model
    assert load_config({"preset": "auto", "task": "asr", "data": {"dir": str(asr)}}).model.name == "whisper-base"
    with pytest.raises(ConfigError, match="missing"):
        load_config({"preset": "auto", "data": {"dir": str(tones), "train": "missing"}})


def test_time_budget_stops_in_time_and_keeps_the_best_model(text_recipe, tmp_path):
    tuneforge.train(text_recipe(train={"max_steps": 2}), output=str(tmp_path / "warm"), quiet=True)  # imports
    budget = 6.0
    recipe = text_recipe(train={"max_steps": None, "epochs": 1000, "time_budget": budget, "lr": 3e-3},
                         eval={"every_steps": 20})
    t0 = time.perf_counter()
    r = tuneforge.train(recipe, output=str(tmp_path / "run"), quiet=True)
    wall = time.perf_counter() - t0
    assert wall <= budget * 1.05 and wall >= budget * 0.6, wall
    tb = r.summary["time_budget"]
    assert tb["phases"][0]["horizon_steps"] < tb["phases"][0]["cap"]
    best = r.summary["best_metric"]
    assert r.metrics["accuracy"] == best  # the kept model is the best evaluation, not the last one
    assert "horizon fixed at" in (r.run_dir / "train.log").read_text()


def test_budgeted_resume_is_bit_identical(text_recipe, tmp_path, monkeypatch):
    """A crash after the horizon is fixed, then resume: the same steps, metrics and weights as the uninterrupted
    run. The clock is a fake one that ticks 10 ms per reading, so both runs measure the same step times."""
    import itertools

    from tuneforge.engine import chaos

    def run(name: str, crash: int | None = None):
        ticks = itertools.count()
        monkeypatch.setattr(time, "perf_counter", lambda: next(ticks) * 0.01)
        chaos.reset()
        if crash:
            monkeypatch.setenv(chaos.ENV, f"step:{crash}:interrupt")
        recipe = text_recipe(train={"max_steps": None, "epochs": 1000, "time_budget": 10.0, "lr": 3e-3},
                             eval={"every_steps": 10}, output={"keep_checkpoints": 3})
        try:
            return tuneforge.train(recipe, output=str(tmp_path / name), quiet=True)
        finally:
            monkeypatch.delenv(chaos.ENV, raising=False)
            chaos.reset()

    full = run("full")
    horizon = full.summary["time_budget"]["phases"][0]["horizon_steps"]
    assert 30 < horizon < full.summary["time_budget"]["phases"][0]["cap"] and full.summary["steps"] == horizon
    with pytest.raises(KeyboardInterrupt):
        run("crash", crash=horizon // 2 + 3)
    ticks = itertools.count()
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks) * 0.01)
    resumed = tuneforge.resume(tmp_path / "crash", quiet=True)
    assert resumed.summary["steps"] == horizon and resumed.summary["resumed_from_step"] == horizon // 2 // 10 * 10
    assert history(full.run_dir) == history(resumed.run_dir)
    from safetensors.torch import load_file

    a, b = (load_file(str(d / "model" / "model.safetensors")) for d in (full.run_dir, resumed.run_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- plan and lr: auto


def test_plan_estimates_without_training_or_writing(text_recipe, tmp_path, monkeypatch, capsys):
    from tuneforge.plan import plan

    monkeypatch.chdir(tmp_path)
    recipe = text_recipe(data={"max_length": 4}, train={"max_steps": None, "epochs": 2, "batch_size": 500,
                                                        "warmup_steps": 50, "lr": 0.5})
    p = plan(recipe)
    assert list(tmp_path.iterdir()) == []  # nothing written
    phase = p["phases"][0]
    assert phase["steps"] == 2 and phase["seconds_per_epoch"] > 0 and phase["measured_steps"] >= 1
    assert p["time"]["total_seconds"] >= p["time"]["startup_seconds"] > 0 and p["memory"]["peak_rss_mb"] > 100
    assert p["strategies"]["phases"] == ["train"]
    m = p["memory"]  # the batch-shape allowance is the measured cost per shape times the shapes plan did not run
    each = m["shapes"]
    assert each["train_mb_each"] >= 0 and each["eval_mb_each"] >= 0
    assert abs(m["shape_allowance_mb"] - each["train_new"] * each["train_mb_each"]
               - each["eval_new"] * each["eval_mb_each"]) <= 1
    text = " ".join(p["warnings"])
    for expected in ("max_length 4 cuts", "validation set has 40", "lr 0.5 is outside", "batch_size 500",
                     "warm-up steps"):
        assert expected in text, expected
    assert main(["plan", "--json", "/nonexistent.yaml"]) == 2


def test_batch_shape_is_the_collated_shape(text_recipe):
    """plan counts the run's batch shapes without building the batches: the collator's rounding to
    data.pad_to_multiple_of and its cap at max_length must come out the same, for train and validation."""
    from tuneforge.engine.timing import batch_shape, collate
    from tuneforge.run import prepare

    setup = prepare(load_config(text_recipe(data={"pad_to_multiple_of": 8, "max_length": 12})), lambda *_: None)
    for built, loader in ((setup.train_built, setup.train_loader), (setup.val_built, setup.val_loader)):
        batches = loader.batch_sampler.batches()
        widths = {batch_shape(built, b)[1] for b in batches}
        assert widths and all(w % 8 == 0 or w == 12 for w in widths)
        assert all(batch_shape(built, b) == tuple(collate(built, b)["input_ids"].shape) for b in batches)


def test_shape_cost_is_held_memory_per_new_shape(monkeypatch):
    """What a new batch shape keeps: the held RSS after the warm-up steps and after the rest, over the shapes
    the warm-up did not run (repeats count once); None without glibc's malloc_trim."""
    import tuneforge.plan as plan_module

    held = iter([100.0, 121.0])
    monkeypatch.setattr(plan_module, "held_rss_mb", lambda: next(held))
    probe = plan_module.ShapeCost([(16, 8), (16, 8), (16, 12), (16, 16), (16, 12), (16, 20)], warmup=2)
    for i in range(5):  # stopped early: (16, 20) never ran
        probe.on_step(i)
    assert probe.seen() == {(16, 8), (16, 12), (16, 16)}
    assert probe.mb_per_shape() == pytest.approx(10.5)
    monkeypatch.setattr(plan_module, "held_rss_mb", lambda: None)
    probe = plan_module.ShapeCost([(16, 8), (16, 12)], warmup=1)
    probe.on_step(0), probe.on_step(1)
    assert probe.mb_per_shape() is None


def test_plan_puts_weights_and_rng_back(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    from tuneforge.plan import restored

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with restored(model):
        for p in model.parameters():
            p.data.add_(torch.randn_like(p))
            p.requires_grad_(False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state()) and all(p.requires_grad for p in model.parameters())


def test_lr_auto_finds_a_head_lr_and_a_body_lr_for_fine_tune(text_recipe, tmp_path):
    r = tuneforge.train(text_recipe(train={"lr": "auto", "head_epochs": 1, "epochs": 1, "max_steps": None},
                                    eval={"every_steps": None}), output=str(tmp_path / "run"), quiet=True)
    tests = r.summary["lr_auto"]["tests"]
    assert set(tests) == {"head", "body"} and set(tests["body"]["suggestions"]) == {"steepest", "valley",
                                                                                   "minimum/10"}
    for test in tests.values():  # the suggestion, or the prior where the two are more than half a decade apart
        kept = test["guard"].startswith("within")
        assert test["used_lr"] == (test["suggested_lr"] if kept else float(test["guard"].split("prior ")[1].split()[0]))
    assert r.summary["lr"] == tests["body"]["used_lr"]
    assert r.summary["lr_auto"]["head_phase_lr"] == tests["head"]["used_lr"]
    log = (r.run_dir / "train.log").read_text()
    assert "lr-find (the new head)" in log and "cached backbone features" in log and "lr-find (body): lr" in log
    assert f"phase head: 8 steps (8/epoch), batch 16 x accum 1, adamw lr {tests['head']['used_lr']:g}" in log


def test_lr_auto_keeps_a_suggestion_only_near_the_prior():
    from tuneforge.engine.lr_find import guard

    assert guard(5.3e-5, 1e-4, "width")[0] == 5.3e-5 and guard(3e-4, 1e-4, "width")[0] == 3e-4
    lr, why = guard(5e-4, 2e-5, "siamese head")  # a head that starts good: the loss falls far past a fine-tuning LR
    assert lr == 2e-5 and "0.0005 is more than half a decade from the prior 2e-05 (siamese head)" in why
    assert guard(1e-6, 1e-4, "width")[0] == 1e-4


def test_lr_suggestions_on_synthetic_curves():
    from tuneforge.engine.lr_find import _minimum, _suggest, _valley

    lrs = [1e-7 * 1.2 ** i for i in range(80)]  # 1e-7 .. ~1.8e-1
    # flat, then falling from 1e-5, lowest near 1e-3, then blowing up; a noisy low first point (burn-in)
    losses = [0.5] + [2.0 if lr < 1e-5 else 2.0 - 0.4 * math.log10(lr / 1e-5) if lr < 1e-3 else
                      1.2 + 2 * math.log10(lr / 1e-3) for lr in lrs[1:]]
    assert 5e-4 < _minimum(lrs, losses) < 2e-3  # the low first point is not taken for the minimum
    assert 1e-5 <= _suggest(lrs, losses) < 1e-3
    head = [1e-5 * 1.2 ** i for i in range(70)]  # a new head: the loss falls from the start, then diverges
    falling = [1.0 - 0.2 * math.log10(lr / 1e-5) if lr < 1e-1 else 0.2 + 3 * math.log10(lr / 1e-1) for lr in head]
    assert 1e-4 < _valley(head, falling) < 3e-2


def test_preset_finds_the_label_column_of_a_table(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence1\tsentence2\tscore\na\tb\t1.0\n", encoding="utf-8")
    cfg = load_config({"preset": "auto", "task": "regression", "data": {"dir": str(tmp_path)}})
    assert cfg.data.label_column == "score" and cfg.model.name == "minilm-l6"
    given = load_config({"preset": "auto", "data": {"dir": str(tmp_path), "label_column": "x"}})
    assert given.data.label_column == "x"


@pytest.mark.parametrize("report, predicts, test_rows, passes", [
    (True, True, 0, 2.0), (True, False, 0, 1.0), (False, True, 0, 1.0), (True, True, 50, 2.5)])
def test_deadline_reserves_the_evaluation_passes_the_end_of_the_run_makes(report, predicts, test_rows, passes):
    """The report's pass over validation only when the task's report predicts (SFT's does not: it reserved an
    evaluation of 872 generations that never ran, and stopped 270 s early in a 1,500 s budget)."""
    from types import SimpleNamespace as NS

    from tuneforge.run import make_deadline

    setup = NS(val_built=NS(dataset=range(100)), test_built=NS(dataset=range(test_rows)) if test_rows else None,
               cfg=NS(output=NS(report=report), train=NS(time_budget=60.0)),
               task=NS(report_predictions=predicts), bundle=NS(model=torch.nn.Linear(2, 2)))
    deadline = make_deadline(setup, NS(resumed_wall_seconds=0.0), started=time.perf_counter())
    assert deadline.end_passes == passes
