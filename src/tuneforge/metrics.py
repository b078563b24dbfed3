"""Every task's metrics, as streaming accumulators: `update(outputs, batch, loss)` per batch keeps only argmax /
small summaries on the CPU (never every logit on the device), `compute()` returns the metrics dict."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from tuneforge.data.tagging import IGNORE


def scalars(metrics: dict) -> dict:
    """The flat numeric part of a metrics dict (for progress bars and comparisons)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ---------------------------------------------------------------- single-label classification


class ClassificationMetrics:
    """Accuracy, macro-F1, balanced accuracy, per-class precision/recall/F1 and the confusion matrix (sklearn)."""

    def __init__(self, labels: list[str]):
        self.labels = labels
        self.preds: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.loss_sum, self.n = 0.0, 0

    def update(self, logits: torch.Tensor, batch: dict, loss: float) -> None:
        targets = batch["labels"]
        self.preds.append(logits.argmax(-1).cpu().numpy())
        self.targets.append(targets.cpu().numpy())
        self.loss_sum += loss * len(targets)
        self.n += len(targets)

    def compute(self) -> dict:
        from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

        y = np.concatenate(self.targets)
        p = np.concatenate(self.preds)
        ids = list(range(len(self.labels)))
        prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=ids, zero_division=0)
        present = support > 0  # macro-F1 over the classes present in this split
        return {
            "loss": self.loss_sum / max(self.n, 1),
            "accuracy": float((y == p).mean()),
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "balanced_accuracy": float(balanced_accuracy_score(y, p)),
            "per_class": {name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                                 "support": int(support[i])} for i, name in enumerate(self.labels)},
            "confusion_matrix": confusion_matrix(y, p, labels=ids).tolist(),
            "samples": int(self.n),
        }


# ---------------------------------------------------------------- regression


def _corr(kind: str, p: np.ndarray, y: np.ndarray) -> float:
    """Pearson / Spearman; 0.0 when undefined (constant predictions), so model selection stays well-defined."""
    from scipy.stats import pearsonr, spearmanr

    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(y) == 0:
        return 0.0
    r = (pearsonr if kind == "pearson" else spearmanr)(p, y)[0]
    return float(r) if np.isfinite(r) else 0.0


class RegressionMetrics:
    """MSE, RMSE, MAE, Pearson and Spearman, in the target's own units (standardisation undone)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        self.mean, self.std = mean, std
        self.preds: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.loss_sum, self.n = 0.0, 0

    def update(self, logits: torch.Tensor, batch: dict, loss: float) -> None:
        y = batch["labels"].reshape(-1)
        self.preds.append(logits.reshape(len(y), -1)[:, 0].float().cpu().numpy())
        self.targets.append(y.float().cpu().numpy())
        self.loss_sum += loss * len(y)
        self.n += len(y)

    def compute(self) -> dict:
        p = np.concatenate(self.preds).astype(np.float64) * self.std + self.mean
        y = np.concatenate(self.targets).astype(np.float64) * self.std + self.mean
        err = p - y
        mse = float(np.mean(err ** 2)) if len(y) else 0.0
        return {"loss": self.loss_sum / max(self.n, 1), "mse": mse, "rmse": math.sqrt(mse),
                "mae": float(np.mean(np.abs(err))) if len(y) else 0.0,
                "pearson": _corr("pearson", p, y), "spearman": _corr("spearman", p, y), "samples": int(self.n)}


# ---------------------------------------------------------------- multi-label

GRID = np.round(np.arange(0.02, 0.99, 0.01), 2)  # candidate decision thresholds


@dataclass
class Thresholds:
    """Multi-label decision thresholds: tuned on validation at every evaluation until frozen (`tuning` off)."""

    mode: str  # global | per_class | fixed
    values: list[float]
    tuning: bool


def _f1(tp, fp, fn) -> np.ndarray:
    return np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)


def _pick(scores: np.ndarray) -> float:
    """Best grid threshold; ties go to the one nearest 0.5 (least surprising)."""
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(GRID[best[np.argmin(np.abs(GRID[best] - 0.5))]])


def tune_thresholds(p: np.ndarray, y: np.ndarray, mode: str) -> list[float]:
    """Global: the grid value with the best micro-F1. Per class: each class's best F1 (classes with no
    positive example in this split keep the global value)."""
    counts = np.zeros((3, len(GRID), p.shape[1]))  # tp, fp, fn per grid value and class
    for g, t in enumerate(GRID):  # one rows × classes mask at a time (bounded memory)
        pred = p >= t
        counts[:, g] = (pred & y).sum(0), (pred & ~y).sum(0), (~pred & y).sum(0)
    tp, fp, fn = counts
    glob = _pick(_f1(tp.sum(1), fp.sum(1), fn.sum(1)))
    if mode == "global":
        return [glob] * p.shape[1]
    return [_pick(_f1(tp[:, c], fp[:, c], fn[:, c])) if y[:, c].any() else glob for c in range(p.shape[1])]


def multilabel_scores(p: np.ndarray, y: np.ndarray, thresholds) -> dict:
    pred = p >= np.asarray(thresholds)[None, :]
    tp, fp, fn = (pred & y).sum(0), (pred & ~y).sum(0), (~pred & y).sum(0)
    f1 = _f1(tp, fp, fn)
    present = y.sum(0) > 0  # macro-F1 over the classes present in this split
    return {"micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "micro_precision": float(tp.sum() / max(tp.sum() + fp.sum(), 1)),
            "micro_recall": float(tp.sum() / max(tp.sum() + fn.sum(), 1)),
            "subset_accuracy": float((pred == y).all(1).mean()) if len(y) else 0.0,
            "_f1": f1, "_tp": tp, "_fp": fp, "_fn": fn}


class MultiLabelMetrics:
    """Micro/macro F1 at the thresholds (tuned here while `thresholds.tuning`), per-label P/R/F1 and threshold."""

    def __init__(self, labels: list[str], thresholds: Thresholds):
        self.labels, self.thresholds = labels, thresholds
        self.probs: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.loss_sum, self.n = 0.0, 0

    def update(self, logits: torch.Tensor, batch: dict, loss: float) -> None:
        self.probs.append(logits.float().sigmoid().cpu().numpy())
        self.targets.append(batch["labels"].cpu().numpy() > 0.5)
        self.loss_sum += loss * len(logits)
        self.n += len(logits)

    def compute(self) -> dict:
        n_cls = len(self.labels)
        p = np.concatenate(self.probs) if self.probs else np.zeros((0, n_cls))
        y = np.concatenate(self.targets) if self.targets else np.zeros((0, n_cls), dtype=bool)
        if self.thresholds.tuning and len(y):
            self.thresholds.values = tune_thresholds(p, y, self.thresholds.mode)
        t = self.thresholds.values
        s = multilabel_scores(p, y, t)
        per_class = {name: {"precision": float(s["_tp"][i] / max(s["_tp"][i] + s["_fp"][i], 1)),
                            "recall": float(s["_tp"][i] / max(s["_tp"][i] + s["_fn"][i], 1)),
                            "f1": float(s["_f1"][i]), "support": int(y[:, i].sum()), "threshold": t[i]}
                     for i, name in enumerate(self.labels)}
        out = {"loss": self.loss_sum / max(self.n, 1), **{k: v for k, v in s.items() if not k.startswith("_")}}
        out["micro_f1_at_0.5"] = multilabel_scores(p, y, [0.5] * n_cls)["micro_f1"]
        if len(set(t)) == 1:
            out["threshold"] = t[0]
        return {**out, "per_class": per_class, "samples": int(self.n)}


# ---------------------------------------------------------------- token classification


class TagMetrics:
    """Collects (sentence, word, predicted tag, gold tag) for every scored word; seqeval at the end."""

    def __init__(self, labels: list[str]):
        self.labels = labels
        self.rows: list[np.ndarray] = []
        self.loss_sum, self.n_tokens, self.n_windows = 0.0, 0, 0

    def update(self, logits: torch.Tensor, batch: dict, loss: float) -> None:
        wids = batch["word_ids"]
        mask = wids != IGNORE
        sid = batch["sent_id"][:, None].expand_as(wids)
        cols = [sid[mask], wids[mask], logits.argmax(-1)[mask], batch["labels"][mask]]
        self.rows.append(torch.stack(cols, 1).cpu().numpy())
        n = int(mask.sum())
        self.loss_sum += loss * n
        self.n_tokens += n
        self.n_windows += len(wids)

    def sentences(self) -> tuple[list[list[str]], list[list[str]]]:
        rows = np.concatenate(self.rows) if self.rows else np.zeros((0, 4), dtype=np.int64)
        rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
        gold, pred = [], []
        for chunk in np.split(rows, np.flatnonzero(np.diff(rows[:, 0])) + 1) if len(rows) else []:
            pred.append([self.labels[i] for i in chunk[:, 2]])
            gold.append([self.labels[i] for i in chunk[:, 3]])
        return gold, pred

    def compute(self) -> dict:
        from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

        gold, pred = self.sentences()
        out = {"loss": self.loss_sum / max(self.n_tokens, 1)}
        if not gold:
            return {**out, "precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0, "per_type": {},
                    "sentences": 0, "samples": self.n_windows}
        kw = {"zero_division": 0}
        report = classification_report(gold, pred, output_dict=True, **kw)
        per_type = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                        "f1": float(v["f1-score"]), "support": int(v["support"])}
                    for k, v in report.items() if " avg" not in k}
        return {**out, "precision": float(precision_score(gold, pred, **kw)),
                "recall": float(recall_score(gold, pred, **kw)), "f1": float(f1_score(gold, pred, **kw)),
                "accuracy": float(accuracy_score(gold, pred)), "per_type": per_type,
                "sentences": len(gold), "samples": self.n_windows}


# ---------------------------------------------------------------- speech recognition


def normalize_transcript(text: str) -> str:
    """What WER / CER compare: lower-case, apostrophes dropped ("it's" → "its"), every other punctuation mark or
    symbol (Unicode categories P and S) turned into a space, runs of whitespace collapsed."""
    import unicodedata

    chars = []
    for ch in unicodedata.normalize("NFKC", text).lower():
        if ch in "'’":
            continue
        chars.append(" " if unicodedata.category(ch)[0] in "PS" else ch)
    return " ".join("".join(chars).split())


class TranscriptMetrics:
    """WER and CER (jiwer, over all utterances: errors / reference words or characters) of the decoded transcripts
    against the references, both through `normalize_transcript`; plus the teacher-forced loss and three examples."""

    SHOWN = 3

    def __init__(self, transcribe: Callable[[dict], list[str]], references: Callable[[dict], list[str]]):
        self.transcribe, self.references = transcribe, references
        self.hyps: list[str] = []
        self.refs: list[str] = []
        self.loss_sum, self.n = 0.0, 0

    def update(self, outputs, batch: dict, loss: float) -> None:
        refs = self.references(batch)
        self.hyps += self.transcribe(batch)
        self.refs += refs
        self.loss_sum += loss * len(refs)
        self.n += len(refs)

    def compute(self) -> dict:
        import jiwer

        out = {"loss": self.loss_sum / max(self.n, 1), "samples": self.n}
        if not self.refs:
            return {**out, "wer": 0.0, "cer": 0.0, "examples": []}
        refs = [normalize_transcript(t) for t in self.refs]
        hyps = [normalize_transcript(t) for t in self.hyps]
        words, chars = jiwer.process_words(refs, hyps), jiwer.process_characters(refs, hyps)
        shown = [{"reference": r, "transcript": h} for r, h in zip(self.refs[:self.SHOWN], self.hyps[:self.SHOWN])]
        return {**out, "wer": float(words.wer), "cer": float(chars.cer), "examples": shown}


# ---------------------------------------------------------------- generative fine-tuning (task sft)

GENERATION_METRICS = ("exact_match", "contains_answer", "chrf", "rouge_l")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"


def normalize_answer(text: str) -> str:
    """Lower case, whitespace collapsed, surrounding punctuation dropped ("Positive." == "positive")."""
    import re
    import string

    return re.sub(r"\s+", " ", text.lower()).strip().strip(string.punctuation + "。，！？：；、 ").strip()


class RougeTokens:
    """Tokens for ROUGE-L: words, and every CJK character on its own (rouge-score's default tokenizer keeps only
    [a-z0-9], which would score Chinese answers as empty)."""

    def tokenize(self, text: str) -> list[str]:
        import re

        return re.findall(rf"[{_CJK}]|[^\W_{_CJK}]+", text.lower())


def generation_scores(predictions: list[str], references: list[str]) -> dict:
    """exact_match and contains_answer (shares, after normalize_answer), chrF (sacrebleu, 0-100, character
    n-grams: fine for Chinese too) and ROUGE-L F1 (rouge-score, 0-1)."""
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics import CHRF

    pred = [normalize_answer(p) for p in predictions]
    ref = [normalize_answer(r) for r in references]
    scorer = RougeScorer(["rougeL"], tokenizer=RougeTokens())
    rouge = [scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(references, predictions)]
    return {"exact_match": float(np.mean([p == r for p, r in zip(pred, ref)])),
            "contains_answer": float(np.mean([r in p for p, r in zip(pred, ref)])),
            "chrf": float(CHRF().corpus_score(predictions, [references]).score),
            "rouge_l": float(np.mean(rouge))}


class LanguageModelMetrics:
    """Loss (mean over trained tokens, exactly: token-weighted across batches) and perplexity; with a `generate`
    function, the answers to the prompts the batches carry (`batch["generate"]`: (prompt_ids, reference) pairs)
    are scored by `generation_scores` in compute()."""

    def __init__(self, generate=None):
        self.generate = generate  # list of prompt token ids → list of answer texts; None: no generation metrics
        self.loss_sum, self.tokens, self.n = 0.0, 0, 0
        self.pending: list = []

    def update(self, outputs, batch: dict, loss: float) -> None:
        self.loss_sum += float(outputs.loss_sum)
        self.tokens += int(outputs.tokens)
        self.n += len(batch["input_ids"])
        self.pending += batch.get("generate", [])

    def compute(self) -> dict:
        loss = self.loss_sum / max(self.tokens, 1)
        out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": self.tokens, "samples": self.n}
        if self.generate is not None and self.pending:
            answers = self.generate([s.prompt_ids for s in self.pending])
            out.update(generation_scores(answers, [s.reference for s in self.pending]))
            out["generated"] = len(answers)
        return out
