"""SFT tokenization with loss masking: conversations (or plain texts) → input_ids + labels, the data counts, and
`build_sft_inputs` → `Built` for the training loop.

Masking (task.train_on: completion): labels are -100 except the tokens of every assistant turn, including its
end-of-turn token (e.g. <|im_end|>) so the model learns to stop. Whitespace the template writes after that token
(ChatML's "\\n") is not trained: generation stops at the end-of-turn token, so it is never produced.

How the assistant spans are found (any template, no `{% generation %}` markers needed): the conversation is
rendered once; for each assistant turn i, the render of messages[:i] with the generation prompt and the render of
messages[:i+1] must be text prefixes of the full render, and the characters between them are the turn. The full
text is tokenized once with offsets (exactly what `apply_chat_template(tokenize=True)` does), and a token is
trained when it overlaps a turn (transformers' rule for `return_assistant_tokens_mask`). A template that renders a
prefix differently (e.g. one that drops earlier reasoning) falls back to its `{% generation %}` markers when it
has them; otherwise the row is an error naming the fix (a named template, data.chat_template).

train_on: all trains every token. The first label of every example is always -100: no earlier token predicts it
(so the trainable-token count is exactly the number of loss terms, also in packed rows).

Truncation keeps the start (max_length tokens). A row left with no trainable token (its answer starts after
max_length) is skipped and counted, never trained at loss 0. Plain texts (continued pre-training) get the eos
appended and are cut into max_length chunks instead of being truncated.

Results are cached on disk (TUNEFORGE_CACHE/tokens, flat int arrays, no pickle), keyed by the tokenizer, the
template, max_length, train_on and the rows."""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tuneforge.data.chat_templates import end_of_turn_strings, template_for
from tuneforge.data.examples import Built, Examples
from tuneforge.data.packing import IGNORE_INDEX, SFTCollator, SFTRows, packed_rows, packing_efficiency, single_rows
from tuneforge.errors import DataError

GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
TRUNCATED_AWAY = "answer starts after max_length"
NO_ANSWER_TOKEN = "the template renders no assistant token"
SHORT_CHUNK = "text chunk shorter than 2 tokens"


class BadConversation(ValueError):
    """The template cannot be masked for this conversation (message names the fix)."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_ids: Optional[list[int]] = None  # up to and including the generation prompt of the last assistant turn
    truncated: bool = False
    source: int = 0  # index of the example it came from


# ---------------------------------------------------------------- assistant spans


def render(tokenizer, messages, template: Optional[str], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def _prefix_end(full: str, prefix: str) -> int:
    if not full.startswith(prefix):
        raise BadConversation("the chat template renders a conversation's beginning differently from the whole "
                              "conversation, so the assistant turns cannot be located")
    return len(prefix)


def _trim_after_end_token(full: str, start: int, end: int, end_tokens: tuple[str, ...]) -> int:
    """End of the trained span: after the turn's end-of-turn token, without the whitespace that follows it."""
    turn = full[start:end].rstrip()
    return start + len(turn) if turn.endswith(end_tokens) else end


def assistant_spans(tokenizer, messages, template: Optional[str]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the character span of every assistant turn (content + end-of-turn token)."""
    full = render(tokenizer, messages, template)
    end_tokens = end_of_turn_strings(tokenizer)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = _prefix_end(full, render(tokenizer, messages[:i], template, generation_prompt=True))
        end = _prefix_end(full, render(tokenizer, messages[:i + 1], template))
        spans.append((start, _trim_after_end_token(full, start, end, end_tokens)))
    return full, spans


def _overlap_mask(offsets, spans) -> list[bool]:
    """Per token: does it overlap an assistant span (spans and offsets are both in order)."""
    mask, k = [], 0
    for start, end in offsets:
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        mask.append(k < len(spans) and end > spans[k][0])
    return mask


def _tokens_with_mask(tokenizer, text: str, spans) -> tuple[list[int], list[bool]]:
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # a tokenizer without offsets: token boundaries from the tokenized prefixes
        return _tokens_with_mask_by_prefix(tokenizer, text, spans)
    return list(enc["input_ids"]), _overlap_mask(enc["offset_mapping"], spans)


def _tokens_with_mask_by_prefix(tokenizer, text: str, spans) -> tuple[list[int], list[bool]]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    mask = [False] * len(ids)
    for start, end in spans:
        a, b = (tokenizer(text[:pos], add_special_tokens=False)["input_ids"] for pos in (start, end))
        if ids[:len(a)] != a or ids[:len(b)] != b:
            raise BadConversation("an assistant turn does not start on a token boundary")
        mask[len(a):len(b)] = [True] * (len(b) - len(a))
    return ids, mask


def _marker_mask(tokenizer, messages, template: str) -> tuple[list[int], list[bool]]:
    out = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    return list(out["input_ids"]), [bool(x) for x in out["assistant_masks"]]


def assistant_mask(tokenizer, messages, template: Optional[str]) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and, per token, whether it belongs to an assistant turn."""
    try:
        text, spans = assistant_spans(tokenizer, messages, template)
    except BadConversation:
        jinja = template or tokenizer.get_chat_template()
        if not GENERATION_TAG.search(jinja):
            raise BadConversation("the chat template renders a conversation's beginning differently from the "
                                  "whole conversation and has no {% generation %} markers; set data.chat_template "
                                  "(e.g. chatml) or use a template that marks assistant turns") from None
        return _marker_mask(tokenizer, messages, jinja)
    return _tokens_with_mask(tokenizer, text, spans)


# ---------------------------------------------------------------- examples → ids + labels


def _last_turn_start(mask: list[bool]) -> int:
    """Index of the first token of the last assistant turn (the prompt for generation ends before it)."""
    k = len(mask)
    while k > 0 and not mask[k - 1]:
        k -= 1
    while k > 0 and mask[k - 1]:
        k -= 1
    return k


def encode_chat(tokenizer, conversation, max_length: int, train_on: str, template: Optional[str]) -> Encoded:
    ids, mask = assistant_mask(tokenizer, conversation, template)
    labels = list(ids) if train_on == "all" else [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    labels[0] = IGNORE_INDEX  # nothing predicts the first token
    prompt = ids[:_last_turn_start(mask)]
    return Encoded(ids[:max_length], labels[:max_length], prompt, len(ids) > max_length)


def encode_conversation(tokenizer, conversation, max_length: int, train_on: str = "completion",
                        template: Optional[str] = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one conversation; labels are -100 outside the trained tokens."""
    enc = encode_chat(tokenizer, conversation, max_length, train_on, template)
    return enc.input_ids, enc.labels


def encode_text(tokenizer, text: str, max_length: int) -> list[Encoded]:
    """A plain text (continued pre-training): eos appended, cut into max_length chunks, every token trained."""
    ids = list(tokenizer(text)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    chunks = []
    for start in range(0, len(ids), max_length):
        piece = ids[start:start + max_length]
        chunks.append(Encoded(piece, [IGNORE_INDEX] + piece[1:], None, False))
    return chunks


def _encode_one(tokenizer, item, i: int, max_length: int, train_on: str, template) -> tuple[list[Encoded], list]:
    """Encoded sequences of example i, and (i, reason) for each one skipped."""
    found = encode_text(tokenizer, item, max_length) if isinstance(item, str) else [
        encode_chat(tokenizer, item, max_length, train_on, template)]
    kept, skips = [], []
    for enc in found:
        enc.source = i
        if all(x == IGNORE_INDEX for x in enc.labels):
            skips.append((i, SHORT_CHUNK if isinstance(item, str) else
                          TRUNCATED_AWAY if enc.truncated else NO_ANSWER_TOKEN))
        else:
            kept.append(enc)
    return kept, skips


def encode_all(ex: Examples, tokenizer, template: Optional[str], max_length: int, train_on: str,
               on_bad_sample: str = "error") -> tuple[list[Encoded], list[tuple[int, str]]]:
    kept, skips = [], []
    for i, item in enumerate(ex.inputs):
        try:
            k, s = _encode_one(tokenizer, item, i, max_length, train_on, template)
        except BadConversation as e:
            if on_bad_sample != "skip":
                raise DataError(f"{ex.where[i]}: {e} (or set data.on_bad_sample: skip)") from None
            k, s = [], [(i, str(e))]
        kept += k
        skips += s
    return kept, skips


# ---------------------------------------------------------------- disk cache


def _cache_path(tokenizer, template, max_length: int, train_on: str, on_bad_sample: str, inputs) -> Path:
    h = hashlib.sha256(f"sft1|{type(tokenizer).__name__}|{tokenizer.name_or_path}|{len(tokenizer)}|{max_length}|"
                       f"{train_on}|{on_bad_sample}|{template}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else sorted(tokenizer.get_vocab().items())
    if isinstance(spec, dict):  # the pipeline minus truncation/padding state, which calls may change
        spec.pop("truncation", None)
        spec.pop("padding", None)
    h.update(json.dumps([spec, tokenizer.special_tokens_map], sort_keys=True, default=str).encode())
    h.update(json.dumps(inputs, ensure_ascii=False).encode())
    root = Path(os.environ.get("TUNEFORGE_CACHE") or Path.home() / ".cache" / "tuneforge")
    return root / "tokens" / f"sft-{h.hexdigest()[:32]}.npz"


def _flat(lists) -> tuple[np.ndarray, np.ndarray]:
    return (np.fromiter((t for x in lists for t in x), dtype=np.int64),
            np.cumsum([0] + [len(x) for x in lists]))


def _save(path: Path, kept: list[Encoded], skips) -> None:
    ids, offsets = _flat([e.input_ids for e in kept])
    labels, _ = _flat([e.labels for e in kept])
    prompts, prompt_offsets = _flat([e.prompt_ids or [] for e in kept])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, ids=ids, labels=labels, offsets=offsets, prompts=prompts, prompt_offsets=prompt_offsets,
                 has_prompt=np.array([e.prompt_ids is not None for e in kept]),
                 truncated=np.array([e.truncated for e in kept]), source=np.array([e.source for e in kept]),
                 skip_source=np.array([i for i, _ in skips], dtype=np.int64),
                 skip_reason=np.array([r for _, r in skips], dtype=str))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home is no reason to fail


def _load(path: Path) -> Optional[tuple[list[Encoded], list]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        return None
    o, p = a["offsets"].tolist(), a["prompt_offsets"].tolist()
    ids, labels, prompts = a["ids"].tolist(), a["labels"].tolist(), a["prompts"].tolist()
    kept = [Encoded(ids[o[k]:o[k + 1]], labels[o[k]:o[k + 1]],
                    prompts[p[k]:p[k + 1]] if a["has_prompt"][k] else None, bool(a["truncated"][k]),
                    int(a["source"][k])) for k in range(len(o) - 1)]
    return kept, list(zip(a["skip_source"].tolist(), a["skip_reason"].tolist()))


def encode_examples(ex: Examples, tokenizer, template: Optional[str], max_length: int, train_on: str,
                    on_bad_sample: str = "error", cache: bool = True) -> tuple[list[Encoded], list[tuple[int, str]]]:
    """`encode_all`, cached on disk."""
    path = _cache_path(tokenizer, template, max_length, train_on, on_bad_sample, ex.inputs) if cache else None
    loaded = _load(path) if path is not None and path.is_file() else None
    if loaded is not None:
        return loaded
    kept, skips = encode_all(ex, tokenizer, template, max_length, train_on, on_bad_sample)
    if path is not None:
        _save(path, kept, skips)
    return kept, skips


# ---------------------------------------------------------------- counts and Built


@dataclass
class SFTStats:
    """Counts for the data report (summary.json): rows in, sequences kept, skips and why, tokens."""
    rows: int
    sequences: int
    skipped: dict[str, int]
    truncated: int
    tokens: int
    trainable_tokens: int
    length_p50: int
    length_p95: int
    length_max: int
    packed_rows: Optional[int] = None
    packing_efficiency: Optional[float] = None
    first_skipped: dict[str, str] = field(default_factory=dict)  # reason → the first row skipped for it
    # rows whose text contains a special token (e.g. "<|im_end|>"): it is encoded as the control token itself
    control_text_rows: int = 0
    first_control_text: Optional[str] = None

    def report(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None and not k.startswith("first_")}

    def lines(self, split: str, max_length: int) -> list[str]:
        out = [f"data: {split}: {self.rows} rows → {self.sequences} sequences, {self.tokens} tokens "
               f"({self.trainable_tokens} trained), length p50/p95/max {self.length_p50}/{self.length_p95}/"
               f"{self.length_max}, {self.truncated} truncated at max_length={max_length}"]
        for reason, n in self.skipped.items():
            hint = "; raise data.max_length" if reason == TRUNCATED_AWAY else ""
            out.append(f"data: {split}: skipped {n} row(s): {reason} (first: {self.first_skipped[reason]}){hint}")
        if self.control_text_rows:
            out.append(f"data: {split}: warning: {self.control_text_rows} row(s) contain special-token text (e.g. "
                       f"an end-of-turn token) that is encoded as the control token and can end a turn early "
                       f"(first: {self.first_control_text}); remove it from the data")
        if self.packed_rows is not None:
            out.append(f"data: {split}: packed into {self.packed_rows} rows of {max_length} tokens, "
                       f"packing efficiency {self.packing_efficiency:.3f} (real tokens / row capacity)")
        return out


def control_text_rows(ex: Examples, tokenizer) -> list[int]:
    """Indices of examples whose text contains a special token's text (e.g. a literal "<|im_end|>")."""
    specials = end_of_turn_strings(tokenizer)

    def texts(item):
        return [item] if isinstance(item, str) else [m["content"] for m in item]
    return [i for i, item in enumerate(ex.inputs) if any(s in t for t in texts(item) for s in specials)]


def sft_stats(ex: Examples, kept: list[Encoded], skips: list[tuple[int, str]],
              packed_lengths: Optional[list[int]] = None, capacity: int = 0,
              control: Sequence[int] = ()) -> SFTStats:
    lengths = np.array([len(e.input_ids) for e in kept] or [0])
    reasons = Counter(r for _, r in skips)
    if ex.skipped:
        reasons["bad row (data.on_bad_sample: skip)"] = len(ex.skipped)
    first = {r: ex.where[i] for i, r in reversed(skips)}
    if ex.skipped:
        first["bad row (data.on_bad_sample: skip)"] = ex.skipped[0].split(": ")[0]
    return SFTStats(len(ex), len(kept), dict(reasons), sum(e.truncated for e in kept),
                    int(lengths.sum()), sum(sum(x != IGNORE_INDEX for x in e.labels) for e in kept),
                    int(np.percentile(lengths, 50)), int(np.percentile(lengths, 95)), int(lengths.max()),
                    None if packed_lengths is None else len(packed_lengths),
                    None if packed_lengths is None else round(packing_efficiency(packed_lengths, capacity), 4),
                    first, len(control), ex.where[control[0]] if control else None)


def pad_id(tokenizer) -> int:
    """Padding id: the pad token, else eos (padded positions are masked and carry label -100 either way)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    return 0


def build_sft_inputs(ex: Examples, tokenizer, cfg, train: bool, log=print):
    """Examples → `Built` (dataset, collate, lengths, skipped). Packs train rows when data.packing is on
    (evaluation keeps one example per row). The dataset (SFTRows) also carries, per kept sequence, `encoded`
    (Encoded: prompt_ids for generation) and `references` (the reference answer, or None for plain text), and
    `stats` (SFTStats) for the data report."""
    d = cfg.data
    template = template_for(tokenizer, d.chat_template) if any(not isinstance(x, str) for x in ex.inputs) else None
    kept, skips = encode_examples(ex, tokenizer, template, d.max_length, cfg.task.train_on, d.on_bad_sample)
    if not kept:
        raise DataError(f"no {'train' if train else 'validation'} example has a token to train on after truncation "
                        f"to data.max_length={d.max_length}; raise data.max_length")
    pairs = [(e.input_ids, e.labels) for e in kept]
    packing = train and d.packing
    rows = packed_rows(pairs, d.max_length) if packing else single_rows(pairs)
    stats = sft_stats(ex, kept, skips, [len(r["input_ids"]) for r in rows] if packing else None, d.max_length,
                      control_text_rows(ex, tokenizer))
    references = [None if ex.labels is None else ex.labels[e.source] for e in kept]
    dataset = SFTRows(rows, kept, references, stats)
    for line in stats.lines("train" if train else "val", d.max_length):
        log(line)
    return Built(dataset, SFTCollator(pad_id(tokenizer), d.pad_to_multiple_of), dataset.lengths,
                 skipped=len(ex.skipped) + len(skips))
