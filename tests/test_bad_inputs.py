"""The bad-input corpus: every case ends in exactly one of
  error — `tuneforge train` exits 2 with one stderr line `tuneforge: error: ...` naming the file / row / key,
          no traceback, and no run folder left behind;
  skip  — with data.on_bad_sample: skip, the run finishes and summary.json counts the skipped rows;
  ok    — inputs that must just work (grayscale / RGBA / CMYK / 16-bit images, odd paths, a head to replace).

Most cases run `tuneforge train` on a generated recipe; a case can also run another command (`resume`, `predict`)
with a `Run` (its own argv, environment and output folder). An error on a folder that existed before (a locked,
symlinked or foreign folder) must leave that folder exactly as it was.

Inputs are generated per case in a temp folder (tests/bad_inputs/README.md lists them). The CLI runs in-process
(`tuneforge.cli.main`) so that 80 cases take seconds; `pytest tests/test_bad_inputs.py -s` prints the table."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from tuneforge.cli import main

STEPS = {"max_steps": 1}
EVAL = {"every_steps": 1}


@dataclass
class Case:
    kind: str
    build: Callable  # (case folder, Ctx) -> recipe dict | str (raw recipe text), [extra CLI args]
    outcome: str  # error | skip | ok
    expect: tuple = ()  # error: fragments of the message; skip: how many rows; ok: fragments of train.log


@dataclass
class Run:
    """A case that is not a plain `tuneforge train RECIPE --output run`: the full argv ({recipe} is replaced by the
    case's recipe.yaml), the run folder the outcome is checked in, and environment variables for the call."""
    argv: list
    out: Path | None = None
    frags: tuple = ()
    env: dict | None = None
    recipe: dict | None = None


class Ctx:
    def __init__(self, **kw):
        self.__dict__.update(kw)
        self._runs: dict = {}

    def trained(self, name: str, recipe: dict, work: Path) -> Path:
        """A finished run of `recipe`, trained once per module (predict / resume cases share it)."""
        if name not in self._runs:
            import tuneforge

            self._runs[name] = tuneforge.train(recipe, output=str(self.root / name), quiet=True).run_dir
        return self._runs[name]


# ------------------------------------------------------------------ data builders


def text_dir(ctx, work: Path, train: str | None = None, dev: str | None = None, suffix: str = "tsv") -> Path:
    d = work / "data"
    d.mkdir(exist_ok=True)
    (d / f"train.{suffix}").write_text(train if train is not None else (ctx.text / "train.tsv").read_text())
    (d / f"dev.{suffix}").write_text(dev if dev is not None else (ctx.text / "dev.tsv").read_text())
    return d


def text(ctx, folder: Path | None = None, **sections) -> dict:
    r = ctx.text_recipe(train=STEPS, eval=EVAL)
    if folder is not None:
        r["data"]["dir"] = str(folder)
    for k, v in sections.items():
        r[k] = {**r.get(k, {}), **v} if isinstance(v, dict) and isinstance(r.get(k), dict) else v
    return r


def image_dir(ctx, work: Path) -> Path:
    d = work / "images"
    shutil.copytree(ctx.images, d)
    return d


def image(ctx, data: Path | None, **data_kw) -> dict:
    r = ctx.image_recipe(train=STEPS, eval=EVAL)
    r["data"]["dir"] = str(data) if data else None
    r["data"].update(**data_kw)
    return r


def png_bytes(mode: str) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16))
    elif mode == "CMYK":
        im = Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), "CMYK")
    elif mode == "P":
        im = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).convert("P")
        im.info["transparency"] = 0
    else:
        channels = {"L": 1, "RGBA": 4, "RGB": 3}[mode]
        arr = rng.integers(0, 255, (40, 40, channels), dtype=np.uint8)
        im = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
    buf = io.BytesIO()
    im.save(buf, format="JPEG" if mode == "CMYK" else "PNG", **({"transparency": 0} if mode == "P" else {}))
    return buf.getvalue()


def add_image(ctx, work: Path, name: str, data: bytes, **data_kw):
    d = image_dir(ctx, work)
    (d / "train" / "red" / name).write_bytes(data)
    return image(ctx, d, **data_kw), str(d / "train" / "red" / name)


def conll(sentences: list[list[tuple[str, str]]]) -> str:
    return "\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in sentences) + "\n"


NER = [[("john", "B-PER"), ("visited", "O"), ("paris", "B-LOC")], [("mary", "B-PER"), ("met", "O"),
                                                                       ("peter", "B-PER")]] * 4


def token(ctx, work: Path, train: str | None = None, valid: str | None = None, **data_kw) -> dict:
    d = work / "ner"
    d.mkdir()
    (d / "train.txt").write_text(train if train is not None else conll(NER))
    (d / "valid.txt").write_text(valid if valid is not None else conll(NER[:2]))
    r = ctx.text_recipe(train=STEPS, eval=EVAL)
    r["task"] = "token_classification"
    r["data"] = {"dir": str(d), "max_length": 32, **data_kw}
    return r


def regression(ctx, work: Path, bad: str | None = None) -> dict:
    d = work / "reg"
    d.mkdir()
    rows = ["text,label"] + [f"the movie was {'good' if i % 2 else 'bad'},{i % 5}.5" for i in range(20)]
    (d / "train.csv").write_text("\n".join(rows[:5] + ([f"an odd film,{bad}"] if bad is not None else []) + rows[5:]) + "\n")
    (d / "dev.csv").write_text("\n".join(rows[:6]) + "\n")
    r = ctx.text_recipe(train=STEPS, eval=EVAL)
    r["task"] = "regression"
    r["data"] = {"dir": str(d), "text_column": "text", "max_length": 32}
    return r, str(d / "train.csv")


def hf_copy(ctx, work: Path) -> Path:
    d = work / "model"
    shutil.copytree(ctx.bert, d)
    return d


# ------------------------------------------------------------------ the cases


def _image_cases() -> dict[str, Case]:
    def corrupt(w, c):
        r, p = add_image(c, w, "broken.jpg", b"\xff\xd8\xff\xe0" + b"\x00garbage" * 50)
        return r, (p, "not a readable image")

    def truncated(w, c):
        r, p = add_image(c, w, "cut.png", png_bytes("RGB")[:300])
        return r, (p, "not a readable image")

    def not_image(w, c):
        r, p = add_image(c, w, "notes.png", b"these are my notes, not a picture\n")
        return r, (p, "not a readable image")

    def skipped(w, c):
        return add_image(c, w, "broken.jpg", b"\xff\xd8garbage", on_bad_sample="skip")[0], (1,)

    def mode(m):
        return lambda w, c: (add_image(c, w, f"odd.{'jpg' if m == 'CMYK' else 'png'}", png_bytes(m))[0], ())

    def csv_missing(w, c):
        d = w / "csv"
        d.mkdir()
        src = sorted((c.images / "train" / "red").glob("*.png"))[:2] + sorted((c.images / "train" / "blue").glob(
            "*.png"))[:2]
        rows = ["path,label"] + [f"{p},{p.parent.name}" for p in src] + ["no/such/image.png,red"]
        (d / "train.csv").write_text("\n".join(rows) + "\n")
        return image(c, None, train=str(d / "train.csv"), val=str(c.images / "val")), (
            "train.csv line 6", "no/such/image.png", "does not exist")

    def no_classes(w, c):
        d = w / "flat"
        (d / "train").mkdir(parents=True)
        shutil.copy(sorted((c.images / "train" / "red").glob("*.png"))[0], d / "train" / "a.png")
        return image(c, d), ("has no class sub-folders",)

    return {"image_corrupt_jpeg": Case("image", corrupt, "error"),
            "image_truncated_png": Case("image", truncated, "error"),
            "image_text_file_with_png_extension": Case("image", not_image, "error"),
            "image_corrupt_skipped": Case("image", skipped, "skip"),
            "image_grayscale": Case("image", mode("L"), "ok"),
            "image_rgba": Case("image", mode("RGBA"), "ok"),
            "image_cmyk_jpeg": Case("image", mode("CMYK"), "ok"),
            "image_16bit_png": Case("image", mode("I;16"), "ok"),
            "image_palette_with_transparency": Case("image", mode("P"), "ok"),
            "image_csv_names_missing_file": Case("image", csv_missing, "error"),
            "image_folder_without_classes": Case("image", no_classes, "error")}


def _text_cases() -> dict[str, Case]:
    head = "sentence\tlabel\n"

    def rows(*lines):
        return head + "".join(line + "\n" for line in lines)

    def t(train=None, dev=None, frag=(), suffix="tsv", **sections):
        def build(w, c):
            d = text_dir(c, w, train, dev, suffix)
            return text(c, d, **sections), tuple(f.replace("{d}", str(d)) for f in frag)
        return build

    good = rows("the movie was good\t1", "an awful film\t0", "a lovely story\t1", "boring\t0")
    return {
        "text_empty_row": Case("text", t(rows("good film\t1", "\t0", "bad\t0"), frag=("train.tsv line 3",
                                                                                     "empty text")), "error"),
        "text_whitespace_row_skipped": Case("text", t(rows("good film\t1", "   \t0", "bad\t0", "fine\t1"),
                                                      data={"on_bad_sample": "skip"}), "skip", (1,)),
        "text_not_utf8": Case("text", lambda w, c: (text(c, _latin1(w, c)), ("train.tsv line 3", "UTF-8")),
                              "error"),
        "text_ragged_csv_row": Case("text", t("text,label\ngood,1\nbad,0,extra\n", "text,label\ngood,1\n",
                                              ("train.csv line 3", "3 fields", "header has 2"), "csv",
                                              data={"text_column": "text"}), "error"),
        "text_missing_text_column": Case("text", t(good, frag=("no column 'review'", "data.text_column"),
                                                   data={"text_column": "review"}), "error"),
        "text_missing_label_column": Case("text", t(good, frag=("no column 'target'", "data.label_column"),
                                                    data={"label_column": "target"}), "error"),
        "text_duplicate_header": Case("text", t("sentence\tsentence\tlabel\ngood\tfilm\t1\n", good,
                                                ("train.tsv line 1", "'sentence' appears twice")), "error"),
        "text_empty_file": Case("text", t("", frag=("train.tsv", "empty")), "error"),
        "text_empty_split": Case("text", t(good, head, ("dev.tsv", "no data rows")), "error"),
        "text_unknown_label_in_val": Case("text", t(good, rows("good\t1", "so so\t2"),
                                                    ("dev.tsv line 3", "label '2'", "never appears in train")),
                                          "error"),
        "text_single_class_train": Case("text", t(rows("good\t1", "great\t1", "fine\t1"), frag=(
            "single class", "'1'")), "error"),
        "text_empty_label": Case("text", t(rows("good\t1", "bad\t", "fine\t1"), frag=("train.tsv line 3",
                                                                                     "empty label")), "error"),
        "text_invalid_jsonl_line": Case("text", t('{"sentence": "good", "label": 1}\n{"sentence": "bad",\n',
                                                  '{"sentence": "good", "label": 1}\n',
                                                  ("train.jsonl line 2", "invalid JSON"), "jsonl"), "error"),
    }


def _latin1(w: Path, c) -> Path:
    d = text_dir(c, w)
    (d / "train.tsv").write_bytes("sentence\tlabel\ngood\t1\ncaf\xe9 cr\xe8me was bad\t0\n".encode("latin-1"))
    return d


def _token_regression_cases() -> dict[str, Case]:
    def masked(w, c):
        return token(c, w, max_length=2), ("data.max_length 2", "no room")

    def out_of_set(w, c):
        r = token(c, w, valid=conll([[("john", "B-PER"), ("visited", "O"), ("acme", "B-ORG")]]))
        return r, ("valid.txt line 3", "tag 'B-ORG'", "not in the train tag set")

    def ragged(w, c):
        return token(c, w, train="john B-PER\nvisited O extra\n"), ("train.txt line 2", "3 columns")

    def single(w, c):
        return token(c, w, train=conll([[("the", "O"), ("film", "O")]] * 3)), ("single tag",)

    def target(bad, frag):
        def build(w, c):
            r, path = regression(c, w, bad)
            return r, (f"{path} line 6", *frag)
        return build

    return {"token_all_labels_masked_by_truncation": Case("token", masked, "error"),
            "token_label_out_of_range": Case("token", out_of_set, "error"),
            "token_ragged_columns": Case("token", ragged, "error"),
            "token_single_tag": Case("token", single, "error"),
            "regression_nan_target": Case("regression", target("nan", ("NaN or infinite",)), "error"),
            "regression_inf_target": Case("regression", target("inf", ("NaN or infinite",)), "error"),
            "regression_text_target": Case("regression", target("high", ("'high'", "not a number")), "error"),
            "regression_empty_target": Case("regression", target("", ("not a number",)), "error")}


def _model_cases() -> dict[str, Case]:
    def missing(w, c):
        return text(c, model={"name": str(w / "no such model")}), ("no such model", "does not exist")

    def no_weights(w, c):
        d = hf_copy(c, w)
        (d / "model.safetensors").unlink()
        return text(c, model={"name": str(d)}), (str(d), "no weights")

    def no_config(w, c):
        d = hf_copy(c, w)
        (d / "config.json").unlink()
        return text(c, model={"name": str(d)}), (str(d), "no config.json")

    def damaged(how):
        def build(w, c):
            d = hf_copy(c, w)
            f = d / "model.safetensors"
            data = f.read_bytes()
            f.write_bytes(data[:len(data) // 3] if how == "truncate" else b"\xff" * 8 + data[8:])
            return text(c, model={"name": str(d)}), (str(d), "truncated or corrupt", "deserializing header")
        return build

    def head_mismatch(w, c):  # a 2-label checkpoint on 3 classes: the head is replaced, and the log says so
        rows = ["sentence\tlabel"] + [f"{s}\t{s.split()[-1]}" for s in ("a good", "a bad", "a fine") * 4]
        d = text_dir(c, w, "\n".join(rows) + "\n", "\n".join(rows[:4]) + "\n")
        return text(c, d), ("new (random init)", "classifier.weight")

    def wrong_arch(w, c):
        from safetensors.torch import save_file
        import torch

        save_file({"encoder.foo": torch.zeros(3)}, str(w / "weights.safetensors"))
        d = image_dir(c, w)
        r = image(c, d)
        r["model"].update(weights=str(w / "weights.safetensors"), pretrained=True)
        return r, ("weights.safetensors", "shares no tensor names")

    def pickled_code(w, c):  # a .pth whose pickle would run code: weights_only loading refuses it
        import pickle

        class Evil:
            def __reduce__(self):
                return (print, ("this ran while loading weights",))
        f = w / "evil.pth"
        f.write_bytes(pickle.dumps({"conv.weight": Evil()}))
        r = image(c, image_dir(c, w))
        r["model"].update(weights=str(f), pretrained=True)
        return r, (str(f), "not a plain tensor file")

    def truncated_weights_file(w, c):
        f = w / "cut.safetensors"
        f.write_bytes(c.timm_weights.read_bytes()[:5000])
        r = image(c, image_dir(c, w))
        r["model"].update(weights=str(f), pretrained=True)
        return r, (str(f), "unreadable or truncated")

    return {"model_path_does_not_exist": Case("model", missing, "error"),
            "model_folder_without_weights": Case("model", no_weights, "error"),
            "model_folder_without_config": Case("model", no_config, "error"),
            "model_truncated_safetensors": Case("model", damaged("truncate"), "error"),
            "model_tampered_safetensors_header": Case("model", damaged("tamper"), "error"),
            "model_head_size_differs_from_labels": Case("model", head_mismatch, "ok"),
            "model_weights_of_another_architecture": Case("model", wrong_arch, "error"),
            "model_weights_file_truncated": Case("model", truncated_weights_file, "error"),
            "model_weights_pickle_with_code": Case("model", pickled_code, "error")}


def _config_cases() -> dict[str, Case]:
    def c_(frag, **sections):
        return lambda w, c: (text(c, **sections), frag)

    def misspelt(w, c):
        r = text(c)
        r["train"]["batch_sise"] = r["train"].pop("batch_size")
        return r, ("unknown key 'train.batch_sise'", "did you mean 'train.batch_size'")

    def unwritable(w, c):
        (w / "a-file").write_text("not a folder")
        return text(c), ["--output", str(w / "a-file" / "run")], ("a-file", "cannot be written")

    def output_is_a_file(w, c):
        (w / "taken").write_text("a file where the run folder should go")
        return text(c), ["--output", str(w / "taken")], ("taken", "cannot be read")

    def odd_paths(w, c):
        d = w / "dätä mit leerzeichen"
        shutil.copytree(c.text, d)
        return text(c, d), ["--output", str(w / "rün ø" / "my run")], ()

    return {
        "config_misspelt_key": Case("config", misspelt, "error"),
        "config_mistyped_value": Case("config", c_(("train.batch_size", "'sixteen'"), train={"batch_size": "sixteen"}),
                                      "error"),
        "config_negative_lr": Case("config", c_(("train.lr", "-0.001"), train={"lr": -1e-3}), "error"),
        "config_batch_size_zero": Case("config", c_(("train.batch_size", "greater than 0"), train={"batch_size": 0}),
                                       "error"),
        "config_unknown_task": Case("config", c_(("task.type", "'summarise'"), task={"type": "summarise"}),
                                    "error"),
        "config_unknown_eval_metric": Case("config", c_(("eval.metric 'bleu'",), eval={"metric": "bleu"}), "error"),
        "config_not_yaml": Case("config", lambda w, c: ("train: [unclosed\n", ("recipe.yaml", "not valid YAML")),
                                "error"),
        "config_recipe_is_a_list": Case("config", lambda w, c: ("- a\n- b\n", ("recipe.yaml", "YAML mapping")),
                                        "error"),
        "config_bad_set_override": Case("config", lambda w, c: (text(c), ["--set", "train.lr"],
                                                                ("--set 'train.lr'", "KEY=VALUE")), "error"),
        "config_unwritable_output_folder": Case("config", unwritable, "error"),
        "config_output_is_a_file": Case("config", output_is_a_file, "error"),
        "config_paths_with_spaces_and_non_ascii": Case("config", odd_paths, "ok"),
        "config_resume_and_overwrite_together": Case("config", lambda w, c: (text(c), ["--resume", "--overwrite"],
                                                                             ("--resume and --overwrite",)), "error"),
    }


def _tables(rows: list[str], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps({"sentence": t, "label": int(lab)}) + "\n" for t, lab in
                       (r.split("\t") for r in rows))
    sep = "," if fmt == "csv" else "\t"
    return "".join(f"{line.replace(chr(9), sep)}\n" for line in ["sentence\tlabel", *rows])


GOOD_ROWS = [f"the movie was {'good' if i % 2 else 'bad'}\t{i % 2}" for i in range(16)]


def _data_cases() -> dict[str, Case]:
    """Review findings 11, 13, 14, 16 and 20: inputs that now work, or fail with one line."""
    def bom(fmt):
        def build(w, c):
            d = w / "bom"
            d.mkdir()
            for name in (f"train.{fmt}", f"dev.{fmt}"):
                (d / name).write_bytes(b"\xef\xbb\xbf" + _tables(GOOD_ROWS, fmt).encode())
            return text(c, d), ("data: 16 train / 16 val examples",)
        return build

    def unlabelled_test(w, c):
        d = w / "glue"
        shutil.copytree(c.text, d)
        (d / "test.tsv").write_text("index\tsentence\n0\ta film\n1\tanother film\n")
        return text(c, d), ("test split is skipped", "no column 'label'")

    def surrogate(skip):
        def build(w, c):
            d = w / "tweets"
            d.mkdir()
            rows = _tables(GOOD_ROWS, "jsonl").splitlines()
            rows[3] = '{"sentence": "so good \\ud83d", "label": 1}'
            (d / "train.jsonl").write_text("\n".join(rows) + "\n")
            (d / "dev.jsonl").write_text(_tables(GOOD_ROWS[:4], "jsonl"))
            if skip:
                return text(c, d, data={"on_bad_sample": "skip"}), (1,)
            return text(c, d), (f"{d / 'train.jsonl'} line 4", "unpaired surrogate", "on_bad_sample: skip")
        return build

    def long_field(w, c):
        rows = list(GOOD_ROWS)
        rows[5] = "good " + "x" * 140_000 + "\t1"
        d = text_dir(c, w, _tables(rows, "csv"), _tables(GOOD_ROWS[:4], "csv"), "csv")
        return text(c, d), ("data: 16 train / 4 val examples",)

    def too_long(w, c):
        rows = GOOD_ROWS + [" ".join(["the movie was good"] * 60) + "\t1"]  # 240 words, 128 positions
        d = text_dir(c, w, _tables(rows, "tsv"))
        return text(c, d, data={"max_length": 512, "pad_to_multiple_of": 3}), ("data.max_length 512 is above",)

    def spaced_header(w, c):  # "label, sentence" as typed by hand: the header names are stripped
        body = "".join(f"{r.split(chr(9))[1]}, {r.split(chr(9))[0]}\n" for r in GOOD_ROWS)
        d = text_dir(c, w, "label, sentence\n" + body, "label, sentence\n" + body, "csv")
        return text(c, d), ("data: 16 train / 16 val examples",)

    return {"text_bom_csv": Case("text", bom("csv"), "ok"),
            "text_csv_header_with_spaces": Case("text", spaced_header, "ok"),
            "text_bom_tsv": Case("text", bom("tsv"), "ok"),
            "text_bom_jsonl": Case("text", bom("jsonl"), "ok"),
            "text_unlabelled_test_file_skipped": Case("text", unlabelled_test, "ok"),
            "text_jsonl_lone_surrogate": Case("text", surrogate(False), "error"),
            "text_jsonl_lone_surrogate_skipped": Case("text", surrogate(True), "skip"),
            "text_field_over_131072_characters": Case("text", long_field, "ok"),
            "text_max_length_above_model_limit": Case("text", too_long, "ok")}


def _mistake_cases() -> dict[str, Case]:
    """Review finding 12 (and this issue's hypothesis run): config values that passed the schema and then failed
    mid-training now fail before anything is written."""
    def c_(frag, **sections):
        return lambda w, c: (text(c, **sections), frag)

    def multilabel_ce(w, c):
        d = w / "ml"
        d.mkdir()
        rows = ["sentence\tlabel"] + [f"the movie was {'good' if i % 2 else 'bad'}\t{'a|b' if i % 2 else 'a'}"
                                      for i in range(12)]
        (d / "train.tsv").write_text("\n".join(rows) + "\n")
        return text(c, d, task={"type": "multilabel", "loss": "cross_entropy"}), (
            "task.loss 'cross_entropy' does not fit task 'multilabel'",)

    return {
        "config_freeze_everything": Case("config", c_(("nothing would train",), train={"freeze": ["*"]}), "error"),
        "config_loss_mse_for_classification": Case("config", c_(("task.loss 'mse'", "classification"),
                                                                task={"loss": "mse"}), "error"),
        "config_loss_bce_for_classification": Case("config", c_(("task.loss 'bce'",), task={"loss": "bce"}),
                                                   "error"),
        "config_loss_cross_entropy_for_multilabel": Case("config", multilabel_ce, "error"),
        "config_beta_of_1_5": Case("config", c_(("train.betas", "[0, 1)"), train={"betas": [1.5, 0.999]}), "error"),
        "config_seed_too_large": Case("config", c_(("train.seed", "less than 4294967296"),
                                                   train={"seed": 100000000000000}), "error"),
        "config_metric_of_another_task": Case("config", c_(("eval.metric 'f1_macro'", "macro_f1"),
                                                           eval={"metric": "f1_macro"}), "error"),
        "config_nan_learning_rate": Case("config", c_(("train.lr", "finite"), train={"lr": float("nan")}), "error"),
        "config_infinite_epochs": Case("config", c_(("train.epochs", "finite"), train={"epochs": float("inf")}),
                                       "error"),
        "config_recipe_path_too_long": Case("config", lambda w, c: Run(["train", str(w / ("r" * 300 + ".yaml"))],
                                                                         w / "run", ("path too long",)), "error"),
        "config_huge_thread_count": Case("config", c_(("train.threads", "1024"), train={"threads": 2**31}), "error"),
        # just above the bound: were the bound lost, 257 workers (not a million) would start
        "config_huge_worker_count": Case("config", c_(("data.num_workers", "256"), data={"num_workers": 257}),
                                         "error"),
    }


def _cache_cases() -> dict[str, Case]:
    """Review finding 15: a torn cache entry is deleted and recomputed, with a log line."""
    def corrupt(kind):
        def build(w, c):
            import tuneforge

            cache = w / "cache"
            rows = [f"the movie was {'good' if i % 2 else 'bad'} number {i % 7}\t{i % 2}" for i in range(1100)]
            d = text_dir(c, w, _tables(rows, "tsv"))  # over 1024 texts: the token cache is used
            r = text(c, d, train={"freeze": "backbone"})
            env = {"TUNEFORGE_CACHE": str(cache)}
            with _env(env):
                tuneforge.train(r, output=str(w / "first"), quiet=True)
            pattern = "tokens/*.npz" if kind == "token" else "features/*.npy"
            entries = sorted(cache.glob(pattern))
            assert entries, pattern
            for f in entries:
                f.write_bytes(f.read_bytes()[:100])
            return Run(["train", "{recipe}", "--quiet", "--output", str(w / "run")], w / "run",
                       (f"{kind} cache: entry", "deleted"), env, r)
        return build

    return {"cache_corrupt_token_entry": Case("cache", corrupt("token"), "ok"),
            "cache_corrupt_feature_entry": Case("cache", corrupt("feature"), "ok")}


def _run_folder_cases() -> dict[str, Case]:
    """Review findings 2, 8, 9 and 20: the run folder is locked, --overwrite empties only a run folder, resume
    checks what it continues."""
    quick = {"train": {"max_steps": 2}, "eval": {"every_steps": 2}}

    def run_copy(w, c, name="run"):
        src = c.trained("single", c.text_recipe(**quick), w)
        shutil.copytree(src, w / name, symlinks=True)
        return w / name

    def symlinked(w, c):
        real = run_copy(w, c, "real")
        (w / "link").symlink_to(real)
        return Run(["train", "{recipe}", "--quiet", "--output", str(w / "link"), "--overwrite"], w / "link",
                   ("--overwrite", "symbolic link", "give the real folder"), recipe=text(c))

    def foreign(w, c):
        d = w / "precious"
        d.mkdir()
        (d / "thesis.txt").write_text("my thesis")
        return Run(["train", "{recipe}", "--quiet", "--output", str(d), "--overwrite"], d,
                   ("--overwrite refuses", "not a tuneforge run folder"), recipe=text(c))

    def run_with_user_file(w, c):
        d = run_copy(w, c)
        (d / "notes.txt").write_text("mine")
        return Run(["train", "{recipe}", "--quiet", "--output", str(d), "--overwrite"], d,
                   ("--overwrite refuses", "notes.txt"), recipe=text(c))

    def locked(w, c):
        d = run_copy(w, c)
        (d / "summary.json").unlink()  # an unfinished run that another process is writing
        return Run(["train", "{recipe}", "--quiet", "--output", str(d), "--resume"], d,
                   ("is in use by process 4242",), recipe=c.text_recipe(**quick), env={"_LOCK": str(d / ".lock")})

    def non_utf8_config(w, c):
        d = run_copy(w, c)
        (d / "summary.json").unlink()
        (d / "config.yaml").write_bytes(b"task: \xff\xfe classification\n")
        return Run(["resume", str(d), "--quiet"], d, (str(d / "config.yaml"), "not valid YAML"))

    def changed_data(w, c):
        data = w / "data"
        shutil.copytree(c.text, data)
        r = c.text_recipe(data={"dir": str(data)}, **quick)
        import tuneforge

        tuneforge.train(r, output=str(w / "run"), quiet=True)
        (w / "run" / "summary.json").unlink()
        with (data / "train.tsv").open("a") as f:
            f.write("a brand new row\t1\n")
        return Run(["resume", str(w / "run"), "--quiet"], w / "run", ("data changed since the run started",
                                                                        "train rows 120 -> 121"))

    def remote_code(w, c):
        src = c.trained("remote", c.text_recipe(**quick, model={"trust_remote_code": True}), w)
        shutil.copytree(src, w / "run")
        (w / "run" / "summary.json").unlink()
        return Run(["resume", str(w / "run"), "--quiet"], w / "run", ("model.trust_remote_code: true",
                                                                        "--trust-remote-code"))

    return {"run_overwrite_symlinked_folder": Case("run", symlinked, "error"),
            "run_overwrite_folder_that_is_not_a_run": Case("run", foreign, "error"),
            "run_overwrite_run_holding_a_user_file": Case("run", run_with_user_file, "error"),
            "run_folder_locked_by_another_process": Case("run", locked, "error"),
            "run_resume_non_utf8_config": Case("run", non_utf8_config, "error"),
            "run_resume_after_the_data_changed": Case("run", changed_data, "error"),
            "run_resume_remote_code_without_flag": Case("run", remote_code, "error")}


def _predict_cases() -> dict[str, Case]:
    """Review findings 10, 17 and 20: predict refuses what it cannot answer correctly."""
    quick = {"train": {"max_steps": 2}, "eval": {"every_steps": 2}}

    def single(w, c):
        return c.trained("single", c.text_recipe(**quick), w)

    def pair(w, c):
        d = w / "pairs"
        d.mkdir()
        rows = ["sentence1\tsentence2\tscore"] + [f"the movie was {a}\tthe film is {b}\t{i % 5}" for i, (a, b) in
                                                  enumerate([("good", "great"), ("bad", "fine")] * 8)]
        (d / "train.tsv").write_text("\n".join(rows) + "\n")
        r = c.text_recipe(task={"type": "regression"}, data={"dir": str(d), "text_column": None,
                                                            "label_column": "score"}, **quick)
        return c.trained("pair", r, w)

    def predict(run, args, frags):
        return lambda w, c: Run(["predict", str(run(w, c)), *args], None, frags)

    return {"predict_top_k_negative": Case("predict", predict(single, ["--text", "good", "--top-k", "-1"],
                                                              ("--top-k must be at least 1 (got -1)",)), "error"),
            "predict_pair_model_given_a_single_text": Case("predict", predict(pair, ["--text", "good"],
                                                                              ("trained on text pairs",)), "error"),
            "predict_single_text_model_given_a_pair": Case("predict", predict(
                single, ["--text", "good", "--text-pair", "great"], ("trained on single texts",)), "error"),
            "predict_input_path_too_long": Case("predict", lambda w, c: Run(
                ["predict", str(single(w, c)), "--input", str(w / ("x" * 300 + ".txt"))], None,
                ("path too long for the file system",)), "error"),
            "predict_batch_size_zero": Case("predict", predict(single, ["--text", "good", "--batch-size", "0"],
                                                               ("--batch-size must be at least 1",)), "error")}


class _env:
    """Environment variables set for a block (cases run in-process)."""

    def __init__(self, env: dict | None):
        self.env, self.old = {k: v for k, v in (env or {}).items() if not k.startswith("_")}, {}

    def __enter__(self):
        self.old = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)

    def __exit__(self, *exc):
        for k, v in self.old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


CASES = {**_image_cases(), **_text_cases(), **_token_regression_cases(), **_model_cases(), **_config_cases(),
         **_data_cases(), **_mistake_cases(), **_cache_cases(), **_run_folder_cases(), **_predict_cases()}
RESULTS: list[tuple[str, str, str, str]] = []


@pytest.fixture(scope="module")
def ctx(text_recipe, image_recipe, text_data_dir, image_data_dir, tiny_bert_dir, timm_weights_file,
        tmp_path_factory):
    small = tmp_path_factory.mktemp("small-images")  # 4 + 4 train, 2 + 2 val: enough for one step
    for split, n in (("train", 4), ("val", 2)):
        for color in ("red", "blue"):
            (small / split / color).mkdir(parents=True)
            for p in sorted((image_data_dir / split / color).glob("*.png"))[:n]:
                shutil.copy(p, small / split / color / p.name)
    yield Ctx(text_recipe=text_recipe, image_recipe=image_recipe, text=text_data_dir, images=small,
              bert=tiny_bert_dir, timm_weights=timm_weights_file, root=tmp_path_factory.mktemp("trained"))
    width = max(len(n) for n, *_ in RESULTS) if RESULTS else 10
    print(f"\nbad-input corpus: {len(RESULTS)} cases")
    for name, kind, outcome, detail in RESULTS:
        print(f"{kind:<10} {name:<{width}} {outcome:<6} {detail}")


def test_corpus_is_big_enough():
    kinds = {c.kind for c in CASES.values()}
    assert len(CASES) >= 80 and kinds >= {"image", "text", "token", "regression", "model", "config", "cache", "run",
                                          "predict"}


def test_readme_lists_every_case():
    readme = (Path(__file__).parent / "bad_inputs" / "README.md").read_text(encoding="utf-8")
    listed = [line.split("`")[1] for line in readme.splitlines() if line.startswith("| `")]
    assert listed == list(CASES)


def _as_run(built, work: Path) -> Run:
    """A builder's (recipe, [extra args], fragments) as a Run of `tuneforge train`."""
    if isinstance(built, Run):
        return built
    recipe, extra, frags = (built[0], built[1], built[2]) if len(built) == 3 else (built[0], [], built[1])
    out = Path(extra[extra.index("--output") + 1]) if "--output" in extra else work / "run"
    extra = extra if "--output" in extra else [*extra, "--output", str(out)]
    return Run(["train", "{recipe}", "--quiet", *extra], out, frags, recipe=recipe)


def _snapshot(folder: Path | None) -> dict | None:
    """Every entry under a folder (symlinks not followed) with its bytes: to check an error left it alone."""
    if folder is None or not (folder.exists() or folder.is_symlink()):
        return None
    if folder.is_symlink():
        return {"->": str(folder.readlink()), **(_snapshot(folder.resolve()) or {})}
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() and not p.is_symlink() else str(p.is_dir())
            for p in sorted(folder.rglob("*")) if p.name != ".lock"}  # the lock file is the test's own here


@contextmanager
def _held_lock(path: str | None):
    """Hold run_dir/.lock as a live process would (flock locks of two open files conflict, even in one process)."""
    if path is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"4242 otherhost 2026-01-01T00:00:00\n", 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, ctx, tmp_path, capsys):
    case = CASES[name]
    work = tmp_path / "case"
    work.mkdir()
    run = _as_run(case.build(work, ctx), work)
    frags, out = run.frags or case.expect, run.out
    path = work / "recipe.yaml"
    if run.recipe is not None:
        path.write_text(run.recipe if isinstance(run.recipe, str) else yaml.safe_dump(run.recipe, allow_unicode=True),
                        encoding="utf-8")
    before = _snapshot(out)
    capsys.readouterr()
    with _env(run.env), _held_lock((run.env or {}).get("_LOCK")):
        code = main([str(path) if a == "{recipe}" else str(a) for a in run.argv])  # only TuneforgeErrors are caught
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if case.outcome == "error":
        lines = err.strip().splitlines()
        assert code == 2, (code, err)
        assert len(lines) == 1 and lines[0].startswith("tuneforge: error: "), err
        for f in frags:
            assert str(f) in lines[0], (f, lines[0])
        if before is not None:
            assert _snapshot(out) == before, "the error changed a folder that existed before"
        else:
            assert out is None or not out.exists(), f"a run folder was left behind: {list(out.iterdir())}"
        RESULTS.append((name, case.kind, "error", lines[0][len("tuneforge: error: "):].replace(str(work), "<case>")))
        return
    assert code == 0 and err.strip() == "", err
    summary = json.loads((out / "summary.json").read_text())
    if case.outcome == "skip":
        assert summary["data"]["skipped"] == frags[0], summary["data"]
        RESULTS.append((name, case.kind, "skip", f"summary.json data.skipped = {summary['data']['skipped']}"))
        return
    log = (out / "train.log").read_text()
    for f in frags:
        assert f in log, (f, log)
    RESULTS.append((name, case.kind, "ok", f"trained {summary['steps']} step(s); accuracy "
                                           f"{summary['eval'].get('accuracy', float('nan')):.2f}"))
