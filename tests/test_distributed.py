"""Several processes: real 2-process runs launched with torchrun (gloo on CPU, `--standalone`), tiny random-init
models, checked against one process.

What makes "2 processes with batch B" equal to "1 process with batch 2B" (same seed): the global batches are the
same (data/sampling.py: each rank takes its slice of the one-process batch), gradients are averaged (DDP) or
reduce-scattered (FSDP) with each rank's loss weighed by its share of the batch, and the forward pass is
deterministic per row: no dropout (each rank draws its own masks; `model.dropout: 0`), no random augmentation, and
BatchNorm statistics frozen (`train.freeze_norm_stats`: otherwise each rank normalises over its own rows). Then the
runs differ only in float summation order: losses agree within LOSS_TOL (measured: ~3e-7 relative), accuracies
exactly. With dropout, a 2-process DDP run and a 2-process FSDP run draw the same masks and agree within LOSS_TOL.

Crash safety: rank 1 alone is SIGKILLed mid-epoch (TUNEFORGE_CHAOS + TUNEFORGE_CHAOS_RANK), torchrun stops rank 0,
`tuneforge resume` under torchrun again ends bit-identical to the uninterrupted 2-process run (DDP and FSDP)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import tuneforge
from chaos_helpers import history, summary, weights_hash
from conftest import write_sentiment_tsv
from tuneforge.data.sampling import EpochBatchSampler

ENTRY = Path(__file__).parent / "dist_entry.py"
LOSS_TOL = dict(rel_tol=1e-5, abs_tol=1e-6)
# 117 train rows: the last global batch of 16 has 5 rows (split 3 + 2, weighed 1.2 / 0.8); 39 val rows: the last
# eval batch of 2 x 7 has 11 (6 + 6 with one repeat, cut off after the gather)
TRAIN_ROWS, VAL_ROWS = 117, 39
# the launched processes run on the CPU (gloo) everywhere; tests that compare them with a run in this process
# need this process on the CPU too
CPU = {"CUDA_VISIBLE_DEVICES": ""}
cpu_here = pytest.mark.skipif(torch.cuda.is_available(), reason="compares with a one-process run on the CPU")


# ------------------------------------------------------------------ the sampler (no processes needed)


@pytest.mark.parametrize("n, batch, world, lengths, weights", [
    (117, 8, 2, False, False), (117, 8, 2, True, False), (50, 3, 4, True, False), (37, 5, 3, False, True),
    (7, 4, 4, False, False)])
def test_rank_slices_are_the_one_process_batches(n, batch, world, lengths, weights):
    lens = [(i * 7919) % 23 + 1 for i in range(n)] if lengths else None
    w = [1.0 + (i % 3) for i in range(n)] if weights else None
    one = EpochBatchSampler(n, batch * world, seed=5, lengths=lens, mega_batch=2, weights=w)
    ranks = [EpochBatchSampler(n, batch, seed=5, lengths=lens, mega_batch=2, weights=w, rank=r, world=world)
             for r in range(world)]
    for epoch in (0, 3):
        for s in [one, *ranks]:
            s.set_epoch(epoch)
        expected = one.batches()
        got = [list(s) for s in ranks]
        assert all(len(g) == len(expected) == s.total for g, s in zip(got, ranks))  # same steps on every rank
        for i, batch_rows in enumerate(expected):
            real = [ranks[r].share(i) * len(batch_rows) / world for r in range(world)]
            joined = [x for r in range(world) for x in got[r][i][:round(real[r])]]
            assert joined == batch_rows  # the one-process batch, split in rank order
            assert math.isclose(sum(ranks[r].share(i) for r in range(world)), world)  # mean of shares x loss = mean
            assert all(got[r][i] for r in range(world))  # never an empty batch


def test_eval_slices_are_padded_evenly_and_cut_after_the_gather():
    ranks = [EpochBatchSampler(11, 3, seed=0, shuffle=False, lengths=list(range(11)), rank=r, world=2)
             for r in range(2)]
    one = EpochBatchSampler(11, 6, seed=0, shuffle=False, lengths=list(range(11)))
    for i, (a, b) in enumerate(zip(*[list(s) for s in ranks])):
        assert len(a) == len(b)  # gathered tensors need the same row count everywhere
        assert (a + b)[:ranks[0].rows(i)] == one.batches()[i]
    assert ranks[0].rows(1) == 5 and len(list(ranks[1])[1]) == 3  # 5 rows: 3 + (2 + one repeat)


# ------------------------------------------------------------------ launching


def torchrun(args: list[str], work: Path, env: dict | None = None, entry: str | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 <entry> <args>` (entry: tests/dist_entry.py, or `-m tuneforge`),
    or entry "accelerate": `accelerate launch --multi_gpu --num_processes 2 -m tuneforge <args>` (its torchrun
    launcher; on CPU the processes use gloo)."""
    target = ["-m", "tuneforge"] if entry in ("module", "accelerate") else [str(ENTRY)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *target, *args]
    if entry == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), *target, *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(tuneforge.__file__).parents[1]), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
                **CPU, **(env or {})}
    return subprocess.run(cmd, cwd=work, env=full_env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, **LOSS_TOL)


def same_curves(a: Path, b: Path) -> None:
    """metrics.jsonl of two runs: same steps and samples, losses within LOSS_TOL, accuracies equal."""
    ha, hb = history(a), history(b)
    assert [(r["step"], r["samples_seen"]) for r in ha] == [(r["step"], r["samples_seen"]) for r in hb]
    for ra, rb in zip(ha, hb):
        assert close(ra["train_loss"], rb["train_loss"]), (ra, rb)
        assert close(ra["metrics"]["loss"], rb["metrics"]["loss"]), (ra, rb)
        assert ra["metrics"]["accuracy"] == rb["metrics"]["accuracy"], (ra, rb)
        assert ra["metrics"]["confusion_matrix"] == rb["metrics"]["confusion_matrix"]


def inventory(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if ".lock" not in p.name}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dist")
    (d / "data").mkdir()
    write_sentiment_tsv(d / "data" / "train.tsv", TRAIN_ROWS, seed=1)
    write_sentiment_tsv(d / "data" / "dev.tsv", VAL_ROWS, seed=2)
    return d


@pytest.fixture(autouse=True)
def cache(work, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(work / "cache"))


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def text(work, text_recipe):
    """text(batch, **sections) → the tiny-BERT recipe on the 117 / 39 rows (2 x 8 is one process's 16)."""
    def make(batch: int, **updates) -> dict:
        base = text_recipe(data={"dir": str(work / "data"), "max_length": 32},
                           train={"max_steps": 30, "batch_size": batch},
                           eval={"every_steps": 10, "batch_size": batch - 1}, output={"keep_checkpoints": 2})
        for section, values in updates.items():
            base[section] = {**base.get(section, {}), **values}
        return base
    return make


# ------------------------------------------------------------------ DDP


@pytest.fixture(scope="module")
def ddp_text(work, text):
    """2-process DDP without dropout, every rank's file-system writes recorded; and the 1-process run at 2B."""
    recipe = write_recipe(work / "text.yaml", text(8, model={"dropout": 0.0}))
    out = work / "ddp"
    proc = torchrun(["train", str(recipe), "--output", str(out), "--quiet"], work,
                    {"TUNEFORGE_TEST_WATCH": str(work), "TUNEFORGE_TEST_WRITES": str(work / "writes")})
    ok(proc)
    one = tuneforge.train(text(16, model={"dropout": 0.0}), output=str(work / "one"), quiet=True)
    return out, one.run_dir, proc


@cpu_here
def test_ddp_text_equals_one_process_with_twice_the_batch(ddp_text):
    out, one, proc = ddp_text
    same_curves(out, one)
    s = json.loads((out / "summary.json").read_text())
    assert s["distributed"] == {"strategy": "ddp", "world_size": 2, "backend": "gloo", "device": "cpu",
                                "per_device_batch": 8, "global_batch": 16}
    assert s["samples_seen"] == json.loads((one / "summary.json").read_text())["samples_seen"] > 3 * TRAIN_ROWS
    assert s["eval"]["samples"] == VAL_ROWS  # the whole validation set, once
    assert s["eval"]["accuracy"] == 1.0  # it learned
    assert len([line for line in proc.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 answers


@cpu_here
def test_only_rank_0_writes(ddp_text, work):
    out, one, _ = ddp_text
    rank0 = json.loads((work / "writes.0").read_text())
    rank1 = json.loads((work / "writes.1").read_text())
    assert any("checkpoints" in w for w in rank0) and any("summary.json" in w for w in rank0)  # the hook sees
    assert rank1 == [], rank1[:5]
    assert inventory(out) == inventory(one)  # the same run folder as one process writes


@cpu_here
def test_validation_metrics_equal_one_process_evaluation(ddp_text, work):
    """The 2-process final evaluation (sharded, gathered, repeats cut) = `Predictor.evaluate` of model/ on one
    process: the same rows once each, the same predictions; the loss within float tolerance."""
    out, _, _ = ddp_text
    gathered = json.loads((out / "summary.json").read_text())["eval"]
    from tuneforge.predict import Predictor

    single = Predictor(out).evaluate(str(work / "data" / "dev.tsv"))
    assert single["samples"] == gathered["samples"] == VAL_ROWS
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "confusion_matrix", "per_class"):
        assert single[key] == gathered[key], key
    assert close(single["loss"], gathered["loss"])


@cpu_here
def test_ddp_image_equals_one_process(work, image_recipe, timm_weights_file):
    """timm test_efficientnet (BatchNorm: statistics frozen), no augmentation, no dropout; 48 images, 2 x 4 vs 8."""
    def recipe(batch: int) -> dict:
        return image_recipe(timm_weights_file, model={"dropout": 0.0}, data={"augment": {"enabled": False}},
                            train={"batch_size": batch, "freeze_norm_stats": True, "max_steps": 12,
                                   "feature_cache": False},
                            eval={"every_steps": 6, "batch_size": batch})
    out = work / "img-ddp"
    ok(torchrun(["train", str(write_recipe(work / "img.yaml", recipe(4))), "--output", str(out), "--quiet"], work))
    one = tuneforge.train(recipe(8), output=str(work / "img-one"), quiet=True)
    same_curves(out, one.run_dir)


# ------------------------------------------------------------------ crash safety (DDP, FSDP)


@pytest.fixture(scope="module")
def with_dropout(work, text) -> Path:
    """The tiny BERT with its dropout (0.1): every rank draws masks from its own RNG stream."""
    return write_recipe(work / "dropout.yaml", text(8, train={"epochs": 2, "max_steps": None},
                                                    eval={"every_steps": 5}))


@pytest.fixture(scope="module")
def ddp_reference(work, with_dropout) -> Path:
    out = work / "ddp-ref"
    ok(torchrun(["train", str(with_dropout), "--output", str(out), "--quiet"], work))
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_kill_rank_1_mid_epoch_then_resume_is_bit_identical(strategy, work, with_dropout, ddp_reference):
    """Reference: an uninterrupted 2-process run (DDP above; FSDP here, which also equals DDP within LOSS_TOL).
    Rank 1 SIGKILLs itself at its 13th step (epoch 1, batch 5 of 8; the step-10 checkpoint is the latest);
    torchrun stops rank 0; `tuneforge resume` under torchrun finishes the run."""
    ref = ddp_reference
    extra = [] if strategy == "ddp" else ["--set", "train.distributed=fsdp"]
    if strategy == "fsdp":
        ref = work / "fsdp-ref"
        ok(torchrun(["train", str(with_dropout), "--output", str(ref), "--quiet", *extra], work, entry="module"))
        same_curves(ref, ddp_reference)
        assert (ref / "checkpoints" / "step-00000016" / "state" / ".metadata").is_file()  # DCP shards
    out = work / f"{strategy}-killed"
    killed = torchrun(["train", str(with_dropout), "--output", str(out), "--quiet", *extra], work,
                      {"TUNEFORGE_CHAOS": "step:13:kill", "TUNEFORGE_CHAOS_RANK": "1"})
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr
    assert not (out / "summary.json").exists()
    assert max(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")) == "step-00000010"
    writes = work / f"{strategy}-resume-writes"
    ok(torchrun(["resume", str(out), "--quiet"], work, {"TUNEFORGE_TEST_WATCH": str(out),
                                                         "TUNEFORGE_TEST_WRITES": str(writes)}))
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == 10
    rank1 = json.loads(Path(f"{writes}.1").read_text())
    assert rank1 == [] if strategy == "ddp" else all("/checkpoints/" in w for w in rank1), rank1[:5]  # FSDP: shards
    assert weights_hash(out) == weights_hash(ref)
    assert history(out) == history(ref)
    assert summary(out) == summary(ref)


def test_resume_on_another_number_of_processes_is_refused(work, ddp_reference, capsys):
    """A run of 2 processes, resumed by one: one line, exit 2 (run.json records the world size)."""
    from tuneforge.cli import main

    run = work / "refused"  # what a 2-process run leaves before its first checkpoint
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "run.json", "metrics.jsonl"):
        (run / name).write_bytes((ddp_reference / name).read_bytes())
    assert main(["resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on 2 process(es)" in err[0] and "--nproc-per-node 2" in err[0], err


# ------------------------------------------------------------------ LoRA: the saved model loads without tuneforge


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_lora_trains_and_saves_a_plain_transformers_model(strategy, work, text):
    """LoRA is applied before the model is wrapped (DDP) or sharded (FSDP2); model/ is the merged model, loadable
    by transformers alone, and predicts what tuneforge's evaluation measured. DDP goes through `tuneforge train
    --nproc 2` (which execs torchrun), FSDP through `accelerate launch`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    recipe = write_recipe(work / f"lora-{strategy}.yaml", text(8, train={
        "max_steps": 20, "lr": 1e-2, "distributed": strategy, "lora": {"r": 4, "alpha": 8, "dropout": 0.0,
                                                                       "target_modules": ["query", "value"]}}))
    out = work / f"lora-{strategy}"
    if strategy == "ddp":
        env = {**os.environ, **CPU, "PYTHONPATH": str(Path(tuneforge.__file__).parents[1])}
        ok(subprocess.run([sys.executable, "-m", "tuneforge", "train", str(recipe), "--output", str(out), "--quiet",
                           "--nproc", "2"], cwd=work, env=env, capture_output=True, text=True, timeout=300))
    else:
        ok(torchrun(["train", str(recipe), "--output", str(out), "--quiet"], work, entry="accelerate"))
    s = json.loads((out / "summary.json").read_text())
    assert s["distributed"]["strategy"] == strategy and s["strategies"]["lora"]["r"] == 4
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    rows = [line.split("\t") for line in (work / "data" / "dev.tsv").read_text().splitlines()[1:]]
    with torch.no_grad():
        logits = model(**tok([r[0] for r in rows], padding=True, return_tensors="pt")).logits
    accuracy = float((logits.argmax(-1) == torch.tensor([int(r[1]) for r in rows])).float().mean())
    assert math.isclose(accuracy, s["eval"]["accuracy"], abs_tol=1 / len(rows) + 1e-9)
    assert not any(k.startswith("base_model") or "lora" in k for k in model.state_dict())  # merged
