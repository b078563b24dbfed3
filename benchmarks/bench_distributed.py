"""One process vs two on this CPU machine (gloo): samples/s, metrics and scaling efficiency, and FSDP vs DDP memory.

1. tiny BERT (random init, synthetic sentiment rows) and 2. minilm-l6 on an SST-2 slice, each trained three ways
   with the same global batch and seed: 1 process x 1 thread, 1 process x 2 threads, 2 processes x 1 thread
   (torchrun). Efficiency = samples/s of 2 processes / (2 x samples/s of 1 process x 1 thread).
3. mpnet-base (110 M parameters), 2 processes, DDP vs FSDP: peak RSS of rank 0 and what training adds to it.

Every run is a `tuneforge train` subprocess; numbers are read from its summary.json. The machine is shared:
timings are indicative, ratios measured side by side in one invocation are what count.

    python benchmarks/bench_distributed.py           # → benchmarks/results/distributed_cpu.json"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "distributed_cpu.json"
SST2 = Path(os.environ.get("TUNEFORGE_SST2", "/work/shared/data/sst2"))
FIELDS = ("samples_per_second", "train_seconds", "eval_seconds", "steps", "samples_seen", "peak_rss_mb",
          "rss_at_train_start_mb", "distributed", "threads")


def env(threads: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}


def train(recipe: Path, out: Path, procs: int, threads: int, *sets: str) -> dict:
    args = ["-m", "tuneforge", "train", str(recipe), "--output", str(out), "--overwrite", "--quiet",
            "--set", f"train.threads={threads}", *[x for s in sets for x in ("--set", s)]]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)] \
        if procs > 1 else [sys.executable]
    cmd = launch + args
    proc = subprocess.run(cmd, env=env(threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    s = json.loads((out / "summary.json").read_text())
    row = {k: s.get(k) for k in FIELDS}
    row.update({"processes": procs, "accuracy": s["eval"]["accuracy"], "eval_loss": s["eval"]["loss"]})
    return row


def tiny_model(d: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from conftest import _vocab
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(0)
    d.mkdir(parents=True)
    (d / "vocab.txt").write_text("\n".join(_vocab()) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab=str(d / "vocab.txt"))
    config = BertConfig(vocab_size=len(_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    BertForSequenceClassification(config).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def scaling(name: str, recipe: Path, work: Path, global_batch: int) -> list[dict]:
    rows = []
    for procs, threads in ((1, 1), (1, 2), (2, 1)):
        row = train(recipe, work / f"{name}-{procs}x{threads}", procs, threads,
                    f"train.batch_size={global_batch // procs}", f"eval.batch_size={64 // procs}")
        rows.append({"model": name, "config": f"{procs} process(es) x {threads} thread(s)", **row})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["samples_per_second"]
    rows[2]["efficiency_vs_2x_one_thread"] = round(rows[2]["samples_per_second"] / (2 * base), 3)
    rows[1]["efficiency_vs_2x_one_thread"] = round(rows[1]["samples_per_second"] / (2 * base), 3)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sst2-rows", type=int, default=2000)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    result = {"machine": f"{os.cpu_count()} CPU cores, shared with other jobs", "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import write_sentiment_tsv

        (work / "tiny-data").mkdir()
        write_sentiment_tsv(work / "tiny-data" / "train.tsv", 960, seed=1)
        write_sentiment_tsv(work / "tiny-data" / "dev.tsv", 200, seed=2)
        model = tiny_model(work / "tiny-bert")
        common = {"output": {"progress": False, "report": False, "keep_checkpoints": 0}}
        tiny = {"task": "classification", "model": str(model), "data": {"dir": str(work / "tiny-data"),
                "text_column": "sentence", "max_length": 32}, "train": {"lr": 3e-3, "max_steps": 120,
                "precision": "fp32", "schedule": "constant", "seed": 0}, **common}
        (work / "tiny.yaml").write_text(yaml.safe_dump(tiny))
        result["runs"] += scaling("tiny-bert", work / "tiny.yaml", work, 32)
        if (SST2 / "train.tsv").is_file():
            (work / "sst2").mkdir()
            lines = (SST2 / "train.tsv").read_text().splitlines(keepends=True)
            (work / "sst2" / "train.tsv").write_text("".join(lines[:args.sst2_rows + 1]))
            dev = (SST2 / "dev.tsv").read_text().splitlines(keepends=True)
            (work / "sst2" / "dev.tsv").write_text("".join(dev[:201]))
            minilm = {"task": "classification", "model": "minilm-l6", "data": {"dir": str(work / "sst2"),
                      "text_column": "sentence", "max_length": 64}, "train": {"lr": 5e-5, "max_steps": args.steps,
                      "precision": "fp32", "seed": 0}, **common}
            (work / "minilm.yaml").write_text(yaml.safe_dump(minilm))
            result["runs"] += scaling("minilm-l6 SST-2 slice", work / "minilm.yaml", work, 32)
            mpnet = {**minilm, "model": "mpnet-base", "train": {**minilm["train"], "max_steps": 8},
                     "data": {**minilm["data"], "max_length": 64}}
            (work / "mpnet.yaml").write_text(yaml.safe_dump(mpnet))
            for strategy in ("ddp", "fsdp"):
                row = train(work / "mpnet.yaml", work / f"mpnet-{strategy}", 2, 1, f"train.distributed={strategy}",
                            "train.batch_size=8", "eval.batch_size=32")
                row["training_adds_mb"] = round(row["peak_rss_mb"] - row["rss_at_train_start_mb"], 1)
                result["runs"].append({"model": "mpnet-base", "config": f"2 processes, {strategy}", **row})
                print(json.dumps(result["runs"][-1]), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
