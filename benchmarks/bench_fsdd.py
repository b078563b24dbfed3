"""Spoken digits (FSDD, customary split: index 0-4 = 300 test files, the other 2,700 train): four ways side by side,
test accuracy and wall-clock, in one process.

  a  tuneforge: recipes/fsdd.yaml (Whisper-base encoder fine-tuned, 1-s trimmed window)
  b  tuneforge: the same encoder frozen, linear head trained on cached features (train.freeze: backbone)
  c  tuneforge: ImageNet EfficientNet-Lite0 on log-mel spectrogram images (model.input: spectrogram)
  d  a plain PyTorch loop: the same backbone, window, optimizer, LR schedule, precision and epochs as (a), with
     transformers' WhisperFeatureExtractor / WhisperForAudioClassification and no tuneforge code
  e  (not in the default run) the 1-s trimmed window against the full 30-s one: linear-probe accuracy on a
     300-clip train subsample, and fine-tuning seconds per epoch from 3 steps

The headline accuracy is the final model's (no model selection on the test split); tuneforge's kept (best-epoch)
model is reported next to it. Wall-clock is the whole run: decoding, features, model load, training, evaluation.

  python benchmarks/bench_fsdd.py --data ../shared/data/fsdd                 # all four, ~1-2 h on 2 shared cores
  python benchmarks/bench_fsdd.py --data ../shared/data/fsdd --only e         # (e) trimmed vs full window, ~40 min
  python benchmarks/bench_fsdd.py --data ../shared/data/fsdd --only b,c --quick   # smoke run: a few steps each
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speech_common import digit, fsdd_split, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "fsdd.yaml"


def final_and_best(run_dir: Path) -> tuple[float, float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    accs = [x["metrics"]["accuracy"] for x in lines]
    return accs[-1], max(accs)


def tuneforge_run(name: str, data: Path, out: Path, overrides: dict, quick: bool) -> dict:
    from tuneforge.run import train

    if quick:
        overrides = {**overrides, "train.max_steps": 6, "eval.every_steps": 6}
    t = time.perf_counter()
    result = train(str(RECIPE), {"data.dir": str(data), "output.progress": False, **overrides},
                             output=str(out / name), overwrite=True, quiet=True)
    wall = time.perf_counter() - t
    final, best = final_and_best(result.run_dir)
    s = result.summary
    return {"accuracy_final": final, "accuracy_kept_model": best, "wall_seconds": round(wall, 1),
            "train_seconds": s["train_seconds"], "samples_per_second": s["samples_per_second"], "eval_seconds": s["eval_seconds"], "epochs": s["epochs"],
            "steps": s["steps"], "params": s["params"], "overrides": overrides, "precision": s["precision"]}


def window_comparison(data: Path, out: Path, threads: int, train_samples: int, steps: int, quick: bool) -> dict:
    """(e) the trimmed 1-s window against Whisper's full 30-s one: a linear probe on cached features (a seeded
    subsample of train, the whole test split) for accuracy, and a few fine-tuning steps for speed."""
    result = {}
    for name, ctx in (("trimmed_50", 50), ("full_1500", None)):
        probe = tuneforge_run(f"e_probe_{name}", data, out, {
            "train.threads": threads, "model.audio_ctx": ctx, "train.freeze": "backbone", "train.lr": 3e-3,
            "train.head_lr": None, "train.epochs": 30, "train.warmup_ratio": 0.0,
            "data.max_train_samples": train_samples}, quick)
        tune = tuneforge_run(f"e_tune_{name}", data, out, {
            "train.threads": threads, "model.audio_ctx": ctx, "train.max_steps": steps, "eval.every_steps": 10_000,
            "data.max_val_samples": 16}, quick)
        result[name] = {"probe_accuracy": probe["accuracy_final"], "probe_wall_seconds": probe["wall_seconds"],
                        "finetune_samples_per_second": tune["samples_per_second"],
                        "finetune_seconds_per_epoch_extrapolated": round(2700 / tune["samples_per_second"], 1)}
    return {"train_samples": train_samples, "finetune_steps": steps, **result}


# ---------------------------------------------------------------- (d) a plain PyTorch loop


def load_waves(files: list[Path]) -> list[np.ndarray]:
    import soundfile as sf
    import torchaudio.functional as AF

    out = []
    for f in files:
        wave, sr = sf.read(str(f), dtype="float32")
        out.append(AF.resample(torch.from_numpy(wave), sr, 16000).numpy())
    return out


def plain_model(folder: str, audio_ctx: int):
    from transformers import WhisperForAudioClassification

    model = WhisperForAudioClassification.from_pretrained(folder, num_labels=10)
    enc = model.encoder  # trim the encoder window as one would by hand: first audio_ctx positions
    emb = torch.nn.Embedding(audio_ctx, enc.embed_positions.embedding_dim)
    emb.weight.data.copy_(enc.embed_positions.weight.data[:audio_ctx])
    emb.requires_grad_(False)
    enc.embed_positions = emb
    model.config.max_source_positions = audio_ctx
    return model


@torch.no_grad()
def plain_accuracy(model, feats: torch.Tensor, labels: torch.Tensor, bs: int = 64) -> float:
    model.eval()
    right = 0
    for i in range(0, len(feats), bs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            right += int((model(input_features=feats[i:i + bs]).logits.argmax(-1) == labels[i:i + bs]).sum())
    return right / len(feats)


def plain_loop(data: Path, folder: str, audio_ctx: int, epochs: float, bs: int, lr: float, head_lr: float,
               warmup: float, seed: int, quick: bool) -> dict:
    from transformers import WhisperFeatureExtractor, get_linear_schedule_with_warmup

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    train_files, test_files = fsdd_split(data / "recordings")
    fe = WhisperFeatureExtractor.from_pretrained(folder, chunk_length=audio_ctx // 50)
    feats = {}
    for name, files in (("train", train_files), ("test", test_files)):
        waves = load_waves(files)
        feats[name] = torch.from_numpy(fe(waves, sampling_rate=16000, return_tensors="np").input_features)
    y_train = torch.tensor([digit(f) for f in train_files])
    y_test = torch.tensor([digit(f) for f in test_files])
    model = plain_model(folder, audio_ctx)
    head = [p for n, p in model.named_parameters() if n.startswith(("projector", "classifier"))]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(("projector", "classifier"))]
    opt = torch.optim.AdamW([{"params": body, "lr": lr}, {"params": head, "lr": head_lr}], weight_decay=0.01)
    per_epoch = math.ceil(len(y_train) / bs)
    steps = 6 if quick else int(per_epoch * epochs)
    sched = get_linear_schedule_with_warmup(opt, int(warmup * steps), steps)
    gen = torch.Generator().manual_seed(seed)
    step, t_train, accs = 0, time.perf_counter(), []
    while step < steps:
        model.train()
        for idx in torch.randperm(len(y_train), generator=gen).split(bs):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(input_features=feats["train"][idx]).logits.float(),
                                                         y_train[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step >= steps:
                break
        accs.append(plain_accuracy(model, feats["test"], y_test))
    return {"accuracy_final": accs[-1], "accuracy_per_epoch": accs, "wall_seconds": round(time.perf_counter() - t0, 1),
            "train_and_eval_seconds": round(time.perf_counter() - t_train, 1), "steps": steps,
            "note": "HF default head (per-frame projector to 256, mean, classifier); features precomputed once"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="the FSDD folder holding recordings/")
    ap.add_argument("--only", default="a,b,c,d", help="comma-separated subset of a,b,c,d,e")
    ap.add_argument("--epochs", type=float, default=3, help="(a) and (d)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fsdd.json")
    ap.add_argument("--quick", action="store_true", help="6 steps per run: checks the script, measures nothing")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from tuneforge.models.whisper_package import whisper_base_folder

    folder = str(whisper_base_folder())
    work = Path(tempfile.mkdtemp(prefix="bench_fsdd-"))
    common = {"train.threads": a.threads, "train.epochs": a.epochs}
    runs = {
        "a": ("whisper-base encoder fine-tuned (trimmed 1-s window)", lambda: tuneforge_run(
            "a", a.data, work, common, a.quick)),
        "b": ("whisper-base encoder frozen, cached features, linear head", lambda: tuneforge_run(
            "b", a.data, work, {**common, "train.freeze": "backbone", "train.lr": 3e-3, "train.head_lr": None,
                                "train.epochs": 30, "train.warmup_ratio": 0.0}, a.quick)),
        "c": ("EfficientNet-Lite0 (ImageNet) on log-mel spectrogram images", lambda: tuneforge_run(
            "c", a.data, work, {**common, "model": {"name": "efficientnet-lite0", "input": "spectrogram"},
                                "data.image_size": 128, "train.lr": 5e-4, "train.head_lr": 5e-3,
                                "train.epochs": 8, "train.batch_size": 32}, a.quick)),
        "d": ("plain PyTorch loop, same backbone/window/optimizer/schedule/epochs as (a)", lambda: plain_loop(
            a.data, folder, 50, a.epochs, 16, 1e-4, 1e-3, 0.1, 0, a.quick)),
        "e": ("trimmed 1-s vs full 30-s encoder window: linear-probe accuracy, fine-tuning speed",
              lambda: window_comparison(a.data, work, a.threads, 300, 3, a.quick)),
    }
    results = json.loads(a.out.read_text()) if a.out.is_file() and not a.quick else {}
    results["machine"] = machine(a.threads)
    results.setdefault("runs", {})
    for key in a.only.split(","):
        title, fn = runs[key]
        print(f"== {key}: {title}", flush=True)
        r = {"what": title, **fn(), "load_average_at_end": [round(x, 2) for x in __import__("os").getloadavg()]}
        print(json.dumps(r), flush=True)
        results["runs"][key] = r
        if not a.quick:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    for key, r in sorted(results["runs"].items()):
        if "accuracy_final" in r:
            print(f"{key}  {r['accuracy_final']:.4f}  {r['wall_seconds']:8.1f} s  {r['what']}")


if __name__ == "__main__":
    main()
