"""Single-label classification of texts, text pairs or images."""
from __future__ import annotations

from typing import Optional

import torch

from tuneforge.data.examples import Examples
from tuneforge.data.images import ImageCache, ImageDataset, build_transforms
from tuneforge.data.text import PadCollator, TokenizedDataset, tokenize_texts
from tuneforge.errors import DataError
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
        features = tokenize_texts(bundle.tokenizer, texts, pairs, cfg.data.max_length)
        if labels is not None:
            features["labels"] = labels
        lengths = [len(ids) for ids in features["input_ids"]]
        return Built(TokenizedDataset(features, lengths), PadCollator(bundle.tokenizer.pad_token_id, label_dtype),
                     lengths)
    size = cfg.data.image_size or bundle.image_cfg["input_size"][-1]
    aug = cfg.data.augment
    transform = build_transforms(bundle.image_cfg, size, train, aug.crop_scale, aug.hflip)
    return Built(ImageDataset(ex.inputs, labels, cache, transform, label_dtype))


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
        built = build_inputs(ex, bundle, self.cfg, train, self.cache, self.label_ids(ex))
        built.skipped = len(ex.skipped)
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
