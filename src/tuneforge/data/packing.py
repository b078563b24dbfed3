"""Packing several SFT examples into one row, and the collate functions for packed and unpacked batches.

Packing is best-fit decreasing (as TRL's default "bfd"): examples, longest first, each go into the open row with
the least room that still holds them, else a new row. Attention never crosses examples (see below), so which
examples share a row does not change the maths; BFD then simply wastes the least room, and the sampler still
shuffles rows every epoch. No example is split across rows (each was truncated to max_length already).

Attention isolation: packed batches carry `position_ids` that restart at 0 for every example and NO
`attention_mask`. transformers (5.x, `masking_utils.find_packed_sequence_indices`) then builds a block-diagonal
causal mask for eager and sdpa attention (and uses varlen kernels for flash attention). It does so only when the
forward runs WITHOUT a cache: the model must be called with `use_cache=False` (with the default use_cache=True,
attention silently crosses examples). `packing_isolates(model)` checks a model once, on two tiny examples.

Labels follow the transformers convention (unshifted; the model shifts them). The first label of every example is
-100 (set by the encoder), so the last token of one example is never trained to predict the next example."""
from __future__ import annotations

from bisect import bisect_left, insort
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100


def pack_bfd(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: groups of example indices whose lengths sum to at most `capacity`."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    open_rows: list[tuple[int, int]] = []  # (room left, row index), sorted: bisect finds the best fit
    for i in order:
        if lengths[i] > capacity:
            raise ValueError(f"example {i} has {lengths[i]} tokens, more than the row capacity {capacity}")
        k = bisect_left(open_rows, (lengths[i], -1))
        if k == len(open_rows):
            rows.append([i])
            room, row = capacity - lengths[i], len(rows) - 1
        else:
            room, row = open_rows.pop(k)
            rows[row].append(i)
            room -= lengths[i]
        if room > 0:
            insort(open_rows, (room, row))
    return rows


class SFTRows(Dataset):
    """Rows of token ids and labels (a packed row also has `position_ids` restarting at each example), plus what
    evaluation and the data report need: `encoded` (per kept example: prompt_ids for generation), `references`
    (its reference answer, None for plain text) and `stats`."""

    def __init__(self, rows: list[dict[str, list[int]]], encoded: Sequence = (), references: Sequence = (),
                 stats=None):
        self.rows = rows
        self.lengths = [len(r["input_ids"]) for r in rows]
        self.encoded, self.references, self.stats = list(encoded), list(references), stats

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]


def single_rows(examples: Sequence[tuple[list[int], list[int]]]) -> list[dict[str, list[int]]]:
    return [{"input_ids": ids, "labels": labels} for ids, labels in examples]


def packed_rows(examples: Sequence[tuple[list[int], list[int]]], capacity: int) -> list[dict[str, list[int]]]:
    """`examples` as (input_ids, labels) pairs, packed by best-fit decreasing into rows of at most `capacity`."""
    rows = []
    for group in pack_bfd([len(ids) for ids, _ in examples], capacity):
        row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for i in group:
            ids, labels = examples[i]
            row["input_ids"] += ids
            row["labels"] += labels
            row["position_ids"] += range(len(ids))
        rows.append(row)
    return rows


class SFTCollator:
    """Right-pads a batch of rows: input_ids with `pad_id`, labels with -100.

    Unpacked rows → input_ids, attention_mask, position_ids (0..n-1), labels.
    Packed rows → input_ids, position_ids (restarting per example; padding is one more run from 0), labels, and no
    attention_mask, which is what makes transformers keep attention inside each example."""

    def __init__(self, pad_id: int, multiple: int = 1):
        self.pad_id, self.multiple = pad_id, multiple

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        width = -(-width // self.multiple) * self.multiple
        packed = "position_ids" in rows[0]
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.arange(width).repeat(len(rows), 1)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.as_tensor(r["input_ids"])
            labels[i, :n] = torch.as_tensor(r["labels"])
            mask[i, :n] = 1
            if packed:
                positions[i, :n] = torch.as_tensor(r["position_ids"])
                positions[i, n:] = torch.arange(width - n)
        out = {"input_ids": ids, "labels": labels, "position_ids": positions}
        if not packed:
            out["attention_mask"] = mask
        return out


def packing_efficiency(row_lengths: Sequence[int], capacity: int) -> float:
    """Real tokens / row capacity (1.0 = no room wasted)."""
    return sum(row_lengths) / (capacity * len(row_lengths)) if row_lengths else 0.0


@torch.no_grad()
def packing_isolates(model, vocab_size: Optional[int] = None, atol: Optional[float] = None) -> bool:
    """Whether `model` keeps attention inside each packed example: two short random examples packed into one row
    (position_ids, no attention_mask, use_cache=False, as the collator and the task run them) must give the second
    example the logits it gets alone. Runs in eval mode (no dropout) and restores the training flag."""
    vocab = vocab_size or model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, vocab, (1, 6), generator=g), torch.randint(0, vocab, (1, 5), generator=g)
    device = next(model.parameters()).device
    packed = torch.cat([a, b], 1).to(device)
    positions = torch.cat([torch.arange(6), torch.arange(5)]).unsqueeze(0).to(device)
    was_training = model.training
    model.eval()
    try:
        together = model(input_ids=packed, position_ids=positions, use_cache=False).logits[0, 6:].float()
        alone = model(input_ids=b.to(device), use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    tol = atol if atol is not None else (1e-4 if next(model.parameters()).dtype == torch.float32 else 5e-2)
    return bool(torch.allclose(together, alone, atol=tol, rtol=tol))
