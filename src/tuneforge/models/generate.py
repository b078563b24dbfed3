"""Answers from a causal LM (task sft): batched greedy answers to prompts given as token ids (evaluation,
generations.jsonl) and one answer at a time, greedy or sampled, optionally streamed (predict).

Prompts are token ids already rendered with the chat template (ending with its generation prompt). Generation
stops at the eos token or at any special token the chat template writes (e.g. ChatML's <|im_end|>), or after
`max_new_tokens`; special tokens are left out of the answer text. transformers' `generate` does the decoding
(KV cache, sampling); batches are left-padded, so every prompt ends where its answer starts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, TextIO

import torch
from transformers import GenerationConfig, TextStreamer

from tuneforge.data.chat_templates import end_of_turn_strings


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    def config(self, stop_ids: list[int], pad_id: int) -> GenerationConfig:
        sample = self.temperature > 0
        extra = {"temperature": self.temperature, "top_p": self.top_p, "top_k": 0} if sample else {}
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=sample, eos_token_id=stop_ids,
                                pad_token_id=pad_id, **extra)


@dataclass
class Answer:
    text: str
    new_tokens: int
    stop: str  # end_of_turn | max_new_tokens


def stop_token_ids(tokenizer, template: Optional[str]) -> list[int]:
    """The eos token and every special token the chat template writes: a turn ends at any of them."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for text in end_of_turn_strings(tokenizer):
        if template and text in template:
            ids.append(tokenizer.convert_tokens_to_ids(text))
    return sorted(set(ids))


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


class _EvalMode:
    """Eval mode (no dropout; gradient checkpointing off) for the duration, then the previous mode."""

    def __init__(self, model):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _answer(ids: list[int], stop_ids: list[int], tokenizer) -> Answer:
    end = next((i for i, t in enumerate(ids) if t in stop_ids), None)
    kept = ids if end is None else ids[:end]
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    return Answer(text, len(ids) if end is None else end + 1, "max_new_tokens" if end is None else "end_of_turn")


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[list[int]], sampling: Sampling, stop_ids: list[int],
                     batch_size: int = 16) -> list[Answer]:
    """Answers to many prompts, in batches of similar length (left-padded), in the prompts' order."""
    pad = pad_token_id(tokenizer)
    config = sampling.config(stop_ids, pad)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[Optional[Answer]] = [None] * len(prompts)
    with _EvalMode(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, width - len(prompts[i]):] = torch.as_tensor(prompts[i])
                mask[row, width - len(prompts[i]):] = 1
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       generation_config=config)
            for row, i in enumerate(chunk):
                out[i] = _answer(generated[row, width:].tolist(), stop_ids, tokenizer)
    return out  # type: ignore[return-value]


class _Streamer(TextStreamer):
    """transformers' TextStreamer, writing to a given stream (stderr: stdout keeps the JSON results)."""

    def __init__(self, tokenizer, stream: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stream = stream

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.stream.write(text + ("\n" if stream_end else ""))
        self.stream.flush()


@torch.no_grad()
def generate_one(model, tokenizer, prompt: list[int], sampling: Sampling, stop_ids: list[int],
                 stream: Optional[TextIO] = None) -> Answer:
    """One answer; with `stream`, its text is written there token by token as it is generated."""
    device = next(model.parameters()).device
    streamer = _Streamer(tokenizer, stream) if stream is not None else None
    ids = torch.tensor([prompt], device=device)
    with _EvalMode(model):
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                   generation_config=sampling.config(stop_ids, pad_token_id(tokenizer)))
    return _answer(generated[0, len(prompt):].tolist(), stop_ids, tokenizer)
