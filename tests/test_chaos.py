"""Chaos test: SIGKILL a real training process at named points, `tuneforge resume` it, and require the final weights
and the whole metrics history to be bit-identical to an uninterrupted run.

Every run is a separate process forked from a multiprocessing forkserver that imported tuneforge once, so the
13 runs cost seconds, not 13 interpreter start-ups. The kill points are deterministic: the process reaches the
n-th occurrence of a named point (tuneforge.engine.chaos), writes a marker file and sleeps; the test then kills it
with SIGKILL. `pytest tests/test_chaos.py -s` prints the table."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from chaos_helpers import history, summary, weights_hash

# kill points `point:n` (n-th occurrence in that process; several = killed again after resuming) and what each
# interrupts. The run: 60 steps = 4 epochs x 15 batches, evaluation (3 batches) and checkpoint every 10 steps.
KILLS = [
    (["step:3"], "mid-epoch, before the first checkpoint"),
    (["step:23"], "mid-epoch (epoch 1, batch 8)"),
    (["epoch_end:2"], "between epochs 2 and 3"),
    (["eval_batch:8"], "during the 3rd evaluation (its 2nd batch)"),
    (["checkpoint_write:3"], "during a checkpoint write (files written, not yet renamed)"),
    (["fit_end:1"], "after the last step, before model/ and summary.json"),
    (["step:23", "step:12"], "twice: mid-epoch, then 12 steps after resuming"),
]


def _child(argv: list[str], env: dict, log: str) -> None:
    """Runs in a process forked from the forkserver: the CLI, output into `log`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    from tuneforge.cli import main

    os._exit(main(argv))


@pytest.fixture(scope="module")
def ctx():
    c = multiprocessing.get_context("forkserver")
    c.set_forkserver_preload(["tuneforge.cli", "tuneforge.run"])
    return c


def run(ctx, work: Path, argv: list[str], chaos: str | None = None, timeout: float = 120) -> tuple[int, str]:
    """→ (exit code, marker text); a chaos run is killed with SIGKILL once it reaches its point."""
    marker = work / "chaos.marker"
    marker.unlink(missing_ok=True)
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TUNEFORGE_CHAOS": chaos or "",
           "TUNEFORGE_CHAOS_MARKER": str(marker)}
    p = ctx.Process(target=_child, args=(argv, env, str(work / "process.log")))
    p.start()
    deadline = time.monotonic() + timeout
    while p.is_alive() and not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    if marker.exists():
        os.kill(p.pid, signal.SIGKILL)
    p.join(timeout=max(1.0, deadline - time.monotonic()))
    if p.is_alive():
        p.kill()
        pytest.fail(f"run {argv} did not finish in {timeout}s; see {work / 'process.log'}")
    return p.exitcode, marker.read_text().strip() if marker.exists() else ""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, text_recipe) -> Path:
    r = text_recipe(train={"epochs": 4, "batch_size": 8}, eval={"every_steps": 10},
                    output={"keep_checkpoints": 2})
    del r["train"]["max_steps"]  # 4 epochs of 15 batches: epoch boundaries inside the run
    path = tmp_path_factory.mktemp("chaos") / "recipe.yaml"
    path.write_text(yaml.safe_dump(r), encoding="utf-8")
    return path


def test_kill_and_resume_is_bit_exact(ctx, recipe, tmp_path):
    t0 = time.monotonic()
    ref = tmp_path / "reference"
    rc, _ = run(ctx, tmp_path, ["train", str(recipe), "--output", str(ref), "--quiet"])
    assert rc == 0, (tmp_path / "process.log").read_text()[-3000:]
    ref_hash, ref_hist, ref_summary = weights_hash(ref), history(ref), summary(ref)
    assert ref_summary["steps"] == 60 and len(ref_hist) == 6
    assert ref_hist[-1]["metrics"]["accuracy"] >= 0.9  # it learns: the best step moves during the run

    rows = []
    for kills, what in KILLS:
        out = tmp_path / "-".join(kills).replace(":", "")
        for i, kill in enumerate(kills):
            argv = ["train", str(recipe), "--output", str(out), "--quiet"] if i == 0 else ["resume", str(out), "--quiet"]
            rc, marker = run(ctx, tmp_path, argv, kill)
            assert rc == -signal.SIGKILL and marker == kill, (rc, marker)
        assert not (out / "summary.json").exists()
        ckpt = out / "checkpoints"
        visible = sorted(p.name for p in ckpt.iterdir()) if ckpt.is_dir() else []
        for name in visible:  # whatever is visible is complete; partial writes are hidden temp folders
            if name.startswith("step-"):
                assert {f.name for f in (ckpt / name).iterdir()} == {"model.safetensors", "trainer.safetensors",
                                                                     "trainer.json"}
        lines_at_kill = len((out / "metrics.jsonl").read_text().splitlines()) if (out / "metrics.jsonl").exists() else 0

        rc, _ = run(ctx, tmp_path, ["resume", str(out), "--quiet"])
        assert rc == 0, (tmp_path / "process.log").read_text()[-3000:]
        got_hash, got_summary = weights_hash(out), json.loads((out / "summary.json").read_text())
        assert not [p for p in ckpt.iterdir() if p.name.startswith(".")], "leftover temp files"
        rows.append((" then ".join(kills), what, lines_at_kill, got_summary["resumed_from_step"], got_hash[:16],
                     got_hash == ref_hash, history(out) == ref_hist, summary(out) == ref_summary))
        assert got_hash == ref_hash, f"weights differ after kills at {kills}"
        assert history(out) == ref_hist, f"metrics.jsonl differs after kills at {kills}"
        assert summary(out) == ref_summary, f"summary.json differs after kills at {kills}"

    print(f"\nchaos: reference run {ref_hash[:16]} ({ref_summary['steps']} steps, {len(ref_hist)} evaluations, "
          f"final accuracy {ref_summary['eval']['accuracy']:.3f})")
    header = ("kill point", "what was interrupted", "jsonl lines at kill", "resumed from step", "final weights sha256",
              "weights =", "metrics =", "summary =")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(str(x) if x is not None else "- (from scratch)" for x in r))
    print(f"chaos: {len(rows)} kills, all bit-identical; {time.monotonic() - t0:.1f}s")
    sys.stdout.flush()
