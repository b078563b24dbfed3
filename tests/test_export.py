"""`tuneforge export --format onnx`: parity with PyTorch for every task kind, int8, the export folder, `--onnx`
predict through the same pipeline, the synthetic-data fallback and the one-line parity failure."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from conftest import make_color_image
from tuneforge.cli import main
from tuneforge.errors import ConfigError, ModelError
from tuneforge.predict import Predictor

pytest_plugins = ["ship_runs"]
pytest.importorskip("onnxruntime", reason="tuneforge export needs the export extra: pip install -e '.[export]'")

SAMPLES = {
    "text": ["the movie was good", "awful", "it was a boring film and the acting was poor too"],
    "pair": [("the film was good", "a lovely story"), ("bad", "the plot was great and the cast was fine")],
    "siamese": [("the film was good", "a lovely story"), ("bad", "the plot was great and the cast was fine")],
    "ner": ["the movie was good but the ending was awful", "lovely"],
    "multilabel": ["good and bad", "the music", "a great film with a terrible plot"],
}
DECISION = {"text": "label", "pair": None, "siamese": "label", "ner": "tags", "multilabel": "labels",
            "image": "label", "torchvision": "label"}


def samples(kind: str) -> list:
    if kind in SAMPLES:
        return SAMPLES[kind]
    rng = np.random.default_rng(3)
    return [make_color_image(rng, c, size=s) for c, s in (("red", 40), ("blue", 57), ("red", 33))]


@pytest.mark.parametrize("kind", ["text", "pair", "siamese", "ner", "multilabel", "image", "torchvision"])
def test_export_parity_and_predict_onnx(kind, ship_export):
    run, m = ship_export(kind)
    out = run / "export" / "onnx"
    p = m["parity"]
    fp32, int8 = p["backends"]["onnxruntime fp32"], p["backends"]["onnxruntime int8"]
    assert p["data"]["kind"] == "validation" and p["rows"] > 0
    assert fp32["max_abs_diff"] <= p["tolerance"] <= 1e-4 * 100  # logits of tiny models stay far below 100
    assert p["decision"] == DECISION[kind]
    assert fp32["agreement"] == (None if DECISION[kind] is None else 1.0)
    assert "agreement_vs_fp32" in int8 and int8["size_mb"] > 0 and int8["ms_per_batch"] > 0
    assert m["exporter"] == "torchscript" and m["opset"] == 18
    for name in ("model.onnx", "model.int8.onnx", "labels.json", "task.json", "preprocessing.json", "manifest.json"):
        assert (out / name).is_file(), name
    from tuneforge.export import sha256

    assert m["files"]["fp32"]["sha256"] == sha256(out / "model.onnx")
    axes = {i["name"]: i["shape"] for i in m["inputs"]}
    assert all(shape[0] == "batch" for shape in axes.values())
    if kind != "image" and kind != "torchvision":
        assert axes["input_ids"][1] == "sequence"
        assert (out / "tokenizer.json").is_file()
    if kind == "siamese":
        assert axes["pair_input_ids"][1] == "pair_sequence"
    task = json.loads((out / "task.json").read_text())
    assert task["texts_per_example"] == (2 if kind in ("pair", "siamese") else 1)
    if kind == "pair":
        assert task["target_std"] != 1.0  # standardised targets: the state that undoes it travels with the graph
    if kind == "multilabel":
        assert len(task["thresholds"]) == len(task["labels"])
    if kind in ("image", "torchvision"):  # dynamic int8 convolutions are slow and inaccurate: only the head
        assert m["int8_op_types"] == ["MatMul", "Gemm"]

    torch_out = Predictor(run).predict(samples(kind))
    onnx_out = Predictor(run, onnx=True).predict(samples(kind))
    if DECISION[kind]:
        assert [o[DECISION[kind]] for o in onnx_out] == [o[DECISION[kind]] for o in torch_out]
    else:
        assert np.allclose([o["value"] for o in onnx_out], [o["value"] for o in torch_out], atol=1e-3)


def test_dynamo_exporter_and_opset(ship_run, tmp_path):
    from tuneforge.export import export_onnx

    m = export_onnx(ship_run("text"), output=tmp_path / "dyn", exporter="dynamo", opset=17, max_rows=16,
                    log=lambda *_: None)
    assert m["exporter"] == "dynamo" and m["opset"] == 17 and m["parity"]["rows"] == 16
    assert m["parity"]["backends"]["onnxruntime fp32"]["agreement"] == 1.0
    assert not (tmp_path / "dyn" / "model.int8.onnx").exists()
    # an export folder loads on its own, without the run folder around it
    alone = shutil.copytree(tmp_path / "dyn", tmp_path / "shipped")
    assert Predictor(alone, onnx=True).predict(["good"])[0]["label"] == Predictor(ship_run("text")).predict(
        ["good"])[0]["label"]


def test_cli_export_and_predict_onnx(ship_export, capsys):
    run, _ = ship_export("text")
    assert main(["export", str(run), "--format", "onnx", "--quantize", "dynamic", "--max-rows", "24"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime fp32" in out and "onnxruntime int8" in out and "torchscript" in out
    assert "parity on validation rows" in out
    args = ["predict", str(run), "--text", "the movie was good", "--text", "bad"]
    assert main(args) == 0
    plain = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for variant in ([], ["int8"]):
        assert main(args + ["--onnx", *variant]) == 0
        onnx = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [o["label"] for o in onnx] == [o["label"] for o in plain]
    assert main(["eval", str(run), "--data", json.loads((run / "model" / "tuneforge.json").read_text())["config"]
                 ["data"]["dir"] + "/dev.tsv", "--onnx"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0.0


def test_missing_export_and_bad_output_are_one_line_errors(ship_run, tmp_path, capsys):
    run = ship_run("image")
    fresh = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("export"))
    assert main(["predict", str(fresh), "--image", str(tmp_path), "--onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tuneforge export" in err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    from tuneforge.export import export_onnx

    with pytest.raises(ConfigError, match="not an export"):
        export_onnx(fresh, output=tmp_path / "busy", log=lambda *_: None)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_synthetic_fallback_when_validation_data_is_gone(ship_run, tmp_path):
    from tuneforge.export import export_onnx

    run = shutil.copytree(ship_run("ner"), tmp_path / "run", ignore=shutil.ignore_patterns("export"))
    meta_file = run / "model" / "tuneforge.json"
    meta = json.loads(meta_file.read_text())
    meta["config"]["data"]["dir"] = str(tmp_path / "moved-away")
    meta_file.write_text(json.dumps(meta))
    lines = []
    m = export_onnx(run, max_rows=8, log=lines.append)
    assert m["parity"]["data"]["kind"] == "synthetic" and "moved-away" in m["parity"]["data"]["reason"]
    assert any("SYNTHETIC" in line for line in lines)
    assert m["parity"]["backends"]["onnxruntime fp32"]["agreement"] == 1.0


def test_parity_failure_is_one_line_naming_both_numbers(ship_run, tmp_path, monkeypatch):
    import tuneforge.export_parity as parity

    real = parity._backends

    def drifting(run, out):  # an fp32 graph whose logits are off by 0.01
        backends = real(run, out)
        fn, size = backends["onnxruntime fp32"]
        backends["onnxruntime fp32"] = (lambda b: fn(b) + 0.01, size)
        return backends

    monkeypatch.setattr(parity, "_backends", drifting)
    from tuneforge.export import export_onnx

    with pytest.raises(ModelError) as info:
        export_onnx(ship_run("text"), output=tmp_path / "x", log=lambda *_: None)
    msg = str(info.value)
    assert "\n" not in msg and re.search(r"max abs logit difference 0\.01\b.*\(tolerance 0\.000[0-9]+\)", msg)
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.tmp").exists()  # nothing half-written is left
