"""The numbers behind the report, computed from a run folder's files (no plotting, no HTML).

Everything here reads plain dicts and lists (metrics.jsonl records, summary.json, predictions/val.jsonl rows) so
it works on finished, running and crashed runs alike."""
from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np

from tuneforge.metrics import scalars
from tuneforge.utils import flatten

ECE_BINS = 15
SKIPPED_METRICS = ("samples", "sentences")  # counts, not quality


# ---------------------------------------------------------------- curves


def metric_names(records: list[dict]) -> list[str]:
    """Scalar validation metrics in first-seen order (loss first when present)."""
    names: dict[str, None] = {}
    for r in records:
        for k in scalars(r.get("metrics", {})):
            if k not in SKIPPED_METRICS:
                names.setdefault(k, None)
    ordered = list(names)
    return (["loss"] if "loss" in names else []) + [n for n in ordered if n != "loss"]


def series(records: list[dict], key: str) -> list[Optional[float]]:
    """A top-level field of every record (None where a record lacks it)."""
    return [r.get(key) for r in records]


def metric_series(records: list[dict], name: str) -> list[Optional[float]]:
    return [r.get("metrics", {}).get(name) for r in records]


def recorded(values: list) -> bool:
    return any(v is not None for v in values)


def lr_values(records: list[dict]) -> list[Optional[float]]:
    """The `lr` field per record: a number, or the first parameter group's when several are recorded."""
    out = []
    for v in series(records, "lr"):
        out.append(float(v[0]) if isinstance(v, (list, tuple)) and v else (float(v) if v is not None else None))
    return out


def throughput(records: list[dict]) -> list[float]:
    """Samples per second between consecutive evaluations (evaluation time included)."""
    out, prev_s, prev_w = [], 0, 0.0
    for r in records:
        ds, dw = r["samples_seen"] - prev_s, r["wall_seconds"] - prev_w
        out.append(ds / dw if dw > 0 else float("nan"))
        prev_s, prev_w = r["samples_seen"], r["wall_seconds"]
    return out


# ---------------------------------------------------------------- classification


def probability_matrix(rows: list[dict], labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities n × classes, gold class index n) from classification predictions."""
    index = {name: i for i, name in enumerate(labels)}
    probs = np.array([[r["output"]["probabilities"].get(name, 0.0) for name in labels] for r in rows], dtype=float)
    gold = np.array([index[str(r["target"])] for r in rows], dtype=int)
    return probs.reshape(len(rows), len(labels)), gold


def reliability(probs: np.ndarray, gold: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Equal-width confidence bins: accuracy, mean confidence and count per bin, and the expected calibration
    error (the count-weighted mean |accuracy - confidence|)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == gold
    which = np.minimum((conf * bins).astype(int), bins - 1)
    acc, mean_conf, counts = np.full(bins, np.nan), np.full(bins, np.nan), np.zeros(bins, dtype=int)
    for b in range(bins):
        hit = which == b
        counts[b] = hit.sum()
        if counts[b]:
            acc[b], mean_conf[b] = correct[hit].mean(), conf[hit].mean()
    weights = counts / max(len(gold), 1)
    ece = float(np.nansum(weights * np.abs(np.nan_to_num(acc) - np.nan_to_num(mean_conf))))
    return {"accuracy": acc, "confidence": mean_conf, "counts": counts, "ece": ece, "bins": bins}


def classification_mistakes(rows: list[dict], limit: int) -> list[dict]:
    """Wrong predictions, most confident first."""
    wrong = [r for r in rows if r["output"]["label"] != str(r["target"])]
    wrong.sort(key=lambda r: -r["output"]["score"])
    return [{"input": r["input"], "gold": str(r["target"]), "predicted": r["output"]["label"],
             "confidence": r["output"]["score"],
             "p_gold": r["output"]["probabilities"].get(str(r["target"]), 0.0)} for r in wrong[:limit]]


# ---------------------------------------------------------------- token classification


def confused_tags(rows: list[dict], limit: int = 12) -> list[tuple[str, str, int]]:
    """(gold tag, predicted tag, words) for the most frequent word-level disagreements."""
    pairs: Counter = Counter()
    for r in rows:
        for g, p in zip(r["target"], r["output"]["tags"]):
            if g != p:
                pairs[(g, p)] += 1
    return [(g, p, n) for (g, p), n in pairs.most_common(limit)]


def tag_confusion(rows: list[dict], tags: list[str]) -> np.ndarray:
    index = {t: i for i, t in enumerate(tags)}
    m = np.zeros((len(tags), len(tags)), dtype=int)
    for r in rows:
        for g, p in zip(r["target"], r["output"]["tags"]):
            if g in index and p in index:
                m[index[g], index[p]] += 1
    return m


def ner_mistakes(rows: list[dict], limit: int) -> list[dict]:
    """Sentences whose predicted tags differ from gold; ranked by the confidence of their most confident wrong
    entity, then by the number of wrong words (sentences with only missed entities come after)."""
    from tuneforge.tasks.token_classification import entities

    found = []
    for r in rows:
        wrong_words = sum(g != p for g, p in zip(r["target"], r["output"]["tags"]))
        if not wrong_words:
            continue
        gold = {(k, s, e) for k, s, e, _ in entities(r["target"])}
        predicted = [(e["type"], e["word_start"], e["word_end"] - 1, e["score"]) for e in r["output"]["entities"]]
        wrong_scores = [score for k, s, e, score in predicted if (k, s, e) not in gold]
        found.append({"words": r["output"]["words"], "gold": sorted(gold, key=lambda t: t[1]),
                      "predicted": predicted, "wrong_words": wrong_words,
                      "confidence": max(wrong_scores, default=0.0)})
    found.sort(key=lambda m: (-m["confidence"], -m["wrong_words"]))
    return found[:limit]


# ---------------------------------------------------------------- regression and multi-label


def regression_arrays(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(gold, predicted) values."""
    return (np.array([float(r["target"]) for r in rows]), np.array([float(r["output"]["value"]) for r in rows]))


def regression_mistakes(rows: list[dict], limit: int) -> list[dict]:
    out = [{"input": r["input"], "gold": float(r["target"]), "predicted": float(r["output"]["value"]),
            "error": float(r["output"]["value"]) - float(r["target"])} for r in rows]
    out.sort(key=lambda m: -abs(m["error"]))
    return out[:limit]


def multilabel_mistakes(rows: list[dict], limit: int) -> list[dict]:
    """Rows whose predicted label set differs from gold, ranked by their most confident wrong decision
    (a false positive's score, or a false negative's 1 - score)."""
    out = []
    for r in rows:
        gold, chosen, scores = set(r["target"]), set(r["output"]["labels"]), r["output"]["scores"]
        if gold == chosen:
            continue
        wrong = [(scores.get(x, 0.0), x, "extra") for x in chosen - gold]
        wrong += [(1.0 - scores.get(x, 0.0), x, "missed") for x in gold - chosen]
        conf, label, kind = max(wrong)
        out.append({"input": r["input"], "gold": sorted(gold), "predicted": sorted(chosen), "confidence": conf,
                    "worst": f"{label} ({kind}, score {scores.get(label, 0.0):.3f})"})
    out.sort(key=lambda m: -m["confidence"])
    return out[:limit]


# ---------------------------------------------------------------- comparing runs


IGNORED_IN_DIFF = ("output.", "data.dir", "data.train", "data.val")  # where a run lives, not how it trains


SECTION_ORDER = ("train", "model", "task", "data", "eval", "early_stopping")  # hyperparameters first


def differing_keys(configs: list[dict]) -> list[str]:
    """Recipe keys whose resolved values differ between runs (run locations left out), training keys first."""
    flat = [flatten(c) for c in configs]
    keys = set().union(*flat) if flat else set()
    rank = {s: i for i, s in enumerate(SECTION_ORDER)}
    ordered = sorted(keys, key=lambda k: (rank.get(k.split(".")[0], len(rank)), k))
    return [k for k in ordered if not k.startswith(IGNORED_IN_DIFF) and len({repr(f.get(k)) for f in flat}) > 1]
