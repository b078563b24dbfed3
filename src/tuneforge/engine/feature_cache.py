"""Frozen-backbone feature cache: run the backbone once per example, then train only the head on stored features.

Valid only when the backbone is frozen (it runs in eval mode) and the train inputs are deterministic; the
key is a content hash of the backbone weights, exactly what is fed and the preprocessing, so any change misses.
A corrupt or torn entry is deleted and recomputed; entries are fsynced before they are renamed into place."""
from __future__ import annotations

import hashlib
import json
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from tuneforge.engine.loop import forward, make_loader
from tuneforge.engine.trainable import head_module_name
from tuneforge.tasks.base import Built
from tuneforge.utils import atomic_write, cache_dir


def content_key(model: torch.nn.Module, head: str, built: Built, preprocess: dict) -> str:
    """The backbone weights (not the head: it is what trains), exactly what the model is fed (the built dataset:
    token ids after pair_swap, transformed images, row count) and the preprocessing: any change misses."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if name == head or name.startswith(head + "."):
            continue
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    h.update(built.dataset.content_digest().encode())
    h.update(json.dumps(preprocess, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


class FeatureDataset(Dataset):
    def __init__(self, features: np.ndarray, labels):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        item = {"features": torch.from_numpy(np.array(self.features[i], dtype=np.float32))}
        if self.labels is not None:
            item["labels"] = torch.as_tensor(self.labels[i])
        return item


class HeadOnly:
    """Stands in for the ModelBundle during cached training: logits = head(features)."""

    def __init__(self, bundle, head: str):
        self.model = bundle.model.get_submodule(head)

    def logits(self, batch: dict) -> torch.Tensor:
        return self.model(batch["features"])


@torch.no_grad()
def compute_features(task, bundle, head: str, built: Built, batch_size: int, accelerator) -> np.ndarray:
    """Input of the head module for every example, in dataset order (forward pre-hook on the head)."""
    captured: list[torch.Tensor] = []
    hook = bundle.model.get_submodule(head).register_forward_pre_hook(
        lambda mod, args: captured.append(args[0].detach().float().cpu()))
    bundle.model.eval()
    loader = make_loader(built, batch_size, False, 0)
    order = [i for b in loader.batch_sampler.batches() for i in b]
    try:
        for batch in loader:
            forward(task, bundle, batch, accelerator)
    finally:
        hook.remove()
    feats = torch.cat(captured).numpy()
    out = np.empty_like(feats)
    out[order] = feats  # undo length-sorted batching
    return out


def _load_features(path, rows: int, log) -> Optional[np.ndarray]:
    """A cached entry (memory-mapped: bounded memory for large sets); a corrupt or torn one is deleted."""
    if not path.is_file():
        return None
    try:
        feats = np.load(path, mmap_mode="r", allow_pickle=False)
        if feats.ndim != 2 or len(feats) != rows:
            raise ValueError(f"shape {feats.shape}, expected {rows} rows")
        return feats
    except Exception as e:  # noqa: BLE001  (any unreadable entry: truncated header, wrong size, ...)
        log(f"feature cache: entry {path.name} is unreadable ({type(e).__name__}); deleted, computing again")
        path.unlink(missing_ok=True)
        return None


def cached_features(task, bundle, head: str, built: Built, preprocess: dict, batch_size: int, accelerator,
                    log=print) -> np.ndarray:
    key = content_key(bundle.model, head, built, preprocess)
    path = cache_dir("features") / f"{key}.npy"
    feats = _load_features(path, len(built.dataset), log)
    if feats is not None:
        log(f"feature cache: hit {path.name} ({len(feats)} examples)")
        return feats
    feats = compute_features(task, bundle, head, built, batch_size, accelerator)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, feats, allow_pickle=False)

    try:
        atomic_write(path, write)
    except OSError as e:  # a read-only or full cache: train on the features in memory
        log(f"feature cache: not stored ({e.strerror}); using the features in memory")
        return feats
    log(f"feature cache: stored {feats.shape[0]} x {feats.shape[1]} features ({feats.nbytes / 2**20:.1f} MB)")
    return np.load(path, mmap_mode="r", allow_pickle=False)


def feature_built(features: np.ndarray, built: Built) -> Built:
    from torch.utils.data import default_collate

    # same lengths → the same (length-grouped) batch order as uncached training
    return Built(FeatureDataset(features, built.dataset.labels), default_collate, built.lengths, built.skipped,
                 built.sample_weights)


def feature_cache_usable(cfg, task, bundle, phase) -> Optional[str]:
    """The head module name when cached features reproduce this phase exactly, else None."""
    if not (phase.frozen_backbone and cfg.train.feature_cache and bundle.head.kind == "sequence"):
        return None
    if task.train_inputs_vary(bundle) or cfg.train.lora is not None:
        return None  # e.g. random crops change the features every epoch
    return head_module_name(bundle)


def cached_loaders(cfg, task, bundle, head: str, setup, accelerator, log):
    """Train/val loaders over stored backbone features, plus the head-only stand-in for the bundle."""
    pre = {"precision": str(accelerator.mixed_precision), "max_length": cfg.data.max_length,
           "pad_to_multiple_of": cfg.data.pad_to_multiple_of, "image_size": cfg.data.image_size,
           "image_cfg": bundle.image_cfg, "augment": False,
           **({"audio": [cfg.data.sample_rate, cfg.data.max_seconds, cfg.data.min_seconds]}
              if bundle.modality == "audio" else {})}  # clips truncated or resampled otherwise: other features
    bs = cfg.eval_batch_size
    loaders = []
    for built, train in ((setup.train_built, True), (setup.val_built, False)):
        feats = cached_features(task, bundle, head, built, {**pre, "train": train}, bs, accelerator, log)
        loaders.append(make_loader(feature_built(feats, built), cfg.train.batch_size if train else bs, train,
                                   cfg.train.seed))
    return HeadOnly(bundle, head), loaders[0], loaders[1]
