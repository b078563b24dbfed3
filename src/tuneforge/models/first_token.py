"""First-token shortcut for BERT-style sequence classifiers (exact; a speed feature, `train.first_token_shortcut`).

BERT, RoBERTa and ELECTRA classifiers read only the first token of the last layer. So in that layer only the
first token needs a query, an attention output and a feed-forward pass; keys and values still use every token.
The outputs and gradients are the same as the full layer (up to float rounding); the saving is about 80% of one
layer's FLOPs (~13% for a 6-layer model). Parameters and their names are untouched, so saving, LoRA and export
are unaffected: the patch lives on the layer instance only.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

# model types whose sequence-classification head reads hidden[:, 0] of the last encoder layer
FIRST_TOKEN_HEADS = {"bert", "roberta", "xlm-roberta", "electra", "camembert"}


def _last_layer(model: nn.Module):
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        return None
    last = layers[-1]
    try:  # the BertLayer shape this forward re-implements
        for path in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output",
                     "intermediate", "output"):
            last.get_submodule(path)
    except AttributeError:
        return None
    return last


def _first_token_forward(self, hidden_states, attention_mask=None, *args, **kwargs):
    """BertLayer.forward, computed for position 0 only (returns [batch, 1, hidden])."""
    sa = self.attention.self
    b, n, _ = hidden_states.shape
    heads, dim = sa.num_attention_heads, sa.attention_head_size
    first = hidden_states[:, :1]
    q = sa.query(first).view(b, 1, heads, dim).transpose(1, 2)
    k = sa.key(hidden_states).view(b, n, heads, dim).transpose(1, 2)
    v = sa.value(hidden_states).view(b, n, heads, dim).transpose(1, 2)
    mask = attention_mask
    if mask is not None:
        mask = mask[..., :1, :] if mask.dim() == 4 and mask.shape[-2] > 1 else mask
        if mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=sa.dropout.p if self.training else 0.0,
                                         scale=sa.scaling)
    attn = self.attention.output(ctx.transpose(1, 2).reshape(b, 1, heads * dim), first)
    return self.output(self.intermediate(attn), attn)


def apply_first_token_shortcut(model: nn.Module) -> bool:
    """Patch the last layer of a supported sequence classifier; False (and nothing changed) otherwise."""
    config = getattr(model, "config", None)
    if config is None or config.model_type not in FIRST_TOKEN_HEADS or getattr(config, "is_decoder", False):
        return False
    if getattr(config, "_attn_implementation", "eager") not in ("eager", "sdpa"):
        return False
    if not type(model).__name__.endswith("ForSequenceClassification"):
        return False
    last = _last_layer(model)
    if last is None or getattr(last, "chunk_size_feed_forward", 0):
        return False
    last.forward = types.MethodType(_first_token_forward, last)
    return True
