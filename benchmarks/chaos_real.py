"""Chaos check at real size: minilm-l6 (all-MiniLM-L6-v2, 22.7 M params) on an SST-2 slice.

An uninterrupted reference run, then for each kill point a run that is SIGKILLed there (deterministically: the
process pauses at the n-th occurrence of a named point, see tuneforge/engine/chaos.py, and this script kills
it), followed by `tuneforge resume`. The final weights (SHA-256 over every tensor of model/model.safetensors),
metrics.jsonl (without wall-clock fields) and summary.json (without timings) must be bit-identical.

python benchmarks/chaos_real.py                        # 2,000 train / 400 dev rows, 2 epochs, 2 kill points
python benchmarks/chaos_real.py --kills step:70 eval_batch:20 checkpoint_write:2
writes benchmarks/results/chaos_real.json and prints a table (see RELIABILITY.md)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from chaos_helpers import history, summary, weights_hash  # noqa: E402  (test helpers, shared with test_chaos.py)

DATA = ROOT.parent / "shared" / "data" / "sst2"


def cli(args: list[str], work: Path, chaos: str | None = None, timeout: float = 3600) -> tuple[int, float]:
    """Run `python -m tuneforge ...`; with `chaos`, SIGKILL it once it pauses at that point. → (exit code, s)."""
    marker = work / "chaos.marker"
    marker.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TUNEFORGE_CHAOS": chaos or "", "TUNEFORGE_CHAOS_MARKER": str(marker)}
    t0 = time.perf_counter()
    with open(work / "process.log", "a") as log:
        p = subprocess.Popen([sys.executable, "-m", "tuneforge", *args], env=env, stdout=log, stderr=log)
        while p.poll() is None and not marker.exists() and time.perf_counter() - t0 < timeout:
            time.sleep(0.05)
        if marker.exists():
            p.send_signal(signal.SIGKILL)
        rc = p.wait(timeout=60)
    return rc, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--val-rows", type=int, default=400)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--threads", type=int, default=None, help="default: all cores")
    ap.add_argument("--kills", nargs="+", default=["step:70", "checkpoint_write:3"],
                    help="point:n (steps: 63 per epoch at the defaults; checkpoints every --eval-every steps)")
    ap.add_argument("--work", help="keep the runs here (default: a temp folder)")
    ap.add_argument("--data", default=str(DATA), help="the SST-2 folder (train.tsv, dev.tsv)")
    a = ap.parse_args()
    data = Path(a.data)
    if not (data / "train.tsv").is_file():
        print(f"SST-2 not found under {data}; see ../shared/data/README.md", file=sys.stderr)
        return 2
    work = Path(a.work or tempfile.mkdtemp(prefix="chaos-real-"))
    work.mkdir(parents=True, exist_ok=True)
    recipe = {"task": "classification", "model": "minilm-l6",
              "data": {"train": str(data / "train.tsv"), "val": str(data / "dev.tsv"), "max_length": 64,
                       "max_train_samples": a.train_rows, "max_val_samples": a.val_rows},
              "train": {"epochs": a.epochs, "batch_size": a.batch_size, "lr": 5e-5, "warmup_ratio": 0.1,
                        "precision": "fp32", "threads": a.threads, "seed": 0},
              "eval": {"every_steps": a.eval_every}, "output": {"keep_checkpoints": 2, "progress": False}}
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))

    ref = work / "reference"
    rc, ref_s = cli(["train", str(work / "recipe.yaml"), "--output", str(ref), "--overwrite"], work)
    if rc != 0:
        print((work / "process.log").read_text()[-3000:], file=sys.stderr)
        return 1
    ref_hash, ref_hist, ref_sum = weights_hash(ref), history(ref), summary(ref)
    rows, ok = [], True
    for kill in a.kills:
        out = work / kill.replace(":", "-")
        rc1, s1 = cli(["train", str(work / "recipe.yaml"), "--output", str(out), "--overwrite"], work, kill)
        rc2, s2 = cli(["resume", str(out)], work)
        if rc1 != -signal.SIGKILL or rc2 != 0:
            print(f"{kill}: killed rc {rc1}, resume rc {rc2}\n" + (work / "process.log").read_text()[-3000:],
                  file=sys.stderr)
            return 1
        got = weights_hash(out)
        same = (got == ref_hash, history(out) == ref_hist, summary(out) == ref_sum)
        ok &= all(same)
        rows.append({"kill": kill, "resumed_from_step": json.loads((out / "summary.json").read_text())
                     ["resumed_from_step"], "weights_sha256": got, "weights_equal": same[0],
                     "metrics_equal": same[1], "summary_equal": same[2], "killed_run_s": round(s1, 1),
                     "resume_s": round(s2, 1)})
    result = {"model": "minilm-l6", "data": f"SST-2 train {a.train_rows} rows / dev {a.val_rows} rows",
              "steps": ref_sum["steps"], "evaluations": len(ref_hist), "final_accuracy": ref_sum["eval"]["accuracy"],
              "reference_sha256": ref_hash, "reference_s": round(ref_s, 1), "kills": rows, "all_identical": ok,
              "threads": ref_sum["threads"], "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "torch": __import__("torch").__version__}
    out_file = ROOT / "benchmarks" / "results" / "chaos_real.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2) + "\n")
    print(f"reference: {result['steps']} steps, {result['evaluations']} evaluations, accuracy "
          f"{result['final_accuracy']:.4f}, weights {ref_hash[:16]} ({ref_s:.0f}s)")
    print("kill point | resumed from step | weights sha256 | weights = | metrics = | summary = | killed run s | resume s")
    for r in rows:
        print(f"{r['kill']} | {r['resumed_from_step']} | {r['weights_sha256'][:16]} | {r['weights_equal']} | "
              f"{r['metrics_equal']} | {r['summary_equal']} | {r['killed_run_s']} | {r['resume_s']}")
    print("all bit-identical" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
