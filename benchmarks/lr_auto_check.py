"""`lr: auto` against a small LR grid on the shipped sets (issue 19, part B.2).

    python benchmarks/lr_auto_check.py --mode grid --sets sst2,hymenoptera   # train once per grid LR
    python benchmarks/lr_auto_check.py --mode auto --sets sst2,hymenoptera   # train once with train.lr=auto
    python benchmarks/lr_auto_check.py --mode suggest --sets sst2            # the range tests alone: every rule
    python benchmarks/lr_auto_check.py --mode table                          # the comparison table

Every run is `tuneforge train RECIPE --set ...` in its own process (1 thread by default: run two side by side on a
2-core machine), its folder under --runs, its summary appended to --out. `auto` is within the grid's best half when
its metric is at least the median of the grid's metrics (and the LR it picked is printed next to the grid's best)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(os.environ.get("TUNEFORGE_DATA", "/work/shared/data"))
SETS = {
    # the SST-2 8k slice of BENCHMARKS.md: the shipped recipe for 1 epoch
    "sst2": {"recipe": "recipes/sst2.yaml", "data": "sst2", "set": ["data.max_train_samples=8000", "train.epochs=1"],
             "grid": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]},
    # the shipped linear probe on cached features: the head's LR
    "hymenoptera": {"recipe": "recipes/hymenoptera.yaml", "data": "hymenoptera", "set": [],
                    "grid": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]},
    # CoNLL slice: 1,000 train sentences, 3 epochs (head lr 1e-3 as shipped)
    "conll": {"recipe": "recipes/conll2003.yaml", "data": "conll2003",
              "set": ["data.max_train_samples=1000", "train.epochs=3"], "grid": [3e-5, 1e-4, 3e-4, 1e-3]},
    # STS-B slice: 2,000 train pairs, 2 epochs (siamese, head lr 1e-3 as shipped)
    "stsb": {"recipe": "recipes/stsb.yaml", "data": "stsb", "set": ["data.max_train_samples=2000", "train.epochs=2"],
             "grid": [1e-5, 3e-5, 1e-4, 3e-4]},
}


def run_one(name: str, lr, args) -> dict:
    spec = SETS[name]
    out = Path(args.runs) / f"{name}-lr{lr}"
    sets = [f"data.dir={DATA / spec['data']}", f"train.lr={lr}", f"train.threads={args.threads}",
            "output.report=false", "output.progress=false", *spec["set"], *args.set]
    cmd = [sys.executable, "-m", "tuneforge", "train", spec["recipe"], "--output", str(out), "--overwrite",
           "--quiet"] + [x for s in sets for x in ("--set", s)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"set": name, "lr": lr, "error": proc.stderr.strip().splitlines()[-1:], "wall_s": wall}
    summary = json.loads((out / "summary.json").read_text())
    metric = summary["metric"]
    return {"set": name, "lr": lr, "picked_lr": summary["lr"], "metric": metric,
            "value": summary["eval"][metric], "wall_s": round(wall, 1), "train_s": summary["train_seconds"],
            "lr_auto": summary.get("lr_auto"), "command": " ".join(cmd[1:])}


def suggest(name: str, args) -> dict:
    """The range tests `lr: auto` runs (run.choose_lrs), with every suggestion rule, nothing trained."""
    import tempfile

    from tuneforge.config import load_config
    from tuneforge.run import choose_lrs, prepare

    spec = SETS[name]
    sets = [f"data.dir={DATA / spec['data']}", f"train.threads={args.threads}", *spec["set"], *args.set]
    t0 = time.perf_counter()
    setup = prepare(load_config(spec["recipe"], sets), lambda *_: None)
    found = choose_lrs(setup, Path(tempfile.mkdtemp()), print)
    return {"set": name, "lr": "suggest", "tests": found["tests"], "seconds": round(time.perf_counter() - t0, 1)}


def table(rows: list[dict]) -> str:
    lines = ["| set | grid (lr: value) | grid median | auto picked lr | auto value | within best half |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in SETS:
        grid = sorted((r for r in rows if r["set"] == name and r["lr"] != "auto" and "value" in r),
                      key=lambda r: r["lr"])
        auto = [r for r in rows if r["set"] == name and r["lr"] == "auto" and "value" in r]
        if not grid:
            continue
        minimize = grid[0]["metric"] in ("mse", "mae", "rmse", "loss")
        median = statistics.median(r["value"] for r in grid)
        shown = ", ".join(f"{r['lr']:g}: {r['value']:.4f}" for r in grid)
        if auto:
            a = auto[-1]
            ok = a["value"] <= median if minimize else a["value"] >= median
            lines.append(f"| {name} | {shown} | {median:.4f} | {a['picked_lr']:.3g} | {a['value']:.4f} | "
                         f"{'yes' if ok else 'NO'} |")
        else:
            lines.append(f"| {name} | {shown} | {median:.4f} | - | - | - |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["grid", "auto", "suggest", "table"], required=True)
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="runs/lr_check")
    p.add_argument("--out", default="benchmarks/results/lr_auto_check.json")
    p.add_argument("--set", action="append", default=[], help="extra recipe overrides for every run")
    args = p.parse_args()
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.is_file() else []
    if args.mode != "table":
        for name in args.sets.split(","):
            for lr in SETS[name]["grid"] if args.mode == "grid" else [args.mode]:
                if args.mode == "grid" and any(r["set"] == name and r["lr"] == lr and "value" in r for r in rows):
                    continue  # done in an earlier invocation
                row = suggest(name, args) if args.mode == "suggest" else run_one(name, lr, args)
                print(json.dumps(row), flush=True)
                rows = [r for r in rows if not (r["set"] == name and r["lr"] == lr)] + [row]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
