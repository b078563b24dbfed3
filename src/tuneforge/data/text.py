"""Text → token ids once per dataset (cached in memory), dynamic padding per batch."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import torch
from torch.utils.data import Dataset

from tuneforge.utils import atomic_write, cache_dir


class TokenizedDataset(Dataset):
    """Pre-tokenized examples; `features` maps name → per-example list (input_ids, labels, ...)."""

    def __init__(self, features: dict[str, list], lengths: Sequence[int]):
        self.features = features
        self.lengths = list(lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def labels(self) -> Optional[list]:
        return self.features.get("labels")

    def content_digest(self) -> str:
        """A hash of exactly what the model is fed (every feature but the labels), row by row."""
        h = hashlib.sha256(f"rows={len(self)}".encode())
        for key in sorted(k for k in self.features if k != "labels"):
            h.update(key.encode())
            for row in self.features[key]:
                a = np.asarray(row, dtype=np.int64)
                h.update(len(a).to_bytes(8, "little") + a.tobytes())
        return h.hexdigest()

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.features.items()}


FIELDS = ("input_ids", "attention_mask", "token_type_ids")


def _tokenizer_spec(tokenizer) -> str:
    if hasattr(tokenizer, "backend_tokenizer"):  # the full pipeline, minus the truncation/padding state
        spec = json.loads(tokenizer.backend_tokenizer.to_str())  # that calls with truncation=True change
        spec.pop("truncation", None)
        spec.pop("padding", None)
    else:
        spec = sorted(tokenizer.get_vocab().items())
    return json.dumps(spec, sort_keys=True)


def _strings_digest(h, strings: list[str]) -> None:
    """Each string length-prefixed: no two lists of strings feed the hash the same bytes."""
    for t in strings:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little") + b)


def _cache_path(tokenizer, texts, pairs, max_length) -> Path:
    """A structured record of exactly what is tokenized: single texts and pairs never share a key."""
    record = {"tokenizer": type(tokenizer).__name__, "name": tokenizer.name_or_path, "size": len(tokenizer),
              "max_length": max_length, "rows": len(texts), "pairs": pairs is not None}
    h = hashlib.sha256(json.dumps(record, sort_keys=True).encode())
    h.update(_tokenizer_spec(tokenizer).encode())
    _strings_digest(h, texts)
    if pairs is not None:
        _strings_digest(h, pairs)
    return cache_dir("tokens") / f"{h.hexdigest()[:32]}.npz"


def _load_tokens(path: Path, rows: int, log) -> Optional[dict[str, list]]:
    """A cached entry, or None when there is none; a corrupt or torn one is deleted (and recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("offsets",) + FIELDS if k in z}  # each z[k] reads the file again
        bounds = arrays.pop("offsets").tolist()
        if len(bounds) != rows + 1 or "input_ids" not in arrays:
            raise ValueError(f"{len(bounds) - 1} rows, expected {rows}")
        return {k: [a[i:j].tolist() for i, j in zip(bounds, bounds[1:])] for k, a in arrays.items()}
    except Exception as e:  # noqa: BLE001  (any unreadable entry: EOFError, BadZipFile, ...)
        log(f"token cache: entry {path.name} is unreadable ({type(e).__name__}); deleted, tokenizing again")
        path.unlink(missing_ok=True)
        return None


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


# Below this many texts the disk cache is skipped: its key hashes the whole tokenizer (~45 ms for minilm-l6, more
# than tokenizing 1024 short texts), and every `predict` / served request would leave a cache file behind.
DISK_CACHE_MIN_TEXTS = 1024


def _store_tokens(path: Path, out: dict[str, list]) -> None:
    offsets = np.cumsum([0] + [len(x) for x in out["input_ids"]])
    flat = {k: np.fromiter((t for row in v for t in row), dtype=np.int32) for k, v in out.items()}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, offsets=offsets, **flat)

    try:
        atomic_write(path, write)
    except OSError:
        pass  # a read-only or full cache is no reason to fail


def tokenize_texts(tokenizer, texts: list[str], pairs: Optional[list[str]], max_length: int,
                   log=_stderr) -> dict[str, list]:
    """Tokenized once per dataset: the result is cached on disk (flat int arrays, no pickle), keyed by a hash of
    the tokenizer, the texts and max_length, so a rerun or a second phase skips tokenization."""
    path = _cache_path(tokenizer, texts, pairs, max_length) if len(texts) >= DISK_CACHE_MIN_TEXTS else None
    cached = _load_tokens(path, len(texts), log) if path is not None else None
    if cached is not None:
        return cached
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    out = {k: enc[k] for k in FIELDS if k in enc}
    if path is not None:
        _store_tokens(path, out)
    return out


class PadCollator:
    """Pads token-id lists to the longest in the batch; per-example labels are stacked (token labels padded)."""

    def __init__(self, pad_id: int, label_dtype: torch.dtype = torch.long, pad_labels: bool = False,
                 extra_pad: Optional[dict[str, int]] = None, multiple: int = 1, max_width: Optional[int] = None):
        self.pad = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}
        self.multiple = multiple  # widths rounded up to it: fewer distinct shapes
        self.max_width = max_width  # ... but never past what the model takes
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
                longest = max(len(v) for v in values)  # per key: the two sides of a siamese pair differ
                width = -(-longest // self.multiple) * self.multiple
                if self.max_width is not None:
                    width = max(longest, min(width, self.max_width))
                t = torch.full((len(rows), width), self.pad[key], dtype=dtype)
                for i, v in enumerate(values):
                    t[i, :len(v)] = torch.as_tensor(v, dtype=dtype)
                out[key] = t
            else:
                out[key] = torch.as_tensor(values, dtype=dtype)
        return out
