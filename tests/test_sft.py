"""task: sft end to end on a tiny random Llama (2 layers, hidden 64) with a toy ChatML tokenizer, both built here.

LoRA (packed rows) and full fine-tuning (unpacked) memorise 8 short answers; the exported model/ and adapter/ load
with plain transformers / peft; generations.jsonl, predict (--prompt / --chat, streamed), eval on a file, mid-epoch
resume, the selective-logits loss against the full-logits loss, early stopping on a generation metric."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chaos_helpers import history as same_history  # without wall-clock and memory fields
import tuneforge
from tuneforge.cli import main
from tuneforge.config import validate
from tuneforge.data.chat import read_chat
from tuneforge.data.sft import encode_chat
from tuneforge.data.sources import read_split
from tuneforge.errors import ConfigError, DataError
from tuneforge.models import causal_lm
from tuneforge.models.causal_lm import linear_cross_entropy, selective_loss_matches, trained_token_loss
from test_sft_data import make_tokenizer, tiny_llama

ANSWERS = ["Paris.", "Guten Morgen.", "Hello! I am Forge.", "6", "The capital of France.",
           "I am Forge, an AI assistant.", "Summarize the text.", "1 2 3"]
ROWS = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": a}]}
        for i, a in enumerate(ANSWERS)]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A saved tiny Llama + toy tokenizer, the memorisable data, and a module-wide TUNEFORGE_CACHE."""
    d = tmp_path_factory.mktemp("sft")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEFORGE_CACHE", str(d / "cache"))
        torch.set_num_threads(1)
        tok = make_tokenizer()
        model = tiny_llama(len(tok))
        model.config.update({"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                             "bos_token_id": tok.bos_token_id})
        model.save_pretrained(d / "model")
        tok.save_pretrained(d / "model")
        write_jsonl(d / "train.jsonl", ROWS)
        yield d


def recipe(env: Path, lora: bool, **updates) -> dict:
    base = {"task": {"type": "sft", "generation_samples": 8, "max_new_tokens": 12},
            "model": str(env / "model"),
            "data": {"train": str(env / "train.jsonl"), "val": str(env / "train.jsonl"), "max_length": 64,
                     "packing": lora},
            "train": {"lr": 1e-2 if lora else 3e-3, "max_steps": 150, "batch_size": 4, "precision": "fp32",
                      "threads": 1, "schedule": "constant", "seed": 0,
                      **({"lora": {"r": 8, "alpha": 16, "dropout": 0.0}} if lora else {})},
            "eval": {"every_steps": 10, "metric": "exact_match"}, "early_stopping": {"target": 1.0},
            "output": {"progress": False}}
    for section, values in updates.items():
        base[section] = {**base.get(section, {}), **values}
    return base


@pytest.fixture(scope="module")
def lora_run(env):
    return tuneforge.train(recipe(env, lora=True), output=str(env / "lora"), quiet=True)


@pytest.fixture(scope="module")
def full_run(env):
    return tuneforge.train(recipe(env, lora=False), output=str(env / "full"), quiet=True)


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- training, early stopping on a generation metric


@pytest.mark.parametrize("which", ["lora_run", "full_run"])
def test_memorises_and_stops_at_generation_target(which, request):
    run = request.getfixturevalue(which)
    records = history(run.run_dir)
    assert records[-1]["metrics"]["loss"] < records[0]["metrics"]["loss"]
    assert run.summary["stop_reason"].startswith("target exact_match 1.0 reached")
    assert run.summary["steps"] < 150 and run.metrics["exact_match"] == 1.0
    assert {"perplexity", "contains_answer", "chrf", "rouge_l"} <= set(run.metrics)
    assert run.summary["strategies"]["segment_attention"] is True
    sft = run.summary["data"]["sft"]
    assert sft["train"]["rows"] == 8 and (sft["train"].get("packed_rows") is not None) == (which == "lora_run")


def test_generations_before_and_after(lora_run):
    rows = [json.loads(line) for line in (lora_run.run_dir / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["reference"] for r in rows} == set(ANSWERS)
    assert all({"prompt", "messages", "reference", "before", "after"} <= set(r) for r in rows)
    assert sum(r["after"] == r["reference"] for r in rows) == 8
    assert sum(r["before"] == r["reference"] for r in rows) == 0


# ---------------------------------------------------------------- the exported folders


def test_model_folder_loads_with_plain_transformers_and_reproduces_the_prompt(lora_run, env):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = lora_run.run_dir / "model"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert not any("lora" in n for n, _ in model.named_parameters())  # merged: loads without peft
    conv = ROWS[2]["messages"]
    trained = encode_chat(make_tokenizer(), conv, 64, "completion", None)
    prompt = tok.apply_chat_template(conv[:-1], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert prompt == trained.prompt_ids
    assert tok.apply_chat_template(conv, tokenize=True, return_dict=False) == trained.input_ids
    out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)  # its generation config stops
    assert tok.decode(out[0, len(prompt):], skip_special_tokens=True).strip() == ANSWERS[2]
    assert out[0, -1].item() == tok.convert_tokens_to_ids("<|im_end|>")


def test_adapter_folder_loads_with_peft_and_equals_the_merged_model(lora_run, env):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(env / "model")
    adapted = PeftModel.from_pretrained(base, lora_run.run_dir / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(lora_run.run_dir / "model").eval()
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    with torch.no_grad():
        assert torch.allclose(adapted(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)


# ---------------------------------------------------------------- predict and eval


def test_predict_prompts_stream_and_print_json(lora_run, capsys):
    assert main(["predict", str(lora_run.run_dir), "--prompt", "Question 0?", "--prompt", "Question 3?"]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["answer"] for x in lines] == ["Paris.", "6"] and lines[0]["input"] == "Question 0?"
    assert lines[0]["stop"] == "end_of_turn" and "Paris." in err  # streamed to stderr


def test_predict_chat_file_and_seeded_sampling(lora_run, env, capsys):
    chat = write_jsonl(env / "chat.jsonl", [{"messages": ROWS[1]["messages"][:1]}, ROWS[4]["messages"][:1]])
    assert main(["predict", str(lora_run.run_dir), "--chat", str(chat), "--no-stream"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["answer"] for line in out.splitlines()] == [ANSWERS[1], ANSWERS[4]] and not err
    sampled = []
    for _ in range(2):
        assert main(["predict", str(lora_run.run_dir), "--prompt", "Question 5?", "--temperature", "1.5",
                     "--seed", "3", "--no-stream", "--max-new-tokens", "5"]) == 0
        sampled.append(json.loads(capsys.readouterr().out)["answer"])
    assert sampled[0] == sampled[1]
    bad = write_jsonl(env / "bad.jsonl", [ROWS[0]["messages"]])  # ends with the assistant's turn
    assert main(["predict", str(lora_run.run_dir), "--chat", str(bad)]) == 2
    assert "bad.jsonl line 1: the conversation ends with a assistant message" in capsys.readouterr().err


def test_eval_on_a_file_reports_the_same_metrics(lora_run, env, capsys):
    assert main(["eval", str(lora_run.run_dir), "--data", str(env / "train.jsonl")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["exact_match"] == 1.0 and metrics["generated"] == 8
    assert abs(metrics["loss"] - lora_run.metrics["loss"]) < 1e-4


def test_prompt_flag_needs_a_generative_run(tmp_path, text_recipe, capsys):
    run = tuneforge.train(text_recipe(train={"max_steps": 2}), output=str(tmp_path / "cls"), quiet=True)
    assert main(["predict", str(run.run_dir), "--prompt", "hello"]) == 2
    assert "need a generative model (task sft)" in capsys.readouterr().err


# ---------------------------------------------------------------- resume




def test_resume_mid_epoch_is_bit_identical(env, tmp_path, crash_at):
    from safetensors.torch import load_file

    # 8 rows, batch 3 x accum 2: 3 micro-batches (2 steps) an epoch; the checkpoint at step 3 is mid-epoch
    r = recipe(env, lora=True, data={"packing": False}, train={"max_steps": 8, "batch_size": 3, "grad_accum": 2},
               eval={"every_steps": 3, "metric": "loss"}, early_stopping={"target": None},
               output={"keep_checkpoints": 3})
    reference = tuneforge.train(r, output=str(tmp_path / "ref"), quiet=True)
    crash_at("step:5")
    with pytest.raises(KeyboardInterrupt):
        tuneforge.train(r, output=str(tmp_path / "run"), quiet=True)
    before = (tmp_path / "run" / "generations.jsonl").read_text()
    crash_at(None)
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-00000003" / "trainer.json").read_text())
    assert saved["train_state"]["batch_in_epoch"] == 2  # mid-epoch
    resumed = tuneforge.resume(tmp_path / "run", quiet=True)
    assert resumed.summary["resumed_from_step"] == 3
    assert same_history(resumed.run_dir) == same_history(reference.run_dir)
    a, b = load_file(reference.run_dir / "model" / "model.safetensors"), load_file(resumed.run_dir / "model" /
                                                                                     "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    after = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert [x["before"] for x in after] == [json.loads(line)["before"] for line in before.splitlines()]
    assert all("after" in x for x in after)


# ---------------------------------------------------------------- the selective-logits loss


def _batch(vocab: int, packed: bool):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 20), generator=g)
    labels = ids.clone()
    labels[:, :6] = -100
    labels[1, 15:] = -100
    batch = {"input_ids": ids, "labels": labels}
    if packed:
        batch["position_ids"] = torch.cat([torch.arange(8), torch.arange(12)]).repeat(3, 1)
    else:
        batch["attention_mask"] = (labels != -100) | (torch.arange(20) < 6)
    return batch


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("chunked", [False, True])
def test_selective_loss_equals_full_logits_loss_and_gradients(packed, chunked, monkeypatch):
    if chunked:  # several chunks of positions
        monkeypatch.setattr(causal_lm, "CHUNK_ELEMENTS", 400 * 7)
    model = tiny_llama(400).train()
    batch = _batch(400, packed)
    ours = trained_token_loss(model, batch)
    ours.mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    theirs = model(**inputs, labels=batch["labels"], use_cache=False).loss  # full logits, HF's own loss
    theirs.backward()
    assert int(ours.tokens) == int((batch["labels"][:, 1:] != -100).sum())
    assert abs(ours.mean().item() - theirs.item()) < 1e-5
    for n, p in model.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-6, rtol=1e-4), n
    assert selective_loss_matches(model)


def test_segment_attention_is_exact_and_leaves_other_calls_alone():
    import copy

    from tuneforge.models.segment_attention import enable

    plain = tiny_llama(400).train()
    fast = copy.deepcopy(plain)
    assert enable(fast) and fast.config._attn_implementation == "tuneforge_segments"
    for packed in (True, False):
        batch = _batch(400, packed)
        for model in (plain, fast):
            model.zero_grad()
            trained_token_loss(model, batch).mean().backward()
        for (n, p), q in zip(plain.named_parameters(), fast.parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), n
    ids, mask = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 11, 12, 13]]), torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
    plain.eval(), fast.eval()
    with torch.no_grad():  # without the flag (generation, left padding): transformers' sdpa path, same numbers
        logits = [m(input_ids=ids, attention_mask=mask).logits for m in (plain, fast)]
        answers = [m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
                   for m in (plain, fast)]
    assert torch.equal(*logits) and torch.equal(*answers)


def test_fused_head_with_bias_and_softcap_matches_autograd():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    h = torch.randn(9, 16, requires_grad=True)
    t = torch.randint(0, 50, (9,))
    for softcap in (None, 3.0):
        ours = linear_cross_entropy(head, h, t, softcap)
        g_ours = torch.autograd.grad(ours, (h, head.weight, head.bias))
        logits = head(h)
        logits = softcap * torch.tanh(logits / softcap) if softcap else logits
        ref = torch.nn.functional.cross_entropy(logits, t, reduction="sum")
        g_ref = torch.autograd.grad(ref, (h, head.weight, head.bias))
        assert torch.allclose(ours, ref, atol=1e-5)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_ours, g_ref))
    wrapped = torch.nn.Sequential(head)  # not a plain Linear (e.g. LoRA on the head): chunked, checkpointed
    ours = linear_cross_entropy(wrapped, h, t)
    assert torch.allclose(ours, torch.nn.functional.cross_entropy(head(h), t, reduction="sum"), atol=1e-5)


# ---------------------------------------------------------------- data options of the task


def test_labelled_table_becomes_instructions_and_train_takes_a_list(tmp_path):
    (tmp_path / "a.tsv").write_text("sentence\tlabel\na fine film\t1\na dull film\t0\n", encoding="utf-8")
    write_jsonl(tmp_path / "b.jsonl", [{"instruction": "Hi", "output": "Hello"}])
    cfg = validate({"task": "sft", "model": "toy", "data": {
        "dir": str(tmp_path), "train": ["a.tsv"], "label_names": ["negative", "positive"],
        "prompt_template": "Is this review positive or negative?\n{sentence}"}})
    ex = read_chat(tmp_path / "a.tsv", cfg.data)
    assert ex.inputs[0] == [{"role": "user", "content": "Is this review positive or negative?\na fine film"},
                            {"role": "assistant", "content": "positive"}]
    assert ex.labels == ["positive", "negative"]
    bad = cfg.data.model_copy(update={"prompt_template": "{review}"})
    with pytest.raises(DataError, match=r"a.tsv line 2: data.prompt_template field \{review\} is not a column"):
        read_chat(tmp_path / "a.tsv", bad)
    both = validate({"task": "sft", "model": "toy", "data": {"dir": str(tmp_path), "train": ["b.jsonl", "b.jsonl"]}})
    assert len(read_split(both.data, "text", "train", print, "chat")) == 2
    with pytest.raises(ConfigError, match="cannot be combined with data.format: alpaca"):
        validate({"task": "sft", "model": "toy", "data": {"train": "x", "prompt_template": "{a}", "format": "alpaca"}})


def test_train_repeat_upsamples_one_file_after_the_validation_split(tmp_path):
    from tuneforge.data.sources import repeat_files

    write_jsonl(tmp_path / "small.jsonl", [{"instruction": f"Who {i}?", "output": "Forge"} for i in range(4)])
    write_jsonl(tmp_path / "big.jsonl", [{"instruction": f"Q {i}", "output": "A"} for i in range(6)])
    cfg = validate({"task": "sft", "model": "toy", "data": {
        "dir": str(tmp_path), "train": ["small.jsonl", "big.jsonl"], "train_repeat": {"small.jsonl": 3}}})
    train = read_split(cfg.data, "text", "train", print, "chat")
    repeated = repeat_files(train.subset([0, 1, 5]), cfg.data, print)  # rows 0, 1 of small, one row of big
    assert [w.split("/")[-1] for w in repeated.where] == ["small.jsonl line 1"] * 3 + ["small.jsonl line 2"] * 3 + [
        "big.jsonl line 2"]
    wrong = cfg.data.model_copy(update={"train_repeat": {"other.jsonl": 2}})
    with pytest.raises(ConfigError, match="data.train_repeat names 'other.jsonl', which is not in data.train"):
        repeat_files(train, wrong, print)
    zero = cfg.data.model_copy(update={"train_repeat": {"small.jsonl": 0}})
    with pytest.raises(ConfigError, match="data.train_repeat.small.jsonl is 0"):
        repeat_files(train, zero, print)


def test_generation_metric_needs_generation_samples(env):
    with pytest.raises(ConfigError, match="task.generation_samples above 0"):
        tuneforge.train(recipe(env, lora=True, task={"generation_samples": 0}), output=str(env / "x"), quiet=True)
