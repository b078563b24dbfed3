"""The raw, validated examples of one split, before tokenization or decoding."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from torch.utils.data import Dataset


@dataclass
class Examples:
    inputs: list[Any]  # text, (text, text) pair, image path / pixels, token list, ...
    labels: Optional[list[Any]]  # raw label values as read; None at predict time
    where: list[str]  # "file line N" for each example, for error messages
    skipped: list[str] = field(default_factory=list)  # messages for rows dropped by data.on_bad_sample: skip
    # predict: input index -> why it was dropped (the remaining inputs keep their order)
    dropped: dict[int, str] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)  # role (text, pair, label) -> the column it was read from

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, idx) -> "Examples":
        idx = list(idx)
        return Examples([self.inputs[i] for i in idx], None if self.labels is None else [self.labels[i] for i in idx],
                        [self.where[i] for i in idx], list(self.skipped), columns=dict(self.columns))


def sample(ex: Examples, n: Optional[int], seed: int) -> Examples:
    """A seeded random subset of n examples (kept in file order); all of them when n is None or larger."""
    if n is None or n >= len(ex):
        return ex
    idx = np.sort(np.random.default_rng(seed).permutation(len(ex))[:n])
    return ex.subset(idx)


def split(ex: Examples, fraction: float, seed: int, stratify: Optional[list] = None) -> tuple[Examples, Examples]:
    """Seeded split; stratified by `stratify` when every class has at least 2 examples."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(ex))
    strat = stratify
    if strat is not None:
        _, counts = np.unique(np.asarray(strat, dtype=object).astype(str), return_counts=True)
        if counts.min() < 2 or int(round(fraction * len(ex))) < len(counts):
            strat = None
    tr, va = train_test_split(idx, test_size=fraction, random_state=seed,
                              stratify=None if strat is None else [str(s) for s in strat])
    return ex.subset(np.sort(tr)), ex.subset(np.sort(va))


def split_by_name(ex: Examples, regex: str) -> tuple[Examples, Examples]:
    """(files whose name does not match, files whose name matches `regex`): data.val_from, a split that a dataset
    encodes in its file names (FSDD: index 0-4 is the test part)."""
    from tuneforge.errors import ConfigError, DataError

    if not all(isinstance(x, str) for x in ex.inputs):
        raise ConfigError("data.val_from picks validation files by name; these inputs are not files (use "
                          "data.val_split or a val file)")
    hits = [bool(re.search(regex, Path(x).name)) for x in ex.inputs]
    if all(hits) or not any(hits):
        raise DataError(f"data.val_from.regex '{regex}' matches {'every' if all(hits) else 'no'} train file name "
                        f"({Path(ex.inputs[0]).name}, ...); it must pick some files, not all")
    return (ex.subset(i for i, h in enumerate(hits) if not h), ex.subset(i for i, h in enumerate(hits) if h))


@dataclass
class Built:
    """A split made ready for a loader by a task: its Dataset and how to batch it."""

    dataset: Dataset
    collate: Optional[Callable] = None
    lengths: Optional[list[int]] = None  # per-example token counts, for length-grouped batching
    skipped: int = 0
    sample_weights: Optional[list[float]] = None  # train only: draw examples with these weights (resampling)
    dropped: dict = field(default_factory=dict)  # predict: input index -> why it has no row (e.g. unreadable)
