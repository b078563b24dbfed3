"""Limited-compute strategies: freezing (patterns, backbone, embeddings), LoRA via peft, weight EMA."""
from __future__ import annotations

import copy
import fnmatch
import math
import warnings
from contextlib import contextmanager
from typing import Optional

import torch
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


def freeze_lower_layers(bundle, trainable_fraction: float) -> int:
    """Gradual unfreezing: keep only the top `trainable_fraction` of layer groups (the head counts as the top one)
    trainable. Returns how many groups train."""
    from tuneforge.engine.optim import layer_depths

    depths, top = layer_depths(bundle.model, head_names(bundle))
    keep = max(1, math.ceil(trainable_fraction * (top + 1)))
    for name, p in bundle.model.named_parameters():
        if depths[name] <= top - keep:
            p.requires_grad_(False)
    return keep


def unfreeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(True)


def backbone_frozen(bundle) -> bool:
    head = head_names(bundle)
    return bool(head) and all(p.requires_grad == (n in head) for n, p in bundle.model.named_parameters())


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
    targets = lcfg.target_modules or _default_targets(bundle.model, head)
    kind = {"sequence": "SEQ_CLS", "token": "TOKEN_CLS", "causal_lm": "CAUSAL_LM"}.get(bundle.head.kind)
    is_hf = hasattr(bundle.model, "config") and hasattr(bundle.model.config, "model_type")
    config = LoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout, target_modules=targets,
                        modules_to_save=[head] if head else None, task_type=kind if is_hf else None)
    try:
        with warnings.catch_warnings():  # peft asks transformers 5 for a renamed attribute; nothing for users to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            bundle.model = get_peft_model(bundle.model, config)
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
    bundle.model = bundle.model.merge_and_unload()
    bundle.new_params = []


# ---------------------------------------------------------------- EMA


class WeightEMA:
    """Callback: exponential moving average of the weights (buffers copied), updated after every optimizer step.
    Evaluation runs on it (`applied`), so the best checkpoint and the kept model are the averaged weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.model, self.decay = model, decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_step_end(self, state) -> None:
        self.update(self.model)

    def __getattr__(self, name):  # the other callback events are no-ops
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow}

    def load_state_dict(self, d: dict) -> None:
        for k, v in d["shadow"].items():
            self.shadow[k].copy_(v)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    @contextmanager
    def applied(self, model: nn.Module):
        backup = copy.deepcopy(model.state_dict())
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(backup)
