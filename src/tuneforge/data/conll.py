"""Word-tagged sentences (token classification): CoNLL column files and JSONL (`tokens`, `tags`).

A sentence is one example: its input is the word list, its label the tag list. Tags keep the line each
word came from (`Tags.lines`), so a bad tag is reported at its own line, not the sentence's."""
from __future__ import annotations

import json
from pathlib import Path

from tuneforge.data.examples import Examples
from tuneforge.data.sources import FILE_READERS
from tuneforge.data.tables import _utf8_error, check_text
from tuneforge.errors import DataError, MissingLabelsError

CONLL_SUFFIXES = (".txt", ".conll", ".iob", ".bio", ".tsv")
JSON_SUFFIXES = (".jsonl", ".json")
DOCSTART = "-DOCSTART-"


class Tags(list):
    """A sentence's tags, plus the file line of each (for errors naming the exact line)."""

    def __init__(self, tags, lines):
        super().__init__(tags)
        self.lines = list(lines)


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise _utf8_error(path, e) from None


def read_conll(path: Path, need_label: bool = True) -> Examples:
    """Token first, tag last; blank lines end sentences; -DOCSTART- lines are skipped. Every token line
    must have the column count of the file's first token line (a stray space usually means a split token)."""
    words, tags, lines, inputs, labels, where = [], [], [], [], [], []
    n_cols = None

    def flush():
        if words:
            inputs.append(list(words))
            labels.append(Tags(tags, lines) if need_label else None)
            where.append(f"{path} line {lines[0]}")
            words.clear(), tags.clear(), lines.clear()

    for n, raw in enumerate(_read_lines(path), 1):
        cols = raw.split()
        if not cols:
            flush()
            continue
        if cols[0] == DOCSTART:
            flush()
            continue
        if n_cols is None:
            n_cols = len(cols)
            if need_label and n_cols < 2:
                raise MissingLabelsError(f"{path} line {n}: one column ('{raw.strip()}'); a CoNLL training file needs "
                                "the token first and the tag last, separated by a space or tab")
        elif len(cols) != n_cols:
            raise DataError(f"{path} line {n}: {len(cols)} columns, but the file's first token line has {n_cols}; "
                            "every token line needs the same columns (a token may not contain spaces)")
        words.append(cols[0])
        tags.append(cols[-1])
        lines.append(n)
    flush()
    if not inputs:
        raise DataError(f"{path}: no sentences (expected one 'TOKEN ... TAG' line per word, blank lines between "
                        "sentences)")
    return Examples(inputs, labels if need_label else None, where)


def _string_list(value, path: Path, n: int, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{path} line {n}: '{key}' must be a JSON list of strings")
    for v in value:
        problem = check_text(v, f"{path} line {n}", key)
        if problem:
            raise DataError(problem)
    return value


def read_tagged_jsonl(path: Path, tokens_key: str, tags_key: str, need_label: bool = True) -> Examples:
    inputs, labels, where = [], [], []
    for n, raw in enumerate(_read_lines(path), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {n}: invalid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict) or tokens_key not in row:
            raise DataError(f"{path} line {n}: expected an object with '{tokens_key}' (a list of words)")
        tokens = _string_list(row[tokens_key], path, n, tokens_key)
        if need_label:
            if tags_key not in row:
                raise DataError(f"{path} line {n}: no '{tags_key}' list (one tag per word)")
            tags = _string_list(row[tags_key], path, n, tags_key)
            if len(tags) != len(tokens):
                raise DataError(f"{path} line {n}: {len(tokens)} tokens but {len(tags)} tags; give one tag per word")
            labels.append(Tags(tags, [n] * len(tags)))
        inputs.append(tokens)
        where.append(f"{path} line {n}")
    if not inputs:
        raise DataError(f"{path}: no rows; expected one JSON object with '{tokens_key}' and '{tags_key}' per line")
    return Examples(inputs, labels if need_label else None, where)


@FILE_READERS.register("conll")
def read_tagged(path: Path, dcfg, log=print, need_label: bool = True) -> Examples:
    """CoNLL columns, or JSONL (keys: data.text_column or `tokens`; data.label_column or `tags`)."""
    path = Path(path)
    if path.suffix.lower() in JSON_SUFFIXES:
        tags_key = dcfg.label_column if dcfg.label_column != "label" else "tags"
        return read_tagged_jsonl(path, dcfg.text_column or "tokens", tags_key, need_label)
    return read_conll(path, need_label)


read_tagged.suffixes = CONLL_SUFFIXES + JSON_SUFFIXES  # the split files read_split looks for
