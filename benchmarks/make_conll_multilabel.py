"""A multi-label demo set from CoNLL-2003: each sentence's labels are the entity types it contains.

python benchmarks/make_conll_multilabel.py ../shared/data/conll2003 /tmp/conll-multilabel
writes train.jsonl and dev.jsonl ({"text": ..., "labels": ["LOC", "PER"]}); sentences without entities get []."""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from tuneforge.data.conll import read_conll


def convert(src: Path, dst: Path) -> Counter:
    ex = read_conll(src)
    counts: Counter = Counter()
    with dst.open("w", encoding="utf-8") as f:
        for words, tags in zip(ex.inputs, ex.labels):
            types = sorted({t.split("-", 1)[1] for t in tags if t != "O"})
            counts.update(types or ["(none)"])
            f.write(json.dumps({"text": " ".join(words), "labels": types}, ensure_ascii=False) + "\n")
    counts["sentences"] = len(ex.inputs)
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("conll_dir", help="folder with train.txt and valid.txt (CoNLL-2003)")
    p.add_argument("out_dir", help="where train.jsonl and dev.jsonl are written")
    a = p.parse_args(argv)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for src, dst in (("train.txt", "train.jsonl"), ("valid.txt", "dev.jsonl")):
        counts = convert(Path(a.conll_dir) / src, out / dst)
        print(f"{out / dst}: {dict(sorted(counts.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
