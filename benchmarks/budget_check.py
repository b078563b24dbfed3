"""train.time_budget against its budget, and against an epoch-based run of the same length (issue 17, part A.2).

    python benchmarks/budget_check.py budget [--set train.time_budget=10m]     # recipes/sst2_budget.yaml
    python benchmarks/budget_check.py epochs --epochs 0.37                      # recipes/sst2.yaml, same evals

Each run is one `tuneforge train` command (1 thread); its wall time is measured around the command, so Python's
start and the imports count, as they do for the budget on the CLI. Rows go to --out."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(os.environ.get("TUNEFORGE_DATA", "/work/shared/data")) / "sst2"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["budget", "epochs"])
    p.add_argument("--epochs", type=float)
    p.add_argument("--name", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="runs/budget_check")
    p.add_argument("--out", default="benchmarks/results/budget_check.json")
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args()
    recipe = "recipes/sst2_budget.yaml" if a.mode == "budget" else "recipes/sst2.yaml"
    sets = [f"data.dir={DATA}", f"train.threads={a.threads}", "output.progress=false", "eval.every_steps=250",
            *([f"train.epochs={a.epochs}"] if a.epochs else []), *a.set]
    name = a.name or (a.mode if a.mode == "budget" else f"epochs-{a.epochs}")
    out = Path(a.runs) / name
    cmd = [sys.executable, "-m", "tuneforge", "train", recipe, "--output", str(out), "--overwrite", "--quiet"] + \
        [x for s in sets for x in ("--set", s)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    s = json.loads((out / "summary.json").read_text())
    row = {"name": name, "wall_s": round(wall, 1), "dev_accuracy": s["eval"]["accuracy"], "steps": s["steps"],
           "epochs": s["epochs"], "best_step": s["best_step"], "train_seconds": s["train_seconds"],
           "time_budget": s.get("time_budget"), "stop_reason": s["stop_reason"], "load_avg": os.getloadavg(),
           "command": " ".join(cmd[1:])}
    print(json.dumps(row))
    path = Path(a.out)
    rows = json.loads(path.read_text()) if path.is_file() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r for r in rows if r["name"] != name] + [row], indent=1) + "\n")


if __name__ == "__main__":
    main()
