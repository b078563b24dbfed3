"""Words → sub-word windows for token classification.

Each word's first sub-word carries its label; the other sub-words get -100 (ignored by the loss). A sentence
longer than the model's window is cut into overlapping windows at word boundaries. For evaluation and
prediction each word is scored in exactly one window: the one where it has the most context on both sides."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

IGNORE = -100
WORD_RE = re.compile(r"\w+|[^\w\s]")


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Raw text → words (runs of letters/digits, or single punctuation marks) and their character spans."""
    found = list(WORD_RE.finditer(text))
    return [m.group() for m in found], [m.span() for m in found]


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a single-sequence input starts and ends with ([CLS] / [SEP] for BERT, <s> / </s> for RoBERTa)."""
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    body = tokenizer("a", add_special_tokens=False)["input_ids"]
    for i in range(len(full) - len(body) + 1):
        if full[i:i + len(body)] == body:
            return full[:i], full[i + len(body):]
    return [], []


def word_pieces(tokenizer, sentences: list[list[str]]) -> tuple[list[list[list[int]]], int]:
    """Sub-word ids per word. A word the tokenizer drops entirely (e.g. a zero-width space) becomes the unknown
    token, so every word keeps a labelled position. Returns the pieces and how many words needed that."""
    out, n_empty = [], 0
    unk = tokenizer.unk_token_id
    for start in range(0, len(sentences), 1000):
        chunk = sentences[start:start + 1000]
        enc = tokenizer(chunk, is_split_into_words=True, add_special_tokens=False)
        for i, words in enumerate(chunk):
            pieces: list[list[int]] = [[] for _ in words]
            for tok_id, w in zip(enc["input_ids"][i], enc.word_ids(i)):
                if w is not None:
                    pieces[w].append(tok_id)
            for p in pieces:
                if not p:
                    p.append(unk if unk is not None else 0)
                    n_empty += 1
            out.append(pieces)
    return out, n_empty


def plan_windows(lengths: list[int], budget: int, overlap: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) of at most `budget` sub-words (a single longer word is cut to its first
    `budget` pieces, which keeps its labelled first piece). Consecutive windows share about `overlap`
    sub-words and always advance by at least one word, so every word is in some window."""
    windows: list[tuple[int, int]] = []
    start, n = 0, len(lengths)
    while start < n:
        end, used = start, 0
        while end < n and (end == start or used + lengths[end] <= budget):
            used += lengths[end]
            end += 1
        windows.append((start, end))
        if end >= n:
            break
        nxt, shared = end, 0  # back off for context, but keep room for the next new word
        while (nxt - 1 > start and shared + lengths[nxt - 1] <= overlap
               and shared + lengths[nxt - 1] + lengths[end] <= budget):
            nxt -= 1
            shared += lengths[nxt]
        start = nxt
    return windows


def assign_owners(lengths: list[int], windows: list[tuple[int, int]]) -> list[int]:
    """For each word, the window in which it has the most sub-words of context on its poorer side."""
    owner, best = [0] * len(lengths), [-1] * len(lengths)
    for k, (s, e) in enumerate(windows):
        left = 0
        total = sum(lengths[s:e])
        for w in range(s, e):
            right = total - left - lengths[w]
            score = min(left, right)
            if score > best[w]:  # ties go to the earlier window
                owner[w], best[w] = k, score
            left += lengths[w]
    return owner


@dataclass
class Windowed:
    """Per-window features (lists aligned with each other) and counts for the data report."""

    features: dict = field(default_factory=lambda: {"input_ids": [], "attention_mask": [], "word_ids": [],
                                                    "sent_id": []})
    lengths: list = field(default_factory=list)
    long_sentences: int = 0  # sentences split into more than one window
    empty_sentences: int = 0  # sentences with no words: nothing to label
    unscored_windows: int = 0  # eval windows owning no word (their words are scored in a neighbour)
    empty_words: int = 0  # words the tokenizer drops; fed as the unknown token


def build_windows(tokenizer, sentences: list[list[str]], tag_ids: list[list[int]] | None, max_length: int,
                  overlap: int | None, score_all: bool) -> Windowed:
    """`score_all` (training): every word in a window is labelled. Otherwise only the words the window owns,
    so each word is scored exactly once; windows owning nothing are dropped and counted."""
    head, tail = special_tokens(tokenizer)
    budget = max_length - len(head) - len(tail)
    if budget < 1:
        raise ValueError(f"data.max_length {max_length} leaves no room next to the model's "
                         f"{len(head) + len(tail)} special tokens")
    overlap = budget // 4 if overlap is None else min(overlap, budget - 1)
    pieces, n_empty = word_pieces(tokenizer, sentences)
    out = Windowed(empty_words=n_empty)
    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    if with_types:
        out.features["token_type_ids"] = []
    if tag_ids is not None:
        out.features["labels"] = []
    for sid, words in enumerate(pieces):
        if not words:
            out.empty_sentences += 1
            continue
        lengths = [len(p) for p in words]
        windows = plan_windows(lengths, budget, overlap)
        owner = assign_owners(lengths, windows)
        out.long_sentences += len(windows) > 1
        for k, (s, e) in enumerate(windows):
            ids, wids = list(head), [IGNORE] * len(head)
            for w in range(s, e):
                scored = score_all or owner[w] == k
                ids.extend(words[w])
                wids.extend([w if scored else IGNORE] + [IGNORE] * (len(words[w]) - 1))
            ids, wids = ids[:len(head) + budget], wids[:len(head) + budget]
            if all(w == IGNORE for w in wids):
                out.unscored_windows += 1
                continue
            ids, wids = ids + list(tail), wids + [IGNORE] * len(tail)
            f = out.features
            f["input_ids"].append(ids)
            f["attention_mask"].append([1] * len(ids))
            f["word_ids"].append(wids)
            f["sent_id"].append(sid)
            if with_types:
                f["token_type_ids"].append([0] * len(ids))
            if tag_ids is not None:
                f["labels"].append([IGNORE if w == IGNORE else tag_ids[sid][w] for w in wids])
            out.lengths.append(len(ids))
    return out
