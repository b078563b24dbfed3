"""Siamese (bi-encoder) text pairs for HF models: `model.pair_encoding: siamese`.

Each text is encoded alone and mean-pooled; the head reads [u * v, |u - v|] of the unit-length embeddings and
starts as their cosine similarity. Sentence-embedding models (minilm-l6 = all-MiniLM-L6-v2) were trained for
exactly that comparison, so fine-tuning starts from their zero-shot similarity instead of a random [CLS] head.
The folder holds the encoder in HF format (AutoModel loads it) plus siamese_head.safetensors."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.data.text import PadCollator, tokenize_texts
from tuneforge.errors import ConfigError
from tuneforge.models.base import MODEL_SOURCES, HeadSpec, ModelBundle
from tuneforge.models.hf import HFSource, text_limit

HEAD_FILE = "siamese_head.safetensors"
FIELDS = ("input_ids", "attention_mask", "token_type_ids")
PAIR_PAD = {"pair_input_ids": None, "pair_attention_mask": 0, "pair_token_type_ids": 0}


class SiamesePairModel(nn.Module):
    def __init__(self, encoder: nn.Module, num_outputs: int):
        super().__init__()
        self.encoder = encoder
        h = encoder.config.hidden_size
        self.head = nn.Linear(2 * h, num_outputs)
        with torch.no_grad():  # output = sum(u * v) = cosine similarity, for every output, until trained
            self.head.weight.zero_()
            self.head.weight[:, :h] = 1.0
            self.head.bias.zero_()

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kw = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kw).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0), dim=-1)

    def forward(self, input_ids, attention_mask, pair_input_ids, pair_attention_mask, token_type_ids=None,
                pair_token_type_ids=None) -> torch.Tensor:
        u = self.embed(input_ids, attention_mask, token_type_ids)
        v = self.embed(pair_input_ids, pair_attention_mask, pair_token_type_ids)
        return self.head(torch.cat([u * v, (u - v).abs()], -1))


class SiameseBundle(ModelBundle):
    siamese = True  # tasks/rows.py tokenizes the two texts separately

    def max_tokens(self) -> Optional[int]:
        return text_limit(self.model.encoder.config, self.tokenizer)

    def logits(self, batch: dict) -> torch.Tensor:
        keys = FIELDS + tuple(f"pair_{k}" for k in FIELDS)
        return self.model(**{k: batch[k] for k in keys if k in batch})

    def save(self, out_dir: Path) -> None:
        from safetensors.torch import save_file

        self.model.encoder.save_pretrained(out_dir, safe_serialization=True)
        save_file({k: v.contiguous() for k, v in self.model.head.state_dict().items()}, str(out_dir / HEAD_FILE))
        self.tokenizer.save_pretrained(out_dir)


def pair_features(tokenizer, texts: list[str], pairs: list[str], max_length: int, pad_multiple: int = 1,
                  log=print):
    """Both sides tokenized alone (each at most max_length tokens); the second side's features are prefixed with
    pair_."""
    a = tokenize_texts(tokenizer, texts, None, max_length, log)
    b = tokenize_texts(tokenizer, pairs, None, max_length, log)
    features = {**a, **{f"pair_{k}": v for k, v in b.items()}}
    lengths = [max(len(x), len(y)) for x, y in zip(a["input_ids"], b["input_ids"])]
    pad = {**PAIR_PAD, "pair_input_ids": tokenizer.pad_token_id}
    return features, lengths, lambda label_dtype: PadCollator(tokenizer.pad_token_id, label_dtype, extra_pad=pad,
                                                             multiple=pad_multiple, max_width=max_length)


@MODEL_SOURCES.register("hf-siamese")
class HFSiameseSource:
    modality = "text"

    @staticmethod
    def load(cfg, head: HeadSpec, log=print) -> ModelBundle:
        if head.kind != "sequence":
            raise ConfigError("model.pair_encoding: siamese is for classification / regression / multilabel of "
                              "text pairs, not token classification")
        base = HFSource.load(cfg, HeadSpec(head.num_outputs, head.labels, "encoder"), log=log)
        model = SiamesePairModel(base.model, head.num_outputs)
        log(f"model {cfg.name}: siamese pairs (mean-pooled, head starts as cosine similarity)")
        return SiameseBundle(model=model, modality="text", source="hf-siamese", name=base.name, head=head,
                             tokenizer=base.tokenizer, new_params=["head.weight", "head.bias"])

    @staticmethod
    def load_saved(model_dir: Path, meta: dict, trust_remote_code: bool = False) -> ModelBundle:
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        head = HeadSpec(**meta["head"])
        common = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        model = SiamesePairModel(AutoModel.from_pretrained(str(model_dir), **common), head.num_outputs)
        model.head.load_state_dict(load_file(str(model_dir / HEAD_FILE)))
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), **common)
        return SiameseBundle(model=model, modality="text", source="hf-siamese", name=meta["name"], head=head,
                             tokenizer=tokenizer)
