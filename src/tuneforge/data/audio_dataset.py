"""Decoded clips → model inputs: the Dataset, the batch collate and `build_audio_inputs`, the audio counterpart
of `tasks.classification.build_inputs`.

Items are `{"input_features": [n_mels, frames], "attention_mask": [frames] (1 = the clip, 0 = padding)}`, or with
`to_image` (an ImageNet CNN on spectrograms) `{"pixel_values": [3, H, W]}`; plus `"labels"`: a class id, a value,
a multi-hot vector, or (`token_labels=True`, ASR) a list of token ids, padded with -100 in the batch. Features of
deterministic inputs (eval, and train without waveform augmentation) come from the disk cache; with waveform
augmentation they are computed per item from the cached waveform. SpecAugment always runs per item.
"""
from __future__ import annotations

import hashlib
import json
from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from tuneforge.data.audio import AudioCache, AudioRef
from tuneforge.data.audio_augment import AudioAugment, audio_augment
from tuneforge.data.audio_features import (FeatureMaker, StoredFeatures, cached_features, input_digest,
                                           spectrogram_image)
from tuneforge.data.examples import Built, Examples

IGNORE_INDEX = -100  # label positions the loss skips (transformers' convention)


class SpectrogramImage:
    """log-mel [n_mels, T] → normalised [3, size, size] for a timm / torchvision CNN (mean / std: its image_cfg)."""

    def __init__(self, size, mean: Sequence[float], std: Sequence[float]):
        self.size, self.mean, self.std = size, list(mean), list(std)

    def __call__(self, logmel: torch.Tensor) -> torch.Tensor:
        return spectrogram_image(logmel, self.size, self.mean, self.std)


class AudioDataset(Dataset):
    def __init__(self, refs: Sequence[AudioRef], labels: Optional[Sequence], cache: AudioCache,
                 features: FeatureMaker, augment: Optional[AudioAugment] = None,
                 stored: Optional[StoredFeatures] = None, to_image: Optional[Callable] = None,
                 label_dtype: torch.dtype = torch.long, token_labels: bool = False):
        """`stored`: precomputed features of the refs (used unless `augment` changes waveforms)."""
        self.refs, self.labels, self.cache, self.features = list(refs), labels, cache, features
        self.augment, self.stored, self.to_image = augment, stored, to_image
        self.label_dtype, self.token_labels = label_dtype, token_labels

    def __len__(self) -> int:
        return len(self.refs)

    def content_digest(self) -> str:
        """A hash of exactly what the model is fed (the feature cache's key): the clips, the feature settings,
        augmentation on or off, the spectrogram-to-image conversion."""
        image = getattr(self.to_image, "__dict__", repr(self.to_image))
        setup = {"rows": len(self), "features": self.features.spec(), "augment": self.augment is not None,
                 "to_image": image, "token_labels": self.token_labels}
        h = hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode())
        h.update(input_digest(self.refs).encode())
        return h.hexdigest()

    def _features(self, i: int) -> tuple[torch.Tensor, int]:
        ref = self.refs[i]
        if self.stored is not None and not (self.augment and self.augment.changes_waveform):
            return torch.from_numpy(self.stored[i]), self.features.content_frames(self.cache.num_samples(ref))
        wave = self.cache.get(ref)
        if self.augment is not None:
            wave = self.augment.wave(wave)
        return torch.from_numpy(self.features([wave])[0]), self.features.content_frames(len(wave))

    def __getitem__(self, i: int) -> dict:
        feats, content = self._features(i)
        if self.augment is not None:
            feats = self.augment.spec(feats, content)
        if self.to_image is not None:
            item = {"pixel_values": self.to_image(feats)}
        else:
            mask = torch.zeros(feats.shape[1], dtype=torch.long)
            mask[:content] = 1
            item = {"input_features": feats, "attention_mask": mask}
        if self.labels is not None:
            label = self.labels[i]
            item["labels"] = list(label) if self.token_labels else torch.as_tensor(label, dtype=self.label_dtype)
        return item


class AudioCollate:
    """Stacks items; features of different lengths are padded on time with each clip's lowest value (silence in
    a log-mel) and a 0 in the attention mask; token-id labels are padded with -100."""

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            if key == "labels" and isinstance(values[0], list):
                t = torch.full((len(values), max(len(v) for v in values)), IGNORE_INDEX, dtype=torch.long)
                for j, v in enumerate(values):
                    t[j, :len(v)] = torch.as_tensor(v, dtype=torch.long)
                out[key] = t
            elif key in ("input_features", "attention_mask") and len({v.shape[-1] for v in values}) > 1:
                out[key] = torch.stack([_pad_time(v, max(x.shape[-1] for x in values), key) for v in values])
            else:
                out[key] = torch.stack(values)
        return out


def _pad_time(x: torch.Tensor, width: int, key: str) -> torch.Tensor:
    fill = 0 if key == "attention_mask" else float(x.min())
    return torch.nn.functional.pad(x, (0, width - x.shape[-1]), value=fill)


def build_audio_inputs(ex: Examples, feature_maker: FeatureMaker, cfg, train: bool, cache: AudioCache,
                       labels: Optional[list], label_dtype: torch.dtype = torch.long, *, token_labels: bool = False,
                       to_image: Optional[Callable] = None, log=print, disk_cache: bool = True) -> Built:
    """Examples (already through `cache.prepare`) → Built with per-clip frame counts as `lengths` and the
    reader's and decoder's skips counted in `skipped`. `disk_cache=False` (predict): features are made per item
    and nothing is written to the feature cache."""
    augment = audio_augment(cfg.data, feature_maker.sample_rate, log) if train else None
    stored = None
    if disk_cache and ex.inputs and feature_maker.deterministic and not (augment and augment.changes_waveform):
        stored = cached_features(ex.inputs, cache, feature_maker, cfg.data.max_seconds, log)
    lengths = [feature_maker.content_frames(cache.num_samples(r)) for r in ex.inputs]
    dataset = AudioDataset(ex.inputs, labels, cache, feature_maker, augment, stored, to_image, label_dtype,
                           token_labels)
    return Built(dataset, AudioCollate(), lengths, skipped=len(ex.skipped))

