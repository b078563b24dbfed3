"""Token classification (NER): one tag per word, scored at entity level with seqeval."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Optional

import numpy as np
import torch

from tuneforge.data import conll  # noqa: F401  (registers the "conll" file reader)
from tuneforge.data.examples import Examples
from tuneforge.data.tagging import IGNORE, build_windows, split_words
from tuneforge.data.text import PadCollator, TokenizedDataset
from tuneforge.errors import ConfigError, DataError
from tuneforge.metrics import TagMetrics
from tuneforge.models.base import HeadSpec, ModelBundle
from tuneforge.tasks.base import TASKS, Built, Task


def _tag_order(tag: str) -> tuple:
    """O first, then by entity type, B- before I- (a stable, readable label order)."""
    if tag == "O":
        return (0, "", "")
    prefix, _, kind = tag.partition("-")
    return (1, kind or prefix, prefix)


def _lines(tags) -> list:
    return getattr(tags, "lines", [None] * len(tags))


def entities(tags: list[str], probs: Optional[list[float]] = None) -> list[tuple[str, int, int, float]]:
    """Word-level spans (type, first word, last word inclusive, mean probability), decoded as seqeval does."""
    from seqeval.metrics.sequence_labeling import get_entities

    out = []
    for kind, s, e in get_entities(list(tags)):
        score = float(np.mean(probs[s:e + 1])) if probs is not None else 1.0
        out.append((kind, s, e, score))
    return out


@TASKS.register("token_classification")
class TokenClassification(Task):
    name = "token_classification"
    allowed_losses = ("cross_entropy", "focal")
    default_metric = "f1"
    metric_names = ("loss", "precision", "recall", "f1", "accuracy")
    file_reader = "conll"

    def __init__(self, cfg, log=print):
        super().__init__(cfg, log)
        self.tokens_per_batch: Optional[float] = None  # train set's mean labelled tokens per batch (set by build)

    def fit_labels(self, train: Examples, val: Examples) -> None:
        self.labels = sorted({t for tags in train.labels for t in tags}, key=_tag_order)
        if len(self.labels) < 2:
            raise DataError(f"train has a single tag ({', '.join(self.labels) or 'none'}); token classification "
                            "needs at least 2 (check that the tag is the last column)")
        self.encode_labels(val)

    def encode_labels(self, ex: Examples) -> Optional[list[list[int]]]:
        """Tags → ids; a tag outside the train tag set is an error at its own line."""
        if ex.labels is None:
            return None
        index = {t: i for i, t in enumerate(self.labels)}
        out = []
        for tags, where in zip(ex.labels, ex.where):
            for tag, line in zip(tags, _lines(tags)):
                if tag not in index:
                    at = f"{where.rsplit(' line ', 1)[0]} line {line}" if line else where
                    raise DataError(f"{at}: tag '{tag}' is not in the train tag set ({', '.join(self.labels)}); "
                                    "fix the tag or add training sentences that use it")
            out.append([index[t] for t in tags])
        return out

    def gold_labels(self, ex: Examples) -> list:
        return [list(tags) for tags in ex.labels]

    def head_spec(self) -> HeadSpec:
        return HeadSpec(len(self.labels), list(self.labels), "token", None)

    @staticmethod
    def words(x) -> list[str]:
        return split_words(x)[0] if isinstance(x, str) else list(x)

    def build(self, ex: Examples, bundle: ModelBundle, split: str) -> Built:
        if bundle.modality != "text":
            raise ConfigError("task.type token_classification needs a text model (e.g. model.name: minilm-l6)")
        tok = bundle.tokenizer
        train = split == "train"
        try:
            w = build_windows(tok, [self.words(x) for x in ex.inputs], self.encode_labels(ex),
                              self.max_length(bundle), self.cfg.data.window_overlap, score_all=train)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if train:  # word ids only serve scoring; training labels every word of every window
            del w.features["word_ids"], w.features["sent_id"]
            labelled = sum(sum(t != IGNORE for t in labels) for labels in w.features["labels"])
            self.tokens_per_batch = labelled / max(len(w.lengths), 1) * self.cfg.train.batch_size
            if self.cfg.task.token_loss_norm == "dataset":
                self.log(f"loss: summed over labelled tokens / {self.tokens_per_batch:.1f} (train mean per batch; "
                         "task.token_loss_norm: dataset)")
        self._report(ex, w, split)
        collate = PadCollator(tok.pad_token_id, pad_labels=True, extra_pad={"word_ids": IGNORE},
                              multiple=self.cfg.data.pad_to_multiple_of, max_width=self.max_length(bundle))
        return Built(TokenizedDataset(w.features, w.lengths), collate, w.lengths, skipped=w.empty_sentences)

    def _report(self, ex: Examples, w, split: str) -> None:
        windows = self.report.setdefault("windows", {})
        counts = {"sentences": len(ex), "windows": len(w.lengths), "split_sentences": w.long_sentences,
                  "empty_sentences": w.empty_sentences, "unscored_windows": w.unscored_windows,
                  "unknown_token_words": w.empty_words}
        windows[split] = counts
        if ex.labels is None:
            return
        notes = [f"{w.long_sentences} longer than data.max_length split into overlapping windows"]
        if w.empty_sentences:
            notes.append(f"{w.empty_sentences} empty sentence(s) skipped: no word to label")
        if w.unscored_windows:
            notes.append(f"{w.unscored_windows} window(s) dropped: all their words are scored in a neighbour")
        if w.empty_words:
            notes.append(f"{w.empty_words} word(s) with no sub-word token fed as the unknown token")
        source = ex.where[0].rsplit(" line ", 1)[0] if ex.where else split
        self.log(f"data ({source}): {len(ex)} sentences -> {len(w.lengths)} windows; {'; '.join(notes)}")

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        if not bool((batch["labels"] != IGNORE).any()):
            return logits.sum() * 0.0  # no labelled token in this batch: zero (with a graph), not NaN
        return super().loss(logits, batch)

    def train_loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """Length-grouped batches of short sentences hold few tokens; a per-batch mean would weigh each of their
        tokens more than a token in a batch of long ones. Scaling the mean by (tokens here / train mean per batch)
        gives every token one weight, the objective random batches have in expectation."""
        loss = self.loss(logits, batch)
        if self.cfg.task.token_loss_norm == "batch" or not self.tokens_per_batch:
            return loss
        return loss * ((batch["labels"] != IGNORE).sum() / self.tokens_per_batch)

    def new_metrics(self, bundle: ModelBundle):
        return TagMetrics(self.labels)

    def decode_batches(self, ex: Examples, batches: Iterable[tuple[torch.Tensor, dict]], order: list[int],
                       top_k: Optional[int]) -> list[dict]:
        scored: dict[int, dict[int, tuple[int, float]]] = defaultdict(dict)
        for logits, batch in batches:
            probs, ids = logits.softmax(-1).max(-1)
            mask = batch["word_ids"] != IGNORE
            sid = batch["sent_id"][:, None].expand_as(mask)
            for s, w, i, p in zip(sid[mask].tolist(), batch["word_ids"][mask].tolist(), ids[mask].tolist(),
                                  probs[mask].tolist()):
                scored[s][w] = (i, p)
        return [self._decode_one(x, scored.get(i, {})) for i, x in enumerate(ex.inputs)]

    def _decode_one(self, x, scored: dict[int, tuple[int, float]]) -> dict:
        words, spans = (split_words(x) if isinstance(x, str) else (list(x), None))
        tags = [self.labels[scored[w][0]] if w in scored else "O" for w in range(len(words))]
        probs = [scored[w][1] if w in scored else 1.0 for w in range(len(words))]
        found = []
        for kind, s, e, score in entities(tags, probs):
            ent = {"type": kind, "text": " ".join(words[s:e + 1]), "word_start": s, "word_end": e + 1,
                   "score": round(score, 6)}
            if spans is not None:  # raw text: character offsets into it (end exclusive)
                ent.update(text=x[spans[s][0]:spans[e][1]], start=spans[s][0], end=spans[e][1])
            found.append(ent)
        return {"entities": found, "words": words, "tags": tags}
