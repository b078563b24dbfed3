"""Whisper-base speech recognition on FSDD digit sequences (benchmarks/make_fsdd_asr.py): zero-shot vs fine-tuned
WER, sample transcripts, the time per epoch with the full (30-s) vs trimmed encoder window, and where the time goes.

  python benchmarks/make_fsdd_asr.py --data ../shared/data/fsdd --out /tmp/fsdd_asr
  python benchmarks/bench_asr.py --data /tmp/fsdd_asr                  # ~1 h on 2 shared cores
  python benchmarks/bench_asr.py --data /tmp/fsdd_asr --parts zero_shot,sections   # a subset

Parts: zero_shot (the base model on val, full and trimmed window), finetune (recipes/fsdd_asr.yaml, trimmed),
finetune_by_window (the same recipe for --epochs with each window: accuracy and time, trimmed vs full),
epoch_time (a few training steps with each window, extrapolated to one epoch), sections (timed feature
extraction, encoder forward+backward, decoder forward+backward, greedy decoding, one batch, each window).
WER is the task's (metrics.normalize_transcript); `wer_digits_as_words` also spells out numerals ("3" → "three"),
which Whisper writes for spoken digits zero-shot: the fairer zero-shot figure."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speech_common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "fsdd_asr.yaml"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FULL = {"model.audio_ctx": None, "data.max_seconds": 30.0}


def digits_as_words(text: str) -> str:
    from tuneforge.metrics import normalize_transcript

    spaced = "".join(f" {WORDS[int(c)]} " if c.isdigit() else c for c in text)
    return normalize_transcript(spaced)


def overrides(data: Path, threads: int, extra: dict) -> dict:
    return {"data.dir": str(data), "train.threads": threads, "output.progress": False, **extra}


def zero_shot(data: Path, threads: int, window: dict) -> dict:
    """The base model, no training, evaluated exactly as tuneforge evaluates during training."""
    import jiwer

    from tuneforge.config import load_config
    from tuneforge.engine.loop import forward
    from tuneforge.run import prepare

    t = time.perf_counter()
    setup = prepare(load_config(str(RECIPE), overrides(data, threads, window)), lambda *a: None)
    setup.bundle.model.eval()
    metrics = setup.task.new_metrics(setup.bundle)
    with torch.no_grad():
        for batch in setup.val_loader:
            outputs, batch = forward(setup.task, setup.bundle, batch, setup.accelerator)
            metrics.update(outputs, batch, float(setup.task.loss(outputs, batch)))
    result = metrics.compute()
    spelled = jiwer.process_words([digits_as_words(r) for r in metrics.refs], [digits_as_words(h) for h in metrics.hyps])
    return {"wer": result["wer"], "cer": result["cer"], "wer_digits_as_words": float(spelled.wer),
            "loss": result["loss"], "examples": result["examples"], "utterances": result["samples"],
            "seconds": round(time.perf_counter() - t, 1)}


def finetune(data: Path, threads: int, out: Path, epochs: float, window: Optional[dict] = None) -> dict:
    from tuneforge.run import train

    t = time.perf_counter()
    r = train(str(RECIPE), overrides(data, threads, {**(window or {}), "train.epochs": epochs}), output=str(out),
              overwrite=True, quiet=True)
    history = [json.loads(x) for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    s = r.summary
    return {"wer_final": history[-1]["metrics"]["wer"], "cer_final": history[-1]["metrics"]["cer"],
            "wer_per_epoch": [h["metrics"]["wer"] for h in history], "wer_kept_model": s["eval"]["wer"],
            "examples_final": history[-1]["metrics"]["examples"], "epochs": s["epochs"], "steps": s["steps"],
            "train_seconds": s["train_seconds"], "eval_seconds": s["eval_seconds"],
            "seconds_per_epoch_training_only": round((s["train_seconds"] - s["eval_seconds"]) / s["epochs"], 1),
            "wall_seconds": round(time.perf_counter() - t, 1), "run_dir": str(r.run_dir)}


def epoch_time(data: Path, threads: int, out: Path, window: dict, steps: int) -> dict:
    """`steps` optimizer steps (batch 16) with this window; one epoch extrapolated from the training-loop rate."""
    from tuneforge.run import train

    r = train(str(RECIPE), overrides(data, threads, {**window, "train.max_steps": steps, "data.max_val_samples": 2,
                                                       "task.max_new_tokens": 4}),
              output=str(out), overwrite=True, quiet=True)
    s = r.summary
    return {"steps": steps, "samples_per_second": s["samples_per_second"],
            "seconds_per_epoch": round(s["data"]["train"] / s["samples_per_second"], 1)}


def timed(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def sections(data: Path, threads: int, window: dict, batch: int) -> dict:
    """Seconds for one batch: features, encoder fwd+bwd, decoder fwd+bwd (encoder output fixed), greedy decoding."""
    from tuneforge.config import load_config
    from tuneforge.run import prepare

    setup = prepare(load_config(str(RECIPE), overrides(data, threads, {**window, "train.batch_size": batch})),
                    lambda *a: None)
    bundle, task, maker = setup.bundle, setup.task, setup.task.audio.maker
    refs = setup.train_ex.inputs[:batch]
    waves = [task.audio.cache.get(r) for r in refs]
    rows = [setup.train_built.dataset[i] for i in range(batch)]
    b = setup.train_built.collate(rows)
    model = bundle.model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)

    def encoder():
        with autocast:
            out = model.model.encoder(b["input_features"]).last_hidden_state
        out.float().sum().backward()

    with torch.no_grad(), autocast:
        memory = model.model.encoder(b["input_features"]).last_hidden_state

    def decoder():
        with autocast:
            out = model(encoder_outputs=(memory,), labels=b["labels"])
        out.loss.backward()

    model.eval()
    greedy = timed(lambda: task.transcribe(bundle, b["input_features"]), 1)
    model.train()
    return {"batch": batch, "encoder_frames": int(model.config.max_source_positions),
            "features_seconds": round(timed(lambda: maker(waves)), 3),
            "encoder_fwd_bwd_seconds": round(timed(encoder), 3),
            "decoder_fwd_bwd_seconds": round(timed(decoder), 3), "greedy_decoding_seconds": round(greedy, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="the folder make_fsdd_asr.py wrote")
    ap.add_argument("--parts", default="zero_shot,finetune,epoch_time,sections")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--steps", type=int, default=3, help="epoch_time: optimizer steps per window")
    ap.add_argument("--batch", type=int, default=4, help="sections: utterances per timed batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_asr"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "asr_fsdd.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    results = json.loads(a.out.read_text()) if a.out.is_file() else {}
    results["machine"] = machine(a.threads)
    windows = {"trimmed_300": {}, "full_1500": FULL}
    todo = {
        "zero_shot": lambda: {k: zero_shot(a.data, a.threads, w) for k, w in windows.items()},
        "finetune": lambda: finetune(a.data, a.threads, a.work / "finetune", a.epochs),
        "finetune_by_window": lambda: {k: finetune(a.data, a.threads, a.work / f"finetune_{k}", a.epochs, w)
                                       for k, w in windows.items()},
        "epoch_time": lambda: {k: epoch_time(a.data, a.threads, a.work / f"time_{k}", w, a.steps)
                               for k, w in windows.items()},
        "sections": lambda: {k: sections(a.data, a.threads, w, a.batch) for k, w in windows.items()},
    }
    for part in a.parts.split(","):
        print(f"== {part}", flush=True)
        results[part] = {**todo[part](), "load_average_at_end": [round(x, 2) for x in __import__("os").getloadavg()]}
        print(json.dumps(results[part], indent=1), flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
