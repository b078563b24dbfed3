"""Digit-sequence utterances from FSDD for speech-recognition benchmarks.

Each utterance is 2-6 clips of ONE speaker joined with 100-300 ms of silence (seeded); its transcript is the
spoken words ("three seven one"). Train utterances use FSDD's train split (index 5-49), val utterances its test
split (index 0-4), every clip exactly once, so no recording is in both. Written: clips/*.wav (8 kHz, FSDD's rate),
train.csv and val.csv (path,text; paths relative to --out) and manifest.json (counts, durations, seed).

  python benchmarks/make_fsdd_asr.py --data ../shared/data/fsdd --out /tmp/fsdd_asr
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speech_common import SPLIT, digit, fsdd_split  # noqa: E402

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
RATE = 8000  # every FSDD file is 8 kHz mono


def group_sizes(n: int, rng: np.random.Generator) -> list[int]:
    """Sizes 2-6 summing to n (n >= 2)."""
    sizes = []
    while n > 0:
        size = int(rng.integers(2, min(6, n) + 1)) if n >= 2 else n
        if n - size == 1:  # never leave a single clip behind
            size = size + 1 if size < 6 else size - 1
        sizes.append(size)
        n -= size
    return sizes


def utterances(files: list[Path], rng: np.random.Generator) -> list[list[Path]]:
    by_speaker: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        by_speaker[SPLIT.match(f.name).group(2)].append(f)
    out = []
    for speaker in sorted(by_speaker):
        clips = [by_speaker[speaker][i] for i in rng.permutation(len(by_speaker[speaker]))]
        start = 0
        for size in group_sizes(len(clips), rng):
            out.append(clips[start:start + size])
            start += size
    return [out[i] for i in rng.permutation(len(out))]


def join(group: list[Path], rng: np.random.Generator) -> np.ndarray:
    import soundfile as sf

    parts = []
    for k, f in enumerate(group):
        wave, sr = sf.read(str(f), dtype="float32")
        assert sr == RATE and wave.ndim == 1, f"{f}: expected 8 kHz mono"
        if k:
            parts.append(np.zeros(int(RATE * rng.uniform(0.100, 0.300)), np.float32))
        parts.append(wave)
    return np.concatenate(parts)


def write_split(name: str, files: list[Path], out: Path, rng: np.random.Generator) -> dict:
    import soundfile as sf

    rows, seconds, words = ["path,text"], [], []
    for i, group in enumerate(utterances(files, rng)):
        rel = f"clips/{name}_{i:04d}.wav"
        wave = join(group, rng)
        sf.write(out / rel, wave, RATE, subtype="PCM_16")
        text = " ".join(WORDS[digit(f)] for f in group)
        rows.append(f"{rel},{text}")
        seconds.append(len(wave) / RATE)
        words.append(len(group))
    (out / f"{name}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"utterances": len(rows) - 1, "clips": len(files), "words": int(sum(words)),
            "seconds": {"min": round(min(seconds), 3), "median": round(float(np.median(seconds)), 3),
                        "p99": round(float(np.percentile(seconds, 99)), 3), "max": round(max(seconds), 3)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="the FSDD folder holding recordings/")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    (a.out / "clips").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    train, test = fsdd_split(a.data / "recordings")
    manifest = {"seed": a.seed, "source": str(a.data), "train": write_split("train", train, a.out, rng),
                "val": write_split("val", test, a.out, rng)}
    (a.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
