"""`tuneforge train | eval | predict`: user errors become one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
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
    t.add_argument("--quiet", action="store_true")

    e = sub.add_parser("eval", help="evaluate a trained run on labelled data")
    e.add_argument("run_dir")
    e.add_argument("--data", required=True, help="a labelled file or image folder, like the validation data")

    pr = sub.add_parser("predict", help="predict with a trained run; writes JSON lines")
    pr.add_argument("run_dir")
    g = pr.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", action="append", help="a text to classify (repeatable)")
    g.add_argument("--image", action="append", help="an image file (repeatable)")
    g.add_argument("--input", help="a file of inputs (table, .txt one per line, or a folder of images)")
    pr.add_argument("--text-pair", help="second text, for sentence-pair models")
    pr.add_argument("--top-k", type=int, default=None)
    pr.add_argument("--output", help="write the JSON lines here instead of stdout")
    return p


def _cmd_train(a) -> None:
    from tuneforge.run import train

    result = train(a.recipe, a.overrides, output=a.output, overwrite=a.overwrite, quiet=a.quiet)
    print(json.dumps({"run_dir": str(result.run_dir), "metric": result.summary["metric"],
                      **{k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}}))


def _cmd_eval(a) -> None:
    from tuneforge.metrics import scalars
    from tuneforge.predict import Predictor

    metrics = Predictor(a.run_dir).evaluate(a.data)
    per_type = {"per_type": metrics["per_type"]} if "per_type" in metrics else {}  # NER: per entity type
    print(json.dumps({**scalars(metrics), "per_class": metrics.get("per_class"),
                      "confusion_matrix": metrics.get("confusion_matrix"), **per_type}))


def _cmd_predict(a) -> None:
    from tuneforge.predict import Predictor

    pred = Predictor(a.run_dir)
    if a.text:
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
    out = open(a.output, "w", encoding="utf-8") if a.output else sys.stdout
    try:
        for x, y in zip(inputs, pred.predict(inputs, a.top_k)):
            shown = list(x) if isinstance(x, tuple) else x
            out.write(json.dumps({"input": shown, **y}, ensure_ascii=False) + "\n")
    finally:
        if a.output:
            out.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        {"train": _cmd_train, "eval": _cmd_eval, "predict": _cmd_predict}[args.command](args)
    except TuneforgeError as e:
        print(f"tuneforge: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tuneforge: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
