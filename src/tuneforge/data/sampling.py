"""Batch order: a pure function of (seed, epoch), so any epoch can be replayed exactly (resume, DDP).

With several processes (`rank` of `world`) the sampler builds the *global* batches exactly as one process with
batch size `batch_size * world` would (same shuffling, length grouping and resampling), then hands each rank its
contiguous slice of every global batch: one step of N processes with batch B is one step of one process with
batch N*B, split N ways. A short global batch (the epoch's last, or a length-group's rest) of s rows is cut into
slices of ceil(s / N) rows; a rank left without rows gets one row of the batch again with weight 0 (`share`), so
every rank takes the same number of steps and nothing is dropped or counted twice."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Shuffled batches; with `lengths`, shuffled mega-batches sorted by length (little padding, still random).

    Every index appears exactly once per epoch (unless `weights` asks for resampling with replacement);
    the last batch may be short (nothing is dropped). `batch_size` is per process."""

    def __init__(self, n: int, batch_size: int, seed: int, lengths: Optional[Sequence[int]] = None,
                 mega_batch: int = 50, shuffle: bool = True, weights: Optional[Sequence[float]] = None,
                 rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.global_batch = batch_size * world  # each rank takes a slice of every global batch
        self.rank, self.world = rank, world
        self.lengths = lengths
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.mega = self.global_batch * mega_batch
        self.epoch = 0
        self.skip = 0  # batches already consumed in this epoch (mid-epoch resume)
        self._cached: tuple[int, list[list[int]]] = (-1, [])

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def batches(self) -> list[list[int]]:
        """The epoch's global batches (every rank's rows), in order."""
        if not self.shuffle:  # evaluation: fixed order, longest first when lengths are known (less padding)
            order = list(range(self.n)) if self.lengths is None else \
                sorted(range(self.n), key=lambda i: -self.lengths[i])
            return [order[i:i + self.global_batch] for i in range(0, self.n, self.global_batch)]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:  # resampling: n draws with replacement, in proportion to the weights
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        else:
            order = torch.randperm(self.n, generator=g).tolist()
        if self.lengths is None:
            return [order[i:i + self.global_batch] for i in range(0, self.n, self.global_batch)]
        out: list[list[int]] = []
        for start in range(0, self.n, self.mega):
            mega = sorted(order[start:start + self.mega], key=lambda i: -self.lengths[i])
            out.extend(mega[i:i + self.global_batch] for i in range(0, len(mega), self.global_batch))
        perm = torch.randperm(len(out), generator=g).tolist()
        return [out[i] for i in perm]

    def _global(self) -> list[list[int]]:
        if self._cached[0] != self.epoch:
            self._cached = (self.epoch, self.batches())
        return self._cached[1]

    def _slice(self, batch: list[int], rank: int) -> list[int]:
        """This rank's rows of a global batch: contiguous, ceil(s / world) of them (fewer at the end)."""
        size = math.ceil(len(batch) / self.world)
        return batch[rank * size:(rank + 1) * size]

    def local(self, batch: list[int], pad: bool = False) -> list[int]:
        """This rank's rows; never empty (a rank past the end gets the batch's first row, weighed 0). pad=True
        (evaluation, whose outputs are gathered) repeats rows so every rank has ceil(s / world): the gathered
        batch is then the global one followed by repeats, cut off by `rows`."""
        if self.world == 1:
            return batch
        own = self._slice(batch, self.rank) or batch[:1]
        size = math.ceil(len(batch) / self.world)
        return own + [own[0]] * (size - len(own)) if pad else own

    def share(self, i: int) -> float:
        """This rank's share of global batch i, scaled so that DDP's mean over ranks of `share x this rank's mean
        loss` is the mean loss over the global batch: world x real rows here / rows in the batch."""
        batch = self._global()[i]
        return self.world * len(self._slice(batch, self.rank)) / len(batch)

    def rows(self, i: int) -> int:
        """Real rows in global batch i (all ranks together)."""
        return len(self._global()[i])

    def __iter__(self):
        for batch in self._global()[self.skip:]:
            yield self.local(batch, pad=not self.shuffle)

    @property
    def total(self) -> int:
        """Batches in a whole epoch, however many a mid-epoch resume skips."""
        if self.lengths is None or not self.shuffle:
            return math.ceil(self.n / self.global_batch)
        full, rest = divmod(self.n, self.mega)
        return full * math.ceil(self.mega / self.global_batch) + math.ceil(rest / self.global_batch)

    def __len__(self) -> int:
        """Batches left in this epoch (what the DataLoader yields)."""
        return self.total - self.skip
