"""Audio data layer on FSDD: decode + validate every file, Whisper log-mel features (30-s window) with the
short-window shortcut vs the plain WhisperFeatureExtractor (same clips, side by side), disk-cache hit, items/s,
and the resampler's accuracy against torchaudio's default filter.

    python benchmarks/bench_audio_data.py --data ../shared/data/fsdd/recordings --plain-clips 128
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch


def resampler_accuracy() -> dict:
    from torchaudio.functional import resample

    from tuneforge.data.audio import RESAMPLER

    out = {}
    for name, kw in (("tuneforge", RESAMPLER), ("torchaudio_default", {})):
        t = np.arange(44100 * 2) / 44100
        tone = torch.tensor(np.sin(2 * np.pi * 1000 * t), dtype=torch.float32)
        exact = np.sin(2 * np.pi * 1000 * np.arange(32000) / 16000)
        error = np.abs(resample(tone, 44100, 16000, **kw).numpy() - exact)[1600:-1600].max()
        high = torch.tensor(np.sin(2 * np.pi * 9000 * t), dtype=torch.float32)
        alias = resample(high, 44100, 16000, **kw).numpy()[2000:-2000]
        out[name] = {"1kHz_max_abs_error": float(error),
                     "9kHz_alias_db": round(float(20 * np.log10(np.sqrt(np.square(alias).mean() / 0.5))), 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--plain-clips", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["TUNEFORGE_CACHE"] = tempfile.mkdtemp()
    from transformers import WhisperFeatureExtractor

    from tuneforge.config import load_config
    from tuneforge.data.audio import AudioCache
    from tuneforge.data.audio_dataset import build_audio_inputs
    from tuneforge.data.audio_features import log_mel
    from tuneforge.data.sources import read_split

    cfg = load_config({"model": "x", "data": {"dir": args.data, "label_from": {"regex": r"^(\d)_"}}})
    ex = read_split(cfg.data, "audio", "train", print)
    r: dict = {"clips": len(ex), "threads": args.threads}
    t = time.perf_counter()
    cache = AudioCache(16000, cfg.data.max_seconds, cfg.data.cache_audio_mb)
    sel = cache.prepare(ex, "error", print)
    r["decode_s"], r["decoded_mb"] = round(time.perf_counter() - t, 2), round(cache.used / 2**20, 1)
    extractor = WhisperFeatureExtractor()
    maker = log_mel(extractor, cfg.data)
    for key in ("features_miss_s", "features_hit_s"):
        t = time.perf_counter()
        built = build_audio_inputs(sel.examples, maker, cfg, False, cache, None, log=print)
        r[key] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    for i in range(len(built.dataset)):
        built.dataset[i]
    r["items_per_s"] = round(len(built.dataset) / (time.perf_counter() - t), 1)
    waves = [cache.get(x) for x in sel.examples.inputs[:args.plain_clips]]
    t = time.perf_counter()
    fast = maker(waves)
    r["shortcut_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    plain = extractor(waves, sampling_rate=16000, return_tensors="np")["input_features"]
    r["plain_extractor_s"] = round(time.perf_counter() - t, 3)
    r["shortcut_max_abs_diff"] = float(max(np.abs(a - b).max() for a, b in zip(fast, plain)))
    r["resampler"] = resampler_accuracy()
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
