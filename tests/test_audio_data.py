"""Audio data layer: readers (class folders, tables, file-name regex), decoding (resampling, mono, trimming, bad
files), the decode cache and predict alignment, the data report, features (Whisper extractor, torchaudio, CNN
image), the disk feature cache, augmentation determinism, dataset + collate. Synthetic clips only."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

sf = pytest.importorskip("soundfile", reason="audio extra not installed (pip install '.[audio]')")
pytest.importorskip("torchaudio", reason="audio extra not installed (pip install '.[audio]')")

from tuneforge.config import load_config
from tuneforge.data.audio import AudioCache, audio_report, decode_audio, describe_audio, read_clip
from tuneforge.data.audio_augment import AudioAugment, audio_augment
from tuneforge.data.audio_dataset import AudioCollate, SpectrogramImage, build_audio_inputs
from tuneforge.utils import cache_dir
from tuneforge.data.audio_features import (ExtractorLogMel, TorchLogMel, cached_features, log_mel,
                                           spectrogram_image)
from tuneforge.data.examples import Examples
from tuneforge.data.sources import FILE_READERS, read_split
from tuneforge.errors import ConfigError, DataError

SHARED_DATA = Path(os.environ.get("TUNEFORGE_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared"
                   / "data")  # the env variable serves worktrees that sit elsewhere
FSDD = SHARED_DATA / "fsdd" / "recordings"
FREQS = {"low": 300.0, "high": 2000.0}


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path, threads):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(threads)


def sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def write_wav(path: Path, data: np.ndarray, sr: int, subtype: str = "PCM_16") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, subtype=subtype)
    return str(path)


def cfg(**data):
    return load_config({"model": "x", "data": {"dir": "unused", **data}})


def quiet(*_a, **_k):
    pass


def one_line_error(fn, *args, kind=DataError, **kwargs) -> str:
    with pytest.raises(kind) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.fixture
def class_tree(tmp_path) -> Path:
    """root/{train,val}/{low,high}/*.wav: 8 and 16 kHz, one stereo file, hidden files to skip."""
    root = tmp_path / "tree"
    for split, n in (("train", 4), ("val", 2)):
        for label, f in FREQS.items():
            for i in range(n):
                sr = 8000 if i % 2 else 16000
                write_wav(root / split / label / f"{label}_{i}.wav", sine(f, sr, 0.3 + 0.05 * i), sr)
    write_wav(root / "train" / "low" / "stereo.flac", np.stack([sine(300, 16000, 0.3)] * 2, axis=1), 16000)
    write_wav(root / "train" / "low" / "._low_0.wav", sine(300, 8000, 0.1), 8000)  # macOS metadata: skipped
    write_wav(root / "train" / ".cache" / "x.wav", sine(300, 8000, 0.1), 8000)  # hidden folder: skipped
    (root / "train" / "low" / "notes.txt").write_text("not audio")
    return root


# ------------------------------------------------------------------ readers


def test_class_folder_splits_are_discovered(class_tree):
    c = cfg(dir=str(class_tree))
    train = read_split(c.data, "audio", "train", quiet)
    val = read_split(c.data, "audio", "val", quiet)
    assert len(train) == 9 and len(val) == 4
    assert sorted(set(train.labels)) == ["high", "low"]
    assert not any(Path(p).name.startswith(".") or "/.cache/" in p for p in train.inputs)
    assert any(p.endswith("stereo.flac") for p in train.inputs)


def test_table_reader_relative_paths_and_missing_file(tmp_path):
    write_wav(tmp_path / "clips" / "a.wav", sine(300, 8000, 0.2), 8000)
    write_wav(tmp_path / "clips" / "b.wav", sine(2000, 8000, 0.2), 8000)
    (tmp_path / "train.csv").write_text("path,label\nclips/a.wav,low\nclips/b.wav,high\n")
    ex = read_split(cfg(dir=str(tmp_path)).data, "audio", "train", quiet)
    assert ex.inputs == [str(tmp_path / "clips" / "a.wav"), str(tmp_path / "clips" / "b.wav")]
    assert ex.labels == ["low", "high"] and ex.where[1].endswith("train.csv line 3")
    (tmp_path / "train.csv").write_text("path,label\nclips/a.wav,low\nclips/gone.wav,high\nclips/b.wav,high\n")
    msg = one_line_error(read_split, cfg(dir=str(tmp_path)).data, "audio", "train", quiet)
    assert "train.csv line 3" in msg and "gone.wav" in msg and "on_bad_sample" in msg
    ex = read_split(cfg(dir=str(tmp_path), on_bad_sample="skip").data, "audio", "train", quiet)
    assert len(ex) == 2 and len(ex.skipped) == 1
    msg = one_line_error(read_split, cfg(dir=str(tmp_path), label_column="class").data, "audio", "train", quiet)
    assert "no column 'class'" in msg and "data.label_column" in msg


def test_regex_labels_from_file_names(tmp_path):
    rec = tmp_path / "recordings"
    for digit in range(3):
        for idx in range(4):
            write_wav(rec / f"{digit}_spk_{idx}.wav", sine(300 + 200 * digit, 8000, 0.2), 8000)
    c = cfg(dir=str(rec), label_from={"regex": r"^(\d)_"})
    ex = read_split(c.data, "audio", "train", quiet)
    assert len(ex) == 12 and sorted(set(ex.labels)) == ["0", "1", "2"]
    write_wav(rec / "noise.wav", sine(300, 8000, 0.2), 8000)
    msg = one_line_error(read_split, c.data, "audio", "train", quiet)
    assert "noise.wav" in msg and r"^(\d)_" in msg
    skip = cfg(dir=str(rec), label_from={"regex": r"^(\d)_"}, on_bad_sample="skip")
    ex = read_split(skip.data, "audio", "train", quiet)
    assert len(ex) == 12 and len(ex.skipped) == 1 and "noise.wav" in ex.skipped[0]
    # FSDD-style split: tables of paths, labels still from the names
    (tmp_path / "train.csv").write_text("path\n" + "".join(f"recordings/{d}_spk_{i}.wav\n" for d in range(3)
                                                          for i in range(1, 4)))
    (tmp_path / "val.csv").write_text("path\n" + "".join(f"recordings/{d}_spk_0.wav\n" for d in range(3)))
    c = cfg(dir=str(tmp_path), label_from={"regex": r"^(\d)_"})
    train, val = (read_split(c.data, "audio", s, quiet) for s in ("train", "val"))
    assert (len(train), len(val)) == (9, 3) and val.labels == ["0", "1", "2"]


def test_regex_is_checked_at_config_time():
    msg = one_line_error(cfg, label_from={"regex": "(\\d"}, kind=ConfigError)
    assert "data.label_from.regex" in msg and "regular expression" in msg
    msg = one_line_error(cfg, label_from={"regex": "\\d_"}, kind=ConfigError)
    assert "group" in msg


def test_transcript_reader_and_predict_listing(tmp_path):
    write_wav(tmp_path / "a.wav", sine(300, 16000, 0.2), 16000)
    write_wav(tmp_path / "b.wav", sine(300, 16000, 0.2), 16000)
    (tmp_path / "train.jsonl").write_text('{"path": "a.wav", "text": "hello"}\n{"path": "b.wav", "text": " "}\n')
    c = cfg(dir=str(tmp_path))
    msg = one_line_error(read_split, c.data, "audio", "train", quiet, reader="audio_text")
    assert "train.jsonl line 2" in msg and "empty transcript" in msg
    ex = read_split(cfg(dir=str(tmp_path), on_bad_sample="skip").data, "audio", "train", quiet, reader="audio_text")
    assert ex.labels == ["hello"]
    listed = FILE_READERS.get("audio")(tmp_path, c.data, quiet, need_label=False)
    assert listed.labels is None and [Path(p).name for p in listed.inputs] == ["a.wav", "b.wav"]


# ------------------------------------------------------------------ decoding


def test_resampling_keeps_the_frequency(tmp_path):
    path = write_wav(tmp_path / "tone.wav", sine(1000, 8000, 1.0), 8000, "FLOAT")
    wave = decode_audio(path, 16000, 30)
    assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) == 16000
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 1000) <= 1.0
    middle = slice(800, -800)  # away from the edges: within 1e-4 of the exact 1 kHz sine at 16 kHz
    assert np.abs(wave[middle] - sine(1000, 16000, 1.0)[middle]).max() < 1e-4
    # a 9 kHz tone is above the new Nyquist frequency (8 kHz): the anti-aliasing filter must remove it
    path = write_wav(tmp_path / "high.wav", sine(9000, 44100, 1.0), 44100, "FLOAT")
    alias = decode_audio(path, 16000, 30)[1000:-1000]
    assert 20 * np.log10(np.sqrt(np.square(alias).mean()) / np.sqrt(0.125)) < -40  # torchaudio's default: -17 dB


def test_mono_downmix_and_trimming(tmp_path):
    left, right = np.full(16000, 0.5, np.float32), np.full(16000, 0.1, np.float32)
    path = write_wav(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, "FLOAT")
    wave, info = read_clip(path, 16000, max_seconds=0.25)
    assert len(wave) == 4000 and np.allclose(wave, 0.3)
    assert (info.channels, info.sample_rate, info.truncated) == (2, 16000, True) and info.seconds == 1.0


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "no_frames", "nan"])
def test_bad_files_are_one_line_errors(tmp_path, kind):
    path = tmp_path / f"{kind}.wav"
    good = tmp_path / "good.wav"
    write_wav(good, sine(440, 8000, 0.5), 8000)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    elif kind == "text":
        path.write_text("this is not audio\n")
    elif kind == "no_frames":
        write_wav(path, np.zeros(0, np.float32), 8000)
    else:
        write_wav(path, np.array([0.1, np.nan, 0.2] * 100, np.float32), 8000, "FLOAT")
    msg = one_line_error(decode_audio, str(path), 16000, 30)
    assert str(path) in msg and "on_bad_sample" in msg


def test_min_seconds(tmp_path):
    path = write_wav(tmp_path / "short.wav", sine(440, 8000, 0.1), 8000)
    msg = one_line_error(read_clip, path, 16000, 30, min_seconds=0.5)
    assert "data.min_seconds" in msg


# ------------------------------------------------------------------ cache, alignment, report


def test_skip_keeps_input_indices_for_predict(tmp_path):
    good = [write_wav(tmp_path / f"g{i}.wav", sine(300, 8000, 0.2), 8000) for i in range(3)]
    (tmp_path / "bad.wav").write_bytes(b"")
    inputs = [good[0], str(tmp_path / "bad.wav"), good[1], (sine(300, 8000, 0.2), 8000), good[2]]
    ex = Examples(inputs, None, [f"input #{i + 1}" for i in range(5)])
    with pytest.raises(DataError):
        AudioCache(16000, 30, 64).prepare(ex, "error", quiet)
    cache = AudioCache(16000, 30, 64)
    sel = cache.prepare(ex, "skip", quiet)
    assert sel.kept == [0, 2, 3, 4] and list(sel.dropped) == [1] and "bad.wav" in sel.dropped[1]
    assert isinstance(sel.examples.inputs[2], np.ndarray) and len(sel.examples.inputs[2]) == 3200  # resampled
    assert sel.examples.dropped == sel.dropped  # predict answers input #2 with an error line in its place


def test_memory_bound_and_redecode(tmp_path):
    paths = [write_wav(tmp_path / f"{i}.wav", sine(300, 16000, 1.0), 16000) for i in range(3)]
    cache = AudioCache(16000, 30, max_mb=0)
    sel = cache.prepare(Examples(paths, ["a"] * 3, paths), "error", quiet)
    assert cache.used == 0 and len(sel.kept) == 3
    assert cache.num_samples(paths[0]) == 16000 and np.allclose(cache.get(paths[0]), sine(300, 16000, 1.0), atol=1e-4)


def test_report_values(tmp_path):
    clipped = np.clip(sine(300, 16000, 1.0, amp=1.5), -1, 1)
    paths = [write_wav(tmp_path / "a.wav", sine(300, 8000, 1.0), 8000),
             write_wav(tmp_path / "b.wav", np.stack([sine(300, 16000, 2.0)] * 2, axis=1), 16000),
             write_wav(tmp_path / "c.wav", clipped, 16000, "FLOAT"),
             write_wav(tmp_path / "d.wav", np.zeros(8000, np.float32), 8000)]
    sel = AudioCache(16000, 1.5, 64).prepare(Examples(paths, list("xxyy"), paths), "error", quiet)
    rep = audio_report(sel.infos, 1.5, sel.examples.labels)
    assert rep["clips"] == 4 and rep["sample_rates"] == {8000: 2, 16000: 2} and rep["channels"] == {1: 3, 2: 1}
    assert rep["seconds"]["max"] == 2.0 and rep["truncated_clips"] == 1 and rep["silent_clips"] == 1
    share_c = float((np.abs(clipped) >= 0.999).mean())  # ~0.58 of the clipped sine's samples
    assert rep["clips_over_0.1pct_clipped"] == 1
    assert rep["clipped_share"] == pytest.approx(share_c * 16000 / (8000 + 2 * 24000 + 16000 + 8000), rel=1e-3)
    assert rep["median_seconds_per_class"] == {"x": 1.5, "y": 1.0}
    lines = describe_audio(rep)
    assert len(lines) == 2 and "1 longer than data.max_seconds" in lines[0] and "1 silent" in lines[1]


# ------------------------------------------------------------------ features


@pytest.fixture(scope="module")
def whisper_fe():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor()  # 80 mel bins, 16 kHz, 30 s; built locally, nothing downloaded


def test_whisper_features_full_and_trimmed(whisper_fe):
    wave = sine(440, 16000, 0.7)
    full = log_mel(whisper_fe, cfg().data)
    trimmed = log_mel(whisper_fe, cfg(max_seconds=1.0).data, trim=True)
    assert (full.n_frames, trimmed.n_frames) == (3000, 100)
    f_full, f_trim = full([wave])[0], trimmed([wave])[0]
    assert f_full.shape == (80, 3000) and f_trim.shape == (80, 100)
    reference = whisper_fe([wave], sampling_rate=16000, return_tensors="np")["input_features"][0]
    assert np.abs(f_full - reference).max() < 1e-5  # the short-window shortcut is exact
    assert np.abs(f_trim - reference[:, :100]).max() < 1e-5
    assert ExtractorLogMel(whisper_fe, 3000).short_windows
    assert "differs" in one_line_error(log_mel, whisper_fe, cfg(sample_rate=8000).data, kind=ConfigError)
    assert "window" in one_line_error(log_mel, whisper_fe, cfg(max_seconds=45).data, kind=ConfigError)


def test_torchaudio_features_and_cnn_image():
    natural = log_mel(None, cfg().data)
    assert isinstance(natural, TorchLogMel) and natural.n_frames is None
    f = natural([sine(440, 16000, 0.5)])[0]
    assert f.shape == (80, 8000 // 160 + 1) and f.max() - f.min() <= 80.0 + 1e-3
    fixed = log_mel(None, cfg(max_seconds=2.0).data, fixed_length=True)
    clip = sine(440, 16000, 0.5) * np.linspace(0, 1, 8000, dtype=np.float32)
    padded = np.concatenate([clip, np.zeros(32000 - 8000, np.float32)])
    reference = fixed.to_db(fixed.mel(torch.from_numpy(padded))).numpy()[:, :200]  # the whole 2-s window
    assert fixed([clip])[0].shape == (80, 200) and np.abs(fixed([clip])[0] - reference).max() < 1e-4
    img = spectrogram_image(torch.from_numpy(f), 64, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert img.shape == (3, 64, 64)
    assert img[0].min() == pytest.approx(-0.485 / 0.229, abs=1e-3)  # the clip's floor → pixel 0, normalised
    assert 0.4 / 0.229 < img[0].max() <= 0.515 / 0.229 + 1e-3  # its peak → pixel 1 (blurred by the resize)
    assert SpectrogramImage((32, 48), [0.5] * 3, [0.5] * 3)(torch.from_numpy(f)).shape == (3, 32, 48)


def test_feature_disk_cache_hit_miss_and_corrupt_entry(tmp_path, whisper_fe):
    paths = [write_wav(tmp_path / f"{i}.wav", sine(300 + 100 * i, 8000, 0.3), 8000) for i in range(3)]
    cache = AudioCache(16000, 1.0, 64)
    sel = cache.prepare(Examples(paths, None, paths), "error", quiet)
    maker = log_mel(whisper_fe, cfg(max_seconds=1.0).data, trim=True)
    logs: list[str] = []
    first = cached_features(sel.examples.inputs, cache, maker, 1.0, logs.append)
    assert "stored" in logs[-1]
    again = cached_features(sel.examples.inputs, cache, maker, 1.0, logs.append)
    assert "hit" in logs[-1] and all(np.array_equal(first[i], again[i]) for i in range(3))
    entry = next(cache_dir("features").glob("audio-*"))
    assert again[0].shape == (80, 100) and again.bodies.shape[1] < 3 * 100  # the padding tail is stored once
    (entry / "bodies.npy").write_bytes(b"garbage")
    healed = cached_features(sel.examples.inputs, cache, maker, 1.0, logs.append)
    assert "unusable" in logs[-2] and "stored" in logs[-1] and np.array_equal(healed[2], first[2])
    np.save(entry / "frames.npy", np.array([100, 100]))  # a row lost: detected by the row count
    cached_features(sel.examples.inputs, cache, maker, 1.0, logs.append)
    assert "rows" in logs[-2]
    os.utime(paths[0], ns=(1, 1))  # a changed file is a different record: a miss
    cached_features(sel.examples.inputs, cache, maker, 1.0, logs.append)
    assert "stored" in logs[-1] and len(list(cache_dir("features").glob("audio-*"))) == 2


# ------------------------------------------------------------------ augmentation


def aug_cfg(**augment):
    return cfg(max_seconds=2.0, augment=augment).data


def test_augmentation_is_off_by_default_and_replays_from_the_torch_seed():
    assert audio_augment(cfg().data, 16000) is None
    aug = audio_augment(aug_cfg(time_shift_ms=100, gain_db=6, noise_snr_db=[5, 20], noise_prob=1.0,
                                spec_augment={"time_masks": 2, "time_width": 10, "freq_masks": 2,
                                              "freq_width": 8}), 16000)
    wave, feats = sine(440, 16000, 0.5), torch.randn(80, 100)

    def run(seed):
        torch.manual_seed(seed)
        return aug.wave(wave), aug.spec(feats, 60)

    (w1, s1), (w2, s2), (w3, s3) = run(1), run(1), run(2)
    assert np.array_equal(w1, w2) and torch.equal(s1, s2)
    assert not np.array_equal(w1, w3) and not torch.equal(s1, s3)
    assert torch.equal(s1[:, 60:], feats[:, 60:])  # time masks stay inside the clip's own frames
    torch.manual_seed(5)
    state = torch.get_rng_state()
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert np.array_equal(aug.wave(wave, generator=g1), aug.wave(wave, generator=g2))
    assert torch.equal(torch.get_rng_state(), state)  # a generator leaves the global RNG alone


def test_noise_is_added_at_the_requested_snr(tmp_path):
    wave = sine(440, 16000, 1.0)
    torch.manual_seed(0)
    noisy = audio_augment(aug_cfg(noise_snr_db=10.0, noise_prob=1.0), 16000).wave(wave)
    snr = 10 * np.log10(np.square(wave).sum() / np.square(noisy - wave).sum())
    assert snr == pytest.approx(10.0, abs=0.01)
    write_wav(tmp_path / "noise" / "hum.wav", sine(50, 8000, 0.3), 8000)
    write_wav(tmp_path / "noise" / "quiet.wav", np.zeros(800, np.float32), 8000)  # silent: unusable
    logs: list[str] = []
    aug = audio_augment(aug_cfg(noise_snr_db=0.0, noise_prob=1.0, noise_dir=str(tmp_path / "noise")), 16000,
                        logs.append)
    assert "1 noise clips" in logs[0] and "1 unreadable or silent" in logs[0]
    added = aug.wave(wave) - wave
    peak = np.argmax(np.abs(np.fft.rfft(added)))
    assert peak == pytest.approx(50, abs=1)  # the hum, tiled over the 1-s clip


def test_shift_and_gain_without_noise_are_exact():
    wave = sine(440, 16000, 0.5)
    torch.manual_seed(0)
    out = audio_augment(aug_cfg(gain_db=6.0), 16000).wave(wave)
    ratio = float(np.abs(out).max() / np.abs(wave).max())
    assert 10 ** (-6 / 20) - 1e-6 <= ratio <= 10 ** (6 / 20) + 1e-6
    shifter = AudioAugment(aug_cfg(time_shift_ms=50).augment, 16000, max_samples=16000)
    for seed in range(4):
        torch.manual_seed(seed)
        out = shifter.wave(wave)
        assert abs(len(out) - len(wave)) <= 800 and (len(out) <= len(wave) or not out[:len(out) - len(wave)].any())


# ------------------------------------------------------------------ dataset + collate


def test_build_audio_inputs_classification_and_asr(tmp_path, whisper_fe):
    paths = [write_wav(tmp_path / f"{i}.wav", sine(300, 8000, 0.2 + 0.2 * i), 8000) for i in range(3)]
    cache = AudioCache(16000, 2.0, 64)
    sel = cache.prepare(Examples(paths, ["a", "b", "a"], paths), "error", quiet)
    c = cfg(max_seconds=2.0)
    built = build_audio_inputs(sel.examples, log_mel(None, c.data), c, False, cache, [0, 1, 0], log=quiet)
    assert built.lengths == [3200 // 160 + 1, 6400 // 160 + 1, 9600 // 160 + 1]
    batch = built.collate([built.dataset[i] for i in range(3)])
    assert batch["input_features"].shape == (3, 80, 61) and batch["labels"].tolist() == [0, 1, 0]
    assert batch["attention_mask"].sum(1).tolist() == built.lengths and built.skipped == 0
    built = build_audio_inputs(sel.examples, log_mel(whisper_fe, c.data, trim=True), c, True, cache,
                               [[50258, 7, 8], [50258, 9], [50258]], token_labels=True, log=quiet)
    batch = AudioCollate()([built.dataset[i] for i in range(3)])
    assert batch["input_features"].shape == (3, 80, 200)
    assert batch["labels"].tolist() == [[50258, 7, 8], [50258, 9, -100], [50258, -100, -100]]
    image = SpectrogramImage(32, [0.5] * 3, [0.5] * 3)
    built = build_audio_inputs(sel.examples, log_mel(None, c.data, fixed_length=True), c, False, cache, [0, 1, 0],
                               to_image=image, log=quiet)
    assert AudioCollate()([built.dataset[i] for i in range(3)])["pixel_values"].shape == (3, 3, 32, 32)


def test_train_augmentation_uses_the_cache_only_when_waveforms_are_unchanged(tmp_path):
    paths = [write_wav(tmp_path / f"{i}.wav", sine(300, 16000, 0.5), 16000) for i in range(2)]
    cache = AudioCache(16000, 1.0, 64)
    sel = cache.prepare(Examples(paths, ["a", "b"], paths), "error", quiet)
    masks = cfg(max_seconds=1.0, augment={"spec_augment": {"time_masks": 1, "time_width": 5}})
    logs: list[str] = []
    built = build_audio_inputs(sel.examples, log_mel(None, masks.data), masks, True, cache, [0, 1], log=logs.append)
    assert built.dataset.stored is not None and any("feature cache" in line for line in logs)
    torch.manual_seed(0)
    a = built.dataset[0]["input_features"]
    torch.manual_seed(0)
    assert torch.equal(a, built.dataset[0]["input_features"])
    shift = cfg(max_seconds=1.0, augment={"gain_db": 3})
    built = build_audio_inputs(sel.examples, log_mel(None, shift.data), shift, True, cache, [0, 1], log=quiet)
    assert built.dataset.stored is None and built.dataset[1]["input_features"].shape[0] == 80


@pytest.mark.skipif(not FSDD.is_dir(), reason=f"FSDD not found at {FSDD} (set TUNEFORGE_SHARED_DATA)")
def test_fsdd_layout_reads_with_a_regex():
    c = cfg(dir=str(FSDD), label_from={"regex": r"^(\d)_"})
    ex = read_split(c.data, "audio", "train", quiet)
    assert len(ex) == 3000 and sorted(set(ex.labels)) == [str(d) for d in range(10)]
    part = ex.subset(range(0, 3000, 100))
    sel = AudioCache(16000, 30, 64).prepare(part, "error", quiet)
    assert len(sel.kept) == 30 and audio_report(sel.infos, 30)["sample_rates"] == {8000: 30}
