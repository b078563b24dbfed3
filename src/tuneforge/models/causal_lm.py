"""The SFT model call: the language-model loss from logits at the trained positions only.

Contract: `trained_token_loss(model, batch) -> TokenLoss(loss_sum, tokens)`: the summed next-token cross-entropy
over every position whose (shifted) label is not -100, and how many such positions there are. The model (a
transformers causal LM, possibly inside a PEFT wrapper) runs to its last hidden states with `use_cache=False`
(packed rows: attention then stays inside each example); only the hidden states of trained positions meet the
output layer. Full-vocabulary logits for every position (what `model(**batch).logits` builds: B x T x 49k values
for SmolLM2, then a float32 copy for the loss) are never materialised.

`LinearCrossEntropy` fuses the output projection with the cross-entropy over chunks of positions: a chunk's logits
live only inside the forward, which also computes the gradients for the hidden states (and for the output weight
and bias when they train); backward only scales them. Memory: one chunk of logits, no recomputation.
`selective_loss_matches(model)` checks once, on a tiny random batch, that this equals the model's own loss; an
architecture whose logits are post-processed in a way not reproduced here (only Gemma's final soft-capping is) then
uses `full_logits=True`, the plain model call."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tuneforge.models.segment_attention import NAME as SEGMENT_ATTENTION

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 25  # logits per chunk (x 4 bytes = 128 MB): chunk rows = this / vocabulary size
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


@dataclass
class TokenLoss:
    loss_sum: torch.Tensor  # summed cross-entropy over the trained tokens (float32; with a graph in training)
    tokens: torch.Tensor  # how many trained tokens (0-dim long)

    def mean(self) -> torch.Tensor:
        return self.loss_sum / self.tokens.clamp(min=1)


def softcap_of(model: nn.Module) -> Optional[float]:
    """Gemma-style final logit soft-capping (logits = cap * tanh(logits / cap)), if the model's config has it."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config  # multimodal configs nest the LM's
    return getattr(config, "final_logit_softcapping", None)


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(softcap(h_i W^T + b), t_i) over chunks of rows; gradients are computed in forward, chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap):
        needs = ctx.needs_input_grad
        grads = [torch.zeros(x.shape, dtype=torch.float32, device=x.device) if x is not None and need else None
                 for x, need in zip((hidden, weight, bias), needs)]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
        for start in range(0, hidden.shape[0], rows):
            h, t = hidden[start:start + rows], targets[start:start + rows]
            raw = F.linear(h, weight, bias).float()  # under autocast the matmul runs in bf16, as the model's head
            logits = softcap * torch.tanh(raw / softcap) if softcap else raw
            lse = logits.logsumexp(-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if not any(g is not None for g in grads):
                continue
            d = torch.exp(logits - lse[:, None])  # d loss / d logits = softmax - one-hot
            d[torch.arange(len(t), device=t.device), t] -= 1
            if softcap:
                d *= 1 - (logits / softcap) ** 2  # through the tanh
            if grads[0] is not None:
                grads[0][start:start + rows] = d.to(weight.dtype) @ weight  # bf16 under autocast
            if grads[1] is not None:
                grads[1] += d.t().to(h.dtype) @ h
            if grads[2] is not None:
                grads[2] += d.sum(0)
        ctx.dtypes = [x.dtype if x is not None else None for x in (hidden, weight, bias)]
        ctx.present = [g is not None for g in grads]
        ctx.save_for_backward(*[g for g in grads if g is not None])
        return total

    @staticmethod
    def backward(ctx, grad_total):
        saved = iter(ctx.saved_tensors)
        out = [(next(saved) * grad_total).to(dtype) if present else None
               for present, dtype in zip(ctx.present, ctx.dtypes)]
        return out[0], out[1], out[2], None, None


def _module_chunk_loss(head: nn.Module, softcap, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, targets, reduction="sum")


def linear_cross_entropy(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                         softcap: Optional[float] = None) -> torch.Tensor:
    """Summed cross-entropy of `head(hidden)` against `targets`. A plain nn.Linear head is fused (above); any other
    head (e.g. one with LoRA adapters) runs chunk by chunk, each chunk recomputed in backward (checkpointed)."""
    if type(head) is nn.Linear:
        return LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, softcap)
    rows = max(1, CHUNK_ELEMENTS // head.weight.shape[0]) if hasattr(head, "weight") else 1024
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], rows):
        total = total + checkpoint(_module_chunk_loss, head, softcap, hidden[start:start + rows],
                                   targets[start:start + rows], use_reentrant=False)
    return total


def trained_token_loss(model: nn.Module, batch: dict, full_logits: bool = False) -> TokenLoss:
    """Summed loss and count of the trained tokens of a batch (unshifted labels, -100 = not trained). The rows are
    packed or right-padded (SFT collators): models switched to segment attention may compute it per example."""
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    if getattr(getattr(model, "config", None), "_attn_implementation", None) == SEGMENT_ATTENTION:
        inputs["segment_attention"] = True
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    targets = labels[keep]
    if full_logits:  # the plain model call, for architectures the selective path does not reproduce
        logits = model(**inputs, use_cache=False).logits[:, :-1][keep].float()
        return TokenLoss(F.cross_entropy(logits, targets, reduction="sum"), keep.sum())
    hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state[:, :-1][keep]
    loss_sum = linear_cross_entropy(model.get_output_embeddings(), hidden, targets, softcap_of(model))
    return TokenLoss(loss_sum, keep.sum())


@torch.no_grad()
def selective_loss_matches(model: nn.Module, rtol: float = 1e-4) -> bool:
    """Whether `trained_token_loss` equals the model's own loss (`model(..., labels=...).loss`) on a tiny random
    batch: two rows of 12 tokens, the first padded, some positions untrained. Runs in eval mode, float32 math."""
    vocab = model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (2, 12), generator=g).to(device)
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    labels[0, 9:] = IGNORE_INDEX
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    was_training = model.training
    model.eval()
    try:
        ours = trained_token_loss(model, batch).mean()
        theirs = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    except (AttributeError, TypeError, NotImplementedError):  # no get_decoder / get_output_embeddings
        return False
    finally:
        model.train(was_training)
    return bool(torch.isclose(ours.float(), theirs.float(), rtol=rtol, atol=1e-5))
