"""Measure a GGUF alias (models/gguf.py): first conversion, reuse check, folder load times, size, config and a greedy
chat answer. Usage: TUNEFORGE_CACHE=/tmp/x python benchmarks/bench_gguf_models.py smollm2-135m|gemma3-270m [completion prompt]"""
import sys, time, torch, json
torch.set_num_threads(2)
from transformers import AutoModelForCausalLM, AutoTokenizer
from tuneforge.models import gguf as gg
pkg = gg.GGUF_PACKAGES[sys.argv[1]]
t = time.perf_counter(); folder = gg.convert_gguf(pkg); conv = time.perf_counter() - t
print(f"first convert_gguf: {conv:.1f} s")
for i in range(2):
    t = time.perf_counter(); gg.convert_gguf(pkg); print(f"reuse check (sizes + weights hash): {time.perf_counter() - t:.2f} s")
print("folder:", {p.name: p.stat().st_size for p in folder.iterdir()}, "total MB", round(sum(p.stat().st_size for p in folder.iterdir()) / 1e6, 1))
for i in range(3):
    t = time.perf_counter(); m = AutoModelForCausalLM.from_pretrained(folder); lm = time.perf_counter() - t
    t = time.perf_counter(); tok = AutoTokenizer.from_pretrained(folder); lt = time.perf_counter() - t
    print(f"from_pretrained model {lm:.2f} s, tokenizer {lt:.2f} s")
c = m.config
print("params", sum(p.numel() for p in m.parameters()), {k: getattr(c, k) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings")}, m.dtype)
print("generation_config:", json.loads((folder / "generation_config.json").read_text()))
print("chat_template head:", repr(tok.chat_template[:120]))
msgs = [{"role": "user", "content": "What is the capital of France?"}]
x = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
print("prompt:", repr(tok.decode(x["input_ids"][0])))
t = time.perf_counter(); out = m.generate(**x, max_new_tokens=40, do_sample=False)
print(f"generate {time.perf_counter() - t:.2f} s:", repr(tok.decode(out[0, x["input_ids"].shape[1]:])))
if len(sys.argv) > 2:
    x = tok(sys.argv[2], return_tensors="pt")
    out = m.generate(**x, max_new_tokens=20, do_sample=False)
    print("completion:", repr(tok.decode(out[0, x["input_ids"].shape[1]:])))
