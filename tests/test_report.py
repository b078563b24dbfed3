"""`tuneforge report`: one self-contained HTML file per run (every task) or per comparison, and the validation
predictions it analyses."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import tuneforge
from observe_helpers import ner_recipe, write_multilabel  # noqa: F401  (fixture)
from tuneforge.cli import main
from tuneforge.errors import ConfigError
from tuneforge.report import build_report, read_predictions, write_val_predictions
from tuneforge.report.analysis import reliability
from tuneforge.report.figures import thumbnail
from tuneforge.report.runs import load_run
from tuneforge.report.sections import curves_section

SINGLE_SECTIONS = ("summary", "curves", "task", "mistakes", "data", "strategies", "recipe")


def external_references(text: str) -> list[str]:
    """Anything the page would fetch: src / href / url() / @import pointing off the file."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?\s*([^"'\s>]+)""", text) + re.findall(r"url\(([^)]*)\)", text)
    refs += re.findall(r"@import[^;]*", text)
    return [r for r in refs if not r.startswith(("data:", "#"))]


def check_page(path: Path, sections=SINGLE_SECTIONS) -> str:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "</html>" in text
    for anchor in sections:
        assert f'<section id="{anchor}">' in text, anchor
    assert external_references(text) == []
    assert "<script" not in text.lower() and "http://" not in text and "https://" not in text
    assert text.count('src="data:image/png;base64,') >= 2
    return text


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, text_recipe):
    recipe = text_recipe(train={"max_steps": 30}, eval={"every_steps": 10})
    return tuneforge.train(recipe, output=str(tmp_path_factory.mktemp("report") / "text"), quiet=True).run_dir


def test_classification_report_and_predictions(text_run):
    path = build_report([text_run])
    assert path == text_run / "report.html"
    text = check_page(path)
    for expected in ("confusion matrix", "ROC", "ECE", "Per class", 'alt="class counts"', "Worst mistakes",
                     "the resolved recipe (config.yaml)", "first token shortcut"):
        assert expected in text, expected
    assert "LR not recorded" not in text and "RSS not recorded" not in text  # metrics.jsonl records both
    rows = read_predictions(text_run)
    assert len(rows) == 40 and {"input", "target", "output"} <= set(rows[0])
    assert rows[0]["target"] in ("0", "1") and set(rows[0]["output"]["probabilities"]) == {"0", "1"}
    summary = json.loads((text_run / "summary.json").read_text())
    accuracy = np.mean([r["output"]["label"] == r["target"] for r in rows])
    assert accuracy == pytest.approx(summary["eval"]["accuracy"])  # the same kept model, the same val split


def test_lr_per_group_and_rss_are_drawn(text_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(text_run, run, ignore=shutil.ignore_patterns("checkpoints", "report.html"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lines = [json.dumps({**r, "lr": [0.003, 0.03], "rss_mb": 900.0 + i}) for i, r in enumerate(records)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    text = curves_section(load_run(run))
    assert "LR not recorded" not in text and "RSS not recorded" not in text


def test_unfinished_run_reports_its_curves(text_run, tmp_path):
    run = tmp_path / "running"
    shutil.copytree(text_run, run, ignore=shutil.ignore_patterns("checkpoints", "model", "summary.json",
                                                                  "predictions", "report.html"))
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 40, "epo')  # a line still being written
    text = build_report([run], tmp_path / "r.html").read_text()
    assert "unfinished run" in text and 'id="curves"' in text
    assert 'id="mistakes"' not in text and "#mistakes" not in text  # no section, no link to it


def test_image_report_has_thumbnails(tmp_path, image_recipe):
    run = tuneforge.train(image_recipe(train={"max_steps": 2}, eval={"every_steps": 1}), quiet=True,
                          output=str(tmp_path / "img")).run_dir
    text = check_page(build_report([run]))
    rows = read_predictions(run)
    assert any(r["output"]["label"] != r["target"] for r in rows)  # an untrained model errs
    assert 'src="data:image/jpeg;base64,' in text and 'alt="input size percentiles"' in text


def test_thumbnail_is_small_jpeg(image_data_dir):
    import base64
    import io

    from PIL import Image

    path = next((image_data_dir / "val" / "red").iterdir())
    uri = thumbnail(str(path))
    assert uri.startswith("data:image/jpeg;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert max(im.size) <= 128
    assert thumbnail(np.zeros((300, 200, 3), dtype=np.uint8).tolist()) is not None  # in-memory pixels
    assert thumbnail("/no/such/image.png") is None


def test_ner_report_highlights_entities(tmp_path, ner_recipe):
    run = tuneforge.train(ner_recipe(), output=str(tmp_path / "ner"), quiet=True).run_dir
    text = check_page(build_report([run]))
    assert "Per entity type" in text and "Most confused tags" in text and "Sentence windows" in text
    rows = read_predictions(run)
    assert all(len(r["target"]) == len(r["output"]["tags"]) for r in rows)
    wrong = [(g, p) for r in rows for g, p in zip(r["target"], r["output"]["tags"]) if g != p]
    if wrong:  # the most confused pair is in the table, and the mistaken sentences are highlighted
        g, p = max(set(wrong), key=wrong.count)
        assert 'class="ent t' in text and f"<td>{g}</td><td>{p}</td>" in text


def test_regression_and_multilabel_reports(tmp_path, text_recipe, tiny_bert_dir):
    reg = tuneforge.train(text_recipe(task={"type": "regression"}, train={"max_steps": 10}), quiet=True,
                          output=str(tmp_path / "reg")).run_dir
    text = check_page(build_report([reg]))
    assert "predicted vs true" in text and "largest errors" in text
    assert isinstance(read_predictions(reg)[0]["target"], float)

    data = tmp_path / "ml-data"
    data.mkdir()
    write_multilabel(data / "train.jsonl", 60, 1)
    write_multilabel(data / "dev.jsonl", 20, 2)
    recipe = text_recipe(task={"type": "multilabel"}, train={"max_steps": 10}, eval={"every_steps": 5},
                         data={"dir": str(data), "text_column": "text", "label_column": "tags"})
    ml = tuneforge.train(recipe, quiet=True, output=str(tmp_path / "ml")).run_dir
    text = check_page(build_report([ml]))
    assert "F1 per label" in text and "threshold" in text
    assert all(isinstance(r["target"], list) for r in read_predictions(ml))


def test_two_run_comparison(text_run, text_recipe, tmp_path, monkeypatch):
    other = tuneforge.train(text_recipe(train={"max_steps": 20, "lr": 1e-3}, eval={"every_steps": 10}), quiet=True,
                            output=str(tmp_path / "runs" / "slower")).run_dir
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(text_run), str(other)]) == 0
    text = check_page(tmp_path / "report-compare.html", ("compare", "curves", "final"))
    assert "train.lr" in text and "train.max_steps" in text and "slower" in text
    assert "output.dir" not in text  # where a run was written is not a hyperparameter


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a tuneforge run folder" in err and len(err.splitlines()) == 1
    with pytest.raises(ConfigError):
        build_report([])


def test_write_val_predictions_is_rewritten_on_demand(text_run):
    path = write_val_predictions(text_run)
    assert path == text_run / "predictions" / "val.jsonl"
    assert not list(path.parent.glob("*.tmp"))


def test_reliability_and_ece():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    gold = np.array([0, 1, 1, 0])
    rel = reliability(probs, gold, bins=10)
    # bins: 0.9 (right), 0.8 (wrong), 0.7 (right), 0.55 (wrong): |1-.9| + |0-.8| + |1-.7| + |0-.55|, over 4
    assert rel["ece"] == pytest.approx((0.1 + 0.8 + 0.3 + 0.55) / 4)
    assert rel["counts"].sum() == 4


def test_every_run_writes_its_report_at_the_end(tmp_path, text_recipe):
    run = tuneforge.train(text_recipe(train={"max_steps": 4}, eval={"every_steps": 2}, output={"report": True}),
                          output=str(tmp_path / "run"), quiet=True).run_dir
    text = check_page(run / "report.html")
    assert "Where the model errs" in text and (run / "predictions" / "val.jsonl").is_file()
    assert "report: " in (run / "train.log").read_text()
