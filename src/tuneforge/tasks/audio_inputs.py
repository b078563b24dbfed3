"""Audio inputs for any task (the row tasks' audio branch and ASR): every clip decoded and checked once
(`AudioCache`), features made by the bundle's feature maker (and drawn as images for a spectrogram CNN), the
dataset (`build_audio_inputs`), the audio section of data_report.json, and one output per predict input.

At predict (examples without labels) an unreadable file never stops the batch: it is dropped from the model's
inputs and `align` puts `{"error": "<file>: <why>; ..."}` in its place. Labelled splits follow data.on_bad_sample."""
from __future__ import annotations

from typing import Optional

import torch

from tuneforge.data.audio import AudioCache, Selection, audio_report, describe_audio
from tuneforge.data.audio_augment import augments_audio
from tuneforge.data.audio_dataset import build_audio_inputs
from tuneforge.data.audio_features import FeatureMaker
from tuneforge.data.examples import Examples
from tuneforge.tasks.base import Built


class AudioInputs:
    def __init__(self, cfg, log=print):
        self.cfg, self.log = cfg, log
        self.maker: Optional[FeatureMaker] = None  # made from the first bundle seen (one model per task)
        self.cache: Optional[AudioCache] = None  # decoded clips, shared by the splits
        self.selections: dict[str, Selection] = {}  # split → which inputs were kept, and why others were not

    def _feature_maker(self, bundle) -> FeatureMaker:
        if self.maker is None:
            d = self.cfg.data
            self.maker = bundle.feature_maker(d)
            self.cache = AudioCache(self.maker.sample_rate, d.max_seconds, d.cache_audio_mb, d.min_seconds)
        return self.maker

    def select(self, ex: Examples, bundle, split: str) -> Examples:
        """The examples whose clips decode (all of them, or an error, unless data.on_bad_sample: skip)."""
        self._feature_maker(bundle)
        on_bad = "skip" if ex.labels is None else self.cfg.data.on_bad_sample
        # predict: an unreadable clip is answered by its own error line, not logged
        selection = self.cache.prepare(ex, on_bad, (lambda *_: None) if split == "predict" else self.log)
        self.selections[split] = selection
        return selection.examples

    def build(self, ex: Examples, bundle, split: str, labels: Optional[list], label_dtype=torch.long,
              token_labels: bool = False) -> Built:
        """`ex` from `select`: the dataset of features (+ labels) for the bundle. Features of the train / val / test
        splits go to the disk cache; predict's are made per item (nothing written)."""
        return build_audio_inputs(ex, self._feature_maker(bundle), self.cfg, split == "train", self.cache, labels,
                                  label_dtype, token_labels=token_labels, to_image=bundle.to_image(self.cfg.data),
                                  log=self.log, disk_cache=split != "predict")

    def vary(self) -> bool:
        """Whether train clips are augmented (features then differ every epoch and cannot be cached)."""
        return augments_audio(self.cfg.data.augment)

    def add_to_report(self, report: dict, per_class: bool, log) -> None:
        """data_report.json `audio`: durations, sample rates, channels, clipping, silence per split."""
        audio = {}
        for split in ("train", "val"):
            sel = self.selections.get(split)
            if sel is not None:
                labels = sel.examples.labels if per_class else None
                audio[split] = audio_report(sel.infos, self.cfg.data.max_seconds, labels)
        report["audio"] = audio
        for line in describe_audio(audio.get("train", {})):
            log(line.replace("data report: audio", "data report: train audio", 1))
