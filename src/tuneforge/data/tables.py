"""Tabular files (CSV, TSV, JSONL, Parquet) → pandas, with errors that name the file, line and fix."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

import pandas as pd

from tuneforge.errors import DataError, MissingLabelsError

TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
SPLIT_NAMES = {"train": ("train",), "val": ("dev", "val", "valid", "validation"), "test": ("test",)}


def find_split_file(folder: Path, split: str, suffixes=TABLE_SUFFIXES) -> Optional[Path]:
    for stem in SPLIT_NAMES[split]:
        for suffix in suffixes:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


def _utf8_error(path: Path, e: UnicodeDecodeError) -> DataError:
    raw = path.read_bytes()
    try:  # the decoder's offset is relative to its chunk, so locate the first bad byte in the whole file
        raw.decode("utf-8")
        line, byte = "?", e.object[e.start]
    except UnicodeDecodeError as whole:
        line, byte = raw[:whole.start].count(b"\n") + 1, raw[whole.start]
    return DataError(f"{path} line {line}: not valid UTF-8 (byte 0x{byte:02x}); re-save the file as UTF-8")


def _read_delimited(path: Path, sep: str) -> pd.DataFrame:
    """csv module rather than pandas: exact line numbers, and short/long rows are errors, not NaN-filled."""
    # GLUE-style TSVs contain bare `"` characters: quoting off for tabs, standard CSV quoting otherwise.
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    csv.field_size_limit(2**31 - 1)  # long documents are data, not a quoting mistake
    with path.open(encoding="utf-8-sig", newline="") as f:  # -sig: Excel's "CSV UTF-8" starts with a BOM
        reader = csv.reader(f, delimiter=sep, quoting=quoting)
        header = next(reader, None)
        header = header and [h.strip() for h in header]  # "label, sentence": the second column is "sentence"
        if not header or not any(header):
            raise DataError(f"{path}: the file is empty or starts with a blank line; the first line must be the header")
        seen = set()
        for name in header:
            if name in seen:
                raise DataError(f"{path} line 1: column '{name}' appears twice in the header; rename one of them")
            seen.add(name)
        rows, lines, prev = [], [], reader.line_num
        for row in reader:
            start, prev = prev + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip() and len(header) > 1):
                continue  # blank line
            if len(row) != len(header):
                raise DataError(f"{path} line {start}: {len(row)} fields, the header has {len(header)}; "
                                "fix the row (quote CSV fields that contain the delimiter)")
            rows.append(row)
            lines.append(start)
    df = pd.DataFrame(rows, columns=header, dtype=object)
    df["_line"] = lines
    return df


def json_lines(path: Path, text: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL text; errors name the line."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {n}: invalid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
        rows.append((n, row))
    return rows


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows = [_mark_broken_text({**row, "_line": n}, f"{path} line {n}")
            for n, row in json_lines(path, path.read_text(encoding="utf-8-sig"))]
    return pd.DataFrame(rows)


def _mark_broken_text(row: dict, where: str) -> dict:
    """JSON can hold a lone UTF-16 surrogate (a broken emoji in scraped text), which no tokenizer, hash or table
    takes: such a value is kept escaped and the row gets a `_bad` message (an error, or a skip, for the reader)."""
    for key, value in list(row.items()):
        problem = check_text(value, where, key) if isinstance(value, str) else None
        if problem:
            row[key] = value.encode("utf-8", "backslashreplace").decode("utf-8")
            row["_bad"] = row.get("_bad") or problem
    return row


def read_table(path: str | Path, sep: Optional[str] = None) -> pd.DataFrame:
    """Read every column as text (labels and numbers are parsed by the task, with row-level errors).

    The result has a `_line` column: the line number in the file, for error messages."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file '{p}' does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            df = _read_delimited(p, sep or ("\t" if suffix in (".tsv", ".txt") else ","))
        elif suffix in (".jsonl", ".json"):
            df = _read_jsonl(p)
        elif suffix == ".parquet":
            df = pd.read_parquet(p)
            df["_line"] = range(1, len(df) + 1)
        else:
            raise DataError(f"data file '{p}': unsupported type '{suffix}'; use .csv, .tsv, .jsonl or .parquet")
    except UnicodeDecodeError as e:
        raise _utf8_error(p, e) from None
    except csv.Error as e:
        raise DataError(f"{p}: malformed CSV ({e}); check quoting") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: cannot read ({str(e).splitlines()[0][:160]})") from None
    if len(df) == 0:
        raise DataError(f"{p}: no data rows (only a header); the split must not be empty")
    return df


def require_columns(df: pd.DataFrame, path, columns: list[str], key_hint: dict[str, str]) -> None:
    have = [c for c in df.columns if c not in ("_line", "_bad")]
    for col in columns:
        if col not in df.columns:
            key = key_hint.get(col, "")
            error = MissingLabelsError if key == "data.label_column" else DataError
            raise error(f"{path}: no column '{col}' (columns: {', '.join(map(str, have))}); set {key} to one of "
                        f"them (recipe key, or --set {key}=NAME)" if key else f"{path}: no column '{col}'")


def guess_text_columns(df: pd.DataFrame, text: Optional[str], pair: Optional[str]) -> tuple[str, Optional[str]]:
    if text:
        return text, pair
    cols = set(df.columns)
    for a, b in (("sentence1", "sentence2"), ("question", "sentence"), ("premise", "hypothesis")):
        if a in cols and b in cols:
            return a, pair or b
    for name in ("text", "sentence", "review", "content", "document", "question"):
        if name in cols:
            return name, pair
    raise DataError(f"cannot tell which column holds the text (columns: "
                    f"{', '.join(str(c) for c in df.columns if c not in ('_line', '_bad'))}); set data.text_column")


def check_text(text: str, where: str, column: str) -> Optional[str]:
    """None when `text` can be tokenized; else why not (a lone UTF-16 surrogate, as in some scraped JSON)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return (f"{where}: text in column '{column}' holds an unpaired surrogate character (broken emoji or "
                "escape such as \\ud83d); fix the row, or set data.on_bad_sample: skip")
    return None
