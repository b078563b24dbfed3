"""Frozen-backbone feature cache: seconds per epoch and metrics, cached vs uncached, same recipe otherwise.

The hymenoptera recipe (linear probe on efficientnet-lite0) with train.feature_cache on and off. The cached run
computes backbone features in its first epoch (and stores them); later epochs train the head from the store.
Steady epochs (first excluded) are compared, and the two metrics histories must agree within float tolerance.

    python benchmarks/bench_feature_cache.py --data ../shared/data/hymenoptera --epochs 4
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(data: str, epochs: int, cache: bool, cache_dir: str) -> dict:
    os.environ["TUNEFORGE_CACHE"] = cache_dir  # a fresh cache: the first epoch pays for the features
    from tuneforge.run import train

    r = train(str(HERE.parent / "recipes" / "hymenoptera.yaml"),
              [f"data.dir={data}", f"train.epochs={epochs}", f"train.feature_cache={str(cache).lower()}"],
              output=tempfile.mkdtemp(), overwrite=True, quiet=True)
    lines = [json.loads(x) for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    walls = [x["wall_seconds"] for x in lines]
    return {"epoch_seconds": [walls[0]] + [b - a for a, b in zip(walls, walls[1:])],
            "history": [{k: x["metrics"][k] for k in ("loss", "accuracy")} for x in lines],
            "final_accuracy": r.metrics["accuracy"], "peak_rss_mb": r.summary["peak_rss_mb"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "hymenoptera"))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--out", default=str(HERE / "results" / "feature_cache.json"))
    p.add_argument("--worker", choices=["cached", "uncached"])
    a = p.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(worker(a.data, a.epochs, a.worker == "cached", tempfile.mkdtemp())))
        return
    res = {}
    for name in ("uncached", "cached"):
        out = subprocess.run([sys.executable, __file__, "--worker", name, "--data", a.data, "--epochs", str(a.epochs)],
                             capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
        r = res[name] = json.loads(line[0][7:])
        r["steady_epoch_seconds"] = sum(r["epoch_seconds"][1:]) / max(len(r["epoch_seconds"]) - 1, 1)
        print(f"{name}: {r}", flush=True)
    u, c = res["uncached"], res["cached"]
    diff = max(abs(x[k] - y[k]) for x, y in zip(u["history"], c["history"]) for k in ("loss", "accuracy"))
    print(f"\n{'run':<10}{'1st epoch s':>12}{'steady s/epoch':>16}{'final acc':>11}")
    for name, r in res.items():
        print(f"{name:<10}{r['epoch_seconds'][0]:>12.2f}{r['steady_epoch_seconds']:>16.3f}{r['final_accuracy']:>11.4f}")
    speedup = u["steady_epoch_seconds"] / c["steady_epoch_seconds"]
    print(f"cached epoch speed-up: {speedup:.1f}x; largest metrics difference over {len(u['history'])} evaluations: "
          f"{diff:.2e}")
    Path(a.out).write_text(json.dumps({"date": str(date.today()), "command": " ".join(sys.argv), "speedup": speedup,
                                       "max_metric_difference": diff, "results": res}, indent=2))


if __name__ == "__main__":
    main()
