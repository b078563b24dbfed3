"""What `preset: auto` chooses for a data folder, without training: the checks and data report of a run (run.prepare),
then the preset's choices and reasons as `tuneforge train --data DIR` prints them (issue 19).

    python benchmarks/preset_choices.py sst2=../shared/data/sst2 hymenoptera=../shared/data/hymenoptera ...
      [--task NAME=token_classification] [--set NAME:KEY=VALUE ...] [--out benchmarks/results/preset_choices.json]

--set gives one set a recipe key that describes its layout (FSDD: data.train, data.label_from.regex), not tuning."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def choices(folder: str, task: str, sets: list[str]) -> dict:
    from tuneforge.config import load_config
    from tuneforge.run import prepare

    lines: list[str] = []
    started = time.perf_counter()
    cfg = load_config({"preset": "auto", "task": task, "data": {"dir": folder}}, sets)
    setup = prepare(cfg, lambda *a, **k: lines.append(" ".join(map(str, a))))
    return {"data": folder, "task": task, "sets": sets, "model": setup.cfg.model.name, "preset": setup.preset,
            "log": [x for x in lines if x.startswith("preset")], "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("sets", nargs="+", metavar="NAME=DIR")
    p.add_argument("--task", action="append", default=[], metavar="NAME=TASK", help="default classification")
    p.add_argument("--set", action="append", default=[], metavar="NAME:KEY=VALUE")
    p.add_argument("--out", default="benchmarks/results/preset_choices.json")
    a = p.parse_args()
    tasks = dict(x.split("=", 1) for x in a.task)
    rows = {}
    for item in a.sets:
        name, folder = item.split("=", 1)
        own = [x.split(":", 1)[1] for x in a.set if x.split(":", 1)[0] == name]
        rows[name] = choices(folder, tasks.get(name, "classification"), own)
        print(f"== {name} ({rows[name]['model']})")
        print("\n".join(rows[name]["log"]), flush=True)
    Path(a.out).write_text(json.dumps(rows, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
