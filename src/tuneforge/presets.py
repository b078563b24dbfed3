"""`preset: auto`: the recipe chosen from the data report and the model, as small rules, each with its reason.

The rules read `Facts` (rows, classes, imbalance, text lengths, image sizes or clip durations; the model's
width, size and kind) and return `Choice`s (a recipe key, a value, the reason). `apply_preset` lays them over the
recipe: a key the recipe sets itself (`config.explicit_keys`) keeps the recipe's value, and the log says so; a recipe
that sets any strategy key (train.freeze, head_epochs, lora, gradual_unfreeze) keeps its strategy, and the other
rules follow it. Every choice is printed and recorded in summary.json (`preset`).

Size classes by training examples (sentences for NER): tiny < 1,000 <= small < 10,000 <= medium < 100,000 <= large.
Strategies: linear_probe (frozen backbone, head on cached features), fine_tune (a head phase, then everything at
layer-wise decayed LRs), full_fine_tune (everything from the start), lora (adapters on a frozen model)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tuneforge.data.audio import clip_seconds
from tuneforge.errors import ConfigError

SIZE_CLASSES = ((1_000, "tiny"), (10_000, "small"), (100_000, "medium"))  # upper bounds; above: large
STRATEGY_KEYS = ("train.freeze", "train.head_epochs", "train.lora", "train.gradual_unfreeze")
LORA_FROM_PARAMS = 300_000_000  # above this, full fine-tuning's optimizer state dominates memory on a workstation


@dataclass(frozen=True)
class ModelFacts:
    name: str
    modality: str
    sentence_embedding: bool = False  # trained to compare mean-pooled embeddings (a sentence-transformers folder)
    hidden: Optional[int] = None  # transformer width
    params: Optional[int] = None  # approximate, from the model's config
    input_size: Optional[int] = None  # image models: the side they were trained at
    audio_window: bool = False  # a Whisper encoder, whose 30-s window model.audio_ctx can trim
    spectrogram_cnn: bool = False  # an image model on spectrograms (model.input: spectrogram)


@dataclass(frozen=True)
class Facts:
    task: str
    modality: str
    rows: int  # training examples
    val_rows: int
    classes: Optional[int]
    imbalance: Optional[float]
    pairs: bool = False  # text pairs
    words_p95: Optional[float] = None
    image_side: Optional[float] = None  # median of the shorter image side, pixels
    clip_p99: Optional[float] = None  # audio: 99th percentile of the clip durations, seconds (from file headers)
    clip_max: Optional[float] = None
    model: ModelFacts = field(default_factory=lambda: ModelFacts("", "text"))


@dataclass
class Choice:
    key: str  # dotted recipe key
    value: Any
    reason: str
    source: str = "preset"  # or "recipe": the recipe set the key itself and keeps its value


SMALL_DATA = {
    "linear_probe": "a linear head on frozen, cached backbone features (no weights to over-fit but the head's), "
                    "stronger weight decay, many cheap epochs with early stopping",
    "fine_tune": "a head phase first, frozen BatchNorm statistics, augmentation, stronger weight decay, more epochs "
                 "with early stopping",
    "full_fine_tune": "batches of 16 (more updates), stronger weight decay, 10 epochs with early stopping on "
                      "validation after every epoch",
    "lora": "adapters only (few weights to over-fit), stronger weight decay, more epochs with early stopping",
}


def size_class(rows: int) -> str:
    return next((name for bound, name in SIZE_CLASSES if rows < bound), "large")


# ---------------------------------------------------------------- the rules


def choose_strategy(f: Facts, size: str) -> tuple[str, str]:
    """→ (strategy, reason)."""
    if f.model.params and f.model.params > LORA_FROM_PARAMS:
        return "lora", (f"{f.model.params / 1e6:.0f} M parameters: adapters train ~1 % of them, so the optimizer "
                        "state and gradients stay small")
    if f.modality == "image" and size == "tiny":
        return "linear_probe", (f"{f.rows} images are too few to move millions of pretrained weights far: a linear "
                                "head on the frozen backbone, its features computed once and cached")
    if f.modality == "image":
        return "fine_tune", (f"{f.rows} images ({size}): fastai-style fine_tune, one epoch for the new head on the "
                             "frozen backbone, then every layer at LRs that shrink towards the input")
    if f.modality == "audio":
        return "full_fine_tune", ("a speech encoder adapts as a whole, as Whisper fine-tuning does (warm-up protects "
                                  "it from the new head's first gradients)")
    return "full_fine_tune", ("text encoders adapt as a whole from the first step (warm-up protects them from the "
                              "new head); a head on the frozen [CLS] pooler is weak")


def strategy_choices(strategy: str, reason: str) -> list[Choice]:
    reason = f"strategy {strategy}: {reason}"
    if strategy == "linear_probe":
        return [Choice("train.freeze", "backbone", reason),
                Choice("data.augment.enabled", False, "deterministic inputs let the backbone features be cached")]
    if strategy == "fine_tune":
        return [Choice("train.head_epochs", 1, reason),
                Choice("train.layer_decay", 0.8, "each layer group trains at 0.8x the LR of the one above it: the "
                       "general features near the input move least (like fastai's lr/100 .. lr slice over ~20 "
                       "groups)")]
    if strategy == "lora":
        return [Choice("train.lora", {"r": 8, "alpha": 16, "dropout": 0.1}, reason)]
    return []


def base_lr(f: Facts, strategy: str) -> tuple[float, str]:
    """The learning rate (AdamW) for the strategy and the model's width."""
    if strategy == "linear_probe":
        return 1e-2, "a linear head alone on fixed features takes a large LR"
    if strategy == "lora":
        return 5e-4, "adapters start at zero and need a larger LR than full fine-tuning"
    if f.modality == "image" or f.model.spectrogram_cnn:
        return 1e-3, "the top layer group's LR for fine_tune (fastai's default order of magnitude)"
    if f.model.audio_window:
        return 5e-5, "Whisper fine-tunes at ~1/20-1/40 of its pretraining LR (1e-3 for base)"
    width = f.model.hidden or 768
    lr = 1e-4 if width <= 384 else 5e-5 if width <= 768 else 2e-5
    if f.pairs and f.task == "regression" and f.model.sentence_embedding:
        return lr / 5, (f"the siamese head starts as the model's own cosine similarity, already a good score: a "
                        f"gentle {lr / 5:g} keeps it")
    return lr, f"hidden size {width}: smaller encoders take larger LRs (1e-4 at 384, 5e-5 at 768, 2e-5 above)"


def epochs_for(f: Facts, size: str, strategy: str) -> tuple[float, str]:
    if strategy == "linear_probe":
        return 30, "a head on cached features costs milliseconds per epoch; early stopping ends it"
    by_size = {"tiny": 10, "small": 5, "medium": 3, "large": 2}[size]
    if f.task == "token_classification":
        by_size += 1
        return by_size, (f"{size} set: {by_size} epochs as an upper bound (one more for tagging: every tag of the "
                         "new head is learnt from scratch); early stopping on validation")
    return by_size, f"{size} set ({f.rows} examples): {by_size} epochs as an upper bound; early stopping on validation"


def batch_size_for(f: Facts, size: str, strategy: str) -> tuple[int, str]:
    if size == "tiny" and strategy != "linear_probe":
        return 16, "tiny set: smaller batches give more updates per epoch"
    if f.modality == "audio":
        return 16, "16: a speech encoder's activations over a clip are large; more updates per epoch"
    return 32, "32: steady gradients and full CPU / GPU use"


def schedule_choices(f: Facts, size: str, strategy: str) -> list[Choice]:
    lr, lr_reason = base_lr(f, strategy)
    epochs, epochs_reason = epochs_for(f, size, strategy)
    batch, batch_reason = batch_size_for(f, size, strategy)
    out = [Choice("train.lr", lr, lr_reason), Choice("train.epochs", epochs, epochs_reason),
           Choice("train.batch_size", batch, batch_reason), Choice("train.optimizer", "adamw", "AdamW")]
    if strategy == "linear_probe":
        out += [Choice("train.schedule", "cosine", "cosine decay; no warm-up needed for a linear head"),
                Choice("train.warmup_ratio", 0.0, "no warm-up for a linear head")]
    else:
        out += [Choice("train.schedule", "linear", "linear decay to zero"),
                Choice("train.warmup_ratio", 0.1, "10 % warm-up: the new head's first gradients do not wreck the "
                       "pretrained weights")]
    if strategy == "fine_tune":
        out.append(Choice("train.head_lr", 2 * lr, "the new head at 2x the top LR (its own phase first)"))
    elif strategy in ("full_fine_tune", "lora") and f.modality in ("text", "audio") and f.task != "asr":
        out.append(Choice("train.head_lr", 1e-3, "the randomly initialised head learns at 1e-3 while the encoder "
                          "moves slowly"))
    return out


def evaluation_choices(f: Facts, size: str, strategy: str, batch: int) -> list[Choice]:
    per_epoch = math.ceil(f.rows / batch)
    out = [Choice("early_stopping.enabled", True, "stop once validation stops improving; the best model is kept"),
           Choice("early_stopping.patience", 5 if strategy == "linear_probe" else 3,
                  "evaluations without a gain before stopping")]
    if strategy != "linear_probe" and per_epoch >= 100:
        every = math.ceil(per_epoch / 2)
        out.append(Choice("eval.every_steps", every, f"twice per epoch ({per_epoch} steps): early stopping and the "
                          "kept model see the curve at half-epoch resolution"))
    return out


def regularisation_choices(f: Facts, size: str, strategy: str) -> list[Choice]:
    out = []
    if size == "tiny":
        out.append(Choice("train.weight_decay", 0.05, "tiny set: stronger weight decay against over-fitting"))
    if f.modality == "image" and strategy != "linear_probe" and size in ("tiny", "small"):
        out.append(Choice("train.freeze_norm_stats", True, "BatchNorm keeps its ImageNet statistics: a few "
                          "thousand images estimate them worse"))
    if f.modality == "image" and strategy != "linear_probe":
        out += [Choice("data.augment.enabled", True, "random crops and flips: more views of each image"),
                Choice("data.augment.crop_scale", [0.35, 1.0], "crops keep at least 35 % of the image (the object "
                       "stays in view)")]
    return out


def input_choices(f: Facts, strategy: str) -> list[Choice]:
    out = []
    if f.modality == "text" and f.words_p95:
        tokens = 1.4 * f.words_p95 + 2  # ~1.3-1.5 word pieces per English word, plus [CLS] / [SEP]
        length = 128 if tokens <= 128 else 256 if tokens <= 256 else 512
        out.append(Choice("data.max_length", length, f"95 % of the texts have at most {f.words_p95:.0f} words "
                          f"(~{tokens:.0f} tokens)"))
    if f.pairs and f.task == "regression" and f.model.sentence_embedding:
        out.append(Choice("model.pair_encoding", "siamese", f"{f.model.name} was trained to compare mean-pooled "
                          "sentence embeddings by cosine: each text is encoded alone and the head starts as that "
                          "cosine"))
    if f.task == "regression":
        out.append(Choice("task.standardize", True, "z-scored targets keep the loss near 1 whatever the label "
                          "range (undone at predict)"))
    if f.modality == "audio" and f.clip_p99:
        out += audio_window_choices(f)
    if f.modality == "image" and strategy == "linear_probe" and f.model.input_size and f.image_side:
        bigger = 32 * round(1.25 * f.model.input_size / 32)
        if f.image_side >= bigger:
            out.append(Choice("data.image_size", bigger, f"images are large (median short side "
                              f"{f.image_side:.0f} px): frozen features see more detail at {bigger} px"))
    return out


def audio_window_choices(f: Facts) -> list[Choice]:
    """The clip length kept, and Whisper's encoder window cut to it: a 1-s clip in a 30-s window is 97 % padding.
    Recognition keeps every clip whole (a cut drops words); classification cuts the longest 1 %."""
    asr = f.task == "asr"
    longest = f.clip_max if asr else f.clip_p99
    seconds = float(min(30, max(1, math.ceil(longest))))
    why = (f"the longest clip is {f.clip_max:.1f} s" if asr else
           f"99 % of the clips are at most {f.clip_p99:.1f} s (the longest: {f.clip_max:.1f} s)")
    out = [Choice("data.max_seconds", seconds, f"{why}: clips are kept to {seconds:g} s"
                  + ("" if asr or f.clip_max <= seconds else " (the rest is cut, counted in the data report)"))]
    if f.model.audio_window and seconds < 30:
        out.append(Choice("model.audio_ctx", int(50 * seconds), f"Whisper's encoder window cut from 30 s to "
                          f"{seconds:g} s (50 frames a second): the encoder's cost falls with it"))
    return out


def choose(f: Facts, strategy: Optional[str] = None) -> tuple[str, str, list[Choice]]:
    """→ (size class, strategy, choices). `strategy`: the recipe's own, when it sets one."""
    size = size_class(f.rows)
    out = []
    if strategy is None:
        strategy, reason = choose_strategy(f, size)
        out += strategy_choices(strategy, reason)
    schedule = schedule_choices(f, size, strategy)
    batch = next(c.value for c in schedule if c.key == "train.batch_size")
    out += schedule + evaluation_choices(f, size, strategy, batch)
    out += regularisation_choices(f, size, strategy) + input_choices(f, strategy)
    return size, strategy, out


# ---------------------------------------------------------------- facts


def model_facts(model_cfg) -> ModelFacts:
    """What the rules need from the model, read from its files (nothing is loaded)."""
    from tuneforge.models import MODEL_SOURCES, resolve_source

    source, resolved, _ = resolve_source(model_cfg)
    modality = MODEL_SOURCES.get(source, "model.source").modality
    folder = Path(resolved.name).expanduser()
    if modality == "text" and folder.is_dir():
        config = _read_json(folder / "config.json")
        hidden, layers = config.get("hidden_size"), config.get("num_hidden_layers")
        params = 12 * layers * hidden ** 2 + config.get("vocab_size", 0) * hidden if hidden and layers else None
        sentence = (folder / "modules.json").is_file() or (folder / "sentence_bert_config.json").is_file()
        return ModelFacts(model_cfg.name, modality, sentence, hidden, params)
    whisper = source == "hf-speech" and (_read_json(folder / "config.json").get("model_type") == "whisper"
                                         or "whisper" in model_cfg.name.lower())
    return ModelFacts(model_cfg.name, modality, input_size=_timm_input_size(resolved.name) if source == "timm"
                      else None, audio_window=whisper, spectrogram_cnn=source == "spectrogram")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _timm_input_size(name: str) -> Optional[int]:
    import timm

    try:
        return int(timm.models.get_pretrained_cfg(name).input_size[-1])
    except (AttributeError, RuntimeError, TypeError):
        return None


def data_facts(cfg, report: dict, modality: str, train_ex, model: ModelFacts, durations: bool = True) -> Facts:
    """`durations`: read the clips' headers (only the audio window rules need them)."""
    counts = report.get("class_counts")
    seconds = clip_seconds(train_ex.inputs) if modality == "audio" and durations else []
    width, height = report.get("image_width") or {}, report.get("image_height") or {}
    pairs = bool(cfg.data.text_pair_column) or bool(len(train_ex) and isinstance(train_ex.inputs[0], tuple))
    return Facts(task=cfg.task.type, modality=modality, rows=report["train_examples"],
                 val_rows=report["val_examples"], classes=len(counts) if counts else None,
                 imbalance=report.get("imbalance_ratio"), pairs=pairs and modality == "text",
                 words_p95=(report.get("text_words") or {}).get("p95"),
                 image_side=min(width["p50"], height["p50"]) if width and height else None,
                 clip_p99=float(np.percentile(seconds, 99)) if seconds else None,
                 clip_max=max(seconds) if seconds else None, model=model)


def lr_priors(cfg, report: dict, modality: str, train_ex) -> dict:
    """The LRs these rules would pick for the recipe's own strategy: {"head": (lr, reason), "body": (lr, reason)}.
    `lr: auto` keeps a range test's suggestion only near them (engine/lr_find.guard)."""
    facts = data_facts(cfg, report, modality, train_ex, model_facts(cfg.model), durations=False)  # LRs need none
    strategy = recipe_strategy(cfg, set(STRATEGY_KEYS)) or "full_fine_tune"
    return {"head": base_lr(facts, "linear_probe"), "body": base_lr(facts, strategy)}


# ---------------------------------------------------------------- applying the choices


def recipe_strategy(cfg, explicit: set[str]) -> Optional[str]:
    """The strategy the recipe sets itself, if any (then the preset's other rules follow it)."""
    if not explicit & set(STRATEGY_KEYS):
        return None
    t = cfg.train
    if t.lora is not None:
        return "lora"
    if t.freeze == "backbone":
        return "linear_probe"
    return "fine_tune" if t.head_epochs > 0 else "full_fine_tune"


def apply_preset(cfg, report: dict, modality: str, train_ex, log=print, strategy_from: str = "set in the recipe"):
    """→ (the config with the preset's choices laid under the recipe's own keys, the record for summary.json).
    `strategy_from`: what set the strategy keys, when the recipe has them (the log says so)."""
    from tuneforge.config import apply_overrides, explicit_keys, validate

    if modality not in ("text", "image", "audio"):
        log(f"preset auto: no rules for {modality} data yet; the recipe's values are used")
        return cfg, {"size_class": None, "strategy": None, "choices": []}
    explicit = explicit_keys(cfg)
    facts = data_facts(cfg, report, modality, train_ex, model_facts(cfg.model))
    own = recipe_strategy(cfg, explicit)
    size, strategy, choices = choose(facts, own)
    raw = cfg.model_dump(mode="json")
    if cfg.train.lr == "auto":  # the LR range test picks the head's LR too
        choices = [c for c in choices if c.key != "train.head_lr"]
    for c in choices:
        if c.key in explicit:
            c.value, c.source = _get(raw, c.key), "recipe"
        else:
            apply_overrides(raw, {c.key: c.value})
    noun = {"image": "images", "audio": "clips"}.get(modality, "examples")
    column = f"; labels from column {cfg.data.label_column!r}" if modality == "text" else ""
    log(f"preset auto: {facts.rows} {noun} ({size}); strategy {strategy}{f' ({strategy_from})' if own else ''}; "
        f"model {facts.model.name}{column}")
    if size == "tiny":
        log(f"preset auto: small data ({facts.rows} examples) is handled: {SMALL_DATA[strategy]}")
    for c in choices:
        shown = "kept from the recipe" if c.source == "recipe" else c.reason
        log(f"preset auto: {c.key} = {json.dumps(c.value)}  ({shown})")
    try:
        new = validate(raw, "preset auto")
    except ConfigError as e:
        raise ConfigError(f"{e} (a key the recipe sets conflicts with the preset; set the strategy keys "
                          f"{', '.join(STRATEGY_KEYS)} yourself)") from None
    record = {"size_class": size, "strategy": strategy, "facts": asdict(facts),
              "choices": [asdict(c) for c in choices]}
    return new, record


def _get(raw: dict, key: str):
    node = raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
