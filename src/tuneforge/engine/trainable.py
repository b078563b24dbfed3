"""What trains, in one place: freezing (patterns, backbone, embeddings), gradual unfreezing, train mode, gradient
checkpointing, LoRA (peft), layer depths for discriminative LRs, and the training phases that apply them.

A run is one or more `Phase`s (fastai-style fine_tune: a head-only phase, then the unfrozen model, optionally
unfrozen gradually); each phase applies its own trainable set to the model with `Phase.apply`."""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
import math
import warnings
from typing import Optional

from torch import nn

from tuneforge.errors import ConfigError


HEAD_MODULES = ("classifier", "score", "fc", "head", "heads", "qa_outputs")


def head_names(bundle) -> set[str]:
    """Parameters of the head: the newly initialised ones, or (when the checkpoint already had a head of the
    right size) the model's output layer."""
    model = bundle.model
    own = {n for n, _ in model.named_parameters()}
    new = {n for n in bundle.new_params if n in own}
    if new:
        return new
    cfg = getattr(model, "pretrained_cfg", None) or {}
    for name in ([cfg["classifier"]] if cfg.get("classifier") else []) + list(HEAD_MODULES):
        hit = {n for n in own if n.startswith(name + ".")}
        if hit:
            return hit
    return set()


def head_module_name(bundle) -> Optional[str]:
    """The module that holds every new-head parameter (e.g. `classifier`), or None when there is no single one."""
    names = sorted(head_names(bundle))
    if not names:
        return None
    parts = [n.split(".")[:-1] for n in names]
    common = parts[0]
    for p in parts[1:]:
        i = 0
        while i < min(len(common), len(p)) and common[i] == p[i]:
            i += 1
        common = common[:i]
    return ".".join(common) or None


def apply_freeze(bundle, tcfg, log=print) -> None:
    """train.freeze: "backbone" (everything but the new head) or glob patterns over parameter / module names."""
    model = bundle.model
    params = dict(model.named_parameters())
    if tcfg.freeze == "backbone":
        head = head_names(bundle)
        if not head:
            raise ConfigError("train.freeze: backbone needs a new head, but every tensor came from the checkpoint")
        for n, p in params.items():
            p.requires_grad_(n in head)
    elif tcfg.freeze:
        for pattern in tcfg.freeze:
            hits = [n for n in params if fnmatch.fnmatch(n, pattern) or n.startswith(pattern.rstrip(".*") + ".")]
            if not hits:
                sample = ", ".join(list(params)[:4])
                raise ConfigError(f"train.freeze pattern '{pattern}' matches no parameter (names look like: {sample}, "
                                  "...); fix the pattern")
            for n in hits:
                params[n].requires_grad_(False)
    if tcfg.freeze_embeddings:
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if emb is None:
            raise ConfigError("train.freeze_embeddings: this model has no input word embeddings (text models only)")
        emb.weight.requires_grad_(False)


_HF_LAYER = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


def layer_depths(model: nn.Module, head: set[str]) -> tuple[dict[str, int], int]:
    """Depth of every parameter (0 = input side). timm models describe their own grouping; transformer
    stacks are numbered `...layer.<i>...`; embeddings come first and the head (and anything after the stack) last."""
    names = [n for n, _ in model.named_parameters()]
    depth: dict[str, int] = {}
    if hasattr(model, "group_matcher"):  # timm's own layer grouping
        from timm.models import group_parameters

        for gid, members in enumerate(group_parameters(model, model.group_matcher(coarse=False)).values()):
            depth.update({n: gid for n in members})
    else:
        for n in names:
            m = _HF_LAYER.search(n)
            if m:
                depth[n] = int(m.group(1)) + 1
            elif "embed" in n:
                depth[n] = 0
    top = max(depth.values(), default=0) + 1
    for n in names:
        if n in head or n not in depth:
            depth[n] = top
    return depth, top


def freeze_lower_layers(bundle, trainable_fraction: float) -> int:
    """Gradual unfreezing: keep only the top `trainable_fraction` of layer groups (the head counts as the top one)
    trainable. Returns how many groups train."""
    depths, top = layer_depths(bundle.model, head_names(bundle))
    keep = max(1, math.ceil(trainable_fraction * (top + 1)))
    for name, p in bundle.model.named_parameters():
        if depths[name] <= top - keep:
            p.requires_grad_(False)
    return keep


def unfreeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(True)


def set_train_mode(model: nn.Module, freeze_norm_stats: bool = False, head: Optional[str] = None) -> None:
    """Train mode, except: with a frozen backbone (`head` given) only the head trains and the backbone runs as in
    eval (no dropout, fixed BatchNorm statistics) - which is also what makes cached features exact; fully frozen
    sub-modules run in eval; and with freeze_norm_stats BatchNorm keeps its pretrained statistics."""
    if head:
        model.eval()
        model.get_submodule(head).train()
        return
    model.train()
    for m in model.modules():
        own = list(m.parameters())
        if (own and not any(p.requires_grad for p in own)) or (
                freeze_norm_stats and isinstance(m, nn.modules.batchnorm._BatchNorm)):
            m.eval()


# ---------------------------------------------------------------- gradient checkpointing


def apply_gradient_checkpointing(bundle, tc, log=print) -> bool:
    """train.gradient_checkpointing: true / false, or auto (on with LoRA). Returns whether it is on."""
    wanted = tc.gradient_checkpointing
    if wanted == "auto":
        wanted = tc.lora is not None
    if not wanted:
        return False
    if bundle.use_gradient_checkpointing():
        log("memory: gradient checkpointing on (block activations are recomputed in backward)")
        return True
    if tc.gradient_checkpointing is True:
        raise ConfigError(f"train.gradient_checkpointing: model '{bundle.name}' ({bundle.source}) does not support "
                          "it; set train.gradient_checkpointing: false")
    log(f"memory: model '{bundle.name}' has no gradient checkpointing; activations are kept")
    return False


def prepare_trainable(bundle, tc, log=print) -> bool:
    """Freezing, then gradient checkpointing, then LoRA (which wraps the frozen, checkpointed model).
    Returns whether gradient checkpointing is on."""
    apply_freeze(bundle, tc, log)
    checkpointing = apply_gradient_checkpointing(bundle, tc, log)
    if tc.lora is not None:
        apply_lora(bundle, tc.lora, log)
    return checkpointing


# ---------------------------------------------------------------- LoRA


# attention query / value projections by their names in transformers models (LoRA's usual targets)
QUERY_VALUE_NAMES = (("query", "value"), ("q_proj", "v_proj"), ("q", "v"), ("q_lin", "v_lin"), ("c_attn",),
                     ("query_key_value",), ("Wqkv",), ("qkv_proj",))


def _default_targets(model: nn.Module, head: Optional[str]) -> Optional[list[str]]:
    """transformers: peft's per-architecture default (None) where peft has one, else the attention query / value
    projections found by name. timm and torchvision: every Linear and 1x1 / grouped-free Conv2d outside the head."""
    if hasattr(model, "config") and hasattr(model.config, "model_type"):
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

        if model.config.model_type in PEFT_DEFAULTS:
            return None
        linear = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        for names in QUERY_VALUE_NAMES:
            if set(names) <= linear:
                return list(names)
        raise ConfigError(f"train.lora: no default target modules for model type '{model.config.model_type}'; "
                          f"set train.lora.target_modules (Linear layers here: {', '.join(sorted(linear)[:12])})")
    names = set()
    for name, m in model.named_modules():
        if head and (name == head or name.startswith(head + ".")):
            continue
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1):
            names.add(name.split(".")[-1])
    return sorted(names)


def apply_lora(bundle, lcfg, log=print) -> None:
    from peft import LoraConfig, get_peft_model

    head = head_module_name(bundle)
    # causal LMs (task sft): every linear projection (q, k, v, o, gate, up, down), the usual SFT choice
    causal = bundle.head.kind == "causal_lm"
    targets = lcfg.target_modules or ("all-linear" if causal else _default_targets(bundle.model, head))
    kind = {"sequence": "SEQ_CLS", "token": "TOKEN_CLS", "causal_lm": "CAUSAL_LM"}.get(bundle.head.kind)
    is_hf = hasattr(bundle.model, "config") and hasattr(bundle.model.config, "model_type")
    config = LoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout, target_modules=targets,
                        modules_to_save=[head] if head else None, task_type=kind if is_hf else None)
    try:
        with warnings.catch_warnings():  # peft asks transformers 5 for a renamed attribute; nothing for users to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            bundle.replace_model(get_peft_model(bundle.model, config))
    except (ValueError, KeyError) as e:
        msg = str(e).splitlines()[0][:200]
        raise ConfigError(f"train.lora.target_modules: {msg}; set module names that exist in the model") from None
    trainable, total = bundle.model.get_nb_trainable_parameters()
    log(f"lora: r={lcfg.r} alpha={lcfg.alpha} on {targets or 'peft default modules'}; "
        f"{trainable:,} of {total:,} parameters train")


def merge_lora(bundle, adapter_dir=None) -> None:
    """Save the adapter on its own (if asked), then merge it so model/ loads without peft."""
    from peft import PeftModel

    if not isinstance(bundle.model, PeftModel):
        return
    if adapter_dir is not None:
        bundle.model.save_pretrained(str(adapter_dir), safe_serialization=True)
    bundle.replace_model(bundle.model.merge_and_unload())


def check_trainable(model: nn.Module) -> None:
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("nothing would train: every parameter is frozen (train.freeze / train.freeze_embeddings); "
                          "freeze fewer parameters")


# ---------------------------------------------------------------- phases


@dataclass
class Phase:
    name: str
    epochs: float
    lr: float
    head_lr: Optional[float]
    layer_decay: Optional[float]
    frozen_backbone: bool  # only the new head trains; the backbone runs in eval mode
    trainable_fraction: float = 1.0  # gradual unfreezing: the top share of layer groups that trains
    refreeze: bool = False  # multi-phase plans set each phase's own trainable set

    def train_config(self, tc):
        """The train section as this phase sees it (optimizer and schedule are built from it)."""
        return tc.model_copy(update={"lr": self.lr, "head_lr": self.head_lr, "layer_decay": self.layer_decay,
                                     "epochs": self.epochs, "freeze": "backbone" if self.frozen_backbone else tc.freeze})

    def apply(self, bundle, tc, log=print) -> None:
        """Set this phase's trainable parameters (a single-phase run keeps what prepare_trainable set)."""
        if not self.refreeze:
            return
        unfreeze_all(bundle.model)
        apply_freeze(bundle, self.train_config(tc), log)
        if self.trainable_fraction < 1.0:
            groups = freeze_lower_layers(bundle, self.trainable_fraction)
            log(f"phase {self.name}: gradual unfreezing, the top {groups} layer groups train")

    def train_mode(self, bundle, tc):
        """The function the loop calls to put the model in train mode for this phase."""
        head = head_module_name(bundle) if self.frozen_backbone else None
        return lambda model: set_train_mode(model, tc.freeze_norm_stats, head if model is bundle.model else None)


def plan_phases(tc, lr: float) -> list[Phase]:
    if tc.head_epochs <= 0:
        return [Phase("train", tc.epochs, lr, tc.head_lr, tc.layer_decay, tc.freeze == "backbone")]
    head = Phase("head", tc.head_epochs, tc.head_lr or 10 * lr, None, None, True, refreeze=True)
    decay = tc.layer_decay or 0.8
    if not tc.gradual_unfreeze:
        return [head, Phase("fine_tune", tc.epochs, lr, tc.head_lr, decay, False, refreeze=True)]
    # ULMFiT-style: one epoch with the top third of layer groups, one with the top two thirds, then all of them
    stages = max(1, min(3, int(tc.epochs)))
    return [head] + [Phase(f"unfreeze_{j}", 1.0 if j < stages else tc.epochs - (stages - 1), lr, tc.head_lr, decay,
                           False, j / stages, refreeze=True) for j in range(1, stages + 1)]

