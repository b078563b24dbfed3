"""Property-based tests (hypothesis) of the bad-input contract, on generated recipes and generated data tables.

The property, for every example: `tuneforge train` (run in-process through `tuneforge.cli.main`) EITHER trains a
1-step tiny model and exits 0, OR exits 2 with exactly one stderr line `tuneforge: error: ...` and no run folder
left behind. Any other exception is a traceback and fails the test; a successful run must account for every data
row (trained on, validated on, or counted as skipped).

* recipes: the tiny BERT text recipe (tests/conftest.py) with 1-3 generated changes: keys of the schema and
  near-misses, sections replaced by scalars, values within and outside each field's bounds, wrong types, None,
  huge ints, NaN / inf, odd strings, lists and dicts; given in the YAML file or as `--set KEY=VALUE`;
* tables: train / dev files (.csv, .tsv, .jsonl) in UTF-8, UTF-8 with BOM, Latin-1 or UTF-16, CRLF, blank lines,
  every CSV quoting style, wrong delimiters, ragged rows, empty cells, fields over 131072 characters, NaN / empty
  labels, duplicate or odd headers, lone surrogates (escaped in JSON, or raw bytes), one-class data, junk lines.

Deterministic (derandomize). TUNEFORGE_HYPOTHESIS_EXAMPLES sets the examples per test (default 150);
TUNEFORGE_HYPOTHESIS_SEED=<n> explores other examples than the fixed ones (a larger local exploration)."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from conftest import FILLER, NEGATIVE, POSITIVE
from tuneforge.cli import main
from tuneforge.config import Config

EXAMPLES = int(os.environ.get("TUNEFORGE_HYPOTHESIS_EXAMPLES", "150"))
SEED = os.environ.get("TUNEFORGE_HYPOTHESIS_SEED")
SETTINGS = settings(max_examples=EXAMPLES, derandomize=SEED is None, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


def seeded(test):
    return seed(int(SEED))(test) if SEED is not None else test


# ------------------------------------------------------------------ running one example


class Workspace:
    """A scratch cwd (relative paths in generated recipes land here) and numbered run folders."""

    def __init__(self, root: Path):
        self.root, self.count = root, 0
        self.outcomes: dict[str, list[str]] = {}  # test name -> "ok" or the error message, per example
        self.cwd = root / "cwd"
        self.cwd.mkdir()

    def next(self, name: str) -> Path:
        self.count += 1
        d = self.root / f"{name}-{self.count:05d}"
        d.mkdir()
        return d


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("hypothesis")
    ws = Workspace(root)
    old_cwd, old_cache = os.getcwd(), os.environ.get("TUNEFORGE_CACHE")
    os.chdir(ws.cwd)
    os.environ["TUNEFORGE_CACHE"] = str(root / "cache")
    yield ws
    os.chdir(old_cwd)
    if old_cache is None:
        os.environ.pop("TUNEFORGE_CACHE", None)
    else:
        os.environ["TUNEFORGE_CACHE"] = old_cache
    print(f"\nhypothesis: {ws.count} examples run ({EXAMPLES} generated per test, plus shrinking)")
    for name, seen in ws.outcomes.items():
        print(f"  {name}: {seen.count('ok')} trained, {len(seen) - seen.count('ok')} one-line errors")
    if os.environ.get("TUNEFORGE_HYPOTHESIS_LOG"):
        Path(os.environ["TUNEFORGE_HYPOTHESIS_LOG"]).write_text(json.dumps(ws.outcomes, indent=1), encoding="utf-8")


def train_once(argv: list[str], out: Path, capsys, ws: Workspace, name: str) -> tuple[int, dict | None]:
    """The property. → (exit code, summary.json on success); the run folder is removed afterwards."""
    capsys.readouterr()
    code = main(["train", *argv, "--output", str(out), "--quiet"])  # any other exception: a traceback, a failure
    stdout, err = capsys.readouterr()
    note(f"exit {code}; stderr: {err.strip()[:600]}")
    assert "Traceback" not in err, err
    assert list(ws.cwd.iterdir()) == [], f"files written into the cwd: {list(ws.cwd.iterdir())}"
    if code == 0:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        assert summary["steps"] >= 1 and json.loads(stdout)["run_dir"] == str(out)
        shutil.rmtree(out)
        ws.outcomes.setdefault(name, []).append("ok")
        return code, summary
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("tuneforge: error: "), err
    assert not out.exists(), f"a run folder was left behind after the error: {sorted(p.name for p in out.iterdir())}"
    ws.outcomes.setdefault(name, []).append(lines[0].replace(str(out.parent), "<work>")[:300])
    return code, None


# ------------------------------------------------------------------ generated recipes

ODD_STRINGS = ["", " ", "\t", "\n", "None", "null", "~", "true", "yes", "no", "0", "-1", "1e-3", "3e-5", ".nan",
               "inf", "auto", "backbone", "*", "[", "]", "{}", "[]", "a: b", "'", '"', "\\", "\x00", "\x7f", "é",
               "日本語", "🙂", "\u202e", "\ufeff", "x" * 300, "../..", "~/nope", "/nonexistent/x", "train.lr",
               "classification", "regression", "multilabel", "token_classification", "sft", "hf", "timm",
               "cross_entropy", "mse", "focal", "bce", "accuracy", "macro_f1", "loss", "f1", "label", "sentence"]
HUGE_INTS = [2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63), -(10**30)]
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 0.0, 1.0, 0.5, 1e-12, 0.999999]
# keys whose generated values must stay small: a thread or worker count, or a step / epoch count, would really be
# used (also when a generated train section drops max_steps). Their out-of-range values are ones that fail fast
# even if the schema's bound were lost: torch refuses 2^31 threads, but 10^6 would really be started.
THREAD_VALUES = [0, -1, 1, 1.5, "two", None, True, 2**31, 2**64, math.nan, [1]]
WORKER_VALUES = [0, -1, 1.5, "two", None, True, math.nan, [1]]
SAFE_VALUES = {("train", "threads"): THREAD_VALUES, ("data", "num_workers"): WORKER_VALUES,
               ("train", "max_steps"): [0, -1, 1, 1.0, 1.5, "1", "one", True, False, math.nan, [1], {}, -(2**63)],
               ("train", "epochs"): [1, 0.5, 0, -1, math.nan, math.inf, "3", "x", [1]],
               ("train", "head_epochs"): [0, 1, 0.5, -1, math.nan, math.inf, "1", "x", [1]]}


def schema_fields(model: type[BaseModel] = Config, prefix: tuple = ()) -> dict[tuple, typing.Any]:
    """(section, ..., key) → pydantic FieldInfo, for every leaf of the recipe schema."""
    out = {}
    for name, f in model.model_fields.items():
        sub = _submodel(f.annotation)
        if sub is not None:
            out[prefix + (name,)] = f
            out.update(schema_fields(sub, prefix + (name,)))
        else:
            out[prefix + (name,)] = f
    return out


def _submodel(ann) -> type[BaseModel] | None:
    for a in (ann, *typing.get_args(ann)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


FIELDS = schema_fields()
SECTIONS = sorted({k[0] for k in FIELDS})


def _numeric(field) -> bool:
    ann = field.annotation
    return any(a in (int, float) for a in (ann, *typing.get_args(ann)))


# numbers the schema takes: the "extreme" changes give them huge, tiny, negative and special values
NUMERIC = sorted(p for p, f in FIELDS.items() if _numeric(f) and p not in SAFE_VALUES)
EXTREMES = HUGE_INTS + SPECIAL_FLOATS + [1e10, 1e30, 3.5e38, -1, 0]


def scalars() -> st.SearchStrategy:
    return st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.sampled_from(HUGE_INTS),
                     st.sampled_from(SPECIAL_FLOATS), st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from(ODD_STRINGS), st.text(max_size=12))


def junk() -> st.SearchStrategy:
    small = scalars()
    return st.one_of(small, st.lists(small, max_size=3), st.dictionaries(st.sampled_from(["a", "lr", "name", ""]),
                                                                         small, max_size=2))


def _bounds(field) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in getattr(field, "metadata", []):
        for attr in ("ge", "gt"):
            lo = getattr(m, attr, lo) if getattr(m, attr, None) is not None else lo
        for attr in ("le", "lt"):
            hi = getattr(m, attr, hi) if getattr(m, attr, None) is not None else hi
    return lo, hi


def _near(lo, hi, integer: bool) -> st.SearchStrategy:
    """Values at, just inside and just outside the bounds."""
    step = 1 if integer else 1e-9
    points = [0, 1, 2, -1]
    for b in (lo, hi):
        if b is not None:
            points += [b - step, b, b + step]
    points = [int(p) if integer else float(p) for p in points]
    if hi is None:  # no upper bound: is a huge number really usable?
        points += HUGE_INTS[1:7] if integer else [1e10, 1e30, 3.5e38, 1e300]
    inner = st.integers(int(lo if lo is not None else -5), int(min(hi, 64) if hi is not None else 64)) if integer \
        else st.floats(lo if lo is not None else -2.0, hi if hi is not None else 2.0)
    return st.one_of(st.sampled_from(points), inner)


def values_for(ann, field=None, path: tuple = ()) -> st.SearchStrategy:
    """Values a field of type `ann` (at `path`) could plausibly get: valid ones, and near misses of the same shape."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return st.sampled_from(list(args))
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*[values_for(a, field, path) for a in args])
    if ann is type(None):
        return st.none()
    if ann is bool:
        return st.booleans()
    if ann is int:
        return _near(*_bounds(field) if field else (None, None), integer=True)
    if ann is float:
        return _near(*_bounds(field) if field else (None, None), integer=False)
    if ann is str:
        return st.sampled_from(ODD_STRINGS)
    if origin is tuple:
        return st.lists(st.floats(-0.5, 1.5) | st.sampled_from(SPECIAL_FLOATS), min_size=1, max_size=3)
    if origin is list:
        return st.lists(values_for(args[0]) if args else scalars(), max_size=3)
    if origin is dict:
        return st.dictionaries(st.sampled_from(["name", "x", "1a", ""]), st.sampled_from(ODD_STRINGS), max_size=2)
    sub = _submodel(ann)
    if sub is not None:
        return section_value(path, sub)
    return junk()


@st.composite
def section_value(draw, path: tuple, sub: type[BaseModel]) -> dict:
    """A whole (sub-)section: a few of its keys, each with a value for its own type (the safe ones for SAFE_VALUES
    keys: a replaced train section has no max_steps)."""
    out = {}
    for key in draw(st.lists(st.sampled_from(list(sub.model_fields)), max_size=3, unique=True)):
        f = sub.model_fields[key]
        where = path + (key,)
        out[key] = draw(st.sampled_from(SAFE_VALUES[where]) if where in SAFE_VALUES else
                        st.one_of(values_for(f.annotation, f, where), junk()))
    return out


def near_miss(key: str) -> st.SearchStrategy:
    """Misspellings of a real key: a letter dropped, doubled or swapped, case, spaces, hyphens."""
    options = [key[:-1], key + "s", key.upper(), key.capitalize(), f" {key}", f"{key} ", key.replace("_", "-"),
               key.replace("_", ""), key[1:] + key[0], key + "_"]
    return st.sampled_from([o for o in options if o and o != key])


@st.composite
def recipe_change(draw) -> tuple[list[str], object]:
    """One change: (key path, value)."""
    path = draw(st.sampled_from(sorted(FIELDS)))
    kind = draw(st.sampled_from(["valid"] * 5 + ["extreme", "extreme", "junk", "junk", "near_miss", "section", "top"]))
    if kind == "extreme":
        return list(draw(st.sampled_from(NUMERIC))), draw(st.sampled_from(EXTREMES))
    if path in SAFE_VALUES:
        return list(path), draw(st.sampled_from(SAFE_VALUES[path]))
    if kind == "valid":
        f = FIELDS[path]
        return list(path), draw(values_for(f.annotation, f, path))
    if kind == "junk":
        return list(path), draw(junk())
    if kind == "near_miss":
        return list(path[:-1]) + [draw(near_miss(path[-1]))], draw(junk())
    if kind == "section":  # a whole section replaced
        return [path[0]], draw(junk())
    return [draw(st.sampled_from(SECTIONS + ["Train", "trian", "extra", "eval_", ""]))], draw(junk())


def set_value(recipe: dict, path: list[str], value) -> None:
    """recipe[path] = value, making the sections on the way (a scalar in the way is replaced)."""
    node = recipe
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {"type" if part == "task" else "name": child} if isinstance(child, str) else {}
            node[part] = child
        node = child
    node[path[-1]] = value


def as_set_option(path: list[str], value, raw: str | None) -> str:
    """`--set KEY=VALUE` with the value as YAML (as a user types it), or a raw odd string."""
    text = raw if raw is not None else yaml.safe_dump(value, default_flow_style=True, allow_unicode=True,
                                                      width=10**6).removesuffix("\n").removesuffix("\n...")
    return f"{'.'.join(path)}={text}"


@pytest.fixture(scope="module")
def base_recipe(text_recipe):
    return text_recipe(train={"max_steps": 1}, eval={"every_steps": 20})  # one step, one evaluation


@SETTINGS
@seeded
@given(changes=st.lists(recipe_change(), min_size=1, max_size=3),
       via_set=st.lists(st.booleans(), min_size=3, max_size=3),
       raw_set=st.lists(st.none() | st.sampled_from(ODD_STRINGS), min_size=3, max_size=3))
def test_generated_recipes(changes, via_set, raw_set, base_recipe, workspace, capsys):
    recipe = json.loads(json.dumps(base_recipe))
    options: list[str] = []
    for (path, value), use_set, raw in zip(changes, via_set, raw_set):
        if use_set and all(p and "=" not in p for p in path):
            options += ["--set", as_set_option(path, value, raw)]
        else:
            set_value(recipe, path, value)
    work = workspace.next("recipe")
    text = yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False)
    (work / "recipe.yaml").write_bytes(text.encode("utf-8", "surrogatepass"))
    note(f"recipe.yaml:\n{text}\noptions: {options}")
    train_once([str(work / "recipe.yaml"), *options], work / "run", capsys, workspace, "recipes")
    shutil.rmtree(work)


# ------------------------------------------------------------------ generated tables

WORDS = FILLER + POSITIVE + NEGATIVE
ODD_TEXTS = ["", " ", "\t", "  \t ", "\u00a0", "\u200b", "é café crème", "日本語のテキスト", "🙂 good 🙂",
             "a\nb", "a\r\nb", "a\rb", 'say "hi"', "'quoted'", "a,b", "a\tb", "a;b", "\\", "\x00", "\x1e",
             "\u2028", "\ufeffgood", "\ud83d broken emoji", "good \udc00", "nan", "None", "null", "-", "="]
GOOD_LABELS = ["0", "1"]
ODD_LABELS = ["", " ", "nan", "NaN", "None", "null", "2", "x", "1.0", " 1", "0 ", "-1", "1e0", "\ud83d"]
JSON_LABELS = [0, 1, 0.0, 1.0, "0", "1", None, True, False, math.nan, [1], {"a": 1}, 2, "x", ""]
HEADERS = ["sentence", "label", "text", "review", "Label", "", " sentence", "label ", "\ufeffsentence",
           "sentence1", "sentence2", "_line"]


@st.composite
def sentence(draw) -> str:
    words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8))
    return " ".join(words)


def text_cells() -> st.SearchStrategy:
    return st.one_of(st.sampled_from(ODD_TEXTS), st.text(max_size=15), st.builds(long_field, st.sampled_from(WORDS)))


def long_field(word: str) -> str:
    """Over csv's default field limit of 131072 characters."""
    return (word + " ") * (140_000 // (len(word) + 1) + 1)


def rarely(draw, n: int) -> bool:
    """True about once in n draws. Shrinks to False (hypothesis shrinks integers towards 0), so a minimal failing
    example keeps only the oddities the failure needs."""
    return draw(st.integers(0, n - 1)) == n - 1


@st.composite
def table(draw, fmt: str, clean: bool = False) -> dict:
    """A table as data (header, rows of cells) and how it is written to bytes. Each oddity is switched on for a
    share of the tables, so that about a third of them are fit to train on."""
    messy = not clean
    if messy and rarely(draw, 6):
        header = draw(st.lists(st.sampled_from(HEADERS), min_size=1, max_size=4))
    else:
        header = ["label", "sentence"] if messy and rarely(draw, 4) else ["sentence", "label"]
    n = draw(st.integers(0, 1)) if messy and rarely(draw, 12) else draw(st.integers(2, 10))
    odd_text, odd_label = messy and rarely(draw, 4), messy and rarely(draw, 4)
    label_pool = st.sampled_from(ODD_LABELS + (JSON_LABELS if fmt == "jsonl" else []))
    rows = []
    for i in range(n):
        row = []
        for h in header:
            if "label" in h.lower():
                row.append(draw(label_pool) if odd_label and rarely(draw, 3) else GOOD_LABELS[i % 2])
            else:
                row.append(draw(text_cells()) if odd_text and rarely(draw, 3) else draw(sentence()))
        rows.append(row)
    default = "\t" if fmt == "tsv" else ","
    spec = {"fmt": fmt, "header": header, "rows": rows, "encoding": "utf-8", "crlf": False, "blank": [],
            "ragged": {}, "quoting": csv.QUOTE_MINIMAL, "delimiter": default, "ascii": True, "junk_lines": [],
            "garbage": None}
    if clean:
        return spec
    if rarely(draw, 3):
        spec["encoding"] = draw(st.sampled_from(["utf-8-sig", "latin-1", "utf-16", "utf-8-sig"]))
    spec["crlf"] = rarely(draw, 3)
    spec["blank"] = draw(st.lists(st.integers(0, max(n, 1)), max_size=3)) if rarely(draw, 3) else []
    if n and rarely(draw, 10):
        spec["ragged"] = {draw(st.integers(0, n - 1)): draw(st.sampled_from([-1, 1]))}
    if rarely(draw, 3):
        spec["quoting"] = draw(st.sampled_from([csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC, csv.QUOTE_NONE]))
    if rarely(draw, 8):
        spec["delimiter"] = draw(st.sampled_from([";", "\t" if fmt == "csv" else ","]))
    spec["ascii"] = not rarely(draw, 2)  # JSONL: ensure_ascii (a lone surrogate then stays an escape)
    if fmt == "jsonl" and rarely(draw, 8):
        spec["junk_lines"] = [draw(st.sampled_from(["[1, 2]", "42", "{bad json", '"text"', "null", "{}"]))]
    if rarely(draw, 30):
        spec["garbage"] = draw(st.binary(min_size=1, max_size=40))
    return spec


def _records(spec: dict) -> list[str]:
    """Each record (header first) serialized on its own, so blank lines go between records only."""
    out = []
    if spec["fmt"] == "jsonl":
        for i, row in enumerate(spec["rows"]):
            cells = row[:len(row) + spec["ragged"].get(i, 0)] if spec["ragged"].get(i, 0) < 0 else row
            pairs = ", ".join(f"{json.dumps(h, ensure_ascii=spec['ascii'])}: "
                              f"{json.dumps(v, ensure_ascii=spec['ascii'])}" for h, v in zip(spec["header"], cells))
            out.append("{" + pairs + "}")  # written by hand: duplicate keys stay duplicate
        return out + spec["junk_lines"]
    kw = {"delimiter": spec["delimiter"], "quoting": spec["quoting"], "lineterminator": "\n"}
    if spec["quoting"] == csv.QUOTE_NONE:
        kw["escapechar"] = "\\"
    for i, row in enumerate([spec["header"], *spec["rows"]]):
        extra = spec["ragged"].get(i - 1, 0) if i else 0
        cells = row[:extra] if extra < 0 else row + ["extra"] * extra
        buf = io.StringIO()
        try:
            csv.writer(buf, **kw).writerow(cells)
        except csv.Error:  # QUOTE_NONE cannot write some cells: fall back to quoting them
            csv.writer(buf, delimiter=spec["delimiter"], lineterminator="\n").writerow(cells)
        out.append(buf.getvalue().removesuffix("\n"))
    return out


def render(spec: dict) -> bytes:
    if spec["garbage"] is not None:
        return spec["garbage"]
    records = _records(spec)
    for pos in sorted(spec["blank"], reverse=True):
        records.insert(min(pos + 1, len(records)), "")
    text = "\n".join(records) + "\n"
    if spec["crlf"]:
        text = text.replace("\n", "\r\n")  # also inside quoted cells: a CSV cell may then hold a \r\n itself
    enc = spec["encoding"]
    if enc == "latin-1":
        return text.encode("latin-1", "replace")
    return text.encode(enc, "surrogatepass")


def exact_rows(spec: dict) -> int | None:
    """The data rows the product must account for when it succeeds, when the file's rows are unambiguous
    (None: a cell holds the delimiter or a line break the TSV convention does not quote, or the file is junk)."""
    if spec["garbage"] is not None or spec["ragged"] or spec["junk_lines"]:
        return None
    if spec["fmt"] == "jsonl":
        return len(spec["rows"])
    breaking = ("\n", "\r", spec["delimiter"])
    if spec["fmt"] == "tsv" or spec["quoting"] == csv.QUOTE_NONE or spec["delimiter"] != (
            "\t" if spec["fmt"] == "tsv" else ","):
        if any(isinstance(c, str) and any(b in c for b in breaking) for row in spec["rows"] for c in row):
            return None
    return len(spec["rows"])


@SETTINGS
@seeded
@given(data=st.data(), fmt=st.sampled_from(["csv", "tsv", "jsonl"]), messy_dev=st.booleans(),
       text_column=st.sampled_from([None, "sentence"]), skip=st.booleans())
def test_generated_tables(data, fmt, messy_dev, text_column, skip, tiny_bert_dir, workspace, capsys):
    train = data.draw(table(fmt), label="train")
    dev = data.draw(table(fmt, clean=not messy_dev), label="dev")
    work = workspace.next("table")
    folder = work / "data"
    folder.mkdir()
    (folder / f"train.{fmt}").write_bytes(render(train))
    (folder / f"dev.{fmt}").write_bytes(render(dev))
    note(f"train.{fmt}: {render(train)[:2000]!r}\ndev.{fmt}: {render(dev)[:1000]!r}")
    recipe = {"task": "classification", "model": {"name": str(tiny_bert_dir)},
              "data": {"dir": str(folder), "text_column": text_column, "max_length": 32,
                       "on_bad_sample": "skip" if skip else "error"},
              "train": {"lr": 3e-3, "max_steps": 1, "batch_size": 8, "precision": "fp32", "threads": 1, "seed": 0},
              "output": {"progress": False, "report": False}}
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    code, summary = train_once([str(work / "recipe.yaml")], work / "run", capsys, workspace, "tables")
    if code == 0:
        expected = [exact_rows(train), exact_rows(dev)]
        got = summary["data"]
        note(f"summary data: {got}")
        if None not in expected:  # every row trained on, validated on, or counted as skipped: none lost silently
            assert got["train"] + got["val"] + got["skipped"] == sum(expected), (got, expected)
        if not skip:
            assert got["skipped"] == 0
    shutil.rmtree(work)
