"""Per-task report sections: how the kept model errs (from summary.json's final metrics and the validation
predictions) and its worst mistakes with their inputs."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from tuneforge.data.images import IMAGE_SUFFIXES
from tuneforge.report import analysis as A
from tuneforge.report import figures as F
from tuneforge.report.html import esc, figure, fmt, note, section, subsection, table
from tuneforge.report.runs import RunFiles

MISTAKES = 12


def _final(run: RunFiles) -> dict:
    if run.summary and run.summary.get("eval"):
        return run.summary["eval"]
    return run.records[-1]["metrics"] if run.records else {}


def is_image(x: Any) -> bool:
    return (isinstance(x, list) and bool(x) and isinstance(x[0], list)) or (
        isinstance(x, str) and Path(x).suffix.lower() in IMAGE_SUFFIXES)


def gallery(cards: list[tuple[Any, list[str]]]) -> str:
    """Image mistakes as a grid of cards: the thumbnail, then a few caption lines (HTML)."""
    items = "".join(f'<div class="card-img">{render_input(x)}{"".join(f"<div>{c}</div>" for c in lines)}</div>'
                    for x, lines in cards)
    return f'<div class="gallery mistakes">{items}</div>'


def render_input(x: Any) -> str:
    """An input as HTML: image thumbnail (path or pixels), text pair, text or token list (escaped)."""
    if isinstance(x, list) and x and isinstance(x[0], list):  # pixels of an in-memory image
        uri = F.thumbnail(x)
        return f'<img src="{uri}" alt="input image">' if uri else esc("(image)")
    if isinstance(x, str) and Path(x).suffix.lower() in IMAGE_SUFFIXES and Path(x).is_file():
        uri = F.thumbnail(x)
        name = esc(Path(x).name)
        return (f'<img src="{uri}" alt="{name}"><br><small>{name}</small>' if uri else name)
    if isinstance(x, list) and len(x) == 2 and all(isinstance(t, str) for t in x):
        return f"{esc(x[0])}<br><small>&#8214;</small> {esc(x[1])}"
    if isinstance(x, list):
        return esc(" ".join(map(str, x)))
    return esc(x)


# ---------------------------------------------------------------- classification


def _per_class_table(per_class: dict, aucs: dict) -> str:
    rows = []
    for name, m in per_class.items():
        extra = [fmt(aucs[name]["roc_auc"]), fmt(aucs[name]["average_precision"])] if name in aucs else ["", ""]
        rows.append([esc(name), fmt(m["precision"]), fmt(m["recall"]), fmt(m["f1"]), fmt(m["support"])] + extra)
    heads = ["class", "precision", "recall", "F1", "support"] + (["ROC AUC", "AP"] if aucs else [])
    return table(heads, rows)


def classification_section(run: RunFiles) -> str:
    final = _final(run)
    per_class = final.get("per_class") or {}
    labels = run.labels or list(per_class)
    parts, aucs, below = [], {}, ""
    if run.predictions and labels:
        probs, gold = A.probability_matrix(run.predictions, labels)
        rel = A.reliability(probs, gold)
        uri, aucs = F.classifier_curves(probs, gold, labels, rel)
        below = figure(uri, "ROC, precision-recall and reliability diagram",
                       f"expected calibration error (ECE, {rel['bins']} equal-width confidence bins): "
                       f"{rel['ece']:.4f}, the prediction-weighted mean gap between confidence and accuracy. "
                       "Accuracy bars under the diagonal: over-confident.")
    else:
        below = note(run.predictions_note or "no validation predictions")
    if final.get("confusion_matrix"):
        parts.append(figure(F.heatmap(np.array(final["confusion_matrix"]), labels, labels, "confusion matrix "
                                      "(validation, kept model)"), "confusion matrix"))
    if per_class:
        parts.append(f"<div>{subsection('Per class', _per_class_table(per_class, aucs))}</div>")
    return section("task", "Where the model errs", '<div class="row">' + "".join(parts) + "</div>" + below)


def classification_mistakes(run: RunFiles) -> str:
    wrong = A.classification_mistakes(run.predictions, MISTAKES)
    if wrong and all(is_image(m["input"]) for m in wrong):
        return gallery([(m["input"], [f'true <span class="gold">{esc(m["gold"])}</span> · predicted '
                                      f'<span class="wrong">{esc(m["predicted"])}</span>',
                                      f'confidence {fmt(m["confidence"])} · p(true) {fmt(m["p_gold"])}'])
                        for m in wrong])
    rows = [[render_input(m["input"]), f'<span class="gold">{esc(m["gold"])}</span>',
             f'<span class="wrong">{esc(m["predicted"])}</span>', fmt(m["confidence"]), fmt(m["p_gold"])]
            for m in wrong]
    return table(["input", "true", "predicted", "confidence", "p(true)"], rows, "mistakes") if rows else ""


# ---------------------------------------------------------------- token classification


def ner_section(run: RunFiles) -> str:
    per_type = _final(run).get("per_type") or {}
    parts = []
    if per_type:
        names = list(per_type)
        rows = [[esc(k), fmt(v["precision"]), fmt(v["recall"]), fmt(v["f1"]), fmt(v["support"])]
                for k, v in per_type.items()]
        chart = F.hbars(names, {m: [per_type[n][m] for n in names] for m in ("precision", "recall", "f1")},
                        "entity-level scores per type (seqeval)", "score", xlim=(0, 1.05))
        scores = table(["type", "precision", "recall", "F1", "support"], rows)
        parts.append(f'<div class="row">{figure(chart, "per-entity-type scores")}'
                     f'<div>{subsection("Per entity type", scores)}</div></div>')
    if run.predictions:
        pairs = A.confused_tags(run.predictions)
        tags = run.labels or sorted({t for r in run.predictions for t in r["target"]})
        body = (table(["true tag", "predicted tag", "words"], ([esc(g), esc(p), fmt(n)] for g, p, n in pairs))
                if pairs else note("every validation word got its gold tag"))
        heat = F.heatmap(A.tag_confusion(run.predictions, tags), tags, tags, "word-level tag confusion")
        parts.append(subsection("Most confused tags (word level)",
                                f'<div class="row"><div>{body}</div>{figure(heat, "tag confusion")}</div>'))
    else:
        parts.append(note(run.predictions_note or "no validation predictions"))
    return section("task", "Where the model errs", "".join(parts))


def _entity_line(words: list[str], spans: list[tuple], other: set, types: dict[str, int]) -> str:
    """Words with `spans` (type, first, last) highlighted; spans missing from `other` are outlined."""
    starts = {s: (k, s, e) for k, s, e in spans}
    out, i = [], 0
    while i < len(words):
        if i in starts:
            k, s, e = starts[i]
            miss = " miss" if (k, s, e) not in other else ""
            text = esc(" ".join(words[s:e + 1]))
            colour = types.setdefault(k, len(types)) % 8
            out.append(f'<span class="ent t{colour}{miss}">{text}<sub>{esc(k)}</sub></span>')
            i = e + 1
        else:
            out.append(esc(words[i]))
            i += 1
    return " ".join(out)


def ner_mistakes(run: RunFiles) -> str:
    types: dict[str, int] = {}
    rows = []
    for m in A.ner_mistakes(run.predictions, MISTAKES):
        gold = {tuple(g) for g in m["gold"]}
        pred = [(k, s, e) for k, s, e, _ in m["predicted"]]
        true_line = _entity_line(m["words"], sorted(gold, key=lambda t: t[1]), set(pred), types)
        pred_line = _entity_line(m["words"], pred, gold, types)
        lines = (f'<div class="sentence"><span class="lbl">true</span>{true_line}</div>'
                 f'<div class="sentence"><span class="lbl">predicted</span>{pred_line}</div>')
        rows.append([lines, fmt(m["wrong_words"]), fmt(m["confidence"]) if m["confidence"] else "missed only"])
    if not rows:
        return ""
    return (note("outlined: an entity the other line lacks (a wrong or missed span)")
            + table(["sentence", "wrong words", "top wrong-entity score"], rows, "mistakes wide"))


# ---------------------------------------------------------------- regression and multi-label


def regression_section(run: RunFiles) -> str:
    if not run.predictions:
        return section("task", "Where the model errs", note(run.predictions_note or "no validation predictions"))
    gold, pred = A.regression_arrays(run.predictions)
    return section("task", "Where the model errs", figure(F.regression_plots(gold, pred),
                                                          "predicted vs true, and residuals"),
                   "validation set, kept model (the metrics are in the summary above)")


def regression_mistakes(run: RunFiles) -> str:
    worst = A.regression_mistakes(run.predictions, MISTAKES)
    if worst and all(is_image(m["input"]) for m in worst):
        return gallery([(m["input"], [f"true {fmt(m['gold'])} · predicted {fmt(m['predicted'])}",
                                      f'error <span class="wrong">{m["error"]:+.4g}</span>']) for m in worst])
    rows = [[render_input(m["input"]), fmt(m["gold"]), fmt(m["predicted"]),
             f'<span class="wrong">{m["error"]:+.4g}</span>'] for m in worst]
    return table(["input", "true", "predicted", "error"], rows, "mistakes") if rows else ""


def multilabel_section(run: RunFiles) -> str:
    per_class = _final(run).get("per_class") or {}
    if not per_class:
        return section("task", "Where the model errs", note("no per-label metrics recorded"))
    names = list(per_class)
    chart = F.hbars(names, {"F1": [per_class[n]["f1"] for n in names]}, "F1 per label at its threshold",
                    "F1 / threshold", xlim=(0, 1.05), marks=[per_class[n].get("threshold", 0.5) for n in names],
                    mark_label="threshold")
    rows = [[esc(n), fmt(m["precision"]), fmt(m["recall"]), fmt(m["f1"]), fmt(m["support"]), fmt(m.get("threshold"))]
            for n, m in per_class.items()]
    scores = table(["label", "precision", "recall", "F1", "support", "threshold"], rows)
    body = f'<div class="row">{figure(chart, "F1 per label")}<div>{subsection("Per label", scores)}</div></div>'
    return section("task", "Where the model errs", body, "thresholds were tuned on validation and saved with the model")


def _label_set(labels: list[str], other: list[str], cls: str) -> str:
    """Labels joined; those missing from `other` marked with `cls` (a missed or an extra label)."""
    parts = [f'<span class="{cls}">{esc(x)}</span>' if x not in other else esc(x) for x in labels]
    return ", ".join(parts) or "<small>(none)</small>"


def multilabel_mistakes(run: RunFiles) -> str:
    rows = [[render_input(m["input"]), _label_set(m["gold"], m["predicted"], "gold"),
             _label_set(m["predicted"], m["gold"], "wrong"), esc(m["worst"])]
            for m in A.multilabel_mistakes(run.predictions, MISTAKES)]
    return (note("green: a true label the model missed; red: a predicted label that is not true")
            + table(["input", "true labels", "predicted labels", "most confident wrong decision"], rows,
                    "mistakes")) if rows else ""


TASK_SECTIONS: dict[str, tuple[Callable, Callable]] = {
    "classification": (classification_section, classification_mistakes),
    "token_classification": (ner_section, ner_mistakes),
    "regression": (regression_section, regression_mistakes),
    "multilabel": (multilabel_section, multilabel_mistakes),
}


def mistakes_section(run: RunFiles, render: Callable) -> str:
    if not run.predictions:
        return section("mistakes", "Worst mistakes", note(run.predictions_note or "no validation predictions"))
    body = render(run) or note("no mistakes on the validation set")
    what = "largest errors" if run.task == "regression" else "most confident wrong predictions"
    return section("mistakes", "Worst mistakes", body, f"the {what} on the validation set (at most {MISTAKES}; "
                   "from predictions/val.jsonl)")
