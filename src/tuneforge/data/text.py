"""Text → token ids once per dataset (cached in memory), dynamic padding per batch."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset


class TokenizedDataset(Dataset):
    """Pre-tokenized examples; `features` maps name → per-example list (input_ids, labels, ...)."""

    def __init__(self, features: dict[str, list], lengths: Sequence[int]):
        self.features = features
        self.lengths = list(lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.features.items()}


def tokenize_texts(tokenizer, texts: list[str], pairs: Optional[list[str]], max_length: int) -> dict[str, list]:
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}


class PadCollator:
    """Pads token-id lists to the longest in the batch; per-example labels are stacked (token labels padded)."""

    def __init__(self, pad_id: int, label_dtype: torch.dtype = torch.long, pad_labels: bool = False,
                 extra_pad: Optional[dict[str, int]] = None):
        self.pad = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}
        if pad_labels:  # token-level labels: pad positions are ignored by the loss
            self.pad["labels"] = -100
        self.pad.update(extra_pad or {})  # other per-token features (e.g. word ids, padded as ignored)
        self.label_dtype = label_dtype

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        width = max(len(r["input_ids"]) for r in rows)
        for key in rows[0]:
            values = [r[key] for r in rows]
            dtype = self.label_dtype if key == "labels" else torch.long
            if isinstance(values[0], (list, tuple)) and key in self.pad:
                t = torch.full((len(rows), width), self.pad[key], dtype=dtype)
                for i, v in enumerate(values):
                    t[i, :len(v)] = torch.as_tensor(v, dtype=dtype)
                out[key] = t
            else:
                out[key] = torch.as_tensor(values, dtype=dtype)
        return out
