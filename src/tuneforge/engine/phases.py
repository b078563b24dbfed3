"""Training phases: plain training is one phase; fastai-style `fine_tune` is a head-only phase (cached features
when possible) followed by an unfrozen phase with discriminative (layer-wise) learning rates."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tuneforge.engine import feature_cache
from tuneforge.engine.loop import make_loader
from tuneforge.strategies import head_module_name, set_train_mode


@dataclass
class Phase:
    name: str
    epochs: float
    lr: float
    head_lr: Optional[float]
    layer_decay: Optional[float]
    frozen_backbone: bool  # only the new head trains; the backbone runs in eval mode
    trainable_fraction: float = 1.0  # gradual unfreezing: the top share of layer groups that trains


def plan_phases(tc, lr: float) -> list[Phase]:
    if tc.head_epochs <= 0:
        return [Phase("train", tc.epochs, lr, tc.head_lr, tc.layer_decay, tc.freeze == "backbone")]
    head = Phase("head", tc.head_epochs, tc.head_lr or 10 * lr, None, None, True)
    decay = tc.layer_decay or 0.8
    if not tc.gradual_unfreeze:
        return [head, Phase("fine_tune", tc.epochs, lr, tc.head_lr, decay, False)]
    # ULMFiT-style: one epoch with the top third of layer groups, one with the top two thirds, then all of them
    stages = max(1, min(3, int(tc.epochs)))
    return [head] + [Phase(f"unfreeze_{j}", 1.0 if j < stages else tc.epochs - (stages - 1), lr, tc.head_lr, decay,
                           False, j / stages) for j in range(1, stages + 1)]


def phase_train_config(tc, phase: Phase):
    """The train section as this phase sees it (optimizer and schedule are built from it)."""
    return tc.model_copy(update={"lr": phase.lr, "head_lr": phase.head_lr, "layer_decay": phase.layer_decay,
                                 "epochs": phase.epochs, "freeze": "backbone" if phase.frozen_backbone else tc.freeze})


def feature_cache_usable(cfg, bundle, phase: Phase) -> Optional[str]:
    """The head module name when cached features reproduce this phase exactly, else None."""
    if not (phase.frozen_backbone and cfg.train.feature_cache and bundle.head.kind == "sequence"):
        return None
    if bundle.modality == "image" and cfg.data.augment.enabled:
        return None  # random crops change the features every epoch
    if cfg.train.lora is not None:
        return None
    return head_module_name(bundle)


def cached_loaders(cfg, bundle, head: str, train_ex, val_ex, train_built, val_built, accelerator, log):
    """Train/val loaders over stored backbone features, plus the head-only stand-in for the bundle."""
    pre = {"precision": str(accelerator.mixed_precision), "max_length": cfg.data.max_length,
           "pad_to_multiple_of": cfg.data.pad_to_multiple_of, "image_size": cfg.data.image_size,
           "image_cfg": bundle.image_cfg, "augment": False}
    bs = cfg.eval.batch_size or 2 * cfg.train.batch_size
    loaders = []
    for ex, built, train in ((train_ex, train_built, True), (val_ex, val_built, False)):
        feats = feature_cache.cached_features(bundle, head, ex, built, {**pre, "train": train}, bs, accelerator, log)
        fb = feature_cache.feature_built(feats, built)
        loaders.append(make_loader(fb, cfg.train.batch_size if train else bs, train, cfg.train.seed))
    return feature_cache.HeadOnly(bundle, head), loaders[0], loaders[1]


def train_mode_fn(bundle, phase: Phase, tc):
    head = head_module_name(bundle) if phase.frozen_backbone else None
    return lambda model: set_train_mode(model, tc.freeze_norm_stats, head if model is bundle.model else None)
