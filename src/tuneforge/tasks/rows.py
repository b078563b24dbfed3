"""RowTask: tasks whose examples are one row each (a text, a text pair, an image, an audio clip), whatever the label
looks like.

It builds the inputs for every modality (tokenized texts, siamese pairs, transformed images, audio features through
tasks/audio_inputs.py); its subclasses
(classification, regression, multi-label) only say how labels are encoded, weighed and decoded."""
from __future__ import annotations

from typing import Optional

import torch

from tuneforge.data.examples import Examples
from tuneforge.data.images import ImageCache, ImageDataset, MixCollate, build_transforms
from tuneforge.data.text import PadCollator, TokenizedDataset, tokenize_texts
from tuneforge.errors import ConfigError, DataError
from tuneforge.models.base import ModelBundle
from tuneforge.tasks.audio_inputs import AudioInputs
from tuneforge.tasks.base import Built, Task


def build_inputs(ex: Examples, bundle: ModelBundle, cfg, train: bool, cache: Optional[ImageCache],
                 labels: Optional[list], label_dtype=torch.long, max_length: Optional[int] = None,
                 log=print) -> Built:
    """Examples → Dataset for the bundle's modality (`max_length`: tokens, data.max_length if None)."""
    if bundle.modality == "text":
        return _text_inputs(ex, bundle, cfg, train, labels, label_dtype, max_length or cfg.data.max_length, log)
    size = cfg.data.image_size or bundle.image_cfg["input_size"][-1]
    aug = cfg.data.augment
    transform = build_transforms(bundle.image_cfg, size, train, aug)
    mixing = train and aug.enabled and (aug.mixup > 0 or aug.cutmix > 0) and label_dtype == torch.long
    collate = MixCollate(aug, len(bundle.head.labels)) if mixing and labels is not None else None
    return Built(ImageDataset(ex.inputs, labels, cache, transform, label_dtype), collate)


def _text_inputs(ex: Examples, bundle: ModelBundle, cfg, train: bool, labels, label_dtype, max_length: int,
                 log) -> Built:
    texts = [x[0] if isinstance(x, tuple) else x for x in ex.inputs]
    pairs = [x[1] for x in ex.inputs] if ex.inputs and isinstance(ex.inputs[0], tuple) else None
    if train and pairs is not None and cfg.data.pair_swap:  # both orders: the model learns a symmetric score
        texts, pairs = texts + pairs, pairs + texts
        labels = None if labels is None else list(labels) + list(labels)
    if bundle.siamese:  # model.pair_encoding: siamese
        return _siamese_inputs(bundle, texts, pairs, cfg, labels, label_dtype, max_length, log)
    features = tokenize_texts(bundle.tokenizer, texts, pairs, max_length, log)
    if labels is not None:
        features["labels"] = labels
    lengths = [len(ids) for ids in features["input_ids"]]
    collate = PadCollator(bundle.tokenizer.pad_token_id, label_dtype, multiple=cfg.data.pad_to_multiple_of,
                          max_width=max_length)
    return Built(TokenizedDataset(features, lengths), collate, lengths)


def _siamese_inputs(bundle: ModelBundle, texts, pairs, cfg, labels, label_dtype, max_length: int, log) -> Built:
    from tuneforge.models.siamese import pair_features

    if pairs is None:
        raise ConfigError("model.pair_encoding: siamese needs text pairs; set data.text_pair_column")
    features, lengths, collate = pair_features(bundle.tokenizer, texts, pairs, max_length,
                                               cfg.data.pad_to_multiple_of, log)
    if labels is not None:
        features["labels"] = labels
    return Built(TokenizedDataset(features, lengths), collate(label_dtype), lengths)


class RowTask(Task):
    label_dtype = torch.long  # what encode_labels returns, as a tensor

    def __init__(self, cfg, log=print):
        super().__init__(cfg, log)
        self.cache: Optional[ImageCache] = None  # decoded images, shared by the splits
        self.pairs: Optional[bool] = None  # text pairs (two inputs per row) or single texts, as trained
        self.columns: dict[str, str] = {}  # the train file's text / pair columns
        self.audio = AudioInputs(cfg, log)  # decoded clips and their features (audio models)

    def check_arity(self, ex: Examples, split: str) -> None:
        """Training fixes single texts vs pairs; any other split (val, test, eval, predict) must match it."""
        pairs = bool(ex.inputs) and isinstance(ex.inputs[0], tuple)
        if split == "train":
            self.pairs, self.columns = pairs, {k: v for k, v in ex.columns.items() if k in ("text", "pair")}
        elif self.pairs is not None and pairs != self.pairs:
            trained = (f"text pairs (columns {', '.join(self.columns.values()) or 'two texts'})" if self.pairs
                       else "single texts")
            fix = "give both texts (--text-pair, or a file with both columns)" if self.pairs else \
                "give one text per input (no --text-pair, no second column)"
            where = ex.where[0].rsplit(" line ", 1)[0] if ex.where else split
            raise DataError(f"{where}: this model was trained on {trained}; {fix}")

    def state(self) -> dict:
        return {**super().state(), "pairs": self.pairs, "columns": self.columns}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.pairs, self.columns = state.get("pairs"), dict(state.get("columns", {}))

    def prepare_images(self, ex: Examples, bundle: ModelBundle, on_bad: str, log) -> Examples:
        """Decode (and check) every image once; unreadable ones are an error or, with on_bad "skip", dropped
        (Examples.dropped names each dropped input and why)."""
        if bundle.modality != "image":
            return ex
        if self.cache is None:
            size = self.cfg.data.image_size or bundle.image_cfg["input_size"][-1]
            self.cache = ImageCache(int(size / bundle.image_cfg.get("crop_pct", 0.875)) + 1,
                                    self.cfg.data.cache_images_mb)
        return self.cache.prepare(ex, on_bad, log)

    def train_inputs_vary(self, bundle: ModelBundle) -> bool:
        if bundle.modality == "audio":
            return self.audio.vary()  # waveform augmentation or SpecAugment masks
        return bundle.modality == "image" and self.cfg.data.augment.enabled  # random crops every epoch

    def add_to_report(self, report: dict, log) -> None:
        if self.audio.selections:  # per-class durations: for single-label classes only
            self.audio.add_to_report(report, self.label_dtype == torch.long, log)

    def sample_weights(self, labels: list) -> Optional[list[float]]:
        """Per-example draw weights for the train sampler (class-balanced resampling); None: uniform."""
        return None

    def build(self, ex: Examples, bundle: ModelBundle, split: str) -> Built:
        train = split == "train"
        predict = split == "predict"  # every input answered: an unreadable one gets its own error line
        if bundle.modality == "audio":
            ex = self.audio.select(ex, bundle, split)
            labels = self.encode_labels(ex)
            built = self.audio.build(ex, bundle, split, labels, self.label_dtype)
        else:
            ex = self.prepare_images(ex, bundle, "skip" if predict else self.cfg.data.on_bad_sample,
                                     (lambda *_: None) if predict else self.log)
            if bundle.modality == "text":
                self.check_arity(ex, split)
            labels = self.encode_labels(ex)
            built = build_inputs(ex, bundle, self.cfg, train, self.cache, labels, self.label_dtype,
                                 self.max_length(bundle) if bundle.modality == "text" else None, self.log)
        built.skipped, built.dropped = len(ex.skipped), ex.dropped
        if train and labels is not None:
            built.sample_weights = self.sample_weights(labels)
        return built
