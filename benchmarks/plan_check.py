"""`tuneforge plan` against the run it plans, back to back (issue 17, part A.1).

    python benchmarks/plan_check.py --sets sst2,hymenoptera,conll,stsb [--threads 1]

For each shipped recipe (on a slice where a full run is too long): `tuneforge plan --json`, then at once
`tuneforge train` with the same settings. Compared: time per epoch (the run's training-loop seconds without
evaluation, over its epochs), the whole command's wall time, and peak RSS (summary.json peak_rss_mb). Rows go to
--out; the table is printed at the end."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(os.environ.get("TUNEFORGE_DATA", "/work/shared/data"))
SETS = {
    "sst2": ("recipes/sst2.yaml", "sst2", ["data.max_train_samples=8000", "train.epochs=1"]),
    "hymenoptera": ("recipes/hymenoptera.yaml", "hymenoptera", []),
    "hymenoptera-finetune": ("recipes/hymenoptera.yaml", "hymenoptera",
                             ["train.freeze=null", "data.augment.enabled=true", "data.image_size=224",
                              "train.epochs=2"]),
    "conll": ("recipes/conll2003.yaml", "conll2003", ["data.max_train_samples=2000", "train.epochs=2"]),
    "stsb": ("recipes/stsb.yaml", "stsb", ["data.max_train_samples=2000", "train.epochs=1"]),
}


def sets_args(values: list[str]) -> list[str]:
    return [x for v in values for x in ("--set", v)]


def check(name: str, args) -> dict:
    recipe, data, extra = SETS[name]
    sets = [f"data.dir={DATA / data}", f"train.threads={args.threads}", "output.progress=false", *extra]
    tf = [sys.executable, "-m", "tuneforge"]
    t0 = time.perf_counter()
    planned = subprocess.run(tf + ["plan", recipe, "--json"] + sets_args(sets), capture_output=True, text=True,
                             check=True)
    plan_wall = time.perf_counter() - t0
    p = json.loads(planned.stdout)
    out = Path(args.runs) / name
    t0 = time.perf_counter()
    subprocess.run(tf + ["train", recipe, "--output", str(out), "--overwrite", "--quiet"] + sets_args(sets),
                   capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    s = json.loads((out / "summary.json").read_text())
    loop = s["train_seconds"] - s["eval_seconds"]
    phases = p["phases"]
    est_epoch = sum(ph.get("seconds_per_epoch", ph["train_seconds"] / max(ph["epochs"], 1e-9)) for ph in phases)
    return {"set": name, "plan_seconds": round(plan_wall, 1), "load_avg": os.getloadavg(),
            "est_epoch_s": round(est_epoch, 1), "est_epoch_error": phases[0].get("relative_error"),
            "measured_epoch_s": round(loop / max(s["epochs"], 1e-9), 1),
            "est_total_s": p["time"]["total_seconds"], "est_total_error": p["time"]["relative_error"],
            "measured_total_s": round(wall, 1), "est_rss_mb": p["memory"]["peak_rss_mb"],
            "measured_rss_mb": s["peak_rss_mb"], "memory": p["memory"], "command_sets": sets}


def table(rows: list[dict]) -> str:
    lines = ["| recipe | time/epoch est. (± s.e.) | measured | ratio | run est. | measured | ratio | peak RSS est. | "
             "measured | ratio |", "| --- " * 10 + "|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['est_epoch_s']:.1f} s (±{100 * (r['est_epoch_error'] or 0):.0f}%) | "
                     f"{r['measured_epoch_s']:.1f} s | {r['est_epoch_s'] / max(r['measured_epoch_s'], 1e-9):.2f} | "
                     f"{r['est_total_s']:.0f} s | {r['measured_total_s']:.0f} s | "
                     f"{r['est_total_s'] / r['measured_total_s']:.2f} | {r['est_rss_mb']} MB | "
                     f"{r['measured_rss_mb']:.0f} MB | {r['est_rss_mb'] / r['measured_rss_mb']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="runs/plan_check")
    p.add_argument("--out", default="benchmarks/results/plan_check.json")
    args = p.parse_args()
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.is_file() else []
    for name in args.sets.split(","):
        row = check(name, args)
        print(json.dumps(row), flush=True)
        rows = [r for r in rows if r["set"] != name] + [row]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
