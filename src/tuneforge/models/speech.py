"""Audio models (modality "audio"): Hugging Face speech folders and ImageNet CNNs on log-mel spectrograms.

- Source `hf-speech`: a local transformers folder (or the `whisper-base` alias). A class / value / multi-label head
  loads `AutoModelForAudioClassification` (Whisper: `WhisperForAudioClassification` built from the encoder of a
  `WhisperForConditionalGeneration` folder; AST); ASR (`HeadSpec.kind == "seq2seq"`) loads
  `AutoModelForSpeechSeq2Seq` (Whisper). Whisper's classifier head is one linear layer on the mean of the encoder's
  frames: its per-frame projector is an identity (saved as an identity matrix, so plain transformers computes
  the same logits), which makes the head's input a pooled vector that the frozen-backbone feature cache can store.
- `model.audio_ctx`: Whisper's encoder window, in encoder frames (50 per second; None = the full 1500 = 30 s).
  The positional embedding is cut to its first `audio_ctx` rows and `max_source_positions` set to match, and the
  feature extractor's window (`chunk_length`) shrinks with it, so the saved folder (config.json,
  preprocessor_config.json) reproduces the trimmed model in tuneforge and in plain transformers alike.
- Source `spectrogram` (`model.input: spectrogram`): any image model source (timm, torchvision, the
  `efficientnet-lite0` alias) fed torchaudio log-mel spectrograms drawn as 3-channel images (AST / PANNs-style
  transfer); saved exactly as that image model is.

Every audio bundle says how its inputs are made: `feature_maker(data_cfg)` (data/audio_features.py) and
`to_image(data_cfg)` (None: the features go in as they are)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from tuneforge.data.audio_features import FeatureMaker, log_mel
from tuneforge.errors import ConfigError, ModelError
from tuneforge.models.base import MODEL_SOURCES, HeadSpec, ModelBundle, describe_loading
from tuneforge.models.hf import HFBundle, _check_folder, _head_kwargs

SEQ2SEQ = "seq2seq"  # HeadSpec.kind of speech recognition
SUPPORTED = ("whisper", "audio-spectrogram-transformer")


def speech_model_types() -> set[str]:
    from transformers.models.auto.modeling_auto import (MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES,
                                                        MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES)

    return set(MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES) | set(MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES)


def is_speech_folder(path: Path) -> bool:
    """A transformers folder whose config.json names a speech architecture (model.source auto → hf-speech)."""
    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return False
    return model_type in speech_model_types()


class AudioBundle(ModelBundle):
    def feature_maker(self, dcfg) -> FeatureMaker:
        """What turns decoded clips into this model's input features."""
        raise NotImplementedError

    def to_image(self, dcfg) -> Optional[Callable]:
        """features [n_mels, frames] → the model's image input; None: features are the input."""
        return None


# ---------------------------------------------------------------- hf-speech


class FrameFeatures(FeatureMaker):
    """A transformers extractor whose output is [frames, n_mels] at a fixed length (AST's Kaldi fbank,
    `input_values`), returned as [n_mels, frames] like every other feature maker."""

    def __init__(self, extractor):
        self.extractor = extractor
        self.sample_rate = int(extractor.sampling_rate)
        self.hop_length = self.sample_rate // 100  # Kaldi fbank: 10-ms frame shift
        self.n_mels, self.n_frames = int(extractor.num_mel_bins), int(extractor.max_length)

    def short(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = self.extractor([np.asarray(w) for w in waves], sampling_rate=self.sample_rate, return_tensors="np")
        return [np.ascontiguousarray(x.T, dtype=np.float32) for x in out["input_values"]]

    def spec(self) -> dict:
        config = json.loads(json.dumps(self.extractor.to_dict(), sort_keys=True, default=str))
        return {"kind": "extractor-frames", "class": type(self.extractor).__name__, "config": config}


@dataclass
class HFSpeechBundle(HFBundle, AudioBundle):
    extractor: Any = None  # the transformers feature extractor (window trimmed with model.audio_ctx)

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    def use_first_token_shortcut(self) -> bool:
        return False  # a text-encoder speed-up; audio classifiers pool every frame

    def feature_maker(self, dcfg) -> FeatureMaker:
        if self.model_type == "whisper":
            return log_mel(self.extractor, dcfg)  # the extractor's own (possibly trimmed) window
        maker = FrameFeatures(self.extractor)
        if dcfg.max_seconds > maker.n_frames / 100:
            raise ConfigError(f"data.max_seconds {dcfg.max_seconds:g} is longer than the model's "
                              f"{maker.n_frames / 100:g}-s input; lower it (longer clips are not chunked)")
        return maker

    def _inputs(self, batch: dict) -> dict:
        x = batch["input_features"]
        return {"input_values": x.transpose(1, 2)} if self.model_type != "whisper" else {"input_features": x}

    def logits(self, batch: dict) -> torch.Tensor:
        return self.model(**self._inputs(batch)).logits

    # ---- speech recognition (Whisper)
    def seq2seq(self, batch: dict):
        """Teacher-forced outputs (`.loss`: mean token cross-entropy over labels != -100, `.logits`)."""
        return self.model(**self._inputs(batch), labels=batch["labels"])

    @torch.no_grad()
    def transcribe(self, input_features: torch.Tensor, language: Optional[str], task: str, num_beams: int,
                   max_new_tokens: int) -> list[str]:
        ids = self.model.generate(input_features=input_features, language=language, task=task,
                                  num_beams=num_beams, max_new_tokens=max_new_tokens, return_timestamps=False)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def save(self, out_dir: Path) -> None:
        state = None
        if isinstance(getattr(self.model, "projector", None), nn.Identity):
            d = self.model.config.d_model  # written as an identity matrix: plain transformers computes the same
            state = {**self.model.state_dict(), "projector.weight": torch.eye(d), "projector.bias": torch.zeros(d)}
        self.model.save_pretrained(out_dir, safe_serialization=True, state_dict=state)
        self.extractor.save_pretrained(out_dir)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out_dir)

    def meta(self) -> dict:
        return {**super().meta(), "audio_ctx": getattr(self.model.config, "max_source_positions", None)}


def trim_context(model: nn.Module, extractor, audio_ctx: int) -> Any:
    """Cut Whisper's encoder window to `audio_ctx` frames; returns the extractor for that window."""
    encoder = model.get_encoder()
    full = encoder.embed_positions.num_embeddings
    rate, hop = int(extractor.sampling_rate), int(extractor.hop_length)
    per_second = rate // hop // 2  # encoder frames per second: the convolutions halve the 10-ms mel frames
    if audio_ctx > full:
        raise ConfigError(f"model.audio_ctx {audio_ctx} is longer than the encoder's {full} frames; lower it")
    if audio_ctx % per_second:
        raise ConfigError(f"model.audio_ctx {audio_ctx} is not whole seconds ({per_second} frames each, which the "
                          f"saved feature extractor's chunk_length needs); use "
                          f"{max(per_second, audio_ctx // per_second * per_second)} or "
                          f"{-(-audio_ctx // per_second) * per_second}")
    embed = nn.Embedding(audio_ctx, encoder.embed_positions.embedding_dim)
    with torch.no_grad():
        embed.weight.copy_(encoder.embed_positions.weight[:audio_ctx])
    embed.requires_grad_(False)  # Whisper's positions are fixed sinusoids; they are not trained
    encoder.embed_positions = embed
    model.config.max_source_positions = audio_ctx  # the encoder checks its input length against this
    return type(extractor).from_dict({**extractor.to_dict(), "chunk_length": audio_ctx // per_second})


def _auto_class(head: HeadSpec):
    import transformers

    return transformers.AutoModelForSpeechSeq2Seq if head.kind == SEQ2SEQ else \
        transformers.AutoModelForAudioClassification


def _load_kwargs(config, head: HeadSpec) -> dict:
    if head.kind == SEQ2SEQ:
        return {}
    extra = {"classifier_proj_size": config.d_model} if config.model_type == "whisper" else {}
    return {**_head_kwargs(head), **extra}


def _check_architecture(config, head: HeadSpec, name: str) -> None:
    if config.model_type not in SUPPORTED:
        raise ModelError(f"model '{name}' is a '{config.model_type}' model; audio fine-tuning supports "
                         f"{', '.join(SUPPORTED)} (or any image model with model.input: spectrogram)")
    if head.kind == SEQ2SEQ and config.model_type != "whisper":
        raise ModelError(f"speech recognition needs a Whisper model; '{name}' is '{config.model_type}'")


def _build(path: Path, cfg, head: HeadSpec, log) -> tuple[nn.Module, list[str]]:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    _check_architecture(config, head, cfg.name)
    if not cfg.pretrained:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True, **_load_kwargs(config, head))
        model = _auto_class(head).from_config(config)
        _identity_projector(model)
        log(f"model {cfg.name}: random init ({len(model.state_dict())} tensors), model.pretrained is false")
        return model, [n for n, _ in model.named_parameters()]
    model, info = _auto_class(head).from_pretrained(str(path), output_loading_info=True, local_files_only=True,
                                                    ignore_mismatched_sizes=True, **_load_kwargs(config, head))
    _identity_projector(model)
    own = set(model.state_dict())
    new = [k for k in sorted(info.get("missing_keys", [])) + sorted(
        k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])) if k in own]
    unused = sorted(info.get("unexpected_keys", []))
    if unused and all(k.startswith("model.decoder.") for k in unused):
        unused = [f"the decoder ({len(unused)} tensors: an audio classifier uses the encoder only)"]
    describe_loading(cfg.name, len(own) - len(new), new, unused, log)
    return model, new


def _identity_projector(model: nn.Module) -> None:
    """Whisper's classifier projects every frame before the mean; as an identity the head is one linear layer on
    the mean-pooled encoder output."""
    if model.config.model_type == "whisper" and isinstance(getattr(model, "projector", None), nn.Linear):
        p = model.projector
        if p.in_features == p.out_features:
            model.projector = nn.Identity()


@MODEL_SOURCES.register("hf-speech")
class HFSpeechSource:
    modality = "audio"

    @staticmethod
    def load(cfg, head: HeadSpec, log=print) -> ModelBundle:
        from transformers import AutoFeatureExtractor, AutoTokenizer

        path = Path(cfg.name).expanduser()
        if not path.is_dir():
            raise ModelError(f"speech model '{cfg.name}' is not a folder; give a local transformers folder or an "
                             "alias such as whisper-base")
        if cfg.pretrained:
            _check_folder(path)
        try:
            model, new = _build(path, cfg, head, log)
            extractor = AutoFeatureExtractor.from_pretrained(str(path), local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True) if head.kind == SEQ2SEQ \
                else None
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"cannot load speech model '{cfg.name}': {first}") from None
        if cfg.audio_ctx is not None:
            if model.config.model_type != "whisper":
                raise ConfigError(f"model.audio_ctx applies to Whisper models; '{cfg.name}' is "
                                  f"'{model.config.model_type}'; remove model.audio_ctx")
            extractor = trim_context(model, extractor, cfg.audio_ctx)
            log(f"model: Whisper encoder window trimmed to {cfg.audio_ctx} frames "
                f"({extractor.chunk_length} s; model.audio_ctx)")
        return HFSpeechBundle(model=model, modality="audio", source="hf-speech", name=cfg.name, head=head,
                              tokenizer=tokenizer, new_params=new, extractor=extractor)

    @staticmethod
    def load_saved(model_dir: Path, meta: dict, trust_remote_code: bool = False) -> ModelBundle:
        from transformers import AutoFeatureExtractor, AutoTokenizer

        head = HeadSpec(**meta["head"])
        common = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        model = _auto_class(head).from_pretrained(str(model_dir), **common)
        p = getattr(model, "projector", None)
        if isinstance(p, nn.Linear) and p.in_features == p.out_features and torch.equal(
                p.weight, torch.eye(p.in_features)) and not p.bias.any():
            model.projector = nn.Identity()  # as trained (the identity matrix only serves plain transformers)
        extractor = AutoFeatureExtractor.from_pretrained(str(model_dir), **common)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), **common) if head.kind == SEQ2SEQ \
            else None
        return HFSpeechBundle(model=model, modality="audio", source="hf-speech", name=meta["name"], head=head,
                              tokenizer=tokenizer, extractor=extractor)


# ---------------------------------------------------------------- spectrogram CNN


@dataclass
class SpectrogramBundle(AudioBundle):
    """An image model's bundle, fed log-mel spectrograms drawn as images; everything else is the image model's."""

    image: Optional[ModelBundle] = None

    @classmethod
    def wrap(cls, image: ModelBundle) -> "SpectrogramBundle":
        return cls(model=image.model, modality="audio", source="spectrogram", name=image.name, head=image.head,
                   image_cfg=image.image_cfg, new_params=image.new_params,
                   extra_meta={**image.extra_meta, "image_source": image.source}, image=image)

    def feature_maker(self, dcfg) -> FeatureMaker:
        return log_mel(None, dcfg, fixed_length=True)  # a fixed width: every clip is drawn on the same time axis

    def to_image(self, dcfg) -> Optional[Callable]:
        from tuneforge.data.audio_dataset import SpectrogramImage

        size = dcfg.image_size or self.image_cfg["input_size"][-1]
        return SpectrogramImage(size, self.image_cfg["mean"], self.image_cfg["std"])

    def logits(self, batch: dict) -> torch.Tensor:
        return self.image.logits(batch)

    def replace_model(self, model: nn.Module) -> None:
        self.model = model
        self.image.replace_model(model)

    def save(self, out_dir: Path) -> None:
        self.image.save(out_dir)

    def use_gradient_checkpointing(self) -> bool:
        return self.image.use_gradient_checkpointing()

    def use_channels_last(self) -> bool:
        return self.image.use_channels_last()


@MODEL_SOURCES.register("spectrogram")
class SpectrogramSource:
    modality = "audio"

    @staticmethod
    def load(cfg, head: HeadSpec, log=print, image_source: str = "timm", **extra) -> ModelBundle:
        source = MODEL_SOURCES.get(image_source, "model.source")
        if source.modality != "image":
            raise ConfigError(f"model.input: spectrogram needs an image model (timm, torchvision, "
                              f"efficientnet-lite0); '{cfg.name}' is a {source.modality} model")
        return SpectrogramBundle.wrap(source.load(cfg, head, log=log, **extra))

    @staticmethod
    def load_saved(model_dir: Path, meta: dict, trust_remote_code: bool = False) -> ModelBundle:
        image = MODEL_SOURCES.get(meta["image_source"]).load_saved(model_dir, meta, trust_remote_code=trust_remote_code)
        return SpectrogramBundle.wrap(image)
