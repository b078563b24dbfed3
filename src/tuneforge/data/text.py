"""Text → token ids once per dataset (cached in memory), dynamic padding per batch."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

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


FIELDS = ("input_ids", "attention_mask", "token_type_ids")


def _cache_path(tokenizer, texts, pairs, max_length) -> Path:
    h = hashlib.sha256(f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|{len(tokenizer)}|{max_length}".encode())
    if hasattr(tokenizer, "backend_tokenizer"):  # the full pipeline, minus the truncation/padding state
        spec = json.loads(tokenizer.backend_tokenizer.to_str())  # that calls with truncation=True change
        spec.pop("truncation", None)
        spec.pop("padding", None)
    else:
        spec = sorted(tokenizer.get_vocab().items())
    h.update(json.dumps(spec, sort_keys=True).encode())
    for t in texts:
        h.update(t.encode() + b"\0")
    for t in pairs or []:
        h.update(t.encode() + b"\0")
    root = Path(os.environ.get("TUNEFORGE_CACHE", Path.home() / ".cache" / "tuneforge"))
    return root / "tokens" / f"{h.hexdigest()[:32]}.npz"


# Below this many texts the disk cache is skipped: its key hashes the whole tokenizer (~45 ms for minilm-l6, more
# than tokenizing 1024 short texts), and every `predict` / served request would leave a cache file behind.
DISK_CACHE_MIN_TEXTS = 1024


def tokenize_texts(tokenizer, texts: list[str], pairs: Optional[list[str]], max_length: int) -> dict[str, list]:
    """Tokenized once per dataset: the result is cached on disk (flat int arrays, no pickle), keyed by a hash of
    the tokenizer, the texts and max_length, so a rerun or a second phase skips tokenization."""
    if len(texts) < DISK_CACHE_MIN_TEXTS:
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
        return {k: enc[k] for k in FIELDS if k in enc}
    path = _cache_path(tokenizer, texts, pairs, max_length)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("offsets",) + FIELDS if k in z}  # each z[k] reads the file again
            bounds = arrays.pop("offsets").tolist()
            return {k: [a[i:j].tolist() for i, j in zip(bounds, bounds[1:])] for k, a in arrays.items()}
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache entry: tokenize again
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    out = {k: enc[k] for k in FIELDS if k in enc}
    offsets = np.cumsum([0] + [len(x) for x in out["input_ids"]])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, offsets=offsets, **{k: np.fromiter((t for row in v for t in row), dtype=np.int32)
                                          for k, v in out.items()})
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home is no reason to fail
    return out


class PadCollator:
    """Pads token-id lists to the longest in the batch; per-example labels are stacked (token labels padded)."""

    def __init__(self, pad_id: int, label_dtype: torch.dtype = torch.long, pad_labels: bool = False,
                 extra_pad: Optional[dict[str, int]] = None, multiple: int = 1):
        self.pad = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}
        self.multiple = multiple  # widths rounded up to it: fewer distinct shapes
        if pad_labels:  # token-level labels: pad positions are ignored by the loss
            self.pad["labels"] = -100
        self.pad.update(extra_pad or {})  # other per-token features (e.g. word ids, padded as ignored)
        self.label_dtype = label_dtype

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            dtype = self.label_dtype if key == "labels" else torch.long
            if isinstance(values[0], (list, tuple)) and key in self.pad:
                width = max(len(v) for v in values)  # per key: the two sides of a siamese pair differ
                width = -(-width // self.multiple) * self.multiple
                t = torch.full((len(rows), width), self.pad[key], dtype=dtype)
                for i, v in enumerate(values):
                    t[i, :len(v)] = torch.as_tensor(v, dtype=dtype)
                out[key] = t
            else:
                out[key] = torch.as_tensor(values, dtype=dtype)
        return out
