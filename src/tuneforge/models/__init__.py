"""Model sources behind one factory: `create_model(cfg.model, head)` and `load_saved_model(folder)`."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from torch import nn

from tuneforge.errors import ConfigError, ModelError
# importing these registers the sources and aliases
from tuneforge.models import gguf, hf, packaged, siamese, speech, vision, whisper_package  # noqa: F401
from tuneforge.models.base import MODEL_ALIASES, MODEL_SOURCES, HeadSpec, ModelBundle, write_json

META_FILE = "tuneforge.json"


def resolve_source(cfg) -> tuple[str, object, dict]:
    """→ (source name, model config with the alias applied, extra keyword arguments for the source).
    model.input: spectrogram wraps the image model's source in the `spectrogram` source (models/speech.py)."""
    source, cfg, extra = _resolve_plain_source(cfg)
    if cfg.input == "spectrogram":
        return "spectrogram", cfg, {"image_source": source, **extra}
    return source, cfg, extra


def _resolve_plain_source(cfg) -> tuple[str, object, dict]:
    extra: dict = {}
    if cfg.name in MODEL_ALIASES:
        source, updates = MODEL_ALIASES.get(cfg.name)()
        extra = {k[1:]: updates.pop(k) for k in list(updates) if k.startswith("_")}
        cfg = cfg.model_copy(update=updates)
        return source, cfg, extra
    if cfg.source != "auto":
        return cfg.source, cfg, extra
    if Path(cfg.name).expanduser().is_dir():
        return "hf-speech" if speech.is_speech_folder(Path(cfg.name).expanduser()) else "hf", cfg, extra
    import timm
    import torchvision

    if timm.is_model(cfg.name):
        return "timm", cfg, extra
    if cfg.name in torchvision.models.list_models():
        return "torchvision", cfg, extra
    return "hf", cfg, extra


def create_model(cfg, head: HeadSpec, log=print) -> ModelBundle:
    alias = cfg.name if cfg.name in MODEL_ALIASES else None
    source, resolved, extra = resolve_source(cfg)
    if cfg.pair_encoding == "siamese":  # the same HF weights, wrapped as a bi-encoder
        if source != "hf":
            raise ConfigError(f"model.pair_encoding: siamese needs a Hugging Face text model, not {source}")
        source = "hf-siamese"
    bundle = MODEL_SOURCES.get(source, "model.source").load(resolved, head, log=log, **extra)
    if cfg.dropout is not None:
        n = set_dropout(bundle.model, cfg.dropout)
        log(f"model.dropout: {n} dropout setting(s) set to {cfg.dropout}")
    if alias:
        bundle.extra_meta["alias"] = alias
    return bundle


def set_dropout(model: nn.Module, p: float) -> int:
    """Every nn.Dropout, every float module attribute named *drop* (timm's drop_rate, Llama's attention_dropout:
    read at forward time) and the HF config's *dropout* fields (so a saved config says what was trained).
    Drop-path (stochastic depth: timm's per-block drop_prob schedule) is not dropout and stays as it is."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p, n = p, n + 1
            continue
        for name, value in vars(m).items():
            if ("drop" in name and "path" not in name and name != "drop_prob" and isinstance(value, float)
                    and not name.startswith("_")):
                setattr(m, name, p)
                n += 1
    config = getattr(model, "config", None)
    for name in [k for k, v in vars(config).items() if "dropout" in k and isinstance(v, float)] if config else []:
        setattr(config, name, p)
    return n


def save_model(bundle: ModelBundle, out_dir: Path, extra_meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle.save(out_dir)
    write_json(out_dir / "labels.json", bundle.head.labels)
    write_json(out_dir / META_FILE, {**bundle.meta(), **extra_meta})


def load_saved_model(model_dir: str | Path, trust_remote_code: bool = False) -> tuple[ModelBundle, dict]:
    """A saved model/ folder (or a run folder) and its tuneforge.json. A model trained with
    model.trust_remote_code runs code from its folder when loaded: only with `trust_remote_code`."""
    d = Path(model_dir)
    if (d / "model" / META_FILE).is_file():  # a run folder
        d = d / "model"
    if not (d / META_FILE).is_file():
        raise ModelError(f"'{model_dir}' is neither a tuneforge run folder nor its model/ folder "
                         f"(no {META_FILE}); pass the folder that `tuneforge train` wrote")
    try:
        meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"'{d / META_FILE}' is not valid JSON ({str(e)[:80]}); re-copy the model folder") from None
    if meta.get("config", {}).get("model", {}).get("trust_remote_code") and not trust_remote_code:
        raise ModelError(f"model folder '{d}' was trained with model.trust_remote_code: true, so loading it runs "
                         "code from that folder; pass --trust-remote-code if you trust it")
    try:
        return MODEL_SOURCES.get(meta["source"]).load_saved(d, meta, trust_remote_code=trust_remote_code), meta
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as e:
        weights = next((f.name for f in sorted(d.glob("*.safetensors"))), "its weights")
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise ModelError(f"model folder '{d}' cannot be loaded: {weights} is truncated or corrupt, or does not "
                         f"match config.json ({reason}); re-copy the folder or train again") from None


__all__ = ["HeadSpec", "ModelBundle", "create_model", "load_saved_model", "save_model", "MODEL_SOURCES",
           "MODEL_ALIASES"]
