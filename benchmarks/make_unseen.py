"""Build the three "unseen" judging sets of issue 19 from public GitHub snapshots (fetched as bare git mirrors).

    python benchmarks/make_unseen.py MIRRORS OUT

MIRRORS holds the bare repositories (git directories) named owner+name; OUT gets one folder per set:
- mr/: movie-review polarity (Pang & Lee 2005, rt-polarity v1.0) from yoonkim/CNN_sentence @ 23e0e1f:
  rt-polarity.pos / .neg (5,331 each, Latin-1). Shuffled (seed 0), 90 % train.tsv / 10 % dev.tsv.
- trec/: TREC question type, 6 coarse classes (Li & Roth 2002) from harvardnlp/sent-conv-torch @ d61ded0:
  data/raw/TREC.train (5,452) and data/raw/TREC.test (500), "COARSE:fine question". train split stratified
  80 % train.tsv / 20 % dev.tsv (seed 0); the 500 TREC-10 questions are test.tsv (evaluated once, kept model).
- hands/: Sign Language Digits (Ayrancı Anadolu High School) from ardamavi/Sign-Language-Digits-Dataset
  @ 4b09433: Dataset/<digit>/*.JPG, 2,062 photos of 100 x 100 px. Stratified 80 % train/ / 20 % val/ (seed 0).
  The photos come from 218 students, 10 each; the split is by photo (the source gives no student ids).

Nothing here is used by the product; the data is never committed."""
from __future__ import annotations

import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SOURCES = {"mr": ("yoonkim+CNN_sentence", "23e0e1f7355705bb083043fda05c031b15acb38c"),
           "trec": ("harvardnlp+sent-conv-torch", "d61ded09c99c0199d8c5bca946cd65864de2b296"),
           "hands": ("ardamavi+Sign-Language-Digits-Dataset", "4b09433ef9d5c60602e8805bb54b8aa2428527f8")}


def git_show(repo: Path, commit: str, path: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(repo), "show", f"{commit}:{path}"], check=True,
                          capture_output=True).stdout


def git_files(repo: Path, commit: str, prefix: str) -> list[str]:
    out = subprocess.run(["git", "--git-dir", str(repo), "ls-tree", "-r", "--name-only", commit, prefix],
                         check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


def stratified(rows: list[tuple], share: float, seed: int) -> tuple[list, list]:
    """rows of (x, label) → (train, held out), `share` of every class held out."""
    by_label = defaultdict(list)
    for row in rows:
        by_label[row[1]].append(row)
    rng, train, held = random.Random(seed), [], []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        k = round(share * len(group))
        held += group[:k]
        train += group[k:]
    rng.shuffle(train)
    rng.shuffle(held)
    return train, held


def write_tsv(path: Path, rows: list[tuple]) -> None:
    lines = ["sentence\tlabel"] + [f"{' '.join(x.split())}\t{y}" for x, y in rows]  # no tabs inside a cell
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_mr(repo: Path, commit: str, out: Path) -> str:
    rows = []
    for name, label in (("rt-polarity.pos", 1), ("rt-polarity.neg", 0)):
        text = git_show(repo, commit, name).decode("latin-1")
        rows += [(line.strip(), label) for line in text.split("\n") if line.strip()]  # not splitlines: \x85 is text here
    random.Random(0).shuffle(rows)
    k = round(0.1 * len(rows))
    write_tsv(out / "dev.tsv", rows[:k])
    write_tsv(out / "train.tsv", rows[k:])
    return f"mr: {len(rows) - k} train / {k} dev ({len(rows)} sentences)"


def _trec_rows(raw: bytes) -> list[tuple]:
    rows = []
    for line in raw.decode("latin-1").split("\n"):
        if not line.strip():
            continue
        label, _, question = line.strip().partition(" ")
        rows.append((question, label.split(":")[0]))
    return rows


def make_trec(repo: Path, commit: str, out: Path) -> str:
    train, dev = stratified(_trec_rows(git_show(repo, commit, "data/raw/TREC.train")), 0.2, 0)
    test = _trec_rows(git_show(repo, commit, "data/raw/TREC.test"))
    write_tsv(out / "train.tsv", train)
    write_tsv(out / "dev.tsv", dev)
    write_tsv(out / "test.tsv", test)
    return f"trec: {len(train)} train / {len(dev)} dev / {len(test)} test"


def make_hands(repo: Path, commit: str, out: Path) -> str:
    files = [(f, f.split("/")[1]) for f in git_files(repo, commit, "Dataset/") if f.lower().endswith(".jpg")]
    train, val = stratified(files, 0.2, 0)
    for split, rows in (("train", train), ("val", val)):
        for path, label in rows:
            target = out / split / label / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(git_show(repo, commit, path))
    return f"hands: {len(train)} train / {len(val)} val images"


def main(mirrors: str, out: str) -> None:
    makers = {"mr": make_mr, "trec": make_trec, "hands": make_hands}
    for name, (folder, commit) in SOURCES.items():
        repo = Path(mirrors) / folder / "repo"
        repo = repo / ".git" if (repo / ".git").is_dir() else repo
        target = Path(out) / name
        target.mkdir(parents=True, exist_ok=True)
        print(makers[name](repo, commit, target))


if __name__ == "__main__":
    main(*sys.argv[1:3])
