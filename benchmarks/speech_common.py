"""Shared by the speech benchmarks: the machine a figure was measured on, and FSDD's file-name split."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from pathlib import Path

import torch

SPLIT = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")  # {digit}_{speaker}_{index}.wav


def machine(threads: int) -> dict:
    """CPU model and flags, cores, load (the machine is shared: timings are indicative, side-by-side ratios count)."""
    flags = subprocess.run(r"grep -o -w 'avx2\|avx512f\|avx512_bf16\|amx_bf16\|amx_tile' /proc/cpuinfo | sort -u",
                           shell=True, capture_output=True, text=True).stdout.split()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cpu_flags": flags, "cores": os.cpu_count(), "torch_threads": threads,
            "torch": torch.__version__, "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "shared_machine": "2 cores shared with other developers' jobs: timings are indicative only; ratios of "
                              "runs in the same process and minutes count", "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def fsdd_split(recordings: Path) -> tuple[list[Path], list[Path]]:
    """(train, test): FSDD's customary split, test = index 0-4 (300 files), train = index 5-49 (2,700)."""
    files = sorted(f for f in recordings.glob("*.wav") if SPLIT.match(f.name))
    test = [f for f in files if int(SPLIT.match(f.name).group(3)) < 5]
    train = [f for f in files if int(SPLIT.match(f.name).group(3)) >= 5]
    return train, test


def digit(f: Path) -> int:
    return int(SPLIT.match(f.name).group(1))
