"""`python -m tuneforge train | eval | predict` end to end, and one clean error line for every bad input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tuneforge


def run_cli(*args, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "tuneforge", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, text_recipe, text_data_dir):
    """`tuneforge train recipe.yaml --set ... --output DIR` on the tiny BERT (data.dir given with --set)."""
    work = tmp_path_factory.mktemp("cli")
    recipe = text_recipe()
    del recipe["data"]["dir"]
    recipe["train"]["max_steps"] = 5
    write_recipe(work / "recipe.yaml", recipe)
    proc = run_cli("train", "recipe.yaml", "--set", f"data.dir={text_data_dir}", "--set", "train.max_steps=60",
                   "--set", "train.lr=3e-3", "--output", "run", cwd=work)
    assert proc.returncode == 0, proc.stderr
    return work, work / "run", proc


def test_cli_train(cli_run):
    work, run_dir, proc = cli_run
    out = json_lines(proc.stdout)
    assert len(out) == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert Path(out[0]["run_dir"]) == Path("run")
    assert out[0]["metric"] == "accuracy"
    assert out[0]["accuracy"] == summary["eval"]["accuracy"] >= 0.9
    assert summary["steps"] == 60  # --set wins over the recipe's max_steps
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["train"]["lr"] == 3e-3 and cfg["output"]["name"] == "recipe"
    assert "Traceback" not in proc.stderr
    assert "done:" in proc.stderr and "done:" in (run_dir / "train.log").read_text()


def test_cli_eval(cli_run, text_data_dir):
    work, run_dir, _ = cli_run
    proc = run_cli("eval", "run", "--data", text_data_dir / "dev.tsv", cwd=work)
    assert proc.returncode == 0, proc.stderr
    [result] = json_lines(proc.stdout)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["accuracy"] == summary["eval"]["accuracy"]
    assert result["loss"] == summary["eval"]["loss"]
    assert result["confusion_matrix"] == summary["eval"]["confusion_matrix"]
    assert set(result["per_class"]) == {"0", "1"}


def test_cli_predict_text(cli_run):
    work, _, _ = cli_run
    proc = run_cli("predict", "run", "--text", "the movie was good", "--text", "an awful boring film",
                   "--top-k", "1", cwd=work)
    assert proc.returncode == 0, proc.stderr
    rows = json_lines(proc.stdout)
    assert [r["input"] for r in rows] == ["the movie was good", "an awful boring film"]
    assert [r["label"] for r in rows] == ["1", "0"]
    for r in rows:
        assert list(r["probabilities"]) == [r["label"]]
        assert r["probabilities"][r["label"]] == r["score"] and 0.5 <= r["score"] <= 1.0


def test_cli_predict_input_file(cli_run):
    work, _, _ = cli_run
    (work / "inputs.txt").write_text("a great story\n\nit was terrible\nfine acting and lovely music\n")
    proc = run_cli("predict", "run", "--input", "inputs.txt", "--output", "preds.jsonl", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    rows = json_lines((work / "preds.jsonl").read_text())
    assert [r["input"] for r in rows] == ["a great story", "it was terrible", "fine acting and lovely music"]
    assert [r["label"] for r in rows] == ["1", "0", "1"]
    assert all(set(r["probabilities"]) == {"0", "1"} for r in rows)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)


def test_cli_predict_image(tmp_path, image_recipe, image_data_dir):
    run = tuneforge.train(image_recipe(), output=str(tmp_path / "img-run"), quiet=True)
    red = sorted((image_data_dir / "val" / "red").glob("*.png"))[0]
    blue = sorted((image_data_dir / "val" / "blue").glob("*.png"))[0]
    proc = run_cli("predict", run.run_dir, "--image", red, "--image", blue, "--top-k", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json_lines(proc.stdout)
    assert [r["input"] for r in rows] == [str(red), str(blue)]
    assert [r["label"] for r in rows] == ["red", "blue"]
    assert all(set(r["probabilities"]) == {"red", "blue"} for r in rows)
    # a text input for an image model is a user error, not a crash
    proc = run_cli("predict", run.run_dir, "--text", "hello", cwd=tmp_path)
    assert_clean_error(proc, "image model")


# ------------------------------------------------------------------ bad inputs


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tuneforge: error: ")
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def case_misspelt_key(work: Path, ctx) -> tuple[dict, tuple]:
    recipe = ctx["text_recipe"]()
    recipe["data"]["dirr"] = recipe["data"].pop("dir")
    return recipe, ("data.dirr", "data.dir")


def case_csv_missing_label(work: Path, ctx):
    data = work / "data"
    data.mkdir()
    (data / "train.csv").write_text("text,target\nthe movie was good,1\nan awful film,0\n")
    (data / "dev.csv").write_text("text,target\na great story,1\n")
    return ctx["text_recipe"](data={"dir": str(data), "text_column": None}), ("train.csv", "'label'",
                                                                             "data.label_column")


def case_corrupt_jpeg(work: Path, ctx):
    data = work / "images"
    shutil.copytree(ctx["image_data_dir"], data)
    (data / "train" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 50)
    return ctx["image_recipe"](data={"dir": str(data)}), (str(data / "train" / "red" / "broken.jpg"),
                                                           "not a readable image")


def case_unseen_val_label(work: Path, ctx):
    data = work / "data"
    data.mkdir()
    shutil.copy(ctx["text_data_dir"] / "train.tsv", data / "train.tsv")
    (data / "dev.tsv").write_text("sentence\tlabel\nthe movie was good\t1\nthe plot was so so\t2\n")
    return ctx["text_recipe"](data={"dir": str(data)}), ("dev.tsv line 3", "label '2'", "never appears in train")


def case_missing_model(work: Path, ctx):
    return ctx["text_recipe"](model={"name": "./no/such/model"}), ("./no/such/model", "does not exist")


@pytest.mark.parametrize("case", [case_misspelt_key, case_csv_missing_label, case_corrupt_jpeg,
                                  case_unseen_val_label, case_missing_model], ids=lambda f: f.__name__[5:])
def test_cli_bad_input(case, tmp_path, text_recipe, image_recipe, text_data_dir, image_data_dir):
    ctx = {"text_recipe": text_recipe, "image_recipe": image_recipe, "text_data_dir": text_data_dir,
           "image_data_dir": image_data_dir}
    recipe, fragments = case(tmp_path, ctx)
    write_recipe(tmp_path / "recipe.yaml", recipe)
    proc = run_cli("train", "recipe.yaml", "--output", "run", cwd=tmp_path)
    assert_clean_error(proc, *fragments)
    assert proc.stdout == ""
    assert not (tmp_path / "run").exists(), "a failed run must not leave a run folder"
    assert not (tmp_path / "runs").exists()


def test_cli_usage_errors(tmp_path):
    proc = run_cli("eval", tmp_path, "--data", tmp_path / "dev.tsv", cwd=tmp_path)
    assert_clean_error(proc, "neither a tuneforge run folder")


def test_threads_setting_is_used(cli_run, text_recipe):
    _, run_dir, _ = cli_run
    assert json.loads((run_dir / "summary.json").read_text())["threads"] == text_recipe()["train"]["threads"]
