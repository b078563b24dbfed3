"""Chaos test: SIGKILL a real training process at named points, `tuneforge resume` it, and require the final weights
and the whole metrics history to be bit-identical to an uninterrupted run.

Every run is a separate process forked from a multiprocessing forkserver that imported tuneforge once, so the
~40 runs cost seconds each, not an interpreter start-up each. The kill points are deterministic: the process reaches
the n-th occurrence of a named point (tuneforge.engine.chaos), writes a marker file and sleeps; the test then kills
it with SIGKILL. Each test has its own feature cache (TUNEFORGE_CACHE), so "cold" and "warm" mean what they say.
`pytest tests/test_chaos.py -s` prints the tables."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
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

# The multi-phase run: head_epochs 1 + gradual_unfreeze over 4 epochs = phases head (steps 1-8, cached features),
# unfreeze_1 (9-16), unfreeze_2 (17-24), unfreeze_3 (25-40, two epochs); 8 batches per epoch; evaluation and
# checkpoint every 3 steps and at the end of every phase: 3 6 8 | 9 12 15 16 | 18 21 24 | 27 30 33 36 39 40.
PHASE_KILLS = [
    (["step:5"], "head phase (cached features), mid-epoch"),
    (["step:14"], "unfreeze_1 mid-epoch (epoch 1, batch 6)"),
    (["step:8"], "boundary: last step of the head phase, before its evaluation"),
    (["checkpoint_write:3"], "boundary: the head phase's final checkpoint (step 8) half written"),
    (["fit_end:1"], "boundary: head phase done and checkpointed, unfreeze_1 not started"),
    (["step:16"], "boundary: last step of unfreeze_1 (uncached), before its evaluation"),
    (["epoch_end:1"], "between the two epochs of unfreeze_3 (step 32)"),
    (["step:14", "step:10"], "twice: unfreeze_1, then unfreeze_2 (step 22) after resuming"),
]
PHASES = {"train": {"epochs": 4, "batch_size": 16, "lr": 1e-2, "head_epochs": 1, "gradual_unfreeze": True},
          "eval": {"every_steps": 3}, "output": {"keep_checkpoints": 2}}
HEADER = ("kill point", "what was interrupted", "jsonl lines at kill", "resumed from step", "final weights sha256",
          "bit-identical")


def _child(argv: list[str], env: dict, out: str, err: str) -> None:
    """Runs in a process forked from the forkserver: the CLI, stdout and stderr into their own files."""
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(f, fd)
    os.environ.update(env)
    from tuneforge.cli import main

    os._exit(main(argv))


@pytest.fixture(scope="module")
def ctx():
    c = multiprocessing.get_context("forkserver")
    c.set_forkserver_preload(["tuneforge.cli", "tuneforge.run", "tuneforge.tasks.classification",
                              "transformers.models.bert.modeling_bert", "sklearn.metrics"])
    return c


@dataclass
class Runner:
    """Starts CLI runs in forkserver processes with one feature cache; logs go to work/<name>.{out,err}."""

    ctx: object
    work: Path
    cache: Path

    def start(self, argv: list[str], chaos: str | None = None, name: str = "process"):
        marker = self.work / "chaos.marker"
        marker.unlink(missing_ok=True)
        env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TUNEFORGE_CHAOS": chaos or "",
               "TUNEFORGE_CHAOS_MARKER": str(marker), "TUNEFORGE_CACHE": str(self.cache)}
        out, err = self.work / f"{name}.out", self.work / f"{name}.err"
        out.unlink(missing_ok=True)
        err.unlink(missing_ok=True)
        p = self.ctx.Process(target=_child, args=(argv, env, str(out), str(err)))
        p.start()
        return p, marker

    def wait_marker(self, p, marker: Path, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while p.is_alive() and not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return marker.exists()

    def run(self, argv: list[str], chaos: str | None = None, timeout: float = 120,
            name: str = "process") -> tuple[int, str]:
        """→ (exit code, marker text); a chaos run is killed with SIGKILL once it reaches its point."""
        p, marker = self.start(argv, chaos, name)
        if self.wait_marker(p, marker, timeout):
            os.kill(p.pid, signal.SIGKILL)
        p.join(timeout=timeout)
        if p.is_alive():
            p.kill()
            pytest.fail(f"run {argv} did not finish in {timeout}s; see {self.work / name}.err")
        return p.exitcode, marker.read_text().strip() if marker.exists() else ""

    def log(self, name: str = "process") -> str:
        return "".join(p.read_text()[-3000:] for p in (self.work / f"{name}.out", self.work / f"{name}.err")
                       if p.exists())


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, text_recipe) -> Path:
    r = text_recipe(train={"epochs": 4, "batch_size": 8}, eval={"every_steps": 10},
                    output={"keep_checkpoints": 2})
    del r["train"]["max_steps"]  # 4 epochs of 15 batches: epoch boundaries inside the run
    return write_recipe(tmp_path_factory.mktemp("chaos") / "recipe.yaml", r)


@pytest.fixture(scope="module")
def phases_recipe(tmp_path_factory, text_recipe) -> Path:
    r = text_recipe(**PHASES)
    del r["train"]["max_steps"]
    return write_recipe(tmp_path_factory.mktemp("chaos-phases") / "recipe.yaml", r)


@dataclass
class Reference:
    hash: str
    history: list
    summary: dict


def reference(runner: Runner, recipe: Path, out: Path, *extra: str) -> Reference:
    rc, _ = runner.run(["train", str(recipe), "--output", str(out), "--quiet", *extra])
    assert rc == 0, runner.log()
    return Reference(weights_hash(out), history(out), summary(out))


def kill_and_resume(runner: Runner, recipe: Path, out: Path, kills: list[str], ref: Reference,
                    extra: tuple[str, ...] = ()) -> tuple:
    """Kill a fresh run at kills[0], resume it and kill it at each further point, resume to the end, compare."""
    for i, kill in enumerate(kills):
        argv = ["train", str(recipe), "--output", str(out), "--quiet", *extra] if i == 0 else \
            ["resume", str(out), "--quiet"]
        rc, marker = runner.run(argv, kill)
        assert rc == -signal.SIGKILL and marker == kill, (rc, marker, runner.log())
    assert not (out / "summary.json").exists()
    ckpt = out / "checkpoints"
    visible = sorted(p.name for p in ckpt.iterdir()) if ckpt.is_dir() else []
    for name in visible:  # whatever is visible is complete; partial writes are hidden temp folders
        if name.startswith("step-"):
            assert {f.name for f in (ckpt / name).iterdir()} == {"model.safetensors", "trainer.safetensors",
                                                                 "trainer.json"}
    lines_at_kill = len((out / "metrics.jsonl").read_text().splitlines()) if (out / "metrics.jsonl").exists() else 0

    rc, _ = runner.run(["resume", str(out), "--quiet"])
    assert rc == 0, runner.log()
    got_hash, got_summary = weights_hash(out), json.loads((out / "summary.json").read_text())
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")], "leftover temp files"
    same = (got_hash == ref.hash, history(out) == ref.history, summary(out) == ref.summary)
    row = (" then ".join(kills), lines_at_kill, got_summary["resumed_from_step"], got_hash[:16], all(same))
    assert same[0], f"weights differ after kills at {kills}"
    assert same[1], f"metrics.jsonl differs after kills at {kills}"
    assert same[2], f"summary.json differs after kills at {kills}"
    return row


def print_table(title: str, ref: Reference, rows: list[tuple], t0: float) -> None:
    print(f"\nchaos: {title}: reference {ref.hash[:16]} ({ref.summary['steps']} steps, {len(ref.history)} "
          f"evaluations, final accuracy {ref.summary['eval']['accuracy']:.3f})")
    print(" | ".join(HEADER))
    for kill, what, lines, step, h, same in rows:
        print(" | ".join(str(x) for x in (kill, what, lines, "- (from scratch)" if step is None else step, h,
                                          "yes" if same else "NO")))
    print(f"chaos: {title}: {len(rows)} kills, {sum(r[-1] for r in rows)} bit-identical; "
          f"{time.monotonic() - t0:.1f}s")
    sys.stdout.flush()


def test_kill_and_resume_is_bit_exact(ctx, recipe, tmp_path):
    t0 = time.monotonic()
    runner = Runner(ctx, tmp_path, tmp_path / "cache")
    ref = reference(runner, recipe, tmp_path / "reference")
    assert ref.summary["steps"] == 60 and len(ref.history) == 6
    assert ref.history[-1]["metrics"]["accuracy"] >= 0.9  # it learns: the best step moves during the run

    rows = []
    for kills, what in KILLS:
        row = kill_and_resume(runner, recipe, tmp_path / "-".join(kills).replace(":", ""), kills, ref)
        rows.append((row[0], what, *row[1:]))
    print_table("single phase", ref, rows, t0)


@pytest.fixture(scope="module")
def phases_reference(ctx, phases_recipe, tmp_path_factory) -> tuple[Reference, Path]:
    """The uninterrupted multi-phase run on a cold feature cache; → (reference, that cache, now warm)."""
    work = tmp_path_factory.mktemp("chaos-phases-ref")
    runner = Runner(ctx, work, work / "cache")
    ref = reference(runner, phases_recipe, work / "reference")  # cold cache: computes and stores the features
    assert "feature cache: stored" in (work / "reference" / "train.log").read_text()
    assert ref.summary["steps"] == 40 and [h["step"] for h in ref.history] == [
        3, 6, 8, 9, 12, 15, 16, 18, 21, 24, 27, 30, 33, 36, 39, 40]
    assert ref.summary["strategies"]["phases"] == ["head", "unfreeze_1", "unfreeze_2", "unfreeze_3"]
    assert ref.history[-1]["metrics"]["accuracy"] >= 0.9 and ref.summary["best_step"] > 16
    return ref, runner.cache


def test_multi_phase_kill_and_resume_is_bit_exact(ctx, phases_recipe, phases_reference, tmp_path):
    """Findings 4 and 5: every phase keeps its length and schedule after a resume, and a run restarted from scratch
    on a warm feature cache trains exactly as the reference did on a cold one."""
    t0 = time.monotonic()
    ref, warm = phases_reference
    runner = Runner(ctx, tmp_path, warm)
    rows = []
    for kills, what in PHASE_KILLS:  # on the now warm cache
        row = kill_and_resume(runner, phases_recipe, tmp_path / "-".join(kills).replace(":", ""), kills, ref)
        rows.append((row[0], what, *row[1:]))

    # (d) killed before the first checkpoint in a process that computed the features on a cold cache of its own;
    # the resume starts from scratch on the now warm cache
    cold = Runner(ctx, tmp_path, tmp_path / "cold-cache")
    out = tmp_path / "cold-step2"
    row = kill_and_resume(cold, phases_recipe, out, ["step:2"], ref)
    log = (out / "train.log").read_text()
    assert "feature cache: stored" in log and "feature cache: hit" in log and "starting this run from the beginning" in log
    rows.append((row[0], "before the first checkpoint; features stored cold by the killed run, resumed warm",
                 *row[1:]))
    print_table("multi-phase (head_epochs 1, gradual_unfreeze)", ref, rows, t0)


def test_uncached_head_phase_kill_and_resume_is_bit_exact(ctx, phases_recipe, tmp_path):
    """Finding 4 for a head phase that runs the whole model (train.feature_cache: false): it shares its train loader
    with the unfreeze phases, so a mid-epoch resume must not shorten the next phase."""
    t0 = time.monotonic()
    runner = Runner(ctx, tmp_path, tmp_path / "cache")
    off = ("--set", "train.feature_cache=false")
    ref = reference(runner, phases_recipe, tmp_path / "reference", *off)
    assert "feature cache" not in (tmp_path / "reference" / "train.log").read_text()
    assert ref.summary["steps"] == 40
    rows = [("step:5", "uncached head phase, mid-epoch",
             *kill_and_resume(runner, phases_recipe, tmp_path / "step5", ["step:5"], ref, off)[1:])]
    print_table("multi-phase, uncached head (feature_cache: false)", ref, rows, t0)


def test_second_writer_is_refused_then_takes_over_the_stale_lock(ctx, phases_recipe, phases_reference, tmp_path):
    """Finding 8: while run A is paused mid-training, `train --resume` and `resume` on its folder each get one error
    line naming A's pid and exit 2, without touching the folder; once A is killed, a resume takes over its stale
    lock and finishes bit-identical to the reference."""
    t0 = time.monotonic()
    ref, warm = phases_reference
    runner = Runner(ctx, tmp_path, warm)
    out = tmp_path / "shared"
    a, marker = runner.start(["train", str(phases_recipe), "--output", str(out), "--quiet"], "step:22", name="A")
    try:
        assert runner.wait_marker(a, marker), runner.log("A")
        before = (out / "metrics.jsonl").read_text()
        for name, argv in (("B", ["train", str(phases_recipe), "--output", str(out), "--resume", "--quiet"]),
                           ("C", ["resume", str(out), "--quiet"])):
            rc, _ = runner.run(argv, name=name)
            err = (tmp_path / f"{name}.err").read_text().splitlines()
            assert rc == 2 and len(err) == 1 and err[0].startswith("tuneforge: error: "), (rc, err)
            assert f"in use by process {a.pid}" in err[0], err
            assert (tmp_path / f"{name}.out").read_text() == ""
        assert (out / "metrics.jsonl").read_text() == before and a.is_alive()
    finally:
        os.kill(a.pid, signal.SIGKILL)
        a.join()
    lines_at_kill = len((out / "metrics.jsonl").read_text().splitlines())
    rc, _ = runner.run(["resume", str(out), "--quiet"])
    assert rc == 0, runner.log()
    assert f"took over a stale lock of process {a.pid}" in (out / "train.log").read_text()
    same = weights_hash(out) == ref.hash and history(out) == ref.history and summary(out) == ref.summary
    got = json.loads((out / "summary.json").read_text())
    print_table("two writers", ref, [("step:22 pause; train --resume, resume refused (exit 2, pid named); kill",
                                      "unfreeze_2 mid-epoch, while A held the lock", lines_at_kill, got["resumed_from_step"],
                                      weights_hash(out)[:16], same)], t0)
    assert same, "the resume after the stale lock differs from the reference"
