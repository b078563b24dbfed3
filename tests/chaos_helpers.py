"""Comparing an interrupted run with a clean one (chaos tests and benchmarks/chaos_real.py)."""
from __future__ import annotations

from pathlib import Path

# summary.json fields that measure time or the process, not the training result
TIME_FIELDS = ("train_seconds", "eval_seconds", "samples_per_second", "tokens_per_second", "gflops_per_second",
               "peak_rss_mb", "rss_at_train_start_mb", "finished_at", "resumed_from_step")


def weights_hash(run_dir: Path) -> str:
    """sha256 over the kept model's tensors (names sorted, raw bytes)."""
    import hashlib

    from safetensors.torch import load_file

    tensors = load_file(str(Path(run_dir) / "model" / "model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].numpy().tobytes())
    return h.hexdigest()


def history(run_dir: Path) -> list[dict]:
    """metrics.jsonl without its wall-clock and memory fields."""
    import json

    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("wall_seconds", "rss_mb")} for line in lines]


def summary(run_dir: Path) -> dict:
    """summary.json without the TIME_FIELDS."""
    import json

    s = json.loads((Path(run_dir) / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in TIME_FIELDS}
