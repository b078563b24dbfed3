"""Images: listing (ImageFolder tree or CSV), decode-once cache at about training resolution, transforms."""
from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from torch.utils.data import Dataset

from tuneforge.data.examples import Examples
from tuneforge.errors import DataError, MissingLabelsError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a half-grey picture

ImageRef = Union[str, np.ndarray]  # a file path, or pixels already in memory (HWC uint8 RGB)


def image_files(folder: Path) -> list[Path]:
    """Image files under a folder, sorted; hidden files (e.g. macOS `._x.jpg`) are not images."""
    return [f for f in sorted(folder.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in f.relative_to(folder).parts)]


def list_image_folder(root: Path) -> Examples:
    """torchvision ImageFolder layout: root/<class>/<image>."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        error = MissingLabelsError if image_files(root) else DataError  # images, but no class folders
        raise error(f"image folder '{root}' has no class sub-folders; expected {root}/<class>/<image files>")
    images, labels = [], []
    for c in classes:
        for f in image_files(root / c):
            images.append(str(f))
            labels.append(c)
    if not images:
        raise DataError(f"image folder '{root}' holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return Examples(images, labels, list(images))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits instead of clipping
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        im = Image.fromarray(np.clip(a / hi * 255.0, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
        im = Image.fromarray((a * 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        bg = Image.new("RGB", im.size, (255, 255, 255))
        rgba = im.convert("RGBA")
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return im.convert("RGB")


def decode_image(path: str, short_side: Optional[int]) -> np.ndarray:
    """→ HWC uint8 RGB; downscaled so the shorter side is `short_side` (never upscaled)."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (short_side, short_side) if short_side else None)  # fast JPEG downscale
            im.load()
            im = _to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise DataError(f"{path}: not a readable image ({reason}); replace or remove it, "
                        "or set data.on_bad_sample: skip") from None
    if short_side and min(im.size) > short_side:
        scale = short_side / min(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
    return np.array(im, dtype=np.uint8)  # writable: torch.from_numpy needs it


class ImageCache:
    """Decodes every image once (in parallel), validating all of them, and keeps up to `max_mb` in memory."""

    def __init__(self, short_side: Optional[int], max_mb: int):
        self.short_side, self.max_bytes = short_side, max_mb * 2**20
        self.used = 0
        self.store: dict[str, np.ndarray] = {}

    def _one(self, path: str) -> tuple[str, Optional[np.ndarray], Optional[str]]:
        try:
            return path, decode_image(path, self.short_side), None
        except DataError as e:
            return path, None, str(e)

    def prepare(self, examples: Examples, on_bad: str, log=print) -> Examples:
        paths = [p for p in examples.inputs if isinstance(p, str)]
        with ThreadPoolExecutor(max_workers=max(2, min(8, torch.get_num_threads()))) as pool:
            results = {p: (arr, err) for p, arr, err in pool.map(self._one, paths)}
        keep_images, keep_labels, keep_where, skipped = [], [], [], list(examples.skipped)
        dropped: dict[int, str] = {}
        labels = examples.labels if examples.labels is not None else [None] * len(examples.inputs)  # predict
        for i, (img, label, where) in enumerate(zip(examples.inputs, labels, examples.where)):
            if isinstance(img, str):
                arr, err = results[img]
                if err:
                    if on_bad != "skip":
                        raise DataError(err)
                    skipped.append(err)
                    dropped[i] = err
                    continue
                if self.used + arr.nbytes <= self.max_bytes:
                    self.store[img] = arr
                    self.used += arr.nbytes
            keep_images.append(img)
            keep_labels.append(label)
            keep_where.append(where)
        if skipped:
            log(f"data: skipped {len(skipped)} unreadable image(s) (data.on_bad_sample: skip)")
        return Examples(keep_images, None if examples.labels is None else keep_labels, keep_where, skipped, dropped)

    def get(self, img: ImageRef) -> np.ndarray:
        if isinstance(img, np.ndarray):
            return img
        arr = self.store.get(img)
        return arr if arr is not None else decode_image(img, self.short_side)


def build_transforms(image_cfg: dict, size: int, train: bool, aug=None):
    """Train: random-resized crop, flip, optional RandAugment / TrivialAugment and random erasing (`aug` is
    data.augment). Eval (and train with aug.enabled false): resize + centre crop. Both normalise with the
    model source's mean / std."""
    from torchvision.transforms import InterpolationMode  # torchvision only when images are used (~170 MB)
    from torchvision.transforms import v2 as T

    interp = InterpolationMode.BICUBIC if image_cfg.get("interpolation") == "bicubic" else InterpolationMode.BILINEAR
    norm = [T.ToDtype(torch.float32, scale=True), T.Normalize(image_cfg["mean"], image_cfg["std"])]
    if train and aug is not None and aug.enabled:
        steps = [T.RandomResizedCrop(size, scale=tuple(aug.crop_scale), interpolation=interp, antialias=True)]
        if aug.hflip:
            steps.append(T.RandomHorizontalFlip())
        # geometric ops of the policies support only nearest / bilinear on tensors
        if aug.policy == "randaugment":
            steps.append(T.RandAugment(magnitude=aug.magnitude, interpolation=InterpolationMode.BILINEAR))
        elif aug.policy == "trivialaugment":
            steps.append(T.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR))
        tail = [T.RandomErasing(p=aug.random_erasing)] if aug.random_erasing > 0 else []
        return T.Compose(steps + norm + tail)
    resize = math.floor(size / image_cfg.get("crop_pct", 0.875))
    return T.Compose([T.Resize(resize, interpolation=interp, antialias=True), T.CenterCrop(size)] + norm)


class MixCollate:
    """Batch-level mixup / cutmix (torchvision v2): labels become soft targets for the loss."""

    def __init__(self, aug, num_classes: int):
        from torchvision.transforms import v2 as T

        ops = []
        if aug.mixup > 0:
            ops.append(T.MixUp(alpha=aug.mixup, num_classes=num_classes))
        if aug.cutmix > 0:
            ops.append(T.CutMix(alpha=aug.cutmix, num_classes=num_classes))
        self.op = ops[0] if len(ops) == 1 else T.RandomChoice(ops)

    def __call__(self, rows: list[dict]) -> dict:
        from torch.utils.data import default_collate

        batch = default_collate(rows)
        batch["pixel_values"], batch["labels"] = self.op(batch["pixel_values"], batch["labels"])
        return batch


class ImageDataset(Dataset):
    def __init__(self, images: list[ImageRef], labels: list, cache: ImageCache, transform,
                 label_dtype=torch.long):
        self.images, self.labels, self.cache, self.transform = images, labels, cache, transform
        self.label_dtype = label_dtype

    def __len__(self) -> int:
        return len(self.images)

    def content_digest(self) -> str:
        """A hash of exactly what the model is fed: each image (file content stamp, or pixels) and the transform."""
        h = hashlib.sha256(f"rows={len(self)}|{self.transform!r}".encode())
        for img in self.images:
            if isinstance(img, np.ndarray):
                h.update(img.tobytes())
            else:
                st = os.stat(img)
                h.update(f"{img}|{st.st_size}|{st.st_mtime_ns}".encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    def __getitem__(self, i: int) -> dict:
        arr = self.cache.get(self.images[i])
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        item = {"pixel_values": self.transform(x)}
        if self.labels is not None:
            item["labels"] = torch.as_tensor(self.labels[i], dtype=self.label_dtype)
        return item


def sklearn_digits(size: int = 32) -> Examples:
    """sklearn's bundled 8×8 handwritten digits (1,797 images), upsampled to size×size, 3 channels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    small = torch.from_numpy((d.images * (255.0 / 16.0)).astype(np.float32)).unsqueeze(1)
    big = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    arrs = big.clamp(0, 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    return Examples([a for a in arrs], [str(int(t)) for t in d.target],
                         [f"sklearn-digits #{i}" for i in range(len(arrs))])
