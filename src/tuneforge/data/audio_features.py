"""Log-mel features of decoded clips, the spectrogram-as-image view for ImageNet CNNs, and the on-disk cache of
deterministic features.

Contract:
- A feature maker turns 1-D float32 clips at its `sample_rate` into float32 [n_mels, frames] arrays.
  `ExtractorLogMel` wraps a transformers feature extractor with `input_features` output (WhisperFeatureExtractor:
  80 mel bins, 16 kHz, 10-ms hop, clips zero-padded to the model's 30-s window = 3000 frames, or to a trimmed
  window of `n_frames` = an even count covering data.max_seconds; its first frames equal those of the full
  window). `TorchLogMel` is torchaudio's MelSpectrogram in dB (80 dB range), natural length (padded per batch) or
  a fixed `n_frames`. `log_mel(extractor, dcfg, ...)` picks one; `.spec()` records everything that determines the
  output.
- `spectrogram_image(logmel, size, mean, std)`: [n_mels, T] → [3, H, W], min-max scaled per clip, resized and
  normalised with the CNN's mean / std.
- `cached_features(refs, cache, maker, max_seconds, log)` computes features once and keeps them on disk under
  $TUNEFORGE_CACHE/features/audio-<key>/, the key being a hash of a structured record of what is fed (each
  file's path, size and mtime_ns, or an in-memory clip's bytes; sample rate, max_seconds, resampler, the maker's
  spec; the row count). An entry is written to a temporary folder, fsynced and renamed; a corrupt or
  mismatched entry is deleted and recomputed with a log line. Trailing frames identical to the last one (the
  padding of a short clip in a 30-s window) are stored once, so a 1-s clip costs ~100 frames, not 3000.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from tuneforge.data.audio import RESAMPLER, AudioCache, AudioRef, audio_library
from tuneforge.errors import ConfigError, ModelError
from tuneforge.utils import cache_dir, fsync_path

BATCH = 32  # clips per feature-extractor call


def frames_for(max_seconds: float, sample_rate: int, hop_length: int, multiple: int = 2) -> int:
    """Frames covering max_seconds, rounded up to a multiple (Whisper's encoder halves the frame count)."""
    return multiple * math.ceil(max_seconds * sample_rate / hop_length / multiple)


class FeatureMaker:
    sample_rate: int
    hop_length: int
    n_mels: int
    n_frames: Optional[int]  # None: as many frames as the clip has (padded per batch)
    deterministic = True  # False (e.g. an extractor with dither): never cached

    def __call__(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """[n_mels, n_frames] per clip ([n_mels, its own frames] when n_frames is None)."""
        return [extend_frames(f, self.n_frames) for f in self.short(waves)]

    def short(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Like __call__, but features may stop early: the missing frames repeat the last one (padding)."""
        raise NotImplementedError

    def spec(self) -> dict:
        raise NotImplementedError

    def content_frames(self, num_samples: int) -> int:
        """Frames that carry the clip (the rest is padding): for length-grouped batches and attention masks."""
        frames = num_samples // self.hop_length + 1
        return min(frames, self.n_frames) if self.n_frames else frames


def extend_frames(feats: np.ndarray, frames: Optional[int], tail: Optional[np.ndarray] = None) -> np.ndarray:
    """feats [n_mels, k] → [n_mels, frames], the new frames equal to `tail` (default: the last frame)."""
    if not frames or feats.shape[1] >= frames:
        return feats
    out = np.empty((feats.shape[0], frames), dtype=np.float32)
    out[:, :feats.shape[1]] = feats
    out[:, feats.shape[1]:] = (feats[:, -1] if tail is None else tail)[:, None]
    return out


def _jsonable(obj):
    if isinstance(obj, np.ndarray):  # hashed, so equal configs give equal records
        return "sha256:" + hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()
    return str(obj)


class ExtractorLogMel(FeatureMaker):
    """A transformers feature extractor (WhisperFeatureExtractor and alike) at a fixed window of n_frames.

    A clip much shorter than the window is run through the extractor at a window just past its end, and the
    last frame (pure padding) is repeated to n_frames (FSDD's ~0.4-s clips in the 30-s window: ~100x faster). Used only
    when a probe clip gives the same features both ways (true for Whisper, whose normalisation depends on the
    clip's peak, not on the padding)."""

    def __init__(self, extractor, n_frames: int):
        self.extractor, self.n_frames = extractor, n_frames
        self.sample_rate, self.hop_length = int(extractor.sampling_rate), int(extractor.hop_length)
        self.n_mels = int(extractor.feature_size)
        self.deterministic = not extractor.to_dict().get("dither", 0.0)
        self.margin = int(extractor.to_dict().get("n_fft", 400)) // self.hop_length + 2  # frames past the clip
        self.short_windows = self.deterministic and self._short_windows_exact()

    def _extract(self, waves: Sequence[np.ndarray], frames: int) -> np.ndarray:
        return self.extractor(list(waves), sampling_rate=self.sample_rate, return_tensors="np",
                              padding="max_length", truncation=True,
                              max_length=frames * self.hop_length)["input_features"].astype(np.float32)

    def _window(self, waves: Sequence[np.ndarray]) -> int:
        longest = max(len(w) for w in waves) // self.hop_length + self.margin
        return min(self.n_frames, longest + longest % 2)

    def _short_windows_exact(self) -> bool:
        rng = np.random.default_rng(0)
        t = np.arange(self.sample_rate // 2) / self.sample_rate
        probe = (0.3 * np.sin(2 * np.pi * 440 * t * (1 + t)) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
        window = self._window([probe])
        if window >= self.n_frames:
            return False
        full, short = self._extract([probe], self.n_frames)[0], self._extract([probe], window)[0]
        return bool(np.allclose(full[:, :window], short, atol=1e-5) and np.allclose(full[:, window:], short[:, -1:],
                                                                                     atol=1e-5))

    def short(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))  # similar lengths share a window
        for start in range(0, len(order), BATCH):
            batch = [waves[i] for i in order[start:start + BATCH]]
            out.extend(self._extract(batch, self._window(batch) if self.short_windows else self.n_frames))
        result: list[np.ndarray] = [np.empty(0)] * len(waves)
        for i, f in zip(order, out):
            result[i] = f
        return result

    def spec(self) -> dict:
        config = json.loads(json.dumps(self.extractor.to_dict(), sort_keys=True, default=_jsonable))
        return {"kind": "extractor", "class": type(self.extractor).__name__, "config": config,
                "n_frames": self.n_frames}


class TorchLogMel(FeatureMaker):
    """torchaudio MelSpectrogram (power) → dB, floored 80 dB under each clip's peak."""

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, n_fft: int = 400, hop_length: int = 160,
                 n_frames: Optional[int] = None, top_db: float = 80.0):
        transforms = audio_library("torchaudio.transforms")
        self.sample_rate, self.n_mels, self.n_fft, self.hop_length = sample_rate, n_mels, n_fft, hop_length
        self.n_frames, self.top_db = n_frames, top_db
        self.mel = transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, power=2.0)
        self.to_db = transforms.AmplitudeToDB("power", top_db=top_db)

    def short(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """With n_frames, each clip is zero-padded only a few frames past its end: later frames would be pure
        padding, equal to the last one (the dB floor is relative to the clip's peak, which padding never sets)."""
        out = []
        margin = self.n_fft // self.hop_length + 2  # the last frame's window lies wholly in the padding
        with torch.no_grad():
            for wave in waves:
                x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
                if self.n_frames:
                    width = min(self.n_frames, len(x) // self.hop_length + margin) * self.hop_length
                    x = torch.nn.functional.pad(x[:width], (0, max(0, width - len(x))))
                feats = self.to_db(self.mel(x))
                out.append(feats[:, :self.n_frames].numpy() if self.n_frames else feats.numpy())
        return out

    def spec(self) -> dict:
        return {"kind": "torchaudio-logmel-db", "sample_rate": self.sample_rate, "n_mels": self.n_mels,
                "n_fft": self.n_fft, "hop_length": self.hop_length, "n_frames": self.n_frames, "top_db": self.top_db}


def log_mel(extractor, dcfg, *, trim: bool = False, fixed_length: bool = False, n_mels: int = 80) -> FeatureMaker:
    """The feature maker for a model: its own extractor when it has one (`trim`: a window of n_frames covering
    data.max_seconds instead of the full one), else torchaudio log-mel at data.sample_rate (default 16 kHz),
    natural length or, with `fixed_length` (the CNN path), n_frames covering data.max_seconds."""
    if extractor is None:
        rate = dcfg.sample_rate or 16000
        hop = rate // 100  # 10 ms, 25-ms windows, as Whisper
        frames = frames_for(dcfg.max_seconds, rate, hop) if fixed_length else None
        return TorchLogMel(rate, n_mels, n_fft=rate // 40, hop_length=hop, n_frames=frames)
    config = extractor.to_dict()
    missing = [k for k in ("sampling_rate", "hop_length", "feature_size") if k not in config]
    if missing:
        raise ModelError(f"feature extractor {type(extractor).__name__} has no {', '.join(missing)}; audio features "
                         "support Whisper-style extractors (log-mel input_features)")
    rate = int(extractor.sampling_rate)
    if dcfg.sample_rate and dcfg.sample_rate != rate:
        raise ConfigError(f"data.sample_rate {dcfg.sample_rate} differs from the model's feature extractor "
                          f"({rate} Hz); remove data.sample_rate (clips are resampled to the model's rate)")
    window = int(config.get("nb_max_frames") or 0)
    frames = frames_for(dcfg.max_seconds, rate, int(extractor.hop_length))
    if window and frames > window:
        raise ConfigError(f"data.max_seconds {dcfg.max_seconds:g} is longer than the model's "
                          f"{window * extractor.hop_length / rate:g}-s window; lower it (longer clips are not chunked)")
    return ExtractorLogMel(extractor, frames if trim or not window else window)


def spectrogram_image(logmel: torch.Tensor, size, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A log-mel [n_mels, T] as a normalised 3-channel image [3, H, W] (row 0 = lowest mel band)."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    x = logmel.float()
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-6)  # [0, 1] per clip, as pixel values
    x = torch.nn.functional.interpolate(x[None, None], size=(h, w), mode="bilinear", align_corners=False)[0]
    x = x.expand(3, h, w)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


# ---------------------------------------------------------------- on-disk cache of deterministic features


class StoredFeatures:
    """Features of N clips, trailing repeats of the last frame stored once (bodies concatenated on time)."""

    def __init__(self, bodies: np.ndarray, offsets: np.ndarray, tails: np.ndarray, frames: np.ndarray):
        self.bodies, self.offsets, self.tails, self.frames = bodies, offsets, tails, frames

    @classmethod
    def pack(cls, feats: Iterable[np.ndarray], n_frames: Optional[int]) -> "StoredFeatures":
        """From `FeatureMaker.short` output: each clip's features up to where they only repeat the last frame."""
        bodies, tails, frames = [], [], []
        for f in feats:
            differs = np.flatnonzero((f != f[:, -1:]).any(axis=0))
            bodies.append(np.ascontiguousarray(f[:, :int(differs[-1]) + 1 if len(differs) else 1], dtype=np.float32))
            tails.append(f[:, -1].copy())  # not a view: it would keep the whole extractor batch alive
            frames.append(max(n_frames or 0, f.shape[1]))
        offsets = np.cumsum([0] + [b.shape[1] for b in bodies])
        return cls(np.concatenate(bodies, axis=1), offsets, np.stack(tails).astype(np.float32), np.array(frames))

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> np.ndarray:
        body = self.bodies[:, self.offsets[i]:self.offsets[i + 1]]
        return extend_frames(np.array(body, dtype=np.float32), int(self.frames[i]), self.tails[i])  # writable copy

    def arrays(self) -> dict[str, np.ndarray]:
        return {"bodies": self.bodies, "offsets": self.offsets, "tails": self.tails, "frames": self.frames}


def input_digest(refs: Sequence[AudioRef]) -> str:
    """The clips: each file's path, size and mtime, or an array's samples."""
    h = hashlib.sha256()
    for ref in refs:
        if isinstance(ref, str):
            st = os.stat(ref)
            h.update(f"{os.path.abspath(ref)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        else:
            h.update(b"array\0" + np.ascontiguousarray(ref, dtype=np.float32).tobytes() + b"\n")
    return h.hexdigest()


def feature_record(refs: Sequence[AudioRef], sample_rate: int, maker: FeatureMaker, max_seconds: float) -> dict:
    """Exactly what determines the cached features."""
    return {"format": 1, "rows": len(refs), "inputs_sha256": input_digest(refs), "sample_rate": sample_rate,
            "max_seconds": max_seconds, "resampler": RESAMPLER, "features": maker.spec()}


def _write_entry(path: Path, record_text: str, stored: StoredFeatures) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, arr in stored.arrays().items():
        np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
    (tmp / "record.json").write_text(record_text, encoding="utf-8")
    for f in tmp.iterdir():
        fsync_path(f)
    fsync_path(tmp)
    try:
        os.replace(tmp, path)  # another process may have stored the same entry first: keep theirs
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_path(path.parent)


def _read_entry(path: Path, record_text: str, rows: int) -> StoredFeatures:
    if (path / "record.json").read_text(encoding="utf-8") != record_text:
        raise ValueError("its record differs from what is fed")
    arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r" if name == "bodies" else None, allow_pickle=False)
              for name in ("bodies", "offsets", "tails", "frames")}
    stored = StoredFeatures(**arrays)
    if len(stored) != rows or len(stored.offsets) != rows + 1 or stored.offsets[-1] != stored.bodies.shape[1]:
        raise ValueError(f"{len(stored)} rows stored, {rows} expected")
    return stored


def compute_features(refs: Sequence[AudioRef], cache: AudioCache, maker: FeatureMaker) -> Iterator[np.ndarray]:
    """Features clip by clip, decoding a chunk at a time (clips the cache does not hold are not all in memory)."""
    for start in range(0, len(refs), AudioCache.CHUNK):
        yield from maker.short([cache.get(r) for r in refs[start:start + AudioCache.CHUNK]])


def cached_features(refs: Sequence[AudioRef], cache: AudioCache, maker: FeatureMaker, max_seconds: float,
                    log=print) -> StoredFeatures:
    """Features of every clip, from the disk cache or computed now (and stored; a read-only cache is no error)."""
    record = feature_record(refs, cache.sample_rate, maker, max_seconds)
    record_text = json.dumps(record, sort_keys=True)
    path = cache_dir("features") / f"audio-{hashlib.sha256(record_text.encode()).hexdigest()[:32]}"
    if path.is_dir():
        try:
            stored = _read_entry(path, record_text, len(refs))
            log(f"audio feature cache: hit {path.name} ({len(refs)} clips)")
            return stored
        except (OSError, ValueError, KeyError, EOFError) as e:
            log(f"audio feature cache: entry {path.name} is unusable ({str(e)[:120]}); deleted, recomputing")
            shutil.rmtree(path, ignore_errors=True)
    stored = StoredFeatures.pack(compute_features(refs, cache, maker), maker.n_frames)
    try:
        _write_entry(path, record_text, stored)
        log(f"audio feature cache: stored {len(refs)} clips, {stored.bodies.nbytes / 2**20:.1f} MB → {path.name}")
    except OSError as e:
        log(f"audio feature cache: not stored ({e}); features kept in memory")
    return stored
