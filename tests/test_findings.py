"""One regression test per finding of the reliability review (../shared/reviews/reliability-review.md, at 79d6cee).

Each test uses the public surface (CLI, `tuneforge.train`, `Predictor`, a few documented functions) so that the
same file can be run against the reviewed commit, where every one of them fails."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import tuneforge
from tuneforge.cli import main
from tuneforge.engine import chaos

from chaos_helpers import history
from tuneforge.errors import ConfigError, ModelError

QUICK = {"train": {"max_steps": 4, "batch_size": 16}, "eval": {"every_steps": 2}}


def cli(argv: list[str], capsys) -> tuple[int, list[str], list[str]]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.strip().splitlines()


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path






def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------ 1. predict keeps one output per input


def test_finding_01_predict_with_an_unreadable_image_keeps_alignment(tmp_path, image_recipe, image_data_dir,
                                                                     capsys):
    import shutil

    run = tuneforge.train(image_recipe(data={"on_bad_sample": "skip"}, train={"max_steps": 3}),
                          output=str(tmp_path / "img"), quiet=True).run_dir
    pred = tmp_path / "pred"
    pred.mkdir()
    reds, blues = sorted((image_data_dir / "val" / "red").iterdir()), sorted((image_data_dir / "val" / "blue").iterdir())
    for name, src in (("a_red.png", reds[0]), ("b_blue.png", blues[0]), ("d_red.png", reds[1]),
                      ("e_blue.png", blues[1])):
        shutil.copy(src, pred / name)
    (pred / "c_bad.png").write_text("not an image")
    (pred / "._a_red.png").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork: not an input at all
    code, out, err = cli(["predict", run, "--input", pred], capsys)
    rows = [json.loads(x) for x in out]
    assert [Path(r["input"]).name for r in rows] == ["a_red.png", "b_blue.png", "c_bad.png", "d_red.png", "e_blue.png"]
    assert "error" in rows[2] and "label" not in rows[2]
    assert code == 2 and len(err) == 1 and "1 of 5" in err[0]
    for r in rows[:2] + rows[3:]:  # each prediction is the one for its own file
        _, alone, _ = cli(["predict", run, "--image", r["input"]], capsys)
        assert json.loads(alone[0])["probabilities"] == r["probabilities"]


# ------------------------------------------------------------------ 2. --overwrite deletes only a tuneforge run


def test_finding_02_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path, text_recipe, monkeypatch):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("my thesis")
    with pytest.raises(ConfigError, match="not a tuneforge run folder"):
        tuneforge.train(text_recipe(**QUICK), output=str(precious), overwrite=True, quiet=True)
    assert (precious / "thesis.txt").read_text() == "my thesis"
    (precious / "config.yaml").write_text("task: classification\n")  # looks like a run, but holds a user file
    with pytest.raises(ConfigError, match="thesis.txt"):
        tuneforge.train(text_recipe(**QUICK), output=str(precious), overwrite=True, quiet=True)
    monkeypatch.chdir(precious)
    with pytest.raises(ConfigError):
        tuneforge.train(text_recipe(**QUICK), output=".", overwrite=True, quiet=True)
    assert (precious / "thesis.txt").read_text() == "my thesis"


# ------------------------------------------------------------------ 3. a failed run keeps what it trained


def test_finding_03_an_error_after_training_started_keeps_the_run(tmp_path, text_recipe, crash_at, capsys):
    crash_at("step:10", "oom")
    recipe = write_recipe(tmp_path / "r.yaml", text_recipe(train={"max_steps": 20}, eval={"every_steps": 2},
                                                          output={"keep_checkpoints": 0}))
    code, _, err = cli(["train", recipe, "--output", tmp_path / "keep0", "--quiet"], capsys)
    assert code == 2 and "out of memory" in err[0]
    run = tmp_path / "keep0"
    assert (run / "checkpoints" / "best.safetensors").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4 and (run / "train.log").is_file()


# ------------------------------------------------------------------ 4. multi-phase resume is bit-identical


PHASES = {"train": {"max_steps": None, "epochs": 3, "head_epochs": 1, "gradual_unfreeze": True, "batch_size": 32,
                    "schedule": "linear"}, "eval": {"every_steps": 2}}


def test_finding_04_multi_phase_resume_keeps_every_phase_whole(tmp_path, text_recipe, crash_at, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    ref = tuneforge.train(text_recipe(**PHASES), output=str(tmp_path / "ref"), quiet=True)
    crash_at("step:7")  # inside unfreeze_1, one step after the step-6 checkpoint
    with pytest.raises(KeyboardInterrupt):
        tuneforge.train(text_recipe(**PHASES), output=str(tmp_path / "kill"), quiet=True)
    crash_at(None)
    again = tuneforge.resume(tmp_path / "kill", quiet=True)
    assert again.summary["steps"] == ref.summary["steps"]
    assert history(again.run_dir) == history(ref.run_dir) and same_weights(again.run_dir, ref.run_dir)


# ------------------------------------------------------------------ 5. the feature cache leaves the RNG alone


def test_finding_05_cold_and_warm_feature_cache_train_identically(tmp_path, text_recipe, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    cold = tuneforge.train(text_recipe(**PHASES), output=str(tmp_path / "cold"), quiet=True)
    warm = tuneforge.train(text_recipe(**PHASES), output=str(tmp_path / "warm"), quiet=True)
    assert "feature cache: hit" in (warm.run_dir / "train.log").read_text()
    assert history(cold.run_dir) == history(warm.run_dir) and same_weights(cold.run_dir, warm.run_dir)


# ------------------------------------------------------------------ 6 and 7. cache keys: what is actually fed


def _pairs_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pairs"
    d.mkdir()
    rows = ["sentence1\tsentence2\tscore"] + [f"the movie was {a}\tthe film is {b}\t{i % 5}"
                                            for i, (a, b) in enumerate([("good", "great"), ("bad", "fine")] * 12)]
    (d / "train.tsv").write_text("\n".join(rows) + "\n")
    (d / "dev.tsv").write_text("\n".join(rows[:9]) + "\n")
    return d


def test_finding_06_feature_cache_key_sees_pair_swap(tmp_path, text_recipe, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    recipe = text_recipe(task={"type": "regression"}, data={"dir": str(_pairs_dir(tmp_path)), "text_column": None,
                                                            "label_column": "score", "pair_swap": True},
                         train={"freeze": "backbone", "max_steps": 3}, eval={"every_steps": 3})
    swapped = tuneforge.train(recipe, output=str(tmp_path / "swap"), quiet=True)
    plain = tuneforge.train(recipe, output=str(tmp_path / "plain"), quiet=True, data__pair_swap=False)
    assert swapped.summary["data"]["train"] == 48 and plain.summary["data"]["train"] == 24
    assert "feature cache: stored" in (plain.run_dir / "train.log").read_text()  # a different key: no reuse


def test_finding_07_token_cache_separates_texts_from_pairs(tmp_path, tiny_bert_dir, monkeypatch):
    from transformers import AutoTokenizer

    from tuneforge.data.text import tokenize_texts

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("tuneforge.data.text.DISK_CACHE_MIN_TEXTS", 1, raising=False)  # cache even 4 texts
    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    texts, pairs = ["good film", "bad film"], ["a movie", "the plot"]
    tokenize_texts(tok, texts + pairs, None, 32)  # siamese + pair_swap: side A
    joint = tokenize_texts(tok, texts, pairs, 32)  # a cross-encoder on the same data
    assert len(joint["input_ids"]) == 2 and joint["input_ids"][0].count(tok.sep_token_id) == 2


# ------------------------------------------------------------------ 8. one writer per run folder


def _paused_run(tmp_path: Path, text_recipe) -> tuple[subprocess.Popen, Path]:
    run = tmp_path / "live"
    recipe = write_recipe(tmp_path / "live.yaml", text_recipe(train={"max_steps": 200}, eval={"every_steps": 2}))
    marker = tmp_path / "paused"
    env = {**os.environ, chaos.ENV: "step:5:pause", chaos.MARKER_ENV: str(marker), "PYTHONPATH": os.pathsep.join(
        [str(Path(tuneforge.__file__).parent.parent)] + sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge", "train", str(recipe), "--output", str(run),
                             "--quiet"], env=env)
    for _ in range(600):
        if marker.exists():
            return proc, run
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the first run never reached step 5")


def test_finding_08_a_live_run_folder_refuses_a_second_writer(tmp_path, text_recipe, capsys):
    proc, run = _paused_run(tmp_path, text_recipe)
    try:
        recipe = write_recipe(tmp_path / "live.yaml", text_recipe(train={"max_steps": 200},
                                                                   eval={"every_steps": 2}))
        for extra in (["--resume"], ["--overwrite"]):
            code, _, err = cli(["train", recipe, "--output", run, "--quiet", *extra], capsys)
            assert code == 2 and len(err) == 1 and f"in use by process {proc.pid}" in err[0]
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # untouched by the second writer
    finally:
        proc.kill()
        proc.wait()
    resumed = tuneforge.train(text_recipe(train={"max_steps": 200}, eval={"every_steps": 2}), output=str(run),
                              resume=True, quiet=True, train__max_steps=200)  # the killed holder's lock is stale
    assert resumed.summary["steps"] == 200 and "stale lock" in (run / "train.log").read_text()


def test_finding_08_runs_started_in_the_same_second_get_their_own_folders(tmp_path, text_recipe, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = text_recipe(**QUICK, output={"name": "same"})
    a = tuneforge.train(recipe, quiet=True).run_dir
    b = tuneforge.train(recipe, quiet=True).run_dir
    assert a != b and a.parent == b.parent == Path("runs")


# ------------------------------------------------------------------ 9. resume checks data and environment


def test_finding_09_resume_refuses_changed_data(tmp_path, text_recipe, text_data_dir, crash_at, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(text_data_dir, data)
    recipe = write_recipe(tmp_path / "r.yaml", text_recipe(data={"dir": str(data)}, train={"max_steps": 12},
                                                           eval={"every_steps": 4}))
    crash_at("step:6")
    with pytest.raises(KeyboardInterrupt):
        tuneforge.train(str(recipe), output=str(tmp_path / "run"), quiet=True)
    crash_at(None)
    with (data / "train.tsv").open("a") as f:
        f.write("a brand new row that was not there\t2\n")  # a new row, with a new label
    code, _, err = cli(["resume", tmp_path / "run", "--quiet"], capsys)
    assert code == 2 and len(err) == 1 and "train" in err[0] and "changed" in err[0]


# ------------------------------------------------------------------ 10. pair models know they are pair models


def test_finding_10_pair_model_refuses_single_texts(tmp_path, text_recipe, capsys):
    recipe = text_recipe(task={"type": "regression"}, data={"dir": str(_pairs_dir(tmp_path)), "text_column": None,
                                                            "label_column": "score"}, **QUICK)
    run = tuneforge.train(recipe, output=str(tmp_path / "pair-run"), quiet=True).run_dir
    code, out, err = cli(["predict", run, "--text", "the movie was good"], capsys)
    assert code == 2 and not out and "text pairs" in err[0]
    code, out, _ = cli(["predict", run, "--text", "the movie was good", "--text-pair", "the film is great"], capsys)
    assert code == 0 and "value" in json.loads(out[0])
    single = tuneforge.train(text_recipe(**QUICK), output=str(tmp_path / "single"), quiet=True).run_dir
    code, _, err = cli(["predict", single, "--text", "good", "--text-pair", "great"], capsys)
    assert code == 2 and "single texts" in err[0]


# ------------------------------------------------------------------ 11. max_length above the model's limit


def test_finding_11_max_length_is_clamped_to_the_model(tmp_path, text_recipe, text_data_dir):
    import shutil

    data = tmp_path / "long"
    shutil.copytree(text_data_dir, data)
    with (data / "train.tsv").open("a") as f:
        f.write(" ".join(["the movie was good"] * 60) + "\t1\n")  # 240 words: over the tiny BERT's 128 positions
    run = tuneforge.train(text_recipe(data={"dir": str(data), "max_length": 512, "pad_to_multiple_of": 3},
                                      train={"max_steps": 9, "batch_size": 64}, eval={"every_steps": 9}),
                          output=str(tmp_path / "run"), quiet=True)
    assert "above what model" in (run.run_dir / "train.log").read_text() and run.summary["steps"] == 9


# ------------------------------------------------------------------ 12. config mistakes before anything is written


@pytest.mark.parametrize("key, value, words", [
    ("train.freeze", ["*"], "nothing would train"),
    ("task.loss", "mse", "does not fit task 'classification'"),
    ("train.betas", [1.5, 0.999], "beta"),
    ("train.seed", 100000000000000, "seed"),
    ("eval.metric", "f1_macro", "eval.metric"),
])
def test_finding_12_config_mistakes_are_one_line_and_leave_no_folder(key, value, words, tmp_path, text_recipe,
                                                                     capsys):
    recipe = write_recipe(tmp_path / "r.yaml", text_recipe(**QUICK))
    code, _, err = cli(["train", recipe, "--output", tmp_path / "run", "--quiet", "--set",
                        f"{key}={json.dumps(value)}"], capsys)
    assert code == 2 and len(err) == 1 and words in err[0]
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ 13 - 17. data and CLI edge cases


def test_finding_13_csv_with_a_utf8_bom(tmp_path, text_recipe):
    d = tmp_path / "bom"
    d.mkdir()
    rows = ["label,sentence"] + [f"{i % 2},the movie was {'good' if i % 2 else 'bad'}" for i in range(24)]
    for name in ("train.csv", "dev.csv"):
        (d / name).write_bytes("\ufeff".encode() + ("\n".join(rows) + "\n").encode())
    run = tuneforge.train(text_recipe(data={"dir": str(d)}, **QUICK), output=str(tmp_path / "run"), quiet=True)
    assert run.summary["data"]["train"] == 24


def test_finding_14_unlabelled_test_file_is_skipped(tmp_path, text_recipe, text_data_dir):
    import shutil

    d = tmp_path / "glue"
    shutil.copytree(text_data_dir, d)
    (d / "test.tsv").write_text("index\tsentence\n0\ta film\n1\tanother film\n")
    run = tuneforge.train(text_recipe(data={"dir": str(d)}, **QUICK), output=str(tmp_path / "run"), quiet=True)
    assert run.summary["test"] is None and "test split is skipped" in (run.run_dir / "train.log").read_text()
    off = tuneforge.train(text_recipe(data={"dir": str(d), "test": False}, **QUICK), output=str(tmp_path / "off"),
                          quiet=True)
    assert "test split" not in (off.run_dir / "train.log").read_text()


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_finding_15_corrupt_cache_entries_are_recomputed(damage, tmp_path, text_recipe, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TUNEFORGE_CACHE", str(cache))
    monkeypatch.setattr("tuneforge.data.text.DISK_CACHE_MIN_TEXTS", 1, raising=False)  # cache the tiny sets too
    recipe = text_recipe(train={"freeze": "backbone", "max_steps": 3}, eval={"every_steps": 3})
    first = tuneforge.train(recipe, output=str(tmp_path / "a"), quiet=True)
    for f in list((cache / "tokens").glob("*.npz")) + list((cache / "features").glob("*.npy")):
        f.write_bytes(b"" if damage == "empty" else f.read_bytes()[:100])
    again = tuneforge.train(recipe, output=str(tmp_path / "b"), quiet=True)
    log = (again.run_dir / "train.log").read_text()
    assert "feature cache: entry" in log and "token cache: entry" in log
    assert history(first.run_dir) == history(again.run_dir)


def test_finding_16_lone_surrogate_is_a_row_error(tmp_path, text_recipe, capsys):
    d = tmp_path / "tweets"
    d.mkdir()
    rows = [json.dumps({"text": f"the movie was {'good' if i % 2 else 'bad'}", "label": i % 2}) for i in range(20)]
    rows[3] = '{"text": "so good \\ud83d", "label": 1}'
    (d / "train.jsonl").write_text("\n".join(rows) + "\n")
    recipe = write_recipe(tmp_path / "r.yaml", text_recipe(data={"dir": str(d), "text_column": "text"}, **QUICK))
    code, _, err = cli(["train", recipe, "--output", tmp_path / "run", "--quiet"], capsys)
    assert code == 2 and len(err) == 1 and "line 4" in err[0] and "surrogate" in err[0]
    code, _, _ = cli(["train", recipe, "--output", tmp_path / "run", "--quiet", "--set",
                      "data.on_bad_sample=skip"], capsys)
    assert code == 0


def test_finding_17_top_k_must_be_positive(tmp_path, text_recipe, capsys):
    run = tuneforge.train(text_recipe(**QUICK), output=str(tmp_path / "run"), quiet=True).run_dir
    code, _, err = cli(["predict", run, "--text", "good", "--top-k", "-1"], capsys)
    assert code == 2 and err == ["tuneforge: error: --top-k must be at least 1 (got -1)"]


# ------------------------------------------------------------------ 18. checkpoint metadata stays small


def test_finding_18_checkpoint_history_holds_scalars_only(tmp_path, text_recipe):
    run = tuneforge.train(text_recipe(train={"max_steps": 8}, eval={"every_steps": 2}),
                          output=str(tmp_path / "run"), quiet=True).run_dir
    meta = next((run / "checkpoints").glob("step-*/trainer.json")).read_text()
    assert "confusion_matrix" not in meta and "per_class" not in meta and "\n" not in meta.strip()
    assert all("confusion_matrix" in r["metrics"] for r in history(run))  # metrics.jsonl keeps everything


# ------------------------------------------------------------------ 19. packaged models: every file pinned


def test_finding_19_packaged_model_files_are_all_hash_checked(tiny_bert_dir, tmp_path):
    import hashlib
    import io
    import zipfile

    from tuneforge.models.packaged import SplitArchive, assemble

    files = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in tiny_bert_dir.iterdir() if f.is_file()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(tiny_bert_dir.iterdir()):
            data = f.read_bytes() if f.name != "config.json" else f.read_bytes().replace(b"128", b"256")
            zf.writestr(f"tiny/{f.name}", data)  # config.json tampered with, the weights intact
    (tmp_path / "tiny.zip.001").write_bytes(buf.getvalue())
    archive = SplitArchive(name="tiny", packages=("pkg",), files=tuple(files.items()), extra="tiny")
    with pytest.raises(ModelError, match="config.json"):
        assemble(archive, [tmp_path / "tiny.zip.001"], tmp_path / "cache" / "tiny")
    assert list((tmp_path / "cache").iterdir()) == []  # no folder, no temp files left


# ------------------------------------------------------------------ 20. the smaller items


def test_finding_20_conll_txt_is_predicted_per_sentence(tmp_path, capsys):
    from test_token_classification import VOCAB, write_conll
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    model, data = tmp_path / "model", tmp_path / "data"
    model.mkdir()
    data.mkdir()
    (model / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab=str(model / "vocab.txt")).save_pretrained(model)
    BertForTokenClassification(BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=32)).save_pretrained(model)
    write_conll(data / "train.txt", 40, 1)
    write_conll(data / "valid.txt", 5, 2)
    run = tuneforge.train({"task": "token_classification", "model": str(model), "data": {"dir": str(data)},
                           "train": {"max_steps": 2, "threads": 1}, "output": {"progress": False}},
                          output=str(tmp_path / "run"), quiet=True).run_dir
    code, out, _ = cli(["predict", run, "--input", data / "valid.txt"], capsys)
    assert code == 0 and len(out) == 5  # sentences, not lines


def test_finding_20_a_long_field_is_not_a_quoting_error(tmp_path, text_recipe):
    d = tmp_path / "long"
    d.mkdir()
    rows = ["label,sentence"] + [f"{i % 2},the movie was {'good' if i % 2 else 'bad'}" for i in range(24)]
    rows[5] = "1,good " + "x" * 140_000
    (d / "train.csv").write_text("\n".join(rows) + "\n")
    run = tuneforge.train(text_recipe(data={"dir": str(d)}, **QUICK), output=str(tmp_path / "run"), quiet=True)
    assert run.summary["data"]["train"] + run.summary["data"]["val"] == 24


def test_finding_20_eval_takes_data_overrides(tmp_path, text_recipe, capsys):
    run = tuneforge.train(text_recipe(**QUICK), output=str(tmp_path / "run"), quiet=True).run_dir
    (tmp_path / "other.tsv").write_text("review\tlabel\nthe movie was good\t1\nthe movie was bad\t0\n")
    code, _, err = cli(["eval", run, "--data", tmp_path / "other.tsv"], capsys)
    assert code == 2 and "--set data.text_column" in err[0]
    code, out, _ = cli(["eval", run, "--data", tmp_path / "other.tsv", "--set", "data.text_column=review"], capsys)
    assert code == 0 and json.loads(out[0])["samples"] == 2


def test_finding_20_empty_cache_variable_means_the_default(tmp_path, text_recipe, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr("tuneforge.data.text.DISK_CACHE_MIN_TEXTS", 1, raising=False)
    monkeypatch.chdir(tmp_path)
    tuneforge.train(text_recipe(**QUICK), output=str(tmp_path / "run"), quiet=True)
    assert list((tmp_path / "home" / ".cache" / "tuneforge" / "tokens").glob("*.npz"))
    assert not (tmp_path / "tokens").exists()


def test_finding_20_symlinked_output_and_non_utf8_config(tmp_path, text_recipe, capsys):
    run = tuneforge.train(text_recipe(**QUICK), output=str(tmp_path / "run"), quiet=True).run_dir
    (tmp_path / "link").symlink_to(run)
    recipe = write_recipe(tmp_path / "r.yaml", text_recipe(**QUICK))
    code, _, err = cli(["train", recipe, "--output", tmp_path / "link", "--overwrite", "--quiet"], capsys)
    assert code == 2 and "symbolic link" in err[0] and run.is_dir()
    (run / "summary.json").unlink()
    (run / "config.yaml").write_bytes(b"task: \xff\xfe\n")
    code, _, err = cli(["resume", run, "--quiet"], capsys)
    assert code == 2 and len(err) == 1 and "config.yaml" in err[0]


def test_finding_20_remote_code_runs_need_the_flag(tmp_path, text_recipe, capsys):
    run = tuneforge.train(text_recipe(**QUICK, model={"trust_remote_code": True}), output=str(tmp_path / "run"),
                          quiet=True).run_dir
    code, _, err = cli(["predict", run, "--text", "good"], capsys)
    assert code == 2 and "--trust-remote-code" in err[0]
    code, _, _ = cli(["predict", run, "--text", "good", "--trust-remote-code"], capsys)
    assert code == 0
    (run / "summary.json").unlink()
    code, _, err = cli(["resume", run, "--quiet"], capsys)
    assert code == 2 and "--trust-remote-code" in err[0]
