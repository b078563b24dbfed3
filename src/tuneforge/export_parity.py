"""Parity of an ONNX export with the PyTorch model it came from, on the run's validation rows.

Both sides get the same batches from the predict loader, so any difference is the graph's. Reported per backend
(torch, onnxruntime fp32, onnxruntime int8): max abs logit difference to torch, agreement of the decoded
decision (argmax label / thresholded label set / NER tags) with torch, file size and latency per batch.

Tolerance (fp32): |onnx − torch| ≤ 1e-4 · max(1, max |logit|). Both runtimes compute in fp32 (eps 1.2e-7) but
with different kernels and summation orders (oneDNN vs MLAS, fused vs unfused attention); over ~10 layers of
sums of ~1e3 terms that gives 1e-7..1e-5 relative (measured: minilm-l6 on SST-2 dev 6.6e-7; efficientnet-lite0 on
hymenoptera val 3.0e-5 at logits up to 12.7; resnet18 4.6e-5 at 141; the tiny test models <= 1e-6). 1e-4 leaves a
10× margin, while a broken graph is far off (minilm-l6 with its attention mask dropped: 0.30 on a padded SST-2
batch). The decisions must agree on every row.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from tuneforge.data.examples import Examples, sample
from tuneforge.engine.loop import make_loader
from tuneforge.errors import ModelError, TuneforgeError
from tuneforge.models.vision import VisionBundle
from tuneforge.onnx_bundle import MODEL_FILES, OrtModule

RELATIVE_TOLERANCE = 1e-4
SYNTHETIC_ROWS = 32
DECISION_KEYS = ("label", "labels", "tags")  # what predict decides, per task (regression has none)


def pair_arity(run) -> int:
    """Texts per example: 2 for sentence-pair models, 1 for single texts; 1 image for image models."""
    return 2 if run.bundle.modality == "text" and run.task.state().get("pairs") else 1


def batches_of(run, inputs: list, batch_size: int) -> tuple[Examples, list[dict], list[int]]:
    """Raw inputs → (examples, the predict loader's batches, row order), exactly as Predictor builds them."""
    ex = Examples(list(inputs), None, [f"input #{i + 1}" for i in range(len(inputs))])
    built = run.task.build(ex, run.bundle, "predict")
    loader = make_loader(built, batch_size, False, run.cfg.train.seed)
    order = [i for batch in loader.batch_sampler.batches() for i in batch]
    return ex, list(loader), order


def tolerance(expected: torch.Tensor) -> float:
    return RELATIVE_TOLERANCE * max(1.0, float(expected.abs().max()) if expected.numel() else 1.0)


def logits_close(expected: torch.Tensor, got: torch.Tensor) -> tuple[bool, float]:
    if expected.shape != got.shape:
        return False, float("inf")
    diff = float((expected.float() - got.float()).abs().max()) if expected.numel() else 0.0
    return diff <= tolerance(expected), diff


def synthetic_inputs(run, n: int = SYNTHETIC_ROWS) -> list:
    """Inputs shaped like the model's (random vocabulary words / random images), for runs whose data is gone."""
    rng = random.Random(0)
    if run.bundle.modality != "text":
        gen = np.random.default_rng(0)
        return [gen.integers(0, 256, size=(gen.integers(24, 96), gen.integers(24, 96), 3), dtype=np.uint8)
                for _ in range(n)]
    words = [w for w in run.bundle.tokenizer.get_vocab() if w.isalpha()] or ["text"]

    def text() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(2, 24)))


    return [(text(), text()) if pair_arity(run) == 2 else text() for _ in range(n)]


def parity_inputs(run, max_rows: int, log) -> tuple[list, dict]:
    """Up to max_rows validation rows read through the saved config (as training read them); synthetic inputs,
    said so, when the data is not reachable from here."""
    try:
        _, val, _ = run.task.read_examples(run.bundle.modality)
    except (TuneforgeError, OSError) as e:
        reason = str(e).splitlines()[0][:160]
        log(f"export: validation data not reachable ({reason}); parity checked on {SYNTHETIC_ROWS} SYNTHETIC inputs")
        return synthetic_inputs(run), {"kind": "synthetic", "rows": SYNTHETIC_ROWS, "reason": reason}
    val = sample(val, max_rows, run.cfg.train.seed)
    where = _common_source([w.rsplit(" line ", 1)[0] for w in val.where])
    log(f"export: parity on {len(val)} validation rows ({where})")
    return list(val.inputs), {"kind": "validation", "rows": len(val), "from": where}


def _common_source(places: list[str]) -> str:
    """The file (tables) or folder (images) the rows came from."""
    try:
        return os.path.commonpath(places) if len(set(places)) > 1 else places[0]
    except (ValueError, IndexError):  # mixed relative / absolute paths, or no rows
        return "validation"


def _timed(fn, batches: list[dict]) -> tuple[list[torch.Tensor], float]:
    """Logits per batch and the mean milliseconds per batch (after one warm-up batch)."""
    with torch.no_grad():
        fn(batches[0])
        t0 = time.perf_counter()
        out = [fn(b).float() for b in batches]
    return out, (time.perf_counter() - t0) * 1000 / len(batches)


def _decisions(outputs: list[dict]) -> tuple[str | None, list]:
    """(the decoded key that holds predict's decision, its value per row); (None, []) for regression."""
    key = next((k for k in DECISION_KEYS if outputs and k in outputs[0]), None)
    return key, [] if key is None else [tuple(o[key]) if isinstance(o[key], list) else o[key] for o in outputs]


def _agreement(a: list, b: list):
    return None if not a else sum(x == y for x, y in zip(a, b)) / len(a)


def _size_mb(paths) -> float:
    return round(sum(p.stat().st_size for p in paths) / 2**20, 3)


def _backends(run, out: Path) -> dict:
    backends = {"torch": (lambda b: run.bundle.logits(b), _size_mb(run.run_dir.glob("model/*.safetensors")))}
    for variant, name in MODEL_FILES.items():
        if (out / name).is_file():
            backends[f"onnxruntime {variant}"] = (OrtModule(out / name), _size_mb([out / name]))
    return backends


def check_parity(run, inputs: list, out: Path, log) -> dict:
    """Run every backend on the same batches; raise when fp32 onnxruntime is off tolerance or disagrees."""

    batch_size = run.cfg.eval.batch_size or 2 * run.cfg.train.batch_size
    ex, batches, order = batches_of(run, inputs, batch_size)
    if run.cfg.train.channels_last and isinstance(run.bundle, VisionBundle):
        run.bundle.use_channels_last()  # the reference computes with the kernels predict uses
    rows, logits, decisions = {}, {}, {}
    for name, (fn, size) in _backends(run, out).items():
        logits[name], ms = _timed(fn, batches)
        key, decisions[name] = _decisions(run.task.decode_batches(ex, zip(logits[name], batches), order, None))
        diff = max(float((r - g).abs().max()) for r, g in zip(logits["torch"], logits[name]))
        rows[name] = {"max_abs_diff": diff, "agreement": _agreement(decisions["torch"], decisions[name]),
                      "size_mb": size, "ms_per_batch": round(ms, 3)}
    if "onnxruntime int8" in rows:  # what quantization alone changes
        rows["onnxruntime int8"]["agreement_vs_fp32"] = _agreement(decisions["onnxruntime fp32"],
                                                                   decisions["onnxruntime int8"])
    tol = max(tolerance(r) for r in logits["torch"])
    result = {"rows": len(ex), "batch_size": batch_size, "batches": len(batches), "threads": torch.get_num_threads(),
              "tolerance": tol, "decision": key, "backends": rows}
    fp32 = rows["onnxruntime fp32"]
    if fp32["max_abs_diff"] > tol or (fp32["agreement"] is not None and fp32["agreement"] < 1.0):
        agree = "n/a" if fp32["agreement"] is None else f"{fp32['agreement']:.2%}"
        raise ModelError(f"ONNX fp32 parity failed on {len(ex)} rows: max abs logit difference "
                         f"{fp32['max_abs_diff']:.3g} (tolerance {tol:.3g}), decision agreement {agree} (needs 100%); "
                         "try --exporter torchscript or dynamo")
    return result


def format_table(parity: dict) -> str:
    head = f"{'backend':<18} {'max abs diff':>12} {'agreement':>9} {'size MB':>9} {'ms/batch':>9}"
    lines = [head, "-" * len(head)]
    for name, r in parity["backends"].items():
        agree = "n/a" if r["agreement"] is None else f"{r['agreement']:.2%}"
        lines.append(f"{name:<18} {r['max_abs_diff']:>12.3g} {agree:>9} {r['size_mb']:>9.2f} {r['ms_per_batch']:>9.2f}")
    lines.append(f"{parity['rows']} rows in {parity['batches']} batches of up to {parity['batch_size']}, "
                 f"{parity['threads']} thread(s); fp32 tolerance {parity['tolerance']:.3g}; "
                 f"agreement of '{parity['decision'] or '-'}' with torch")
    data = parity.get("data", {})
    if data.get("kind") == "synthetic":
        lines.append(f"parity on SYNTHETIC inputs: the validation data is not reachable ({data['reason']})")
    elif data:
        lines.append(f"parity on validation rows from {data['from']}")
    return "\n".join(lines)
