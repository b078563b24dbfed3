"""tuneforge `task: sft` against TRL's SFTTrainer + PEFT LoRA, side by side, on a CPU.

Same model folder (SmolLM2-135M-Instruct, converted from the packaged GGUF), same rows (Alpaca English demo, ChatML
template, loss on the answers), same max length, LoRA rank / alpha / dropout / targets (all linear layers), same
optimizer settings (AdamW, lr, weight decay, cosine, clip 1.0), same steps x batch x accumulation, same precision
(bf16 autocast), same threads, gradient checkpointing on in both (tuneforge's rule with LoRA, TRL's default).
Each run is its own process; the runs alternate (tuneforge, TRL, tuneforge, TRL, ...), so both see the same
machine load on average.

Measured per run: training-loop seconds (no set-up, no evaluation), both wall-clock and the process's CPU time
(user + system; with one thread it is the compute the run needed, and far less sensitive than the wall clock to
other jobs on a shared machine), real (non-padding) tokens and trained (answer) tokens consumed, hence tokens/s;
peak RSS of the process at the end of training; and the loss on held-out rows of the trained model, computed by one
neutral evaluator for both (token-weighted mean cross-entropy over the answer tokens, float32, no autocast).

    python benchmarks/bench_sft_vs_trl.py --data ../shared/data/sft --packing on --rounds 2
    python benchmarks/bench_sft_vs_trl.py --data ../shared/data/sft --packing off --rounds 2

TRL is a benchmark dependency only (`pip install 'tuneforge[bench]'`)."""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return sorted({f for f in ("avx512_bf16", "amx_bf16", "avx2") if f in text.split()})


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- data, shared by both


def conversations(path: Path) -> list[list[dict]]:
    from tuneforge.config import validate
    from tuneforge.data.chat import read_chat

    cfg = validate({"task": "sft", "model": "x", "data": {"train": str(path)}})
    return read_chat(path, cfg.data, log=lambda *a: None).inputs


def write_split(data_dir: Path, work: Path, rows: int, heldout: int, seed: int) -> None:
    import random

    items = json.loads((data_dir / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    random.Random(seed).shuffle(items)
    (work / "train.json").write_text(json.dumps(items[:rows], ensure_ascii=False), encoding="utf-8")
    (work / "heldout.json").write_text(json.dumps(items[rows:rows + heldout], ensure_ascii=False), encoding="utf-8")


def heldout_loss(model, work: Path, max_length: int) -> float:
    """Token-weighted mean loss over the answers of heldout.json (ChatML), float32: the same code for both."""
    import torch
    from transformers import AutoTokenizer

    from tuneforge.data.chat_templates import CHATML
    from tuneforge.data.sft import encode_conversation
    from tuneforge.models.causal_lm import trained_token_loss

    tok = AutoTokenizer.from_pretrained(os.environ["SFT_MODEL_DIR"])
    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for conv in conversations(work / "heldout.json"):
            ids, labels = encode_conversation(tok, conv, max_length, "completion", CHATML)
            out = trained_token_loss(model, {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels])})
            total, tokens = total + float(out.loss_sum), tokens + int(out.tokens)
    return total / max(tokens, 1)


# ---------------------------------------------------------------- one tuneforge run


def run_tuneforge(a, work: Path) -> dict:
    import torch

    import tuneforge.run
    from tuneforge.engine.callbacks import Callback
    from tuneforge.tasks.sft import SFT

    counted = {"trained": 0}
    original = SFT.train_loss

    def counting(self, outputs, batch):  # instrumentation: the answer tokens each micro-batch trains on
        counted["trained"] += int(outputs.tokens)
        return original(self, outputs, batch)

    SFT.train_loss = counting

    class Meter(Callback):  # CPU time from the start of the loop to the last optimizer step; peak RSS after it
        def on_fit_start(self, state) -> None:
            counted["cpu0"] = cpu_seconds()

        def on_step_end(self, state) -> None:
            counted["cpu_seconds"] = cpu_seconds() - counted["cpu0"]
            counted["peak_rss_mb"] = peak_rss_mb()

    recipe = {"task": {"type": "sft", "generation_samples": 0},
              "model": os.environ["SFT_MODEL_DIR"],
              "data": {"train": str(work / "train.json"), "val": str(work / "heldout.json"), "chat_template": "chatml",
                       "max_length": a.max_length, "packing": a.packing == "on", "max_val_samples": 4},
              "train": {"lora": {"r": a.rank, "alpha": 2 * a.rank, "dropout": 0.0}, "lr": a.lr, "schedule": "cosine",
                        "warmup_steps": 1, "weight_decay": 0.01, "max_steps": a.steps, "batch_size": a.batch_size,
                        "grad_accum": a.grad_accum, "precision": "bf16", "threads": a.threads, "seed": a.seed},
              "output": {"progress": False}}
    result = tuneforge.run.train(recipe, output=str(work / "tuneforge_run"), overwrite=True, quiet=True,
                                 callbacks=(Meter(),))
    s = result.summary
    seconds = s["train_seconds"] - s["eval_seconds"]
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(result.run_dir / "model", dtype=torch.float32)
    return {"train_seconds": seconds, "cpu_seconds": counted["cpu_seconds"], "tokens": s["tokens_seen"],
            "trained_tokens": counted["trained"], "peak_rss_mb": counted["peak_rss_mb"],
            "heldout_loss": heldout_loss(merged, work, a.max_length)}


# ---------------------------------------------------------------- one TRL run


def run_trl(a, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tuneforge.data.chat_templates import CHATML

    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(os.environ["SFT_MODEL_DIR"])
    tok.chat_template = CHATML
    rows = [{"prompt": c[:-1], "completion": c[-1:]} for c in conversations(work / "train.json")]
    model = AutoModelForCausalLM.from_pretrained(os.environ["SFT_MODEL_DIR"], dtype=torch.float32)
    args = SFTConfig(output_dir=str(work / "trl_run"), max_length=a.max_length, packing=a.packing == "on",
                     per_device_train_batch_size=a.batch_size, gradient_accumulation_steps=a.grad_accum,
                     learning_rate=a.lr, lr_scheduler_type="cosine", warmup_steps=1, weight_decay=0.01,
                     max_steps=a.steps, bf16=True, use_cpu=True, seed=a.seed, logging_steps=1, save_strategy="no",
                     report_to=[], disable_tqdm=True, dataloader_num_workers=0, gradient_checkpointing=True)
    peft = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    counted = {"tokens": 0, "trained": 0}

    class CountingTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):  # instrumentation: each micro-batch trained on
            if model.training:
                counted["tokens"] += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else \
                    int(inputs["position_ids"].numel())
                counted["trained"] += int((inputs["labels"][:, 1:] != -100).sum())
            return super().compute_loss(model, inputs, *args, **kwargs)

    trainer = CountingTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                              peft_config=peft)

    class Clock(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            counted["t0"], counted["cpu0"] = time.perf_counter(), cpu_seconds()

        def on_train_end(self, *args, **kwargs):
            counted["seconds"] = time.perf_counter() - counted["t0"]
            counted["cpu_seconds"] = cpu_seconds() - counted["cpu0"]
            counted["peak_rss_mb"] = peak_rss_mb()

    trainer.add_callback(Clock())
    trainer.train()
    merged = trainer.model.merge_and_unload().float()
    return {"train_seconds": counted["seconds"], "cpu_seconds": counted["cpu_seconds"], "tokens": counted["tokens"],
            "trained_tokens": counted["trained"],
            "peak_rss_mb": counted["peak_rss_mb"], "heldout_loss": heldout_loss(merged, work, a.max_length)}


# ---------------------------------------------------------------- the side-by-side driver


def child(a) -> None:
    work = Path(a.work)
    out = run_tuneforge(a, work) if a.child == "tuneforge" else run_trl(a, work)
    out["tokens_per_second"] = out["tokens"] / out["train_seconds"]
    out["trained_tokens_per_second"] = out["trained_tokens"] / out["train_seconds"]
    out["tokens_per_cpu_second"] = out["tokens"] / out["cpu_seconds"]
    out["trained_tokens_per_cpu_second"] = out["trained_tokens"] / out["cpu_seconds"]
    print("RESULT " + json.dumps(out))


def spawn(a, which: str, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--work", str(work)] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in ("child", "work", "out", "rounds",
                                                                                  "data")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{which} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def summarize(runs: dict) -> dict:
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    t, h = med["tuneforge"], med["trl"]
    return {"median": med, "speedup_tokens_per_second": t["tokens_per_second"] / h["tokens_per_second"],
            "speedup_trained_tokens_per_second": t["trained_tokens_per_second"] / h["trained_tokens_per_second"],
            "speedup_tokens_per_cpu_second": t["tokens_per_cpu_second"] / h["tokens_per_cpu_second"],
            "speedup_trained_tokens_per_cpu_second": t["trained_tokens_per_cpu_second"]
            / h["trained_tokens_per_cpu_second"],
            "peak_rss_ratio": t["peak_rss_mb"] / h["peak_rss_mb"],
            "heldout_loss_difference": t["heldout_loss"] - h["heldout_loss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "sft"))
    p.add_argument("--rows", type=int, default=300)
    p.add_argument("--heldout", type=int, default=60)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--packing", choices=["on", "off"], default="on")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--child", choices=["tuneforge", "trl"])
    p.add_argument("--work")
    a = p.parse_args()
    from tuneforge.models.gguf import SMOLLM2_135M, convert_gguf

    os.environ.setdefault("SFT_MODEL_DIR", str(convert_gguf(SMOLLM2_135M)))
    if a.child:
        return child(a)
    work = Path(tempfile.mkdtemp(prefix="sft_vs_trl-"))
    write_split(Path(a.data), work, a.rows, a.heldout, a.seed)
    runs: dict = {"tuneforge": [], "trl": []}
    for r in range(a.rounds):
        for which in ("tuneforge", "trl"):
            runs[which].append(spawn(a, which, work))
            print(f"round {r + 1} {which}: {json.dumps(runs[which][-1])}", flush=True)
    result = {"config": {k: v for k, v in vars(a).items() if k not in ("child", "work", "out")},
              "cpu_flags": cpu_flags(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "machine": "shared 2-core VM (other developers' jobs running): timings indicative, ratios side by side",
              "runs": runs, **summarize(runs)}
    out = Path(a.out or HERE / "results" / f"sft_vs_trl_packing_{a.packing}.json")
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("speedup", "peak", "heldout"))}, indent=2))


if __name__ == "__main__":
    main()
