"""Audio decoding: soundfile (libsndfile, no FFmpeg) → float32 mono at the model's sample rate, trimmed to
data.max_seconds (padding happens at batching); a decode-once cache that validates every input and says which
inputs it dropped; the audio part of the data report.

Contract:
- `decode_audio(path, sample_rate, max_seconds)` returns a 1-D float32 array, channels averaged, resampled with
  torchaudio's windowed-sinc resampler (Kaiser window, 16 zero crossings: a 1 kHz sine resampled 44.1 → 16 kHz is
  within 4e-6 of the exact sine, and a 9 kHz tone, above the new Nyquist frequency, comes out 47 dB down).
  An unreadable, empty, truncated (WAV data shorter than its header says), non-finite or too short
  (data.min_seconds) file is a one-line DataError naming the file and the fix.
- `AudioCache.prepare(examples, on_bad, log)` decodes every file once (threads), raises the first bad file, or with
  data.on_bad_sample: skip drops it and returns a `Selection`: the kept examples, their indices in the input
  and a message per dropped index, so predict can give one output per input (`align_outputs`).
- In-memory inputs are 1-D arrays already at the target rate, or (array, sample_rate) pairs.
"""
from __future__ import annotations

import importlib
import math
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from tuneforge.data.examples import Examples
from tuneforge.data.report import _percentiles
from tuneforge.errors import ConfigError, DataError

AudioRef = Union[str, np.ndarray, tuple]  # a file path, samples at the target rate, or (samples, sample_rate)
CLIP_LEVEL = 0.999  # |x| at or above this counts as clipped (full scale is 1.0)
SILENT_PEAK = 1e-4  # a clip whose peak is below this (-80 dBFS) is reported as silent
# torchaudio's Kaiser-windowed sinc (librosa's "kaiser_best" window at a quarter of its width: ~3x the cost of
# torchaudio's default Hann filter, whose aliasing rejection is 30 dB weaker just above the new Nyquist frequency)
RESAMPLER = {"resampling_method": "sinc_interp_kaiser", "lowpass_filter_width": 16, "rolloff": 0.945,
             "beta": 14.769656459379492}
_resamplers: dict[tuple[int, int], torch.nn.Module] = {}
_resamplers_lock = threading.Lock()


@dataclass(frozen=True)
class ClipInfo:
    """What the file held, before mono down-mix, resampling and trimming (for the data report)."""

    sample_rate: int
    channels: int
    seconds: float  # the whole file
    samples: int  # samples read (all channels), up to max_seconds
    clipped: int  # of those, how many at |x| >= CLIP_LEVEL
    peak: float
    truncated: bool  # longer than max_seconds


def audio_library(name: str):
    """soundfile / torchaudio, or a one-line error saying how to install them."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(f"audio data needs the '{name.split('.')[0]}' package; "
                          "pip install 'tuneforge[audio]'") from None


def _bad(path, reason: str, fix: str = "replace or remove the file") -> DataError:
    return DataError(f"{path}: {reason}; {fix}, or set data.on_bad_sample: skip")


def resample(wave: np.ndarray, orig: int, new: int) -> np.ndarray:
    if orig == new:
        return wave
    Resample = audio_library("torchaudio.transforms").Resample  # imported only when audio is used
    with _resamplers_lock:  # the filter kernel is built once per rate pair
        op = _resamplers.get((orig, new))
        if op is None:
            op = _resamplers[(orig, new)] = Resample(orig, new, **RESAMPLER)
    with torch.no_grad():
        return op(torch.from_numpy(np.ascontiguousarray(wave))).numpy()


def _wav_shortfall(sound) -> Optional[str]:
    """libsndfile reads a cut-off WAV without complaint; its header log says 'data : N (should be M)'."""
    m = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", sound.extra_info, re.MULTILINE)
    if m and int(m.group(2)) < int(m.group(1)) < 0xFFFFFFFF:  # 0xFFFFFFFF: size unknown (streamed), not cut
        return f"truncated (the header promises {m.group(1)} bytes of audio, the file holds {m.group(2)})"
    return None


def _read_file(path: str, max_seconds: float) -> tuple[np.ndarray, int, int]:
    """→ ([frames, channels] float32 up to max_seconds, sample rate, frames in the whole file)."""
    sf = audio_library("soundfile")
    try:
        with sf.SoundFile(path) as sound:
            short = _wav_shortfall(sound)
            if short:
                raise _bad(path, short, "re-export or re-download it")
            rate, total = sound.samplerate, sound.frames
            data = sound.read(min(total, math.ceil(max_seconds * rate)), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, EOFError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise _bad(path, f"not readable audio ({reason})") from None
    return data, rate, total


def read_clip(path: str, sample_rate: int, max_seconds: float,
              min_seconds: float = 0.0) -> tuple[np.ndarray, ClipInfo]:
    data, rate, total = _read_file(path, max_seconds)
    if data.size == 0:
        raise _bad(path, "holds no audio samples (0 frames)")
    if total / rate < min_seconds:
        raise _bad(path, f"{total / rate:.3f} s long, shorter than data.min_seconds ({min_seconds})",
                   "remove it or lower data.min_seconds")
    if not np.isfinite(data).all():
        raise _bad(path, "contains NaN or infinite samples")
    magnitude = np.abs(data)
    info = ClipInfo(rate, data.shape[1], total / rate, int(data.size), int((magnitude >= CLIP_LEVEL).sum()),
                    float(magnitude.max()), total / rate > max_seconds)
    return _finish(data.mean(axis=1), rate, sample_rate, max_seconds), info


def _finish(mono: np.ndarray, rate: int, sample_rate: int, max_seconds: float) -> np.ndarray:
    wave = resample(np.ascontiguousarray(mono, dtype=np.float32), rate, sample_rate)
    return np.ascontiguousarray(wave[:int(round(max_seconds * sample_rate))], dtype=np.float32)


def clip_seconds(refs: list, limit: int = 2000) -> list[float]:
    """Durations of up to `limit` clips (evenly spread), from file headers alone (nothing decoded); in-memory
    clips by their length. Unreadable files are left out here: decoding reports them, with the fix."""
    sf = audio_library("soundfile")
    step = max(1, math.ceil(len(refs) / limit))
    out = []
    for ref in refs[::step]:
        if isinstance(ref, (str, Path)):
            try:
                info = sf.info(str(ref))
                out.append(info.frames / info.samplerate)
            except (sf.LibsndfileError, RuntimeError, OSError, ValueError, ZeroDivisionError):
                continue
        elif isinstance(ref, tuple):
            out.append(len(ref[0]) / ref[1])
    return out


def decode_audio(path: str, sample_rate: int, max_seconds: float) -> np.ndarray:
    """A file → float32 mono at `sample_rate`, at most `max_seconds` long."""
    return read_clip(path, sample_rate, max_seconds)[0]


def _in_memory(ref, sample_rate: int, max_seconds: float) -> tuple[np.ndarray, ClipInfo]:
    samples, rate = ref if isinstance(ref, tuple) else (ref, sample_rate)
    data = np.asarray(samples, dtype=np.float32)
    data = data.reshape(len(data), -1) if data.ndim > 1 else data[:, None]  # [frames, channels]
    if data.size == 0 or not np.isfinite(data).all():
        raise _bad("in-memory clip", "empty or not finite", "pass float samples")
    magnitude = np.abs(data)
    info = ClipInfo(int(rate), data.shape[1], len(data) / rate, int(data.size), int((magnitude >= CLIP_LEVEL).sum()),
                    float(magnitude.max()), len(data) / rate > max_seconds)
    return _finish(data.mean(axis=1), int(rate), sample_rate, max_seconds), info


@dataclass
class Selection:
    """The examples that decoded, where they were in the input, and why the others were dropped."""

    examples: Examples
    kept: list[int]  # input index of each kept example
    infos: list[ClipInfo]  # one per kept example
    dropped: dict[int, str] = field(default_factory=dict)  # input index → message


class AudioCache:
    """Decodes every clip once (in parallel), validating all of them, and keeps up to `max_mb` of samples."""

    CHUNK = 256  # files in flight at once: bounded memory however many clips exceed the cache

    def __init__(self, sample_rate: int, max_seconds: float, max_mb: int, min_seconds: float = 0.0):
        self.sample_rate, self.max_seconds, self.min_seconds = sample_rate, max_seconds, min_seconds
        self.max_bytes, self.used = max_mb * 2**20, 0
        self.store: dict[str, np.ndarray] = {}
        self.samples: dict[str, int] = {}  # samples per decoded file at the target rate, kept in memory or not

    def _one(self, ref) -> tuple[Optional[np.ndarray], Optional[ClipInfo], Optional[str]]:
        try:
            if isinstance(ref, str):
                return (*read_clip(ref, self.sample_rate, self.max_seconds, self.min_seconds), None)
            return (*_in_memory(ref, self.sample_rate, self.max_seconds), None)
        except DataError as e:
            return None, None, str(e)

    def prepare(self, examples: Examples, on_bad: str, log=print) -> Selection:
        inputs, labels, where = [], [], []
        kept, infos, dropped = [], [], {}
        workers = max(2, min(8, torch.get_num_threads()))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(examples), self.CHUNK):
                refs = examples.inputs[start:start + self.CHUNK]
                for i, (wave, info, err) in enumerate(pool.map(self._one, refs), start):
                    if err:
                        if on_bad != "skip":
                            raise DataError(err)
                        dropped[i] = err
                        continue
                    inputs.append(self._keep(examples.inputs[i], wave))
                    labels.append(None if examples.labels is None else examples.labels[i])
                    where.append(examples.where[i])
                    kept.append(i)
                    infos.append(info)
        if dropped:
            log(f"data: skipped {len(dropped)} unreadable audio file(s) (data.on_bad_sample: skip); "
                f"first: {next(iter(dropped.values()))}")
        kept_ex = Examples(inputs, None if examples.labels is None else labels, where,
                           list(examples.skipped) + list(dropped.values()), dropped=dict(dropped))
        return Selection(kept_ex, kept, infos, dropped)

    def _keep(self, ref, wave: np.ndarray) -> AudioRef:
        if not isinstance(ref, str):
            return wave  # in-memory input: from here on, samples at the target rate
        self.samples[ref] = len(wave)
        if ref not in self.store and self.used + wave.nbytes <= self.max_bytes:
            self.store[ref] = wave
            self.used += wave.nbytes
        return ref

    def get(self, ref: AudioRef) -> np.ndarray:
        """Samples at the target rate (a path not kept in memory is decoded again)."""
        if isinstance(ref, np.ndarray):
            return ref
        wave = self.store.get(ref)
        return wave if wave is not None else decode_audio(ref, self.sample_rate, self.max_seconds)

    def num_samples(self, ref: AudioRef) -> int:
        """Samples at the target rate (known without decoding for every file `prepare` has seen)."""
        if isinstance(ref, np.ndarray):
            return len(ref)
        n = self.samples.get(ref)
        return n if n is not None else len(self.get(ref))


# ---------------------------------------------------------------- data report


def audio_report(infos: Sequence[ClipInfo], max_seconds: float, labels: Optional[Sequence] = None) -> dict:
    """Durations, sample rates and channels of the original files, clipping, silence and truncation."""
    if not infos:
        return {"clips": 0}
    samples = sum(i.samples for i in infos)
    report = {
        "clips": len(infos),
        "hours": round(sum(i.seconds for i in infos) / 3600, 4),
        "seconds": _percentiles([i.seconds for i in infos]),
        "sample_rates": dict(sorted(Counter(i.sample_rate for i in infos).items())),
        "channels": dict(sorted(Counter(i.channels for i in infos).items())),
        "clipped_share": round(sum(i.clipped for i in infos) / max(samples, 1), 6),
        "clips_over_0.1pct_clipped": sum(1 for i in infos if i.clipped > 0.001 * i.samples),
        "silent_clips": sum(1 for i in infos if i.peak < SILENT_PEAK),
        "truncated_clips": sum(1 for i in infos if i.truncated),
        "max_seconds": max_seconds,
    }
    if labels is not None:  # a class whose clips are much longer or shorter is a shortcut the model can learn
        by_class: dict[str, list[float]] = {}
        for info, label in zip(infos, labels):
            by_class.setdefault(str(label), []).append(info.seconds)
        report["median_seconds_per_class"] = {k: round(float(np.median(v)), 3) for k, v in sorted(by_class.items())}
    return report


def describe_audio(report: dict) -> list[str]:
    if not report.get("clips"):
        return ["data report: audio 0 clips"]
    p = report["seconds"]
    rates = ", ".join(f"{k} Hz: {v}" for k, v in report["sample_rates"].items())
    channels = ", ".join(f"{k}: {v}" for k, v in report["channels"].items())
    return [f"data report: audio {report['clips']} clips, {report['hours']:.2f} h; seconds p5 {p['p5']:.2f} / "
            f"median {p['p50']:.2f} / p95 {p['p95']:.2f} / max {p['max']:.2f}; {report['truncated_clips']} longer "
            f"than data.max_seconds ({report['max_seconds']:g} s, truncated)",
            f"data report: audio sample rates {rates}; channels {channels}; "
            f"{100 * report['clipped_share']:.3f}% of samples clipped, {report['clips_over_0.1pct_clipped']} clips "
            f"over 0.1% clipped; {report['silent_clips']} silent clips"]
