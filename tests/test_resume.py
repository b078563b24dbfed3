"""Checkpoint contents, resume semantics, corrupt checkpoints and models, no pickles, NaN policies, out-of-memory.

In-process: a crash is simulated with the chaos hook's `interrupt` action (KeyboardInterrupt at a named point);
the real SIGKILL runs are in test_chaos.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import tuneforge
from tuneforge.cli import main
from tuneforge.engine import chaos

from chaos_helpers import history as records
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.tasks.classification import Classification

SHORT = {"train": {"max_steps": 12, "batch_size": 16}, "eval": {"every_steps": 4}, "output": {"keep_checkpoints": 2}}






def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, text_recipe):
    return tuneforge.train(text_recipe(**SHORT), output=str(tmp_path_factory.mktemp("ref") / "run"), quiet=True)


# ------------------------------------------------------------------ checkpoint contents


def test_checkpoint_folder_is_complete_and_pickle_free(reference):
    ckpt = reference.run_dir / "checkpoints"
    steps = sorted(p.name for p in ckpt.iterdir() if p.name.startswith("step-"))
    assert steps == ["step-00000008", "step-00000012"]  # keep_checkpoints: 2
    assert (ckpt / "best.safetensors").is_file()
    meta = json.loads((ckpt / "step-00000012" / "trainer.json").read_text())
    for key in ("train_state", "optimizer", "scheduler", "scaler", "rng", "callbacks", "config", "files"):
        assert key in meta, key
    ts = meta["train_state"]
    assert (ts["step"], ts["epoch"], ts["batch_in_epoch"]) == (12, 1, 4)  # 8 batches per epoch
    assert [r["step"] for r in ts["history"]] == [4, 8, 12]
    assert ts["samples_seen"] == ts["history"][-1]["samples_seen"]
    assert meta["callbacks"]["early_stopping"] == {"best": None, "bad": 0}
    assert meta["config"]["train"]["max_steps"] == 12
    with safe_open(str(ckpt / "step-00000012" / "trainer.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"rng.torch", "rng.numpy"} <= names
    assert any(n.endswith(".exp_avg") for n in names) and any(n.endswith(".exp_avg_sq") for n in names)


@pytest.mark.parametrize("which", ["reference", "image"])
def test_run_folder_has_no_pickles(which, reference, tmp_path, image_recipe):
    """Every file is safetensors (parsed) or UTF-8 text: no pickle, .bin, .pt, training_args, ..."""
    run = reference if which == "reference" else tuneforge.train(
        image_recipe(train={"max_steps": 2}, eval={"every_steps": 1}), output=str(tmp_path / "img"), quiet=True)
    files = [p for p in run.run_dir.rglob("*") if p.is_file()]
    assert len(files) > 8
    for p in files:
        assert p.suffix not in (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"), p
        if p.suffix == ".safetensors":
            with safe_open(str(p), "pt") as f:
                assert list(f.keys())
        elif p.suffix == ".png":  # lr_find plot, if any
            assert p.read_bytes()[:4] == b"\x89PNG"
        else:
            p.read_bytes().decode("utf-8")  # text, not a binary pickle


def test_every_torch_load_is_weights_only_and_remote_code_is_opt_in():
    from tuneforge.config import ModelConfig

    src = Path(tuneforge.__file__).parent
    calls = [(p.name, line.strip()) for p in src.rglob("*.py") for line in p.read_text().splitlines()
             if "torch.load(" in line and not line.strip().startswith("#")]
    assert calls and all("weights_only=True" in line for _, line in calls), calls
    assert not [p for p in src.rglob("*.py") if "trust_remote_code=True" in p.read_text()]
    assert ModelConfig(name="x").trust_remote_code is False


# ------------------------------------------------------------------ resume


@pytest.mark.parametrize("spec", ["step:6", "eval_batch:4", "checkpoint_write:2", "fit_end:1"])
def test_resume_after_crash_matches(spec, reference, tmp_path, text_recipe, crash_at):
    out = tmp_path / "run"
    crash_at(spec)
    with pytest.raises(KeyboardInterrupt):
        tuneforge.train(text_recipe(**SHORT), output=str(out), quiet=True)
    crash_at(None)
    assert not (out / "summary.json").exists()
    result = tuneforge.run.resume(out, quiet=True)
    assert records(out) == records(reference.run_dir)
    assert_same_weights(out, reference.run_dir)
    assert result.summary["steps"] == 12 and result.metrics == reference.metrics
    log = (out / "train.log").read_text()
    assert log.count("data:") >= 2 and "resumed from checkpoints/step-" in log  # the log is appended to


def test_resume_with_ema_matches(tmp_path, text_recipe, crash_at):
    """Extra state registered by a strategy (EMA weights: a dict of tensors) is checkpointed too."""
    recipe = text_recipe(train={**SHORT["train"], "ema": 0.9}, eval=SHORT["eval"], output=SHORT["output"])
    ref = tuneforge.train(recipe, output=str(tmp_path / "ref"), quiet=True)
    crash_at("step:6")
    with pytest.raises(KeyboardInterrupt):
        tuneforge.train(recipe, output=str(tmp_path / "run"), quiet=True)
    crash_at(None)
    tuneforge.resume(tmp_path / "run", quiet=True)
    assert records(tmp_path / "run") == records(ref.run_dir)
    assert_same_weights(tmp_path / "run", ref.run_dir)


def test_train_resume_flag(reference, tmp_path, text_recipe, crash_at):
    out = tmp_path / "run"
    run = tuneforge.train(text_recipe(**SHORT), output=str(out), resume=True, quiet=True)  # empty: starts
    assert run.summary["resumed_from_step"] is None
    again = tuneforge.train(text_recipe(**SHORT), output=str(out), resume=True, quiet=True)  # finished: no-op
    assert again.summary == run.summary
    crash_at("step:10")
    other = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):
        tuneforge.train(text_recipe(**SHORT), output=str(other), quiet=True)
    crash_at(None)
    with pytest.raises(ConfigError) as info:  # a different recipe cannot continue this run
        tuneforge.train(text_recipe(**SHORT), output=str(other), resume=True, quiet=True, train__lr=1e-3)
    assert "train.lr" in str(info.value) and "differs" in str(info.value)
    with pytest.raises(ConfigError) as info:  # neither flag: refuse, and say what to do
        tuneforge.train(text_recipe(**SHORT), output=str(other), quiet=True)
    assert "--resume" in str(info.value) and "--overwrite" in str(info.value)
    with pytest.raises(ConfigError):
        tuneforge.train(text_recipe(**SHORT), output=str(other), resume=True, overwrite=True, quiet=True)
    done = tuneforge.train(text_recipe(**SHORT), output=str(other), resume=True, quiet=True)
    assert done.summary["resumed_from_step"] == 8
    assert records(other) == records(reference.run_dir)


def test_resume_not_a_run(tmp_path, capsys):
    assert main(["resume", str(tmp_path)]) == 2
    assert "not a tuneforge run folder" in capsys.readouterr().err


def _crashed_run(tmp_path, text_recipe, crash_at) -> Path:
    out = tmp_path / "run"
    crash_at("step:10")
    with pytest.raises(KeyboardInterrupt):
        tuneforge.train(text_recipe(**SHORT), output=str(out), quiet=True)
    crash_at(None)
    return out


@pytest.mark.parametrize("damage", ["truncate", "flip", "header"])
def test_corrupt_checkpoint_is_a_clear_error(damage, tmp_path, text_recipe, crash_at, capsys):
    out = _crashed_run(tmp_path, text_recipe, crash_at)
    target = out / "checkpoints" / "step-00000008" / ("model.safetensors" if damage != "header" else
                                                       "trainer.safetensors")
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "flip":
        data[-10] ^= 0xFF  # inside a tensor: only the recorded SHA-256 notices
    else:
        data[8:12] = b"{{{{"
    target.write_bytes(bytes(data))
    assert main(["resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tuneforge: error: "), err
    assert target.name in err[0] and "step-00000008" in err[0] and "step-00000004" in err[0]  # the fallback
    assert "Traceback" not in err[0]


def test_truncated_model_weights_are_a_clear_error(reference, tmp_path, text_data_dir, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference.run_dir, run)
    target = run / "model" / "model.safetensors"
    target.write_bytes(target.read_bytes()[:1000])
    assert main(["eval", str(run), "--data", str(text_data_dir / "dev.tsv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.safetensors" in err[0] and "truncated or corrupt" in err[0], err


# ------------------------------------------------------------------ NaN / inf


@pytest.fixture
def nan_at(monkeypatch):
    """nan_at({3, 4}) → the training loss of those loss calls (1-based) is NaN, so the gradients are too."""
    def arm(calls: set[int]) -> None:
        original, seen = Classification.loss, {"n": 0}

        def loss(self, logits, batch):
            out = original(self, logits, batch)
            if torch.is_grad_enabled():
                seen["n"] += 1
                if seen["n"] in calls:
                    return out * float("nan")
            return out
        monkeypatch.setattr(Classification, "loss", loss)
    return arm


def test_nan_stop(tmp_path, text_recipe, nan_at, capsys):
    import yaml

    nan_at({6})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(text_recipe(**SHORT)))
    assert main(["train", str(tmp_path / "r.yaml"), "--output", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite values at step 6 (loss is nan)" in err[0], err
    assert "train.nan_policy" in err[0]
    assert (tmp_path / "run" / "checkpoints" / "step-00000004").is_dir()  # progress so far is kept


def test_nan_huge_lr_stops_without_traceback(tmp_path, text_recipe, capsys):
    import yaml

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(text_recipe(**SHORT)))
    code = main(["train", str(tmp_path / "r.yaml"), "--output", str(tmp_path / "run"), "--quiet",
                 "--set", "train.lr=1e30", "--set", "train.grad_clip=null"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "non-finite values at step" in err[0], err


def test_nan_skip(tmp_path, text_recipe, nan_at):
    nan_at({3, 7})
    run = tuneforge.train(text_recipe(train={**SHORT["train"], "nan_policy": "skip"}, eval=SHORT["eval"]),
                          output=str(tmp_path / "run"), quiet=True)
    assert run.summary["nan_guard"] == {"policy": "skip", "skipped_steps": 2, "rollbacks": 0, "lr_scale": 1.0}
    assert run.summary["steps"] == 12
    assert all(torch.isfinite(w).all() for w in weights(run.run_dir).values())


def test_nan_rollback(tmp_path, text_recipe, nan_at):
    nan_at({10})  # after the step-8 checkpoint: back to step 8, LR halved, the same batches again
    run = tuneforge.train(text_recipe(train={**SHORT["train"], "nan_policy": "rollback"}, eval=SHORT["eval"]),
                          output=str(tmp_path / "run"), quiet=True)
    assert run.summary["nan_guard"] == {"policy": "rollback", "skipped_steps": 0, "rollbacks": 1, "lr_scale": 0.5}
    assert [r["step"] for r in records(run.run_dir)] == [4, 8, 12]
    assert "rolled back to step 8, LR now x0.5" in (run.run_dir / "train.log").read_text()
    meta = json.loads((run.run_dir / "checkpoints" / "step-00000012" / "trainer.json").read_text())
    assert meta["callbacks"]["nan_guard"]["lr_scale"] == 0.5
    assert all(g["lr"] == pytest.approx(1.5e-3) for g in meta["optimizer"]["param_groups"])


def test_nan_rollback_before_any_checkpoint(tmp_path, text_recipe, nan_at):
    nan_at({2})
    run = tuneforge.train(text_recipe(train={**SHORT["train"], "nan_policy": "rollback"}, eval=SHORT["eval"]),
                          output=str(tmp_path / "run"), quiet=True)
    assert run.summary["nan_guard"]["rollbacks"] == 1 and run.summary["steps"] == 12


# ------------------------------------------------------------------ memory


@pytest.mark.parametrize("where, fragments", [
    ("step:2", ("out of memory during training at train.batch_size 16", "train.batch_size=8",
                "train.grad_accum=2")),
    ("eval_batch:1", ("out of memory during evaluation at batch size 32", "eval.batch_size=16")),
])
def test_out_of_memory_suggests_a_batch_size(where, fragments, tmp_path, text_recipe, monkeypatch, capsys):
    import yaml

    chaos.reset()
    monkeypatch.setenv(chaos.ENV, f"{where}:oom")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(text_recipe(**SHORT)))
    code = main(["train", str(tmp_path / "r.yaml"), "--output", str(tmp_path / "run"), "--quiet"])
    chaos.reset()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    for f in fragments:
        assert f in err[0], (f, err[0])
    # training had started: the folder stays, with the log that explains what happened (no checkpoint yet)
    assert (tmp_path / "run" / "train.log").is_file() and (tmp_path / "run" / "config.yaml").is_file()


def test_evaluation_keeps_only_predictions(reference):
    """Streaming evaluation: the accumulator holds one prediction per example, not the logits."""
    from tuneforge.metrics import ClassificationMetrics

    m = ClassificationMetrics([str(i) for i in range(1000)])
    for _ in range(20):
        m.update(torch.randn(64, 1000), {"labels": torch.randint(0, 1000, (64,))}, 1.0)
    held = sum(a.nbytes for a in m.preds) + sum(a.nbytes for a in m.targets)
    assert held <= 2 * 20 * 64 * 8  # 2 int64 per example; the logits would be 1000 floats each


def test_user_error_type():
    assert issubclass(ConfigError, TuneforgeError)


def test_best_weights_load_in_place_in_windows(tmp_path):
    """The end-of-run reload copies into the model slice by slice (small window) and checks the key set."""
    from tuneforge.engine.checkpoint import CheckpointError, load_weights_into, save_weights

    def model():
        return torch.nn.Sequential(torch.nn.Embedding(3000, 64), torch.nn.Linear(64, 3), torch.nn.BatchNorm1d(3))

    src, dst = model(), model()
    src[2].running_mean.fill_(3.0)
    src[2].num_batches_tracked.fill_(7)
    save_weights(tmp_path / "w.safetensors", src.state_dict())
    before = dst[0].weight.data_ptr()
    load_weights_into(dst, tmp_path / "w.safetensors", window_mb=0.1)  # 1,638 rows per slice: 2 slices
    assert dst[0].weight.data_ptr() == before  # in place
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_weights_into(torch.nn.Linear(64, 3), tmp_path / "w.safetensors")
