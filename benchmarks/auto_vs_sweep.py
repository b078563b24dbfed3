"""`preset: auto` against the shipped recipe and an Optuna sweep, with their times (issue 19, part B.6).

    python benchmarks/auto_vs_sweep.py --sets trec --parts shipped,auto,sweep [--trials 12]
    python benchmarks/auto_vs_sweep.py --table

Each part is one `tuneforge` command in its own process, 1 torch thread (`--core N` pins it to one core with
taskset, so a sweep's trials get 1 thread too), its wall time and CPU time (user + sys of the process and its
children) recorded next to the validation metric of the kept model (and the test split's, where there is one):
- shipped: the shipped recipe for that kind of data, `--set data.dir=...` (plus the slice, where one is used and
  --full is not given);
- auto: `tuneforge train --data DIR --task T` (preset: auto, nothing else set; plus the slice);
- probe: auto with `--set probe.enabled=true` (the strategy measured on a split of train first, probe.py);
- sweep: `tuneforge sweep` over the shipped recipe (for the hand photos: its fine-tuning variant) with SPACES.
With --plan, `tuneforge plan --json` runs right before each train command with the same settings, and its
estimates (time per epoch, whole run, peak RSS) are stored next to what the run measured.
Results are appended to --out (one row per set and part); --table prints them."""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

DATA = Path(os.environ.get("TUNEFORGE_DATA", "/work/shared/data"))
UNSEEN = Path(os.environ.get("TUNEFORGE_UNSEEN", "/work/shared/unseen"))
TEXT_SPACE = {"train.lr": {"type": "float", "low": 1e-5, "high": 3e-4, "log": True},
              "train.epochs": {"type": "int", "low": 1, "high": 4},
              "train.batch_size": {"type": "categorical", "choices": [16, 32]},
              "train.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2}}
IMAGE_SPACE = {"train.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
               "train.epochs": {"type": "int", "low": 2, "high": 5},
               "train.head_lr": {"type": "categorical", "choices": [None, 1e-3, 1e-2]},
               "train.weight_decay": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}}
# the hymenoptera recipe's own "full fine-tuning instead" variant (its comments), 224 px
IMAGE_FINE_TUNE = ["train.freeze=null", "data.augment.enabled=true", "data.image_size=224",
                   "train.freeze_norm_stats=true", "train.schedule=cosine"]
SETS = {
    "sst2": {"data": DATA / "sst2", "task": "classification", "shipped": "recipes/sst2.yaml",
             "slice": ["data.max_train_samples=8000"], "space": TEXT_SPACE},
    "hymenoptera": {"data": DATA / "hymenoptera", "task": "classification", "shipped": "recipes/hymenoptera.yaml",
                    "space": IMAGE_SPACE, "sweep_set": IMAGE_FINE_TUNE},
    "conll": {"data": DATA / "conll2003", "task": "token_classification", "shipped": "recipes/conll2003.yaml",
              "slice": ["data.max_train_samples=2000"], "space": TEXT_SPACE},
    # compared on the shipped recipe's metric (auto keeps the model by MSE, regression's default)
    "stsb": {"data": DATA / "stsb", "task": "regression", "shipped": "recipes/stsb.yaml", "metric": "pearson",
             "slice": ["data.max_train_samples=2000"], "space": TEXT_SPACE},
    # FSDD's layout (file names hold the label; the customary test split by name), not tuning: given to every part
    "fsdd": {"data": DATA / "fsdd", "task": "classification", "shipped": "recipes/fsdd.yaml",
             "layout": ["data.train=recordings", r"data.label_from.regex=^(\d)_", r"data.val_from.regex=_[0-4]\.wav$"],
             "space": {"train.lr": {"type": "float", "low": 1e-5, "high": 3e-4, "log": True},
                       "train.epochs": {"type": "int", "low": 1, "high": 4}}},
    "mr": {"data": UNSEEN / "mr", "task": "classification", "shipped": "recipes/sst2.yaml", "space": TEXT_SPACE},
    "trec": {"data": UNSEEN / "trec", "task": "classification", "shipped": "recipes/sst2.yaml", "space": TEXT_SPACE},
    "hands": {"data": UNSEEN / "hands", "task": "classification", "shipped": "recipes/hymenoptera.yaml",
              "space": IMAGE_SPACE, "sweep_set": IMAGE_FINE_TUNE},
}


def timed(cmd: list[str], core) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `cmd` → (process, wall seconds, CPU seconds of it and its children)."""
    if core is not None:
        cmd = ["taskset", "-c", str(core)] + cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, wall, cpu


def sets_args(values: list[str]) -> list[str]:
    return [x for v in values for x in ("--set", v)]


def planned(name: str, part: str, common: list[str], args) -> dict:
    """`tuneforge plan --json` with the run's own settings, right before it (the auto part: as a preset recipe)."""
    spec = SETS[name]
    if part == "shipped":
        recipe, sets = spec["shipped"], [f"data.dir={spec['data']}"] + common
    else:
        recipe = Path(tempfile.mkdtemp()) / f"{name}-auto.yaml"
        recipe.write_text(yaml.safe_dump({"preset": "auto", "task": spec["task"], "data": {"dir": str(spec["data"])}}))
        sets = common
    proc, wall, _ = timed([sys.executable, "-m", "tuneforge", "plan", str(recipe), "--json"] + sets_args(sets),
                          args.core)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    p = json.loads(proc.stdout)
    per_epoch = sum(ph.get("seconds_per_epoch", ph["train_seconds"] / max(ph["epochs"], 1e-9))
                    for ph in p["phases"])
    return {"plan_wall_s": round(wall, 1), "est_epoch_s": round(per_epoch, 1),
            "est_epoch_error": p["phases"][0].get("relative_error"), "est_total_s": p["time"]["total_seconds"],
            "est_total_error": p["time"]["relative_error"], "est_rss_mb": p["memory"]["peak_rss_mb"],
            "memory": p["memory"], "warnings": p["warnings"]}


def run_part(name: str, part: str, args) -> dict:
    spec = SETS[name]
    out = Path(args.runs) / f"{name}-{part}"
    slice_ = [] if args.full else spec.get("slice", [])
    common = ["train.threads=1", "output.progress=false"] + spec.get("layout", []) + slice_ + args.set
    tf = [sys.executable, "-m", "tuneforge"]
    plan = planned(name, part, common, args) if args.plan and part != "sweep" else None
    if part == "shipped":
        cmd = tf + ["train", spec["shipped"], "--output", str(out), "--overwrite", "--quiet"] + \
            sets_args([f"data.dir={spec['data']}"] + common)
    elif part in ("auto", "probe"):
        probe = ["probe.enabled=true"] if part == "probe" else []
        cmd = tf + ["train", "--data", str(spec["data"]), "--task", spec["task"], "--output", str(out),
                    "--overwrite", "--quiet"] + sets_args(common + probe)
    else:
        space = Path(tempfile.mkdtemp()) / "space.yaml"
        space.write_text(yaml.safe_dump(spec["space"]))
        cmd = tf + ["sweep", spec["shipped"], "--space", str(space), "--trials", str(args.trials), "--jobs",
                    str(args.jobs), "--output", str(out)] + sets_args([f"data.dir={spec['data']}"] + spec.get("sweep_set", []) + common)
    proc, wall, cpu = timed(cmd, args.core)
    row = {"set": name, "part": part, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "run": str(out),
           "command": " ".join(cmd), "load_avg": os.getloadavg(), "plan": plan}
    if proc.returncode != 0:
        return {**row, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    result = sweep_result if part == "sweep" else run_result
    return {**row, **result(out, spec.get("metric"))}


def run_result(run_dir: Path, metric=None) -> dict:
    """The kept model's `metric` (by default: the run's own) on validation, and on test where there is one."""
    s = json.loads((run_dir / "summary.json").read_text())
    metric = metric or s["metric"]
    test = (s.get("test") or {}).get(metric)
    loop = s["train_seconds"] - s["eval_seconds"]
    return {"metric": metric, "value": s["eval"][metric], "test": test, "train_s": s["train_seconds"],
            "epochs": s["epochs"], "epoch_s": round(loop / max(s["epochs"], 1e-9), 1),
            "peak_rss_mb": s["peak_rss_mb"], "preset": s.get("preset")}


def sweep_result(out: Path, metric=None) -> dict:
    """The best trial's kept model, from its run folder (the sweep table names it in best.yaml's folder)."""
    rows = []
    for trial in sorted(out.glob("trial-*")):
        if (trial / "summary.json").is_file():
            r = run_result(trial, metric)
            rows.append({**r, "trial": trial.name, "pruned": "pruned" in json.loads(
                (trial / "summary.json").read_text()).get("stop_reason", "")})
    done = [r for r in rows if not r["pruned"]]
    minimize = bool(done) and done[0]["metric"] in ("mse", "mae", "rmse", "loss")
    best = (min if minimize else max)(done, key=lambda r: r["value"]) if done else None
    return {"metric": best["metric"] if best else None, "value": best["value"] if best else None,
            "test": best["test"] if best else None, "best_trial": best["trial"] if best else None,
            "trials": len(rows), "pruned": sum(r["pruned"] for r in rows),
            "trial_values": [round(r["value"], 4) for r in rows]}


def table(rows: list[dict]) -> str:
    lines = ["| set | shipped | auto | auto + probe | sweep best | auto - best shipped/sweep | auto time / sweep time "
             "(wall; CPU) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in SETS:
        got = {r["part"]: r for r in rows if r["set"] == name and r.get("value") is not None}
        if not got:
            continue
        cell = lambda p: (f"{got[p]['value']:.4f}" + (f" (test {got[p]['test']:.4f})" if got[p].get("test") else "")
                          + f", {got[p]['wall_s']:.0f} s") if p in got else "-"  # noqa: E731
        ref = max((got[p]["value"] for p in ("shipped", "sweep") if p in got), default=None)
        diff = f"{got['auto']['value'] - ref:+.4f}" if "auto" in got and ref is not None else "-"
        ratio = (f"{got['auto']['wall_s'] / got['sweep']['wall_s']:.2f}; "
                 f"{got['auto']['cpu_s'] / got['sweep']['cpu_s']:.2f}") if "auto" in got and "sweep" in got else "-"
        lines.append(f"| {name} | {cell('shipped')} | {cell('auto')} | {cell('probe')} | {cell('sweep')} | {diff} | "
                     f"{ratio} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sets", default="")
    p.add_argument("--parts", default="shipped,auto,sweep")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--jobs", type=int, default=1, help="sweep trials in parallel (1 thread each; compare CPU time)")
    p.add_argument("--core", type=int, help="pin every command to this CPU core (taskset)")
    p.add_argument("--runs", default="runs/auto_vs_sweep")
    p.add_argument("--out", default="benchmarks/results/auto_vs_sweep.json")
    p.add_argument("--full", action="store_true", help="all the training data: drop the sets' slices")
    p.add_argument("--set", action="append", default=[], help="extra recipe overrides for every command")
    p.add_argument("--table", action="store_true")
    p.add_argument("--rescore", action="store_true", help="re-read the rows' run folders (after a metric change)")
    p.add_argument("--plan", action="store_true", help="run `tuneforge plan` right before each train command")
    args = p.parse_args()
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.is_file() else []
    if args.rescore:
        rows = [{**r, **(sweep_result if r["part"] == "sweep" else run_result)(Path(r["run"]), SETS[r["set"]].get(
            "metric"))} if "error" not in r else r for r in rows]
        out.write_text(json.dumps(rows, indent=1) + "\n")
    for name in [s for s in args.sets.split(",") if s]:
        for part in args.parts.split(","):
            row = run_part(name, part, args)
            print(json.dumps({k: v for k, v in row.items() if k != "preset"}), flush=True)
            rows = [r for r in rows if not (r["set"] == name and r["part"] == part)] + [row]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
