"""The GPU path (skipped without CUDA; run by benchmarks/gpu_check.sh): bf16 autocast, fp16 with a grad scaler,
pinned host memory, torch.compile as an opt-in, resume. The tiny models of the CPU suite, on the GPU."""
from __future__ import annotations

import json
import math

import pytest
import torch

import tuneforge
from tuneforge.engine import chaos

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh)")


def summary(run) -> dict:
    return json.loads((run.run_dir / "summary.json").read_text())


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_text_run_on_cuda_learns(precision, tmp_path, text_recipe):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    run = tuneforge.train(text_recipe(train={"precision": precision}), output=str(tmp_path / "run"), quiet=True)
    s = summary(run)
    assert s["precision"] == precision and s["distributed"]["device"] == "cuda"
    assert s["peak_device_memory_mb"] > 0
    assert run.metrics["accuracy"] >= 0.9


def test_auto_precision_is_bf16_or_fp16_with_a_scaler(tmp_path, text_recipe):
    """utils.resolve_precision: bf16 where the GPU has it, else fp16 (Accelerate then adds a GradScaler)."""
    run = tuneforge.train(text_recipe(train={"precision": "auto"}), output=str(tmp_path / "run"), quiet=True)
    assert summary(run)["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")


def test_image_run_on_cuda_learns(tmp_path, image_recipe, timm_weights_file):
    run = tuneforge.train(image_recipe(timm_weights_file, train={"precision": "bf16" if torch.cuda.is_bf16_supported()
                                                                 else "fp16"}), output=str(tmp_path / "run"),
                          quiet=True)
    assert run.metrics["accuracy"] >= 0.9


def test_loaders_pin_memory_on_cuda(text_recipe):
    from tuneforge.config import load_config
    from tuneforge.run import prepare
    from tuneforge.utils import SilentLog

    setup = prepare(load_config(text_recipe()), SilentLog())
    assert setup.train_loader.pin_memory and setup.val_loader.pin_memory


def test_compile_is_opt_in_and_matches(tmp_path, text_recipe):
    """train.compile: true trains the compiled model to the same result (within bf16-free float tolerance)."""
    plain = tuneforge.train(text_recipe(), output=str(tmp_path / "plain"), quiet=True)
    compiled = tuneforge.train(text_recipe(train={"compile": True}), output=str(tmp_path / "compiled"), quiet=True)
    assert compiled.metrics["accuracy"] == plain.metrics["accuracy"]
    assert math.isclose(compiled.metrics["loss"], plain.metrics["loss"], rel_tol=1e-3, abs_tol=1e-4)


def test_resume_on_cuda_matches(tmp_path, text_recipe, monkeypatch):
    """Resume after a crash continues from the checkpoint (CUDA RNG restored); CUDA kernels are not all
    deterministic, so the result is compared within tolerance, and whether it is bit-identical is printed."""
    recipe = text_recipe(train={"max_steps": 12}, eval={"every_steps": 4})
    ref = tuneforge.train(recipe, output=str(tmp_path / "ref"), quiet=True)
    chaos.reset()
    monkeypatch.setenv(chaos.ENV, "step:6:interrupt")
    with pytest.raises(KeyboardInterrupt):
        tuneforge.train(recipe, output=str(tmp_path / "run"), quiet=True)
    chaos.reset()
    monkeypatch.delenv(chaos.ENV)
    got = tuneforge.resume(tmp_path / "run", quiet=True)
    assert got.summary["resumed_from_step"] == 4
    assert math.isclose(got.metrics["loss"], ref.metrics["loss"], rel_tol=1e-3, abs_tol=1e-4)
    print(f"\ncuda resume bit-identical: {got.metrics == ref.metrics}")
