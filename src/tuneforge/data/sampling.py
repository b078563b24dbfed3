"""Batch order: a pure function of (seed, epoch), so any epoch can be replayed exactly (resume, DDP)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Shuffled batches; with `lengths`, shuffled mega-batches sorted by length (little padding, still random).

    Every index appears exactly once per epoch (unless `weights` asks for resampling with replacement);
    the last batch may be short (nothing is dropped)."""

    def __init__(self, n: int, batch_size: int, seed: int, lengths: Optional[Sequence[int]] = None,
                 mega_batch: int = 50, shuffle: bool = True, weights: Optional[Sequence[float]] = None):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.lengths = lengths
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.mega = batch_size * mega_batch
        self.epoch = 0
        self.skip = 0  # batches already consumed in this epoch (mid-epoch resume)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def batches(self) -> list[list[int]]:
        if not self.shuffle:  # evaluation: fixed order, longest first when lengths are known (less padding)
            order = list(range(self.n)) if self.lengths is None else sorted(range(self.n), key=lambda i: -self.lengths[i])
            return [order[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:  # resampling: n draws with replacement, in proportion to the weights
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        else:
            order = torch.randperm(self.n, generator=g).tolist()
        if self.lengths is None:
            return [order[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        out: list[list[int]] = []
        for start in range(0, self.n, self.mega):
            mega = sorted(order[start:start + self.mega], key=lambda i: -self.lengths[i])
            out.extend(mega[i:i + self.batch_size] for i in range(0, len(mega), self.batch_size))
        perm = torch.randperm(len(out), generator=g).tolist()
        return [out[i] for i in perm]

    def __iter__(self):
        yield from self.batches()[self.skip:]

    @property
    def total(self) -> int:
        """Batches in a whole epoch, however many a mid-epoch resume skips."""
        if self.lengths is None or not self.shuffle:
            return math.ceil(self.n / self.batch_size)
        full, rest = divmod(self.n, self.mega)
        return full * math.ceil(self.mega / self.batch_size) + math.ceil(rest / self.batch_size)

    def __len__(self) -> int:
        """Batches left in this epoch (what the DataLoader yields)."""
        return self.total - self.skip
