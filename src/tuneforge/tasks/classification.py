"""Single-label classification of texts, text pairs or images."""
from __future__ import annotations

from typing import Optional

import torch

from tuneforge.data.examples import Examples
from tuneforge.data.images import ImageCache, ImageDataset, MixCollate, build_transforms
from tuneforge.data.text import PadCollator, TokenizedDataset, tokenize_texts
from tuneforge.errors import ConfigError, DataError
from tuneforge.losses import LOSSES
from tuneforge.metrics import ClassificationMetrics
from tuneforge.models.base import HeadSpec, ModelBundle
from tuneforge.tasks.base import TASKS, Built, Task


def _label_text(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def _sorted_labels(values: set[str]) -> list[str]:
    try:  # numeric labels in numeric order (so "10" follows "9")
        return sorted(values, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(values)


def build_inputs(ex: Examples, bundle: ModelBundle, cfg, train: bool, cache: Optional[ImageCache],
                 labels: Optional[list], label_dtype=torch.long) -> Built:
    """Examples → Dataset for the bundle's modality (shared by the single- and multi-label tasks)."""
    if bundle.modality == "text":
        texts = [x[0] if isinstance(x, tuple) else x for x in ex.inputs]
        pairs = [x[1] for x in ex.inputs] if ex.inputs and isinstance(ex.inputs[0], tuple) else None
        if train and pairs is not None and cfg.data.pair_swap:  # both orders: the model learns a symmetric score
            texts, pairs = texts + pairs, pairs + texts
            labels = None if labels is None else list(labels) + list(labels)
        if getattr(bundle, "siamese", False):  # model.pair_encoding: siamese
            return _siamese_inputs(bundle, texts, pairs, cfg, labels, label_dtype)
        features = tokenize_texts(bundle.tokenizer, texts, pairs, cfg.data.max_length)
        if labels is not None:
            features["labels"] = labels
        lengths = [len(ids) for ids in features["input_ids"]]
        return Built(TokenizedDataset(features, lengths), PadCollator(bundle.tokenizer.pad_token_id, label_dtype,
                                                                    multiple=cfg.data.pad_to_multiple_of),
                     lengths)
    size = cfg.data.image_size or bundle.image_cfg["input_size"][-1]
    aug = cfg.data.augment
    transform = build_transforms(bundle.image_cfg, size, train, aug)
    mixing = train and aug.enabled and (aug.mixup > 0 or aug.cutmix > 0) and label_dtype == torch.long
    collate = MixCollate(aug, len(bundle.head.labels)) if mixing and labels is not None else None
    return Built(ImageDataset(ex.inputs, labels, cache, transform, label_dtype), collate)


def _siamese_inputs(bundle: ModelBundle, texts, pairs, cfg, labels, label_dtype) -> Built:
    from tuneforge.models.siamese import pair_features

    if pairs is None:
        raise ConfigError("model.pair_encoding: siamese needs text pairs; set data.text_pair_column")
    features, lengths, collate = pair_features(bundle.tokenizer, texts, pairs, cfg.data.max_length,
                                               cfg.data.pad_to_multiple_of)
    if labels is not None:
        features["labels"] = labels
    return Built(TokenizedDataset(features, lengths), collate(label_dtype), lengths)


@TASKS.register("classification")
class Classification(Task):
    name = "classification"

    def __init__(self, cfg, log=print):
        super().__init__(cfg, log)
        self.cache: Optional[ImageCache] = None

    def stratify_key(self, ex: Examples) -> Optional[list]:
        return [_label_text(v) for v in ex.labels]

    def fit_labels(self, train: Examples, val: Examples) -> None:
        for ex in (train, val):
            for v, where in zip(ex.labels, ex.where):
                if v is None or (isinstance(v, float) and v != v) or _label_text(v) == "":
                    raise DataError(f"{where}: empty label in column '{self.cfg.data.label_column}'; "
                                    "every example needs a label")
        self.labels = _sorted_labels({_label_text(v) for v in train.labels})
        given = self.cfg.data.labels
        if given:  # the full label set, in the user's order; train may lack some of it
            extra = [x for x in self.labels if x not in given]
            if extra:
                raise DataError(f"train has label(s) {', '.join(extra[:5])} that data.labels does not list")
            self.labels = [str(x) for x in given]
        if len(self.labels) < 2:
            raise DataError(f"train has a single class ('{self.labels[0]}'); classification needs at least 2 "
                            "classes (check data.label_column)")
        known = set(self.labels)
        for v, where in zip(val.labels, val.where):
            if _label_text(v) not in known:
                raise DataError(f"{where}: label '{_label_text(v)}' never appears in train (train labels: "
                                f"{', '.join(self.labels[:20])}); fix the label or add training examples")

    def head_spec(self) -> HeadSpec:
        return HeadSpec(len(self.labels), list(self.labels), "sequence", "single_label_classification")

    # ---------------------------------------------------------------- imbalance
    def class_counts(self, train: Examples) -> Optional[dict]:
        counts = {name: 0 for name in self.labels}
        for v in train.labels:
            counts[_label_text(v)] += 1
        return counts

    def choose_imbalance(self, report: dict) -> str:
        counts = report["class_counts"]
        empty = [k for k, c in counts.items() if c == 0]
        if empty:
            msg = f"class(es) {', '.join(empty[:10])} have no training example"
            if not self.cfg.data.allow_empty_classes:
                raise DataError(f"{msg}; add examples, drop them from data.labels, or set "
                                "data.allow_empty_classes: true")
            self.log(f"data: warning: {msg} (allowed by data.allow_empty_classes)")
        mode, ratio = self.cfg.data.imbalance, report["imbalance_ratio"]
        if mode == "auto":
            threshold = self.cfg.data.imbalance_threshold
            mode = "class_weights" if ratio is not None and ratio >= threshold else "none"
            why = (f"imbalance ratio {ratio} >= {threshold}: class-weighted loss keeps every example and "
                   "needs no duplication" if mode != "none" else f"imbalance ratio {ratio} < {threshold}")
            self.log(f"data.imbalance auto → {mode} ({why})")
        self.remedy = mode
        nonzero = {k: c for k, c in counts.items() if c > 0}
        n, k = sum(nonzero.values()), len(nonzero)
        # "balanced" weights n / (k * count): every class contributes equally to the loss / the sample
        self._balanced = [n / (k * counts[name]) if counts[name] else 0.0 for name in self.labels]
        return mode

    def class_weights(self) -> Optional[torch.Tensor]:
        if getattr(self, "remedy", "none") != "class_weights":
            return None
        return torch.tensor(self._balanced, dtype=torch.float32)

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        if self._loss is None and getattr(self, "remedy", "none") == "focal" and self.cfg.task.loss is None:
            self._loss = LOSSES.get("focal")(self.cfg.task, None)
        return super().loss(logits, batch)

    def label_ids(self, ex: Examples) -> Optional[list[int]]:
        if ex.labels is None:
            return None
        index = {name: i for i, name in enumerate(self.labels)}
        out = []
        for v, where in zip(ex.labels, ex.where):
            key = _label_text(v)
            if key not in index:
                raise DataError(f"{where}: label '{key}' is not one of the model's labels "
                                f"({', '.join(self.labels[:20])})")
            out.append(index[key])
        return out

    def prepare_images(self, ex: Examples, bundle: ModelBundle) -> Examples:
        if bundle.modality != "image":
            return ex
        if self.cache is None:
            size = self.cfg.data.image_size or bundle.image_cfg["input_size"][-1]
            self.cache = ImageCache(int(size / bundle.image_cfg.get("crop_pct", 0.875)) + 1,
                                    self.cfg.data.cache_images_mb)
        return self.cache.prepare(ex, self.cfg.data.on_bad_sample, self.log)

    def build(self, ex: Examples, bundle: ModelBundle, train: bool) -> Built:
        ex = self.prepare_images(ex, bundle)
        ids = self.label_ids(ex)
        built = build_inputs(ex, bundle, self.cfg, train, self.cache, ids)
        built.skipped = len(ex.skipped)
        if train and ids is not None and getattr(self, "remedy", "none") == "resample":
            built.sample_weights = [self._balanced[i] for i in ids]  # each class drawn equally often
        return built

    def new_metrics(self):
        return ClassificationMetrics(self.labels)

    def decode(self, logits: torch.Tensor, top_k: Optional[int]) -> list[dict]:
        probs = logits.float().softmax(-1).cpu()
        k = min(top_k or len(self.labels), len(self.labels))
        out = []
        for row in probs:
            p, idx = row.topk(k)
            out.append({"label": self.labels[idx[0]], "score": round(float(p[0]), 6),
                        "probabilities": {self.labels[i]: round(float(q), 6) for q, i in zip(p, idx)}})
        return out
