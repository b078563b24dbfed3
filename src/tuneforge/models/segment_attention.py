"""Attention computed per example, for causal LMs on CPU ("segment attention", the CPU stand-in for the varlen
kernels flash-attention offers on GPUs).

A packed row holds several examples; its `position_ids` restart at 0 where each one starts. transformers' sdpa path
builds a block-diagonal causal mask for such rows, and PyTorch's CPU kernels then compute every query-key block of
the row, masked or not (T^2 for a row of T tokens). Here each example ("segment": a run of positions from a 0 to the
next 0) gets its own causal attention call, which costs sum(L_i^2) / 2 and skips nothing it needs: a 512-token row
of four examples does about a sixth of the work. Segments shorter than MATH_BELOW tokens use PyTorch's math kernel
(faster than its CPU flash kernel at those sizes; both compute the same attention).

Exactness: a query attends to the keys at or before it inside its segment, which is what the block-diagonal causal
mask allows, and also what a right-padded row needs (its padding comes after every real token, so causality hides
it). The caller vouches for that layout (packed rows or right padding, as tuneforge's SFT collator makes them) by
passing `segment_attention=True` to the model call (transformers forwards it to the attention function). Every
other call (generation with its left padding and KV cache, any call without the flag, a sliding window shorter
than the row, soft-capping, non-causal modules, CUDA) goes to transformers' own sdpa function, with the mask
transformers built exactly as for "sdpa".

`enable(model)` switches a transformers model that uses "sdpa" to this implementation (not saved with the model:
transformers does not write the attention implementation into config.json)."""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

NAME = "tuneforge_segments"
MATH_BELOW = 192  # tokens; see engine/loop.py attention_backend for the measurement


def segments(positions: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each run of positions that starts at index 0 or where a position is 0."""
    starts = [0] + [i for i in (positions == 0).nonzero().flatten().tolist() if i > 0]
    return list(zip(starts, starts[1:] + [len(positions)]))


def _causal(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling, dropout: float) -> torch.Tensor:
    gqa = key.shape[1] != query.shape[1]
    kernel = sdpa_kernel([SDPBackend.MATH]) if query.shape[2] < MATH_BELOW else nullcontext()
    with kernel:
        return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, dropout_p=dropout,
                                              enable_gqa=gqa)


def _usable(module, query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> bool:
    positions = kwargs.get("position_ids")
    window = getattr(module, "sliding_window", None)
    return (kwargs.get("segment_attention") is True and positions is not None and positions.dim() == 2
            and query.shape[2] == key.shape[2] == positions.shape[1] and getattr(module, "is_causal", True)
            and kwargs.get("softcap") is None
            and (window is None or window >= query.shape[2]) and not query.device.type == "cuda")


def segment_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                              **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function: (batch, heads, T, dim) inputs → (batch, T, heads, dim), None."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not _usable(module, query, key, kwargs):
        kwargs.pop("segment_attention", None)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    dropout = dropout if module.training else 0.0
    rows = [segments(p) for p in kwargs["position_ids"]]
    if all(len(r) == 1 for r in rows):  # one example per row (or right padding): one call for the batch
        out = _causal(query, key, value, scaling, dropout)
    else:
        out = torch.stack([torch.cat([_causal(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e],
                                              scaling, dropout)[0] for s, e in r], dim=1)
                           for b, r in enumerate(rows)])
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make NAME a transformers attention implementation whose masks are built as for sdpa (the fallback path)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, segment_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def enable(model) -> bool:
    """Switch a transformers model from "sdpa" to segment attention; False when it does not use sdpa (or cannot
    change its attention implementation)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa" or \
            not hasattr(model, "set_attn_implementation"):
        return False
    register()
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
