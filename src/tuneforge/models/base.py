"""What every model source returns: a module plus how to feed it, how it normalises inputs, and how to save it."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from tuneforge.registry import Registry


@dataclass
class HeadSpec:
    """What the task needs from the model's output layer."""

    num_outputs: int
    labels: list[str]  # output names (class names, tags); empty for plain regression
    kind: str = "sequence"  # sequence | token | encoder | causal_lm: picks the HF auto class
    problem_type: Optional[str] = None  # HF problem_type (single_label_classification, regression, ...)


@dataclass
class ModelBundle:
    model: nn.Module
    modality: str  # "text" | "image"
    source: str  # registry name of the model source
    name: str
    head: HeadSpec
    tokenizer: Any = None
    image_cfg: Optional[dict] = None  # input_size, mean, std, crop_pct, interpolation
    new_params: list[str] = field(default_factory=list)  # randomly initialised (the new head)
    extra_meta: dict = field(default_factory=dict)
    siamese: ClassVar[bool] = False  # text pairs are encoded one side at a time (models/siamese.py)

    def logits(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def replace_model(self, model: nn.Module) -> None:
        """Swap the module for a wrapped or unwrapped version of itself (accelerator-prepared, LoRA, merged)."""
        self.model = model

    def save(self, out_dir: Path) -> None:
        """Write the model in its library's own loadable format (not counting tuneforge.json)."""
        raise NotImplementedError

    def use_gradient_checkpointing(self) -> bool:
        """Recompute each block's activations in backward instead of keeping them; False if unsupported."""
        return False

    def max_tokens(self) -> Optional[int]:
        """The longest token sequence the model takes (position embeddings, tokenizer limit); None: no limit."""
        return None

    # speed toggles: each returns whether it is now on (False: the model has no such fast path)
    def use_channels_last(self) -> bool:
        """NHWC activations (oneDNN's fast path for convolutions)."""
        return False

    def use_first_token_shortcut(self) -> bool:
        """Run the last encoder layer for the first token only (sequence classifiers that read only it)."""
        return False

    def use_segment_attention(self) -> bool:
        """Causal LMs on CPU: attention per packed example, not over the whole masked row."""
        return False

    def meta(self) -> dict:
        return {"source": self.source, "name": self.name, "modality": self.modality,
                "head": self.head.__dict__, "image_cfg": self.image_cfg, **self.extra_meta}


# A model source: `load(cfg: ModelConfig, head: HeadSpec) -> ModelBundle` and
# `load_saved(model_dir: Path, meta: dict, trust_remote_code: bool = False) -> ModelBundle`.
MODEL_SOURCES: Registry[Any] = Registry("model source")
# An alias: a short name → (source name, ModelConfig updates). Adding a packaged model is one entry.
MODEL_ALIASES: Registry[Any] = Registry("model alias")


def describe_loading(name: str, loaded: int, new: list[str], dropped: list[str], log) -> None:
    log(f"model {name}: loaded {loaded} pretrained tensors; new (random init): "
        f"{', '.join(new) if new else 'none'}" + (f"; not used: {', '.join(dropped[:8])}"
                                                  + (" ..." if len(dropped) > 8 else "") if dropped else ""))


def load_state_filtered(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[int, list[str], list[str]]:
    """Load tensors whose name and shape match; the rest of the model stays as initialised (the new head)."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    new = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    dropped = [k for k in state if k not in usable]
    return len(usable), new, dropped


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
