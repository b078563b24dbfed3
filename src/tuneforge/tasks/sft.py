"""Generative fine-tuning (supervised fine-tuning, SFT) of a causal LM on chat / instruction data.

`task: sft` (alias `causal_lm`). Data: data/chat.py reads the rows (Alpaca, chat messages, ShareGPT,
prompt-completion, plain text, or a labelled table through data.prompt_template), data/sft.py renders them with the
chat template (the tokenizer's own, or data.chat_template) and masks the loss to the assistant turns, data/packing.py
packs train rows (data.packing). The model call (models/causal_lm.py) computes logits at the trained positions only.

Loss: the mean over trained tokens. Across micro-batches (gradient accumulation) and packed rows every trained token
weighs the same: a micro-batch's summed token loss is divided by the train set's mean trained tokens per micro-batch
(task.token_loss_norm: dataset), not by its own count, which would weigh a token in a batch of short answers more
than one in a batch of long ones. Evaluation reports the exact token-weighted mean over the split.

Metrics: loss and perplexity on the held-out split; with task.generation_samples > 0, greedy answers to a fixed,
evenly spread sample of its prompts, scored by exact_match, contains_answer, chrf and rouge_l (metrics.py); every
one can be eval.metric or an early-stopping target. generations.jsonl in the run folder holds, for the same sample,
the prompt, the reference, and the model's answer before and after training.

Export: model/ is the merged model (loads without peft; its tokenizer carries the training chat template, so
`AutoTokenizer.from_pretrained(model/).apply_chat_template(...)` rebuilds the training prompt, and its generation
config stops at the template's end-of-turn token); adapter/ (LoRA runs) is the adapter alone, the --adapter-only
export."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset

from tuneforge.data import chat  # noqa: F401  (registers the "chat" file reader)
from tuneforge.data.chat_templates import template_for
from tuneforge.data.examples import Examples
from tuneforge.data.packing import packing_isolates
from tuneforge.data.sft import build_sft_inputs
from tuneforge.errors import ConfigError, DataError
from tuneforge.metrics import GENERATION_METRICS, LanguageModelMetrics
from tuneforge.models.base import HeadSpec, ModelBundle
from tuneforge.models.causal_lm import (
    TokenLoss,
    selective_loss_matches,
    trained_token_loss,
)
from tuneforge.models.generate import (
    Sampling,
    generate_answers,
    generate_one,
    stop_token_ids,
)
from tuneforge.tasks.base import TASKS, Built, Task
from tuneforge.utils import atomic_write_text

GENERATIONS = "generations.jsonl"


@dataclass
class GenerationSample:
    prompt_ids: list[int]  # the conversation before the answer, rendered with the generation prompt
    reference: str
    messages: list[dict]  # the conversation before the answer


class SampledRows(Dataset):
    """Evaluation rows (one example each); the sampled ones also carry their GenerationSample."""

    def __init__(self, rows: Dataset, samples: dict[int, GenerationSample]):
        self.rows, self.samples = rows, samples

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        return {**row, "generate": self.samples[i]} if i in self.samples else row


class SFTBatches:
    """The rows' collate, plus what the model does not see: `num_tokens` (real tokens: packed rows carry no
    attention mask to count them by) and `generate` (the batch's generation samples)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.collate(rows)
        batch["num_tokens"] = torch.tensor(sum(len(r["input_ids"]) for r in rows))
        batch["generate"] = [r["generate"] for r in rows if "generate" in r]
        return batch


class PromptRows(Dataset):
    """Prompts to answer (predict): token ids ending with the generation prompt."""

    def __init__(self, prompts: list[list[int]]):
        self.prompts = prompts
        self.lengths = [len(p) for p in prompts]

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> list[int]:
        return self.prompts[i]


def spread(n: int, k: int) -> list[int]:
    """k indices evenly spread over range(n) (all of them when k >= n)."""
    return list(range(n)) if k >= n else [i * n // k for i in range(k)]


@TASKS.register("sft")
class SFT(Task):
    report_predictions = False  # answers to the sampled validation prompts are in generations.jsonl
    name = "sft"
    file_reader = "chat"
    default_metric = "loss"
    metric_names = ("loss", "perplexity") + GENERATION_METRICS
    minimize = Task.minimize + ("perplexity",)

    def __init__(self, cfg, log=print):
        super().__init__(cfg, log)
        self.template: Optional[str] = None  # the chat template the data was rendered with (None: plain texts)
        self.full_logits = False  # the model's logits need its own head (see models/causal_lm.py)
        self.tokens_per_batch: Optional[float] = None  # train set's mean trained tokens per micro-batch
        self.val_samples: list[GenerationSample] = []
        self.stats: dict = {}  # split → SFTStats

    # ---------------------------------------------------------------- recipe and data
    def check_recipe(self) -> None:
        super().check_recipe()
        t = self.cfg.task
        if self.cfg.eval.metric in GENERATION_METRICS and t.generation_samples == 0:
            raise ConfigError(f"eval.metric '{self.cfg.eval.metric}' is scored on generated answers; set "
                              "task.generation_samples above 0 (e.g. 32)")
        if t.label_smoothing:
            raise ConfigError("task.label_smoothing is not supported by task sft; remove it")
        missing = [m for m in ("sacrebleu", "rouge_score") if importlib.util.find_spec(m) is None]
        if t.generation_samples and missing:
            raise ConfigError(f"task.generation_samples: the generation metrics need {' and '.join(missing)}; "
                              "pip install 'tuneforge[sft]', or set task.generation_samples: 0")

    def fit_labels(self, train: Examples, val: Examples) -> None:
        """No label space: the answers are text."""

    def encode_labels(self, ex: Examples) -> Optional[list]:
        return None  # the labels are the answer tokens, made by build

    def head_spec(self) -> HeadSpec:
        return HeadSpec(0, [], kind="causal_lm")

    def build(self, ex: Examples, bundle: ModelBundle, split: str) -> Built:
        tok = bundle.tokenizer
        conversations = any(not isinstance(x, str) for x in ex.inputs)
        self.template = template_for(tok, self.cfg.data.chat_template) if conversations else self.template
        if split == "predict" and ex.labels is None:  # prompts to answer
            return Built(PromptRows([self.prompt_ids(tok, x) for x in ex.inputs]))
        built = build_sft_inputs(ex, tok, self.cfg, split == "train", self.log)
        self.stats[split] = built.dataset.stats
        if split == "train":
            self.check_model(bundle.model)
            rows, batch = len(built.dataset), self.cfg.train.batch_size
            self.tokens_per_batch = built.dataset.stats.trainable_tokens / math.ceil(rows / batch)
            return Built(built.dataset, SFTBatches(built.collate), built.lengths, built.skipped)
        samples = self.generation_samples(ex, built.dataset)
        if split == "val":
            self.val_samples = list(samples.values())
        return Built(SampledRows(built.dataset, samples), SFTBatches(built.collate), built.lengths,
                     built.skipped)

    def generation_samples(self, ex: Examples, rows) -> dict[int, GenerationSample]:
        """An evenly spread, fixed sample of the split's conversations (row index → sample)."""
        usable = [i for i, (enc, ref) in enumerate(zip(rows.encoded, rows.references))
                  if ref is not None and enc.prompt_ids]
        chosen = [usable[j] for j in spread(len(usable), self.cfg.task.generation_samples)]
        if self.cfg.eval.metric in GENERATION_METRICS and not chosen:
            raise DataError("eval.metric is a generation metric, but the validation data has no conversation with "
                            "an answer to compare with; use eval.metric: loss")
        return {i: GenerationSample(rows.encoded[i].prompt_ids, rows.references[i],
                                    ex.inputs[rows.encoded[i].source][:-1]) for i in chosen}

    def prompt_ids(self, tokenizer, item) -> list[int]:
        """A prompt (a text, or a conversation ending with a user turn) rendered for generation."""
        if self.template is None:  # a model trained on plain texts continues the text
            return list(tokenizer(item if isinstance(item, str) else item[-1]["content"])["input_ids"])
        messages = [{"role": "user", "content": item}] if isinstance(item, str) else item
        return list(tokenizer.apply_chat_template(messages, chat_template=self.template, add_generation_prompt=True,
                                                  tokenize=True, return_dict=False))

    def check_model(self, model) -> None:
        """Once, on the plain model: does the selective loss equal the model's own, and (data.packing) does
        attention stay inside each packed example."""
        self.full_logits = not selective_loss_matches(model)
        if self.full_logits:
            self.log(f"loss: {type(model).__name__}'s own loss differs from logits at trained positions only; "
                     "using the full logits (slower, more memory)")
        if self.cfg.data.packing and not packing_isolates(model):
            raise ConfigError(f"data.packing: {type(model).__name__} lets attention cross packed examples "
                              "(its attention ignores position_ids); set data.packing: false")

    def add_to_report(self, report: dict, log) -> None:
        report["sft"] = self.report["sft"] = {split: s.report() for split, s in self.stats.items()}
        if self.tokens_per_batch and self.cfg.task.token_loss_norm == "dataset":
            log(f"loss: summed over trained tokens / {self.tokens_per_batch:.1f} (train mean per micro-batch; "
                "every trained token weighs the same)")

    # ---------------------------------------------------------------- training
    def forward(self, bundle: ModelBundle, batch: dict) -> TokenLoss:
        return trained_token_loss(bundle.model, batch, self.full_logits)

    def loss(self, outputs: TokenLoss, batch: dict) -> torch.Tensor:
        return outputs.mean()

    def train_loss(self, outputs: TokenLoss, batch: dict) -> torch.Tensor:
        if self.cfg.task.token_loss_norm == "batch" or not self.tokens_per_batch:
            return outputs.mean()
        return outputs.loss_sum / self.tokens_per_batch

    def new_metrics(self, bundle: ModelBundle):
        if not self.cfg.task.generation_samples:
            return LanguageModelMetrics()
        return LanguageModelMetrics(lambda prompts: [a.text for a in self.answer(bundle, prompts)])

    # ---------------------------------------------------------------- generation
    def sampling(self, **options) -> Sampling:
        return Sampling(options.get("max_new_tokens") or self.cfg.task.max_new_tokens or 64,
                        options.get("temperature") or 0.0, options.get("top_p") or 1.0)

    def answer(self, bundle: ModelBundle, prompts: list[list[int]]):
        return generate_answers(bundle.model, bundle.tokenizer, prompts, self.sampling(),
                                stop_token_ids(bundle.tokenizer, self.template), self.cfg.eval_batch_size)

    def before_training(self, bundle: ModelBundle, run_dir, resumed: bool, log) -> None:
        """The base model's answers to the generation sample (a resumed run keeps the first start's file)."""
        path = Path(run_dir) / GENERATIONS
        if not self.val_samples or (resumed and path.is_file()):
            return
        answers = self.answer(bundle, [s.prompt_ids for s in self.val_samples])
        rows = [{"prompt": s.messages[-1]["content"], "messages": s.messages, "reference": s.reference,
                 "before": a.text} for s, a in zip(self.val_samples, answers)]
        write_jsonl(path, rows)
        log(f"generations: the base model answered {len(rows)} validation prompts → {GENERATIONS}")

    def after_training(self, bundle: ModelBundle, run_dir, log) -> None:
        """model/ reproduces the training prompt and stops where training taught it to; generations.jsonl gets
        the fine-tuned answers."""
        if self.template is not None:
            bundle.tokenizer.chat_template = self.template
            bundle.model.generation_config.eos_token_id = stop_token_ids(bundle.tokenizer, self.template)
        path = Path(run_dir) / GENERATIONS
        if not self.val_samples or not path.is_file():
            return
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        answers = self.answer(bundle, [s.prompt_ids for s in self.val_samples])
        write_jsonl(path, [{**row, "after": a.text} for row, a in zip(rows, answers)])
        log(f"generations: before / after answers to {len(rows)} validation prompts in {GENERATIONS}")

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(self, bundle: ModelBundle, loader, ex: Examples, forward, top_k: Optional[int] = None,
                **options) -> list[dict]:
        """One answer per prompt. options: max_new_tokens, temperature (0 = greedy), top_p, seed, and stream (a
        text stream that receives the tokens as they come, e.g. sys.stderr; False / None: quiet)."""
        sampling = self.sampling(**options)
        stops = stop_token_ids(bundle.tokenizer, self.template)
        stream = sys.stderr if options.get("stream") is True else options.get("stream") or None
        if options.get("seed") is not None:
            torch.manual_seed(options["seed"])
        out = []
        for prompt in loader.dataset.prompts:
            a = generate_one(bundle.model, bundle.tokenizer, prompt, sampling, stops, stream)
            out.append({"answer": a.text, "new_tokens": a.new_tokens, "stop": a.stop})
        return out

    def state(self) -> dict:
        return {**super().state(), "chat_template": self.template, "full_logits": self.full_logits}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.template, self.full_logits = state.get("chat_template"), state.get("full_logits", False)


TASKS.register("causal_lm")(SFT)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
