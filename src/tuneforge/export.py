"""`tuneforge export RUN --format onnx`: the run's kept model as ONNX, checked against PyTorch before it is kept.

One `ExportSpec` per model source (bundle type) says what the graph takes and returns: input names with their
axes (named axes are dynamic), output axes, sample raw inputs and the exporters to try. The tensors themselves
come from the task's own preprocessing (`task.build` → the predict loader), so the graph is fed exactly what
predict feeds the PyTorch model, and `bundle.logits` is the traced forward (no hand-written graph code).
Adding a modality (audio) is one `@EXPORT_SPECS.register(<source>)` function.

The folder written (default RUN/export/onnx, replaced as a whole) is described in onnx_bundle.py; the parity
check and the report are in export_parity.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from tuneforge.config import validate
from tuneforge.errors import ConfigError, ModelError, TuneforgeError
from tuneforge.export_parity import batches_of, check_parity, format_table, logits_close, pair_arity, parity_inputs
from tuneforge.models import load_saved_model
from tuneforge.models.base import ModelBundle, write_json
from tuneforge.onnx_bundle import EXPORT_SUBDIR, META_FILE, MODEL_FILES
from tuneforge.registry import Registry
from tuneforge.tasks import task_from_saved

DEFAULT_OPSET = 18  # dynamo's translation is most complete from 18; onnxruntime >= 1.14 runs it
# Tried in this order (`--exporter auto`). Both pass parity on every bundle type here (BERT sequence / token /
# siamese, timm efficientnet, torchvision mobilenet / resnet); TorchScript exports minilm-l6 in 6 s against 37 s for
# dynamo with the same onnxruntime latency, and gives tiny graphs 3-10x less per-call overhead. dynamo (the
# torch.export path, torch's default since 2.9) takes over wherever TorchScript fails or is removed.
EXPORTERS = ("torchscript", "dynamo")
SAMPLE_TEXTS = ["a short text", "a somewhat longer sample text, so that the batch holds padding"]


@dataclass(frozen=True)
class ExportSpec:
    inputs: dict[str, tuple]  # ONNX input name → its axes (a name: dynamic; None: fixed at the sample's size)
    outputs: dict[str, tuple]  # ONNX output name → its axes
    sample_inputs: list  # raw inputs (texts, pairs, HWC uint8 images) that the task's preprocessing turns into a batch
    exporters: tuple = EXPORTERS  # tried in order; the first whose graph matches PyTorch on the sample is kept
    int8_ops: Optional[tuple] = None  # op types `--quantize dynamic` quantizes (None: onnxruntime's default set)
    notes: list = field(default_factory=list)


# A spec factory: `fn(bundle, cfg) -> ExportSpec`, keyed by the bundle's model source.
EXPORT_SPECS: Registry[Callable[[ModelBundle, object], ExportSpec]] = Registry("export spec")


def _text_fields(bundle: ModelBundle) -> list[str]:
    return [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in bundle.tokenizer.model_input_names]


def _sample_texts(cfg) -> list:
    if cfg.data.text_pair_column:
        return [(a, b) for a, b in zip(SAMPLE_TEXTS, reversed(SAMPLE_TEXTS))]
    return list(SAMPLE_TEXTS)


@EXPORT_SPECS.register("hf")
def _hf_spec(bundle: ModelBundle, cfg) -> ExportSpec:
    token_head = bundle.head.kind == "token"
    out_axes = ("batch", "sequence", None) if token_head else ("batch", None)
    notes = ["first-token shortcut kept (exact; the graph computes only position 0 in the last layer)"] \
        if bundle.extra_meta.get("first_token_shortcut") else []
    return ExportSpec({k: ("batch", "sequence") for k in _text_fields(bundle)}, {"logits": out_axes},
                      _sample_texts(cfg), notes=notes)


@EXPORT_SPECS.register("hf-siamese")
def _siamese_spec(bundle: ModelBundle, cfg) -> ExportSpec:
    fields = _text_fields(bundle)
    inputs = {**{k: ("batch", "sequence") for k in fields}, **{f"pair_{k}": ("batch", "pair_sequence") for k in fields}}
    return ExportSpec(inputs, {"logits": ("batch", None)}, _sample_texts(cfg))


def _image_spec(bundle: ModelBundle, cfg) -> ExportSpec:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(48 + 16 * i, 40, 3), dtype=np.uint8) for i in range(2)]
    notes = ["exported in NCHW (channels_last is a CPU kernel layout, not part of the graph)",
             "int8: convolutions stay fp32 (dynamic ConvInteger on efficientnet-lite0: 5.5x slower, 81.7% label "
             "agreement on hymenoptera val); only MatMul / Gemm (the head) are quantized"]
    return ExportSpec({"pixel_values": ("batch", None, None, None)}, {"logits": ("batch", None)}, images,
                      int8_ops=("MatMul", "Gemm"), notes=notes)


EXPORT_SPECS.register("timm")(_image_spec)
EXPORT_SPECS.register("torchvision")(_image_spec)


class LogitsModule(nn.Module):
    """bundle.logits with positional tensors in the spec's input order: what the exporters trace."""

    def __init__(self, bundle: ModelBundle, names: list[str]):
        super().__init__()
        self.model = bundle.model  # registered, so the exporters see the parameters
        self.bundle, self.names = bundle, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.bundle.logits(dict(zip(self.names, tensors)))


@dataclass
class Loaded:
    """The kept model of a run, on CPU, in eval mode, with its task and config."""

    bundle: ModelBundle
    task: object
    cfg: object
    meta: dict
    run_dir: Path


def load_run(run_dir: str | Path, log) -> Loaded:
    bundle, meta = load_saved_model(run_dir)
    cfg = validate(meta["config"], f"{run_dir} (saved config)")
    task = task_from_saved(cfg, meta["task_state"], log)
    bundle.model.cpu().eval()
    return Loaded(bundle, task, cfg, meta, Path(run_dir))


def _dynamic_axes(spec: ExportSpec) -> dict:
    return {name: {i: a for i, a in enumerate(axes) if a} for name, axes in {**spec.inputs, **spec.outputs}.items()}


def _dynamic_shapes(spec: ExportSpec) -> tuple:
    dims: dict[str, object] = {}
    per_input = []
    for axes in spec.inputs.values():
        per_input.append({i: dims.setdefault(a, torch.export.Dim(a)) for i, a in enumerate(axes) if a})
    return (tuple(per_input),)  # LogitsModule.forward(*tensors): one entry, the tuple of tensors


def _export_once(module: LogitsModule, args: tuple, spec: ExportSpec, path: Path, opset: int, exporter: str) -> None:
    names, outs = list(spec.inputs), list(spec.outputs)
    chatter = io.StringIO()  # the exporters print progress and tracer warnings; the log gets a summary instead
    with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(module, args, input_names=names, output_names=outs, opset_version=opset,
                                        dynamic_shapes=_dynamic_shapes(spec), dynamo=True, external_data=False)
            program.save(str(path), external_data=False)
        else:
            torch.onnx.export(module, args, str(path), input_names=names, output_names=outs, opset_version=opset,
                              dynamic_axes=_dynamic_axes(spec), dynamo=False, do_constant_folding=True)


def export_graph(run: Loaded, spec: ExportSpec, sample: dict, path: Path, opset: int, exporters: tuple, log
                 ) -> tuple[str, list[dict]]:
    """Try each exporter; keep the first graph that runs in onnxruntime and matches PyTorch on the sample batch.
    → (exporter used, attempts with their errors)."""
    from tuneforge.onnx_bundle import OrtModule

    missing = [k for k in spec.inputs if k not in sample]
    if missing:
        raise ModelError(f"the preprocessing gives no {', '.join(missing)} for this {run.bundle.source} model; "
                         "the export spec and the tokenizer disagree")
    module = LogitsModule(run.bundle, list(spec.inputs)).eval()
    args = tuple(sample[k] for k in spec.inputs)
    with torch.no_grad():
        expected = module(*args).float()
    attempts = []
    for exporter in exporters:
        t0 = time.perf_counter()
        try:
            _export_once(module, args, spec, path, opset, exporter)
            got = OrtModule(path)(sample)
            ok, diff = logits_close(expected, got)
            error = None if ok else f"sample batch max abs diff {diff:.3g} over tolerance"
        except Exception as e:  # an exporter failing on an architecture is expected: the next one is tried
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        attempts.append({"exporter": exporter, "seconds": round(time.perf_counter() - t0, 2), "error": error})
        log(f"export: {exporter} exporter {'ok' if error is None else 'failed: ' + error} "
            f"({attempts[-1]['seconds']} s)")
        if error is None:
            return exporter, attempts
    raise ModelError(f"no exporter produced a working ONNX graph for {run.bundle.name} "
                     f"({'; '.join(a['exporter'] + ': ' + a['error'] for a in attempts)})")


def quantize_dynamic_int8(src: Path, dst: Path, ops: Optional[tuple], log) -> None:
    """onnxruntime dynamic quantization: int8 weights, activations quantized per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # it advises shape pre-processing, which fails on transformer graphs
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                         op_types_to_quantize=list(ops) if ops else None)
    finally:
        logging.disable(logging.NOTSET)
    log(f"export: int8 (dynamic quantization) written to {dst.name}")


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _prepare_output(out: Path) -> Path:
    """The export is built in a sibling temp folder and swapped in at the end: no half-written export."""
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise ConfigError(f"--output '{out}' is a non-empty folder that is not an export; choose a new or empty folder")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _finish_output(tmp: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def write_side_files(run: Loaded, spec: ExportSpec, out: Path) -> None:
    """Everything besides the graph that a runtime needs: preprocessing, labels, task state, loadable meta."""
    b, cfg = run.bundle, run.cfg
    if b.modality == "text":
        b.tokenizer.save_pretrained(out)
        pre = {"modality": "text", "tokenizer": "tokenizer.json (Hugging Face tokenizers)", "truncation": True,
               "max_length": run.task.max_length(b), "texts_per_example": pair_arity(run),
               "pair_encoding": cfg.model.pair_encoding, "dtype": "int64", "padding": "right, to the batch's longest"}
    else:
        size = cfg.data.image_size or b.image_cfg["input_size"][-1]
        pre = {"modality": b.modality, **(b.image_cfg or {}), "image_size": size,
               "resize_shorter_side": int(size / (b.image_cfg or {}).get("crop_pct", 0.875)), "center_crop": size,
               "layout": "NCHW float32: RGB / 255, then (x - mean) / std"}
    write_json(out / "preprocessing.json", pre)
    write_json(out / "labels.json", b.head.labels)
    write_json(out / "task.json", {**run.task.state(), "texts_per_example": pair_arity(run),
                                   "head": b.head.kind, "outputs": spec.outputs})
    write_json(out / META_FILE, {**run.meta, "source": "onnx", "exported_source": b.source, "precision": "fp32"})


def export_onnx(run_dir: str | Path, output: Optional[str | Path] = None, quantize: Optional[str] = None,
                opset: Optional[int] = None, exporter: str = "auto", max_rows: int = 256, log=print) -> dict:
    """Export RUN's kept model; check parity on validation rows; → the manifest (also written to manifest.json).
    Raises a one-line TuneforgeError when fp32 onnxruntime disagrees with PyTorch."""

    if quantize not in (None, "dynamic"):
        raise ConfigError(f"--quantize '{quantize}' is not supported; use --quantize dynamic")
    if exporter not in ("auto",) + EXPORTERS:
        raise ConfigError(f"--exporter '{exporter}' is unknown; choose auto, dynamo or torchscript")
    run = load_run(run_dir, log)
    out = Path(output).expanduser() if output else Path(run_dir) / EXPORT_SUBDIR
    spec = EXPORT_SPECS.get(run.bundle.source, "model source")(run.bundle, run.cfg)
    opset = opset or DEFAULT_OPSET
    tmp = _prepare_output(out)
    try:
        _, sample, _ = batches_of(run, spec.sample_inputs, len(spec.sample_inputs))
        used, attempts = export_graph(run, spec, sample[0], tmp / MODEL_FILES["fp32"], opset,
                                      spec.exporters if exporter == "auto" else (exporter,), log)
        if quantize:
            quantize_dynamic_int8(tmp / MODEL_FILES["fp32"], tmp / MODEL_FILES["int8"], spec.int8_ops, log)
        write_side_files(run, spec, tmp)
        inputs, source = parity_inputs(run, max_rows, log)
        parity = check_parity(run, inputs, tmp, log)
        parity["data"] = source
        manifest = build_manifest(run, spec, tmp, opset, used, attempts, parity)
        write_json(tmp / "manifest.json", manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _finish_output(tmp, out)
    manifest["output"] = str(out)
    return manifest


def _io_entry(arg, axes: tuple) -> dict:
    import onnx

    dims = [d.dim_param or d.dim_value for d in arg.type.tensor_type.shape.dim]
    return {"name": arg.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(arg.type.tensor_type.elem_type).name,
            "shape": dims, "axes": list(axes)}


def build_manifest(run: Loaded, spec: ExportSpec, out: Path, opset: int, exporter: str, attempts: list,
                   parity: dict) -> dict:
    import onnx
    import onnxruntime

    import tuneforge

    graph = onnx.load(str(out / MODEL_FILES["fp32"]), load_external_data=False)
    files = {v: {"file": f, "sha256": sha256(out / f), "bytes": (out / f).stat().st_size}
             for v, f in MODEL_FILES.items() if (out / f).is_file()}
    return {
        "format": "onnx", "model": run.meta.get("alias") or run.bundle.name, "model_path": run.bundle.name,
        "source": run.bundle.source, "modality": run.bundle.modality,
        "task": run.task.name, "labels": run.bundle.head.labels, "texts_per_example": pair_arity(run),
        "inputs": [_io_entry(a, spec.inputs[a.name]) for a in graph.graph.input],
        "outputs": [_io_entry(a, spec.outputs[a.name]) for a in graph.graph.output],
        "opset": next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), opset),
        "exporter": exporter, "exporter_attempts": attempts, "notes": spec.notes, "files": files,
        "int8_op_types": list(spec.int8_ops) if spec.int8_ops else "onnxruntime quantize_dynamic default",
        "versions": {"tuneforge": tuneforge.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "run_dir": str(run.run_dir.resolve()), "parity": parity,
    }


def run_export_cli(a) -> None:
    """`tuneforge export`: progress on stderr; the parity table and where the export went on stdout."""

    if a.format != "onnx":
        raise TuneforgeError(f"--format {a.format} is not supported; use --format onnx")
    require_extra("export", ("onnx", "onnxruntime"))
    if a.max_rows < 1:
        raise TuneforgeError(f"--max-rows must be at least 1 (got {a.max_rows})")
    m = export_onnx(a.run_dir, a.output, a.quantize, a.opset, a.exporter, a.max_rows, log=_stderr)
    print(format_table(m["parity"]))
    print(f"exported {m['model']} ({m['task']}) with the {m['exporter']} exporter, opset {m['opset']}, "
          f"to {m['output']} (manifest.json)")


def require_extra(extra: str, modules: tuple) -> None:
    """A missing optional package is a one-line error naming the extra that brings it."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise TuneforgeError(f"this command needs {', '.join(missing)}: pip install 'tuneforge[{extra}]'")


def _stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr)
