"""Train-time audio augmentation (off by default): time shift, gain and additive noise on the waveform, then
SpecAugment time / frequency masks on the log-mel features (torchaudio's TimeMasking / FrequencyMasking).

Randomness: every draw comes from torch's global RNG of the process that builds the item. With
data.num_workers: 0 (the default) that is the main process, whose torch RNG state the checkpoints save and a
resumed run restores, so a resumed run replays the same augmentation; with worker processes it does not (each
worker has its own seed). Passing `generator=` instead draws one seed from that generator and runs the same ops
under it, leaving the global RNG untouched.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from tuneforge.data.audio import audio_library, read_clip
from tuneforge.data.audio_readers import list_audio_files
from tuneforge.errors import ConfigError, DataError


@contextlib.contextmanager
def _rng_scope(generator: Optional[torch.Generator]):
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):  # the global RNG is restored on exit
        torch.manual_seed(seed)
        yield


def changes_waveform(aug) -> bool:
    """Whether data.augment asks for waveform augmentation (then features cannot be computed once)."""
    return aug.enabled and (aug.time_shift_ms > 0 or aug.gain_db > 0
                            or (aug.noise_snr_db is not None and aug.noise_prob > 0))


def masks_features(aug) -> bool:
    s = aug.spec_augment
    return aug.enabled and s is not None and (s.time_masks * s.time_width + s.freq_masks * s.freq_width) > 0


def augments_audio(aug) -> bool:
    """Whether train clips are augmented at all (False: train inputs are deterministic)."""
    return changes_waveform(aug) or masks_features(aug)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


class AudioAugment:
    def __init__(self, aug, sample_rate: int, max_samples: int, noise_clips: Optional[list[np.ndarray]] = None):
        """`aug` is data.augment; `noise_clips`: decoded clips at sample_rate (None: white noise)."""
        self.aug, self.sample_rate, self.max_samples = aug, sample_rate, max_samples
        self.noise_clips = noise_clips or []
        self.changes_waveform = changes_waveform(aug)
        self.masks: list[torch.nn.Module] = []
        if masks_features(aug):
            transforms = audio_library("torchaudio.transforms")
            s = aug.spec_augment
            freq = [transforms.FrequencyMasking(s.freq_width)] * s.freq_masks if s.freq_width else []
            time = [transforms.TimeMasking(s.time_width)] * s.time_masks if s.time_width else []
            self.masks = freq + time  # the same stateless module applied `count` times

    def wave(self, wave: np.ndarray, generator: Optional[torch.Generator] = None) -> np.ndarray:
        """Shift, gain, noise (each only when configured), at most max_samples long."""
        with _rng_scope(generator):
            x = torch.from_numpy(np.asarray(wave, dtype=np.float32))
            a = self.aug
            if a.time_shift_ms > 0:
                x = self._shift(x, round(_uniform(-a.time_shift_ms, a.time_shift_ms) * self.sample_rate / 1000))
            if a.gain_db > 0:
                x = x * 10 ** (_uniform(-a.gain_db, a.gain_db) / 20)
            if a.noise_snr_db is not None and float(torch.rand(())) < a.noise_prob:
                x = self._noise(x)
            return x[:self.max_samples].numpy()

    @staticmethod
    def _shift(x: torch.Tensor, samples: int) -> torch.Tensor:
        """Positive: the clip starts later (leading silence); negative: its first samples are cut."""
        if samples >= 0:
            return torch.cat([x.new_zeros(samples), x])
        return x[min(-samples, len(x) - 1):]

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        add_noise = audio_library("torchaudio.functional").add_noise
        snr = self.aug.noise_snr_db
        snr = _uniform(*snr) if isinstance(snr, tuple) else float(snr)
        if self.noise_clips:
            clip = torch.from_numpy(self.noise_clips[int(torch.randint(len(self.noise_clips), ()))])
            reps = -(-len(x) // len(clip)) + 1  # tiled, so any offset leaves a full-length window
            start = int(torch.randint(len(clip), ()))
            noise = clip.repeat(reps)[start:start + len(x)]
        else:
            noise = torch.randn(len(x))
        return add_noise(x[None], noise[None], torch.tensor([snr]))[0]

    def spec(self, feats: torch.Tensor, content_frames: int,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """SpecAugment masks on [n_mels, frames], time masks within the clip's own frames (not its padding);
        masked cells take the clip's mean value."""
        if not self.masks:
            return feats
        with _rng_scope(generator):
            out = feats.clone()
            body = out[:, :content_frames]
            fill = float(body.mean())
            for mask in self.masks:
                body = mask(body, fill)
            out[:, :content_frames] = body
            return out


def load_noise_clips(folder: str, sample_rate: int, max_seconds: float, base: Optional[str] = None,
                     log=print) -> list[np.ndarray]:
    """Every readable, non-silent clip in data.augment.noise_dir (relative paths from data.dir)."""
    root = Path(folder).expanduser()
    root = root if root.is_absolute() or base is None else Path(base).expanduser() / root
    if not root.is_dir():
        raise ConfigError(f"data.augment.noise_dir '{root}' is not a folder")
    clips, unusable = [], 0
    for f in list_audio_files(root):
        try:
            wave, info = read_clip(str(f), sample_rate, max_seconds)
        except DataError:
            unusable += 1
            continue
        if info.peak > 0 and float(np.square(wave).sum()) > 0:  # a silent clip cannot be scaled to an SNR
            clips.append(wave)
        else:
            unusable += 1
    if not clips:
        raise ConfigError(f"data.augment.noise_dir '{root}' holds no readable, non-silent audio file")
    log(f"augment: {len(clips)} noise clips from {root}" + (f" ({unusable} unreadable or silent, unused)"
                                                          if unusable else ""))
    return clips


def audio_augment(dcfg, sample_rate: int, log=print) -> Optional[AudioAugment]:
    """The train augmentation data.augment asks for, or None when it asks for none (or enabled is false)."""
    aug = dcfg.augment
    if not augments_audio(aug):
        return None
    noise = None
    if changes_waveform(aug) and aug.noise_dir and aug.noise_snr_db is not None:
        noise = load_noise_clips(aug.noise_dir, sample_rate, max(dcfg.max_seconds, 10.0), dcfg.dir, log)
    return AudioAugment(aug, sample_rate, int(round(dcfg.max_seconds * sample_rate)), noise)
