"""SFT data layer: readers and format detection, chat templates, loss masking, packing with isolated attention.

Everything runs on a toy byte-level BPE tokenizer with ChatML special tokens and a tiny random LlamaForCausalLM
built here; the real demo files in ../shared/data/sft are checked when present."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

from tuneforge.config import validate
from tuneforge.data.chat import read_chat, read_chat_file
from tuneforge.data.chat_templates import TEMPLATES, template_for
from tuneforge.data.examples import Examples
from tuneforge.data.packing import (IGNORE_INDEX, SFTCollator, pack_bfd, packed_rows, packing_efficiency,
                                    packing_isolates)
from tuneforge.data.sft import build_sft_inputs, encode_chat, encode_conversation, encode_examples
from tuneforge.data.sources import read_split
from tuneforge.errors import ConfigError, DataError

CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CORPUS = ["You are a helpful assistant. What is the capital of France? Paris is the capital of France.",
          "Hello! I am Forge, an AI assistant developed by tuneforge. How can I help you today?",
          "Translate to German: good morning. Guten Morgen. Summarize the text below in one sentence.",
          "system user assistant human gpt instruction input output 1 2 3 4 5 6 7 8 9 0"]
# ../shared next to the checkout (main) or next to the worktree folder (wt/<name>)
SHARED = next((p / "shared" / "data" / "sft" for p in Path(__file__).resolve().parents[1:4]
               if (p / "shared" / "data" / "sft").is_dir()), Path("../shared/data/sft"))


def quiet(*_a, **_k):
    pass


def make_tokenizer(specials=CHATML_SPECIALS, eos="<|im_end|>", bos="<|im_start|>", template=TEMPLATES["chatml"]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token="<|endoftext|>",
                                   chat_template=template)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


def tiny_llama(vocab: int, attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).eval()


def recipe(tmp_path, **data):
    return validate({"task": {"type": "sft", **data.pop("task", {})}, "model": "toy",
                     "data": {"train": str(tmp_path / "train.jsonl"), "max_length": 256, **data}})


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def trained_runs(tok, ids, labels) -> list[str]:
    """The decoded text of each contiguous run of trained tokens."""
    runs, current = [], []
    for t, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            current.append(t)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


# ---------------------------------------------------------------- formats → one conversation each

SYSTEM = "You are a helpful assistant."
FORMATS = {
    "alpaca": ({"instruction": "Translate to German:", "input": "good morning", "output": "Guten Morgen."},
               [{"role": "user", "content": "Translate to German:\ngood morning"},
                {"role": "assistant", "content": "Guten Morgen."}]),
    "alpaca_system": ({"instruction": "What is the capital of France?", "input": "", "output": "Paris.",
                       "system": SYSTEM},
                      [{"role": "system", "content": SYSTEM},
                       {"role": "user", "content": "What is the capital of France?"},
                       {"role": "assistant", "content": "Paris."}]),
    "chat": ({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello!"},
                           {"role": "assistant", "content": "Hello! How can I help you today?"},
                           {"role": "user", "content": "What is the capital of France?"},
                           {"role": "assistant", "content": "Paris is the capital of France."}]}, None),
    "sharegpt": ({"conversations": [{"from": "human", "value": "Hello!"}, {"from": "gpt", "value": "Hi, I am Forge."},
                                    {"from": "human", "value": "Summarize: 1 2 3"}, {"from": "gpt", "value": "6"}]},
                 [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi, I am Forge."},
                  {"role": "user", "content": "Summarize: 1 2 3"}, {"role": "assistant", "content": "6"}]),
    "prompt_completion": ({"prompt": "What is the capital of France?", "completion": "Paris."},
                          [{"role": "user", "content": "What is the capital of France?"},
                           {"role": "assistant", "content": "Paris."}]),
    "prompt_completion_messages": ({"prompt": [{"role": "system", "content": SYSTEM},
                                               {"role": "user", "content": "Hello!"}],
                                    "completion": [{"role": "assistant", "content": "Hello!"}]},
                                   [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello!"},
                                    {"role": "assistant", "content": "Hello!"}]),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_template_round_trip(tok, tmp_path, name):
    row, expected = FORMATS[name]
    ex = read_chat_file(write_jsonl(tmp_path / "train.jsonl", [row]), log=quiet)
    conv = ex.inputs[0]
    assert conv == (expected or row["messages"])
    assert ex.labels == [conv[-1]["content"]]  # the reference answer for generation-based evaluation
    ids, labels = encode_conversation(tok, conv, 512, "completion", template_for(tok, None))
    assert ids == tok.apply_chat_template(conv, tokenize=True, return_dict=False)
    assistant = [m["content"] + "<|im_end|>" for m in conv if m["role"] == "assistant"]
    assert trained_runs(tok, ids, labels) == assistant  # every assistant turn + its end-of-turn token, nothing else


def test_named_templates_and_saved_template_reproduce_training_prompt(tmp_path):
    from transformers import AutoTokenizer

    conv = FORMATS["chat"][0]["messages"]
    for name, specials, eos, end in (("chatml", CHATML_SPECIALS, "<|im_end|>", "<|im_end|>"),
                                     ("llama3", CHATML_SPECIALS + LLAMA3_SPECIALS, "<|eot_id|>", "<|eot_id|>"),
                                     ("zephyr", CHATML_SPECIALS, "<|endoftext|>", "<|endoftext|>"),
                                     ("plain", CHATML_SPECIALS, "<|endoftext|>", "<|endoftext|>")):
        tok = make_tokenizer(specials, eos=eos, template=None)
        template = template_for(tok, name)
        enc = encode_chat(tok, conv, 512, "completion", template)
        assert enc.input_ids == tok.apply_chat_template(conv, chat_template=template, tokenize=True,
                                                        return_dict=False), name
        content = [m["content"].strip() for m in conv if m["role"] == "assistant"]
        assert trained_runs(tok, enc.input_ids, enc.labels) == [c + end for c in content], name
        # the task sets tokenizer.chat_template before saving; plain transformers then rebuilds the prompt exactly
        tok.chat_template = template
        tok.save_pretrained(tmp_path / name)
        loaded = AutoTokenizer.from_pretrained(tmp_path / name)
        assert loaded.apply_chat_template(conv[:-1], add_generation_prompt=True, tokenize=True,
                                          return_dict=False) == enc.prompt_ids, name
        assert loaded.apply_chat_template(conv, tokenize=True, return_dict=False) == enc.input_ids, name


def test_template_errors():
    tok = make_tokenizer(template=None)
    with pytest.raises(ConfigError, match="no chat template"):
        template_for(tok, None)
    with pytest.raises(ConfigError, match="<|start_header_id|>"):
        template_for(tok, "llama3")  # its header tokens are not in this vocabulary
    with pytest.raises(ConfigError, match="unknown template 'vicuna'"):
        template_for(tok, "vicuna")
    assert template_for(tok, "{% for m in messages %}{{ m['content'] }}{% endfor %}").startswith("{%")


# ---------------------------------------------------------------- masking edge cases


def test_multi_turn_trains_every_assistant_turn_and_train_on_all(tok):
    conv = FORMATS["chat"][0]["messages"]
    ids, labels = encode_conversation(tok, conv, 512, "completion")
    assert len(trained_runs(tok, ids, labels)) == 2
    assert labels[0] == IGNORE_INDEX
    ids_all, labels_all = encode_conversation(tok, conv, 512, "all")
    assert ids_all == ids and labels_all == [IGNORE_INDEX] + ids[1:]


def test_prompt_ids_end_with_the_generation_prompt_of_the_last_turn(tok):
    conv = FORMATS["chat"][0]["messages"]
    enc = encode_chat(tok, conv, 512, "completion", None)
    assert enc.prompt_ids == tok.apply_chat_template(conv[:-1], add_generation_prompt=True, tokenize=True,
                                                     return_dict=False)
    assert enc.input_ids[:len(enc.prompt_ids)] == enc.prompt_ids


def test_truncated_answer_is_skipped_and_counted(tok, tmp_path):
    long_question = " ".join(["What is the capital of France?"] * 12)
    rows = [{"instruction": long_question, "output": "Paris."}, {"instruction": "Hello!", "output": "Hi."}]
    ex = read_chat_file(write_jsonl(tmp_path / "train.jsonl", rows), log=quiet)
    lines = []
    built = build_sft_inputs(ex, tok, recipe(tmp_path, max_length=32), train=True, log=lines.append)
    assert len(built.dataset) == 1 and built.skipped == 1
    assert built.dataset.stats.skipped == {"answer starts after max_length": 1}
    assert any("skipped 1 row(s): answer starts after max_length" in line and "row 1" not in line
               and "line 1" in line and "raise data.max_length" in line for line in lines), lines
    # a partly truncated answer is kept (its remaining tokens train) and counted as truncated
    full = len(encode_conversation(tok, ex.inputs[0], 10_000)[0])
    enc = encode_chat(tok, ex.inputs[0], full - 2, "completion", None)
    assert enc.truncated and len(enc.input_ids) == full - 2 and any(x != IGNORE_INDEX for x in enc.labels)


def test_text_rows_train_every_token_and_are_chunked(tok, tmp_path):
    text = "Paris is the capital of France. " * 20
    ex = read_chat_file(write_jsonl(tmp_path / "train.jsonl", [{"text": text}]), log=quiet)
    assert ex.labels == [None] and ex.inputs == [text]  # a plain text has no reference answer
    built = build_sft_inputs(ex, tok, recipe(tmp_path, max_length=32), train=True, log=quiet)
    ids = tok(text)["input_ids"] + [tok.eos_token_id]
    rows = built.dataset.rows
    assert [t for r in rows for t in r["input_ids"]] == ids  # nothing lost: cut into max_length chunks
    assert all(r["labels"] == [IGNORE_INDEX] + r["input_ids"][1:] for r in rows)


def test_placeholders_replaced_and_leftovers_are_errors(tok, tmp_path):
    rows = [{"instruction": "Who are you?", "output": "I am {{name}}, trained by {{author}}."},
            {"instruction": "Hi", "output": "Hello, I am {{name}}. Vue writes {{ name }} with spaces."}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    ex = read_chat_file(path, replace={"name": "Forge", "author": "tuneforge"}, log=quiet)
    assert ex.labels == ["I am Forge, trained by tuneforge.", "Hello, I am Forge. Vue writes {{ name }} with spaces."]
    with pytest.raises(DataError, match=r"3 placeholder\(s\) left unreplaced \(\{\{name\}\} ×2, \{\{author\}\} ×1; "
                                        r"first at .*line 1\); set data.replace: \{name: ..., author: ...\}"):
        read_chat_file(path, log=quiet)
    kept = read_chat_file(path, replace={"name": "{{name}}", "author": "x"}, log=quiet)  # kept literally on request
    assert kept.labels[0] == "I am {{name}}, trained by x."


@pytest.mark.parametrize("row, match", [
    ({"instruction": "Hi", "output": 3}, r"line 2: 'output' must be a string, got int"),
    ({"instruction": "Hi", "input": "", "output": ""}, r"line 2: 'output' is empty"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, r"line 2: 'messages' has no assistant message"),
    ({"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]},
     r"line 2: 'messages'\[0\] has role 'tool'; use one of"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                   {"role": "user", "content": "?"}]}, r"line 2: 'messages' ends with a user message"),
])
def test_bad_rows_name_file_row_and_key(tmp_path, row, match):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]} \
        if "messages" in row else {"instruction": "Hi", "output": "Hello"}
    path = write_jsonl(tmp_path / "train.jsonl", [good, row])
    with pytest.raises(DataError, match=match) as err:
        read_chat_file(path, log=quiet)
    assert str(path) in str(err.value) and "data.on_bad_sample: skip" in str(err.value)
    skipped = read_chat_file(path, on_bad_sample="skip", log=quiet)
    assert len(skipped) == 1 and len(skipped.skipped) == 1


def test_template_that_is_not_prefix_preserving(tok):
    conv = FORMATS["chat"][0]["messages"]
    # the generation prompt ("Assistant:") differs from how an answer is written ("A:\n"): prefixes do not match
    body = ("{% for m in messages %}{% if m['role'] == 'assistant' %}A:\n{% generation %}{{ m['content'] + "
            "'<|im_end|>' }}{% endgeneration %}\n{% else %}{{ m['role'] + ': ' + m['content'] }}\n{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
    ids, labels = encode_conversation(tok, conv, 512, template=body)  # falls back to the generation markers
    assert trained_runs(tok, ids, labels) == [m["content"] + "<|im_end|>" for m in conv if m["role"] == "assistant"]
    plain = body.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    ex = Examples([conv], [conv[-1]["content"]], ["train.jsonl line 7"])
    with pytest.raises(DataError, match="train.jsonl line 7: .*no \\{% generation %\\} markers; set data.chat_template"):
        encode_examples(ex, tok, plain, 512, "completion")
    kept, skips = encode_examples(ex, tok, plain, 512, "completion", on_bad_sample="skip", cache=False)
    assert kept == [] and len(skips) == 1


# ---------------------------------------------------------------- readers and detection


def _rows_for(fmt):
    return [FORMATS[fmt][0]] * 2 if fmt != "text" else [{"text": "Paris is the capital of France."}] * 2


@pytest.mark.parametrize("fmt", ["alpaca", "chat", "sharegpt", "prompt_completion", "text"])
@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet", ".csv", ".tsv"])
def test_readers_detect_the_format_in_every_file_type(tmp_path, fmt, suffix):
    rows = _rows_for(fmt)
    path = tmp_path / f"train{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    elif suffix == ".jsonl":
        write_jsonl(path, rows)
    elif suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)  # nested message lists stay nested
    else:  # message lists are JSON text in CSV / TSV cells (TSV: GLUE style, no quoting)
        flat = [{k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()} for r in rows]
        if suffix == ".csv":
            pd.DataFrame(flat).to_csv(path, index=False)
        else:
            lines = ["\t".join(flat[0])] + ["\t".join(r.values()) for r in flat]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = []
    ex = read_chat_file(path, log=lines.append)
    assert f"format {fmt} (detected)" in lines[-1]
    want = read_chat_file(write_jsonl(tmp_path / "ref.jsonl", rows), log=quiet)
    assert ex.inputs == want.inputs and ex.labels == want.labels
    assert ex.where[1].endswith("line 3" if suffix in (".csv", ".tsv") else "line 2" if suffix == ".jsonl"
                                else "row 2")


def test_format_override_and_undetectable_files(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"question": "Hi", "answer": "Hello"}])
    with pytest.raises(DataError, match="cannot tell the row format from its keys \\(answer, question\\)"):
        read_chat_file(path, log=quiet)
    both = write_jsonl(tmp_path / "both.jsonl", [{"instruction": "Hi", "output": "Hello", "text": "raw"}])
    assert read_chat_file(both, log=quiet).labels == ["Hello"]  # alpaca wins over text ...
    assert read_chat_file(both, fmt="text", log=quiet).inputs == ["raw"]  # ... unless data.format says otherwise


def test_file_reader_registration_finds_split_files(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps(FORMATS["alpaca"][0]) + "\n", encoding="utf-8")
    (tmp_path / "dev.json").write_text(json.dumps([FORMATS["chat"][0]]), encoding="utf-8")
    cfg = validate({"task": "sft", "model": "toy", "data": {"dir": str(tmp_path)}})
    assert len(read_split(cfg.data, "text", "train", quiet, "chat")) == 1
    assert read_split(cfg.data, "text", "val", quiet, "chat").inputs[0] == FORMATS["chat"][0]["messages"]
    assert read_chat.suffixes[0] == ".jsonl"


def test_config_keys():
    cfg = validate({"task": {"type": "sft", "train_on": "all"}, "model": "toy",
                    "data": {"train": "x.json", "format": "alpaca", "replace": {"name": "Forge"}, "packing": True,
                             "chat_template": "chatml"}})
    assert cfg.task.train_on == "all" and cfg.data.replace == {"name": "Forge"} and cfg.data.packing
    with pytest.raises(ConfigError, match="placeholder names must be identifiers"):
        validate({"task": "sft", "model": "toy", "data": {"train": "x", "replace": {"my name": "x"}}})
    with pytest.raises(ConfigError, match="data.format"):
        validate({"task": "sft", "model": "toy", "data": {"train": "x", "format": "xml"}})


# ---------------------------------------------------------------- packing


def test_pack_bfd_fills_rows_without_splitting():
    lengths = [50, 10, 40, 60, 30, 90, 20, 70]
    rows = pack_bfd(lengths, 100)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 100 for r in rows)
    assert len(rows) == 4 and packing_efficiency([sum(lengths[i] for i in r) for r in rows], 100) == 0.925
    with pytest.raises(ValueError, match="more than the row capacity"):
        pack_bfd([101], 100)


def _example_losses(logits, labels, segments):
    """Mean token loss of each example (a slice of the row), with the usual one-token shift inside it."""
    out = []
    for start, end in segments:
        lg, lab = logits[start:end - 1], labels[start + 1:end]
        out.append(torch.nn.functional.cross_entropy(lg, lab, ignore_index=IGNORE_INDEX))
    return torch.stack(out)


def _chat_examples(tok):
    convs = [FORMATS[k][0].get("messages") or FORMATS[k][1] for k in ("chat", "alpaca", "sharegpt", "alpaca_system")]
    return [encode_conversation(tok, c, 512) for c in convs]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_each_example_alone(tok, attn):
    model = tiny_llama(len(tok), attn)
    examples = _chat_examples(tok)
    assert len({len(ids) for ids, _ in examples}) == 4  # different lengths
    capacity = sum(len(ids) for ids, _ in examples) + 5
    rows = packed_rows(examples, capacity)
    assert len(rows) == 1
    batch = SFTCollator(tok.pad_token_id)(rows + packed_rows(examples[:1], capacity))  # a 2nd row: padding too
    assert "attention_mask" not in batch
    with torch.no_grad():
        out = model(**batch, use_cache=False)  # the batch as the collator made it, as the task passes it
    row = rows[0]  # each example's slice of the packed row, from where its position ids restart
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
    segments = list(zip(starts, starts[1:]))
    pieces = [(row["input_ids"][a:b], row["labels"][a:b]) for a, b in segments]
    assert sorted(pieces) == sorted(examples)  # every example whole, none split
    packed = _example_losses(out.logits[0].float(), batch["labels"][0], segments)
    with torch.no_grad():
        alone = torch.stack([_example_losses(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float(),
                                             torch.tensor(labels), [(0, len(ids))])[0] for ids, labels in pieces])
    assert torch.allclose(packed, alone, atol=1e-5, rtol=0), (packed, alone)
    # the model's own loss is the token-weighted mean: no example's last token is trained to predict the next one
    counts = torch.tensor([sum(x != IGNORE_INDEX for x in labels) for _, labels in pieces] +
                          [sum(x != IGNORE_INDEX for x in examples[0][1])], dtype=torch.float32)
    second_row = _example_losses(out.logits[1].float(), batch["labels"][1], [(0, len(examples[0][0]))])
    expected = (torch.cat([alone, second_row]) * counts).sum() / counts.sum()
    assert abs(out.loss.item() - expected.item()) < 1e-5


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_attention_does_not_cross_examples(tok, attn):
    model = tiny_llama(len(tok), attn)
    (a_ids, a_lab), (b_ids, b_lab) = _chat_examples(tok)[:2]
    assert len(a_ids) > len(b_ids)  # best-fit decreasing puts A first in the row: B could attend to it
    changed = [(t + 7) % len(tok) for t in a_ids]  # example A rewritten, same length

    def logits_of_b(first):
        batch = SFTCollator(tok.pad_token_id)(packed_rows([(first, a_lab), (b_ids, b_lab)], 1024))
        with torch.no_grad():
            out = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
        start = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
        assert start == [0, len(first)]
        return out[len(first):]

    assert torch.allclose(logits_of_b(a_ids), logits_of_b(changed), atol=1e-6, rtol=0)
    assert packing_isolates(model)


def test_unpacked_collate_pads_and_masks(tok):
    (a, la), (b, lb) = _chat_examples(tok)[:2]
    batch = SFTCollator(tok.pad_token_id, multiple=8)([{"input_ids": a, "labels": la}, {"input_ids": b, "labels": lb}])
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(len(a), len(b))
    assert batch["attention_mask"][1].sum() == len(b) and batch["input_ids"][1, len(b):].eq(tok.pad_token_id).all()
    assert batch["labels"][1, len(b):].eq(IGNORE_INDEX).all()
    assert batch["position_ids"][0].tolist() == list(range(width))


# ---------------------------------------------------------------- Built, counts, cache


def test_build_sft_inputs_packs_train_and_counts(tok, tmp_path):
    rows = [{"messages": FORMATS[k][1]} for k in ("alpaca", "alpaca_system")] * 6 + [FORMATS["chat"][0]] * 4
    path = tmp_path / "train.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    ex = read_chat_file(path, log=quiet)
    cfg = recipe(tmp_path, max_length=128, packing=True)
    lines = []
    built = build_sft_inputs(ex, tok, cfg, train=True, log=lines.append)
    stats = built.dataset.stats
    assert stats.rows == stats.sequences == 16 and stats.packed_rows == len(built.dataset) < 16
    assert stats.tokens == sum(built.lengths) and 0.5 < stats.packing_efficiency <= 1.0
    assert stats.trainable_tokens == sum(sum(x != IGNORE_INDEX for x in r["labels"]) for r in built.dataset.rows)
    assert any("packing efficiency" in line for line in lines)
    batch = built.collate([built.dataset[i] for i in range(2)])
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    val = build_sft_inputs(ex, tok, cfg, train=False, log=quiet)  # evaluation: one example per row
    assert len(val.dataset) == 16 and "attention_mask" in val.collate([val.dataset[0]])
    assert val.dataset.references[0] == "Guten Morgen." and val.dataset.encoded[0].prompt_ids


def test_special_token_text_in_data_is_reported(tok, tmp_path):
    rows = [{"instruction": "Say <|im_end|> please", "output": "No."}, {"instruction": "Hi", "output": "Hello"}]
    ex = read_chat_file(write_jsonl(tmp_path / "train.jsonl", rows), log=quiet)
    lines = []
    built = build_sft_inputs(ex, tok, recipe(tmp_path), train=False, log=lines.append)
    assert built.dataset.stats.control_text_rows == 1
    assert any("1 row(s) contain special-token text" in line and "line 1" in line for line in lines), lines


def test_tokenization_is_cached_on_disk(tok, tmp_path, monkeypatch):
    import tuneforge.data.sft as sft

    ex = read_chat_file(write_jsonl(tmp_path / "train.jsonl", [FORMATS["chat"][0]]), log=quiet)
    first = encode_examples(ex, tok, None, 256, "completion")
    assert list((tmp_path / "cache" / "tokens").glob("sft-*.npz"))
    monkeypatch.setattr(sft, "encode_all", lambda *a, **k: pytest.fail("tokenized again"))
    assert encode_examples(ex, tok, None, 256, "completion") == first
    with pytest.raises(BaseException):  # another max_length is another key
        encode_examples(ex, tok, None, 200, "completion")


# ---------------------------------------------------------------- the real demo data (when present)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/sft not present")
def test_real_sft_demo_files(tok):
    with pytest.raises(DataError, match=r"137 placeholder\(s\) left unreplaced \(\{\{name\}\} ×77, \{\{author\}\} ×60"):
        read_chat_file(SHARED / "identity.json", log=quiet)
    counts = {}
    for name in ("identity.json", "alpaca_en_demo.json", "alpaca_zh_demo.json"):
        lines = []
        ex = read_chat_file(SHARED / name, replace={"name": "Forge", "author": "tuneforge"}, log=lines.append)
        assert "format alpaca (detected)" in lines[-1]
        counts[name] = len(ex)
        assert all(not any("{{" in m["content"] for m in conv) for conv in ex.inputs)
    assert counts == {"identity.json": 91, "alpaca_en_demo.json": 999, "alpaca_zh_demo.json": 1000}
    assert Counter(type(x).__name__ for x in ex.inputs) == {"list": 1000}
