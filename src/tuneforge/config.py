"""Recipe schema: YAML → validated, typed config. Every error names the key path and what is allowed."""
from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneforge.errors import ConfigError


def _lookup_able(v: str) -> str:
    """A path the OS can look up: a longer name makes the lookup itself fail (ENAMETOOLONG), not "not found"."""
    size = len(v.encode("utf-8", "surrogatepass"))
    if size > 4096 or any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in v.split("/")):
        raise ValueError(f"not a usable path: {'longer than 4096 bytes' if size > 4096 else 'a name over 255 bytes'}")
    return v


PathStr = Annotated[str, AfterValidator(_lookup_able)]  # a file, folder, or model / hub name


class _Section(BaseModel):
    # allow_inf_nan=False: a NaN or infinite number (YAML .nan / .inf) is never a sensible setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TaskConfig(_Section):
    type: str = "classification"  # a name in tuneforge.tasks.TASKS
    loss: Optional[str] = None  # a name in tuneforge.losses.LOSSES; None = the task's default
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    standardize: bool = False  # regression: train on (y - mean) / std of train targets; inverted at predict
    # multilabel decision threshold: tuned on validation (one for all classes, or one per class) or fixed
    threshold: Union[Literal["global", "per_class"], float] = "global"
    # token tasks: divide each batch's summed token loss by the train set's mean labelled tokens per batch, so every
    # token weighs the same however length-grouped batching mixes sentences ("batch": this batch's count, as HF)
    token_loss_norm: Literal["dataset", "batch"] = "dataset"
    # --- sft (generative instruction tuning) ---
    # completion: loss on the assistant turns only (each with its end-of-turn token); all: every token
    train_on: Literal["completion", "all"] = "completion"
    # --- asr (speech recognition with Whisper; tasks/speech_recognition.py)
    language: str = "en"  # Whisper language code of the transcripts (its <|en|> token starts every label)
    asr_task: Literal["transcribe", "translate"] = "transcribe"
    num_beams: int = Field(1, ge=1)  # decoding at evaluation and predict: 1 = greedy, more = beam search
    # --- sft: validation prompts answered (greedy) at every evaluation for exact_match / contains_answer / chrf /
    # rouge_l, and before / after training for generations.jsonl; 0 = no generation (loss and perplexity only)
    generation_samples: int = Field(32, ge=0)
    # longest answer generated, in tokens (sft: per answer; asr: per transcript); None = 64 for sft, 128 for asr
    max_new_tokens: Optional[int] = Field(None, gt=0)

    @field_validator("threshold")
    @classmethod
    def _threshold_range(cls, v: Any) -> Any:
        if isinstance(v, float) and not 0.0 < v < 1.0:
            raise ValueError("a fixed threshold must be between 0 and 1 (or use global / per_class)")
        return v


class ModelConfig(_Section):
    name: PathStr  # alias (minilm-l6, efficientnet-lite0), HF folder / hub id, timm or torchvision name
    source: Literal["auto", "hf", "timm", "torchvision", "hf-speech"] = "auto"
    weights: Optional[PathStr] = None  # local weights file for timm / torchvision
    pretrained: bool = True  # False: random init (tests, from-scratch baselines)
    trust_remote_code: bool = False
    # text pairs: one joint sequence (cross-encoder), or each text encoded alone, mean-pooled and compared
    # (siamese bi-encoder: suits sentence-embedding models such as minilm-l6)
    pair_encoding: Literal["cross", "siamese"] = "cross"
    # None keeps the checkpoint's dropout; a number sets every dropout layer (and timm's head drop_rate) to it
    dropout: Optional[float] = Field(None, ge=0.0, lt=1.0)
    # ---- audio (models/speech.py)
    # spectrogram: an image model (timm, torchvision, efficientnet-lite0) on log-mel spectrograms drawn as images
    input: Literal["auto", "spectrogram"] = "auto"
    # Whisper's encoder window in encoder frames (50 a second, whole seconds); None = the full 1500 (30 s). Short
    # clips then cost a fraction of the 30-s window; data.max_seconds must fit in it. Saved in the model's config.json
    audio_ctx: Optional[int] = Field(None, gt=0)


class SpecAugmentConfig(_Section):
    time_masks: int = Field(2, ge=0)  # masks per clip
    time_width: int = Field(20, ge=0)  # widest mask, in frames (10 ms each for Whisper)
    freq_masks: int = Field(2, ge=0)
    freq_width: int = Field(10, ge=0)  # widest mask, in mel bins


class LabelFromConfig(_Section):
    regex: str  # searched in each file name; its first group is the label, e.g. "^(\\d)_" for FSDD

    @field_validator("regex")
    @classmethod
    def _compiles_with_group(cls, v: str) -> str:
        try:
            groups = re.compile(v).groups
        except re.error as e:
            raise ValueError(f"not a valid regular expression ({e})") from None
        if groups < 1:
            raise ValueError("needs a group around the label, e.g. '^(\\d)_'")
        return v


class NamePatternConfig(_Section):
    regex: str  # searched in each file name (re.search)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regular expression ({e})") from None
        return v


class AugmentConfig(_Section):
    enabled: bool = True  # false: train images get the deterministic eval transform (enables the feature cache)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    policy: Literal["none", "randaugment", "trivialaugment"] = "none"
    magnitude: int = Field(9, ge=0, le=30)  # randaugment strength
    mixup: float = Field(0.0, ge=0.0)  # Beta(alpha, alpha); 0 = off
    cutmix: float = Field(0.0, ge=0.0)
    random_erasing: float = Field(0.0, ge=0.0, le=1.0)  # probability
    # ---- audio (data/audio_augment.py): train only, every one off by default; `enabled: false` turns all off
    spec_augment: Optional[SpecAugmentConfig] = None  # time / frequency masks on the log-mel features
    time_shift_ms: float = Field(0.0, ge=0.0)  # delay (leading silence) or advance by up to this many ms
    gain_db: float = Field(0.0, ge=0.0)  # random gain in [-gain_db, +gain_db]
    # additive noise at this SNR (a number, or [low, high] drawn uniformly); None = off
    noise_snr_db: Union[float, tuple[float, float], None] = None
    noise_prob: float = Field(0.5, ge=0.0, le=1.0)  # share of train clips that get noise
    noise_dir: Optional[PathStr] = None  # noise clips (any audio soundfile reads); None = white noise

    @field_validator("noise_snr_db")
    @classmethod
    def _snr_range(cls, v: Any) -> Any:
        if isinstance(v, tuple) and v[0] > v[1]:
            raise ValueError("give [low, high] with low <= high")
        return v


class LoraConfig(_Section):
    # bounded: a rank of 2^40 cannot be allocated (a traceback), and the adapters' scale alpha / r of 1e30 makes
    # the first gradient infinite; published settings stay far below both
    r: int = Field(8, gt=0, le=4096)
    alpha: float = Field(16.0, gt=0.0, le=10_000.0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: Optional[list[str]] = None  # None: peft's default for the architecture


class DataConfig(_Section):
    dir: Optional[PathStr] = None  # folder holding train/val files (or an ImageFolder tree)
    source: Optional[str] = None  # built-in source, e.g. sklearn-digits
    # file or folder, or a list of files read as one split (e.g. identity + general chat data); relative paths
    # are taken from data.dir
    train: Union[PathStr, list[PathStr], None] = None
    # upsampling: the rows of these data.train files are repeated N times in the training split (taken after
    # the validation split, so no copy reaches validation), e.g. {identity.json: 8} next to a large general set
    train_repeat: dict[str, int] = Field(default_factory=dict)
    val: Optional[PathStr] = None
    # a labelled split evaluated once with the kept model: None = a test.* file under data.dir if it has labels
    # (an unlabelled one, e.g. GLUE's test.tsv, is skipped with a log line); false = none; or a path
    test: Union[PathStr, Literal[False], None] = None
    text_column: Optional[str] = None  # None: guess (sentence, text, ...)
    text_pair_column: Optional[str] = None
    pair_swap: bool = False  # order-free pairs (similarity, paraphrase): also train on (second, first)
    label_column: str = "label"
    label_delimiter: str = Field("|", min_length=1)  # multilabel: separator inside a string label cell
    image_column: str = "path"
    val_split: float = Field(0.1, gt=0.0, lt=1.0)  # used when no val set is given (stratified, seeded)
    max_train_samples: Optional[int] = Field(None, gt=0)
    max_val_samples: Optional[int] = Field(None, gt=0)
    max_length: int = Field(128, gt=1)
    # token classification: sub-word tokens shared by consecutive windows of a sentence longer than
    # max_length (None: a quarter of the window)
    window_overlap: Optional[int] = Field(None, ge=0)
    group_by_length: bool = True  # text: shuffled mega-batches sorted by length (less padding)
    # text: batch widths rounded up to a multiple of this (1 = to the longest only). Fewer distinct shapes keep
    # CPU (oneDNN) kernels cached and RSS from growing with each new length, but short texts carry more padding
    pad_to_multiple_of: int = Field(1, ge=1)
    image_size: Optional[int] = Field(None, gt=7)  # None: the model's own input size
    augment: AugmentConfig = AugmentConfig()
    num_workers: int = Field(0, ge=0, le=256)  # worker processes; a huge count would fork until the OS refuses
    cache_images_mb: int = Field(4096, ge=0)  # decoded-image cache bound; 0 = decode every time
    on_bad_sample: Literal["error", "skip"] = "error"
    # class imbalance: auto picks class_weights once max/min class count reaches imbalance_threshold
    imbalance: Literal["auto", "class_weights", "resample", "focal", "none"] = "auto"
    imbalance_threshold: float = Field(3.0, ge=1.0)
    labels: Optional[list[str]] = None  # the full label set, when train may lack some classes
    allow_empty_classes: bool = False  # a class with no training example is fatal unless allowed
    # ---- audio (data/audio.py): soundfile decoding, mono, resampled; augmentation keys are under data.augment
    audio_column: str = "path"  # the file column of an audio table (paths relative to the table's folder)
    label_from: Optional[LabelFromConfig] = None  # labels from file names instead of class folders / a column
    # validation = the train files whose name matches (when no val split is given), e.g. FSDD's test part
    # {regex: "_[0-4]\\.wav$"}; instead of the random data.val_split
    val_from: Optional[NamePatternConfig] = None
    sample_rate: Optional[int] = Field(None, gt=0)  # None: the model's (16 kHz for Whisper)
    max_seconds: float = Field(30.0, gt=0.0)  # longer clips are truncated (counted in data_report.json)
    min_seconds: float = Field(0.0, ge=0.0)  # shorter clips are bad samples (error, or skip)
    cache_audio_mb: int = Field(2048, ge=0)  # decoded-waveform cache bound; 0 = decode every time
    # --- sft (generative instruction tuning; data/chat.py, data/sft.py) ---
    # row format; auto: detected per file from its keys (messages, conversations, prompt+completion,
    # instruction+output, text)
    format: Literal["auto", "alpaca", "chat", "sharegpt", "prompt_completion", "text"] = "auto"
    replace: dict[str, str] = Field(default_factory=dict)  # {{name}} placeholders in the data → these values
    packing: bool = False  # train rows: several examples per max_length row, attention kept within each
    # None: the tokenizer's own chat template; or a named one (chatml, llama3, zephyr, plain) or a Jinja string
    chat_template: Optional[str] = None
    # a labelled table as instructions: each row becomes a user turn (prompt_template) and an assistant turn
    # (completion_template); "{column}" fields are filled from the row, the label column first mapped through
    # label_names (a list indexed by the label, or a mapping), e.g. "Is this review positive or negative?\n{sentence}"
    prompt_template: Optional[str] = None
    completion_template: str = "{label}"
    label_names: Union[list[str], dict[str, str], None] = None

    @field_validator("replace")
    @classmethod
    def _placeholder_names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not re.fullmatch(r"[A-Za-z_]\w*", k)]
        if bad:
            raise ValueError(f"placeholder names must be identifiers (letters, digits, _), got {bad[0]!r}")
        return v


class TrainConfig(_Section):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Union[float, Literal["auto"]] = 5e-5  # auto: run the LR range test first and use its suggestion

    @field_validator("lr")
    @classmethod
    def _lr_positive(cls, v: Any) -> Any:
        if v != "auto" and v <= 0:
            raise ValueError("Input should be greater than 0, or 'auto' for the LR range test")
        return v
    weight_decay: float = Field(0.01, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)

    @field_validator("betas")
    @classmethod
    def _betas_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("each beta must be in [0, 1), e.g. [0.9, 0.999]")
        return v

    schedule: Literal["linear", "cosine", "constant"] = "linear"
    head_lr: Optional[float] = Field(None, gt=0.0)  # LR for the new head; None = train.lr
    layer_decay: Optional[float] = Field(None, gt=0.0, le=1.0)  # layer-wise LR decay: lr × decay^(depth from top)
    freeze_norm_stats: bool = False  # keep BatchNorm running stats fixed (small image sets)
    freeze: Union[Literal["backbone"], list[str], None] = None  # "backbone" (all but the new head) or name globs
    freeze_embeddings: bool = False  # freeze the input word-embedding matrix (text; less optimizer work)
    head_epochs: float = Field(0.0, ge=0.0)  # fastai-style fine_tune: head-only epochs first, then unfreeze
    gradual_unfreeze: bool = False  # after the head phase, unfreeze one layer group per epoch, top down
    lora: Optional[LoraConfig] = None
    # recompute block activations in backward (~30% more compute, far less activation memory);
    # auto: on with LoRA, whose point is a small memory footprint
    gradient_checkpointing: Union[Literal["auto"], bool] = "auto"
    ema: Optional[float] = Field(None, gt=0.0, lt=1.0)  # EMA decay of weights used for eval and the kept model
    feature_cache: bool = True  # frozen backbone + deterministic inputs: compute features once, train the head
    channels_last: bool = True  # image models: NHWC memory format (faster convolutions on CPU and GPU)
    # BERT-style sequence classifiers: the last layer runs for the first token only (exact; ~13% fewer FLOPs, 6 layers)
    first_token_shortcut: bool = True
    # causal LMs on CPU (task sft): attention computed per packed example instead of over the whole masked row
    # (exact; models/segment_attention.py)
    segment_attention: bool = True
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    warmup_steps: Optional[int] = Field(None, ge=0)  # overrides warmup_ratio
    epochs: float = Field(3, gt=0)
    max_steps: Optional[int] = Field(None, gt=0)  # optimizer steps; wins over epochs
    batch_size: int = Field(32, gt=0)
    grad_accum: int = Field(1, gt=0)
    grad_clip: Optional[float] = Field(1.0, gt=0.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = Field(0, ge=0, lt=2**32)
    # torch intra-op threads; None = all cores (torch overflows above 2^31, and OpenMP aborts far below that)
    threads: Optional[int] = Field(None, gt=0, le=1024)
    # non-finite loss / gradients: stop with an error, skip the update, or reload the last checkpoint at a lower LR
    nan_policy: Literal["stop", "skip", "rollback"] = "stop"
    nan_lr_factor: float = Field(0.5, gt=0.0, lt=1.0)  # rollback: LR multiplier per rollback
    # ---- wall-clock budget (engine/budget.py): "90s", "20m", "1.5h" or seconds. The run ends within it, final
    # evaluation and saving included; the LR schedule spans the steps it affords; epochs / max_steps are upper bounds
    time_budget: Optional[float] = Field(None, gt=0.0)

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v
    # --- several processes (torchrun / accelerate launch; SCALING.md). batch_size stays per process.
    # auto: DDP when launched on several processes; fsdp: FSDP2, parameters sharded per block; none: one process
    distributed: Literal["auto", "ddp", "fsdp", "none"] = "auto"
    compile: bool = False  # torch.compile the model (opt-in: compiling takes minutes; pays on long GPU runs)


class EvalConfig(_Section):
    every_steps: Optional[int] = Field(None, gt=0)  # None: once per epoch
    metric: Optional[str] = None  # picks the kept model; None: the task's default (accuracy, f1, mse, micro_f1)
    mode: Literal["auto", "max", "min"] = "auto"
    batch_size: Optional[int] = Field(None, gt=0)  # None: 2 × train.batch_size (Config.eval_batch_size)


class EarlyStoppingConfig(_Section):
    enabled: bool = False
    patience: int = Field(3, gt=0)  # evaluations without improvement
    min_delta: float = Field(0.0, ge=0.0)
    target: Optional[float] = None  # stop as soon as eval.metric reaches this


class OutputConfig(_Section):
    dir: Optional[PathStr] = None  # None: runs/<name>-<timestamp>
    name: Optional[str] = None
    keep_checkpoints: int = Field(1, ge=0)  # most recent periodic checkpoints kept (the best is always kept)
    progress: bool = True
    # experiment trackers (tuneforge.trackers): jsonl is metrics.jsonl and always on; tensorboard writes
    # RUN/tensorboard, mlflow logs to mlflow_uri (default: sqlite:///RUN/mlflow.db)
    loggers: list[Literal["jsonl", "tensorboard", "mlflow"]] = ["jsonl"]
    mlflow_uri: Optional[str] = None
    report: bool = True  # write report.html (curves, per-task charts, worst mistakes) at the end of the run


class ProbeConfig(_Section):
    # preset: auto only (probe.py): try the candidate strategies, cheapest first, each for the same short time on
    # part of train, scored on a held-out part of train (never the validation split); train the best one
    enabled: bool = False
    seconds: float = Field(120.0, gt=0.0)  # per candidate, when train.time_budget is not set
    budget_share: float = Field(0.2, gt=0.0, lt=1.0)  # with train.time_budget: this part of it, for all candidates
    rows: int = Field(2_000, gt=1)  # at most this many train rows train each candidate
    holdout: float = Field(0.2, gt=0.0, lt=1.0)  # the part of train held out to score them


class Config(_Section):
    # auto: choose the strategy, schedule, batch size, regularisation, ... from the data report and the model
    # (presets.py); every key the recipe sets itself wins over the preset's choice
    preset: Optional[Literal["auto"]] = None
    task: TaskConfig = TaskConfig()
    model: ModelConfig
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    output: OutputConfig = OutputConfig()
    probe: ProbeConfig = ProbeConfig()

    @field_validator("task", mode="before")
    @classmethod
    def _task_shorthand(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _compatible(self) -> "Config":
        t = self.train
        if t.lora is not None and (t.head_epochs > 0 or t.freeze == "backbone"):
            raise ValueError("train.lora trains adapters on a frozen model; it cannot be combined with "
                             "train.head_epochs or train.freeze: backbone")
        if t.gradual_unfreeze and t.head_epochs <= 0:
            raise ValueError("train.gradual_unfreeze follows a head-only phase; set train.head_epochs (e.g. 1)")
        if self.probe.enabled and self.preset != "auto":
            raise ValueError("probe.enabled compares the strategies preset: auto can choose; set preset: auto")
        return self

    @property
    def eval_batch_size(self) -> int:
        return self.eval.batch_size or 2 * self.train.batch_size

    @model_validator(mode="after")
    def _templates_need_auto_format(self) -> "Config":
        d = self.data
        if d.prompt_template is not None and d.format != "auto":
            raise ValueError(f"data.prompt_template turns table rows into conversations; it cannot be combined with "
                             f"data.format: {d.format} (leave data.format unset)")
        return self

    @model_validator(mode="after")
    def _need_data(self) -> "Config":
        d = self.data
        if not (d.dir or d.source or d.train):
            raise ValueError("data: give data.dir, data.train or data.source (e.g. sklearn-digits)")
        return self


# ---------------------------------------------------------------- durations and explicit keys


_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h|hr)?\s*", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def parse_duration(text: str) -> float:
    """'90s', '20m', '1.5h' or '600' (seconds) → seconds."""
    m = _DURATION.fullmatch(text)
    if not m:
        raise ValueError("give a duration such as 90s, 20m, 1.5h or a number of seconds")
    return float(m.group(1)) * _UNIT_SECONDS[(m.group(2) or "s").lower()]


def explicit_keys(cfg: BaseModel, prefix: str = "") -> set[str]:
    """The dotted keys the recipe (with its --set overrides) gave itself, defaults left out: pydantic records them
    at validation (`model_fields_set`), so the raw recipe's keys survive into the validated config."""
    keys = set()
    for name in cfg.model_fields_set:
        keys.add(prefix + name)
        value = getattr(cfg, name)
        if isinstance(value, BaseModel):
            keys |= explicit_keys(value, f"{prefix}{name}.")
    return keys


# ---------------------------------------------------------------- loading and overrides


def _allowed_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    for part in path:
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _key_path(loc: tuple, unknown_last: bool) -> list[str]:
    """The recipe key an error is about, without pydantic's union-member tags (`float`, `literal['auto']`)."""
    model: Any = Config
    out = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out.append(str(part))
        elif model is not None and part in model.model_fields:
            out.append(part)
            ann = model.model_fields[part].annotation
            model = next((a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and
                          issubclass(a, BaseModel)), None)
        elif unknown_last and i == len(loc) - 1:
            out.append(str(part))
    return out


def _format_error(err: dict) -> tuple[str, str, str]:
    """→ (key path, message, " (got <value>)" or "")."""
    loc = _key_path(err["loc"], err["type"] == "extra_forbidden")
    path = ".".join(loc) or "recipe"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(Config, loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f" (did you mean '{'.'.join(loc[:-1] + close)}'?)" if close else ""
        return path, f"unknown key '{path}'{hint}; allowed: {', '.join(allowed)}", ""
    if err["type"] == "missing":
        return path, f"missing key '{path}'", ""
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error" and not loc:
        return path, msg, ""
    given = err.get("input")
    shown = repr(given) if not isinstance(given, (dict, list)) else ""
    shown = f" (got {shown[:60] + '...' if len(shown) > 64 else shown})" if shown else ""
    return path, f"'{path}': {msg}", shown


def validate(raw: dict, source: str = "recipe") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe must be a YAML mapping with sections task, model, data, train, ...")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        lines: dict[str, list[str]] = {}
        for path, line, shown in map(_format_error, e.errors()):
            if path in lines:  # a union (a number or 'auto', a path or false) fails once per member: one line
                lines[path][0] += f"; or {line.split(': ', 1)[-1]}"
            else:
                lines[path] = [line, shown]
        first, *rest = ["".join(x) for x in lines.values()]
        extra = f" (+{len(rest)} more: {'; '.join(rest)})" if rest else ""
        raise ConfigError(f"{source}: {first}{extra}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.lr=3e-5' → (['train', 'lr'], 3e-05). Values are YAML-typed; pydantic then checks them."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=3e-5")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", parsed.strip()):
        parsed = float(parsed)  # PyYAML (YAML 1.1) reads 3e-5 as a string; YAML 1.2 and users mean a float
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: dict[str, Any] | list[str]) -> dict:
    items = [parse_override(o) for o in overrides] if isinstance(overrides, list) else [
        (k.replace("__", ".").split("."), v) for k, v in overrides.items()]
    for path, value in items:
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if isinstance(child, str) and part in ("task", "model"):
                child = {"type" if part == "task" else "name": child}
            if not isinstance(child, dict):
                child = {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return raw


def read_recipe(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe '{p}' not found; pass a YAML file such as recipes/quickstart.yaml")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"recipe '{p}' is not valid YAML: {first}") from None
    return raw or {}


def load_config(recipe: str | Path | dict, overrides: dict[str, Any] | list[str] | None = None) -> Config:
    source = "recipe" if isinstance(recipe, dict) else str(recipe)
    raw = copy.deepcopy(recipe) if isinstance(recipe, dict) else read_recipe(recipe)
    if overrides:
        raw = apply_overrides(raw, overrides)
    if isinstance(raw, dict) and raw.get("preset") == "auto":
        from tuneforge.recipe_defaults import fill_recipe  # the model by modality, the label column, if not given

        raw = fill_recipe(raw)
    cfg = validate(raw, source)
    if cfg.output.name is None and not isinstance(recipe, dict):
        cfg.output.name = Path(recipe).stem
    return cfg


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
