"""Token statistics of the SFT demo data (../shared/data/sft) through the SFT data layer.

    python benchmarks/sft_data_stats.py [--tokenizer path/to/tokenizer.json] [--max-length 512 1024]

Without --tokenizer a byte-level BPE (8k merges) is trained on the data itself; with one, that tokenizer gets the
ChatML tokens added. Either way the ChatML template is used, the placeholders become name Forge / author
tuneforge, and the counts (rows, skips, tokens, trained tokens, packing efficiency) are printed per file and for
identity + alpaca_en mixed."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from tuneforge.config import validate
from tuneforge.data.chat import read_chat_file, read_chat_files
from tuneforge.data.chat_templates import TEMPLATES
from tuneforge.data.sft import build_sft_inputs

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sft"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
REPLACE = {"name": "Forge", "author": "tuneforge"}


def toy_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=8192, special_tokens=SPECIALS, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=TEMPLATES["chatml"])


def file_tokenizer(path: str):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=path, chat_template=TEMPLATES["chatml"])
    tok.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                            "additional_special_tokens": ["<|im_start|>"]})
    return tok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer")
    ap.add_argument("--max-length", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--data", default=str(DATA))
    args = ap.parse_args()
    names = ("identity.json", "alpaca_en_demo.json", "alpaca_zh_demo.json")
    sets = {n: read_chat_file(Path(args.data) / n, replace=REPLACE, log=print) for n in names}
    texts = [m["content"] for ex in sets.values() for conv in ex.inputs for m in conv]
    tok = file_tokenizer(args.tokenizer) if args.tokenizer else toy_tokenizer(texts)
    cfg_dir = {"train": "x"}
    sets["identity+alpaca_en"] = read_chat_files([Path(args.data) / n for n in names[:2]],
                                                 validate({"task": "sft", "model": "m", "data": {
                                                     **cfg_dir, "replace": REPLACE}}).data, log=lambda *_: None)
    for max_length in args.max_length:
        cfg = validate({"task": "sft", "model": "m", "data": {**cfg_dir, "max_length": max_length, "packing": True}})
        for name, ex in sets.items():
            start = time.perf_counter()
            built = build_sft_inputs(ex, tok, cfg, train=True, log=lambda *_: None)
            s = built.dataset.stats
            print(f"max_length {max_length} {name}: {s.rows} rows, skipped {s.skipped or 0}, truncated {s.truncated}, "
                  f"tokens {s.tokens} (trained {s.trainable_tokens}, {s.trainable_tokens / s.tokens:.1%}), "
                  f"length p50/p95/max {s.length_p50}/{s.length_p95}/{s.length_max}, packed rows {s.packed_rows} "
                  f"(efficiency {s.packing_efficiency}), {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
