"""Audio listings, registered as the `audio` (labels) and `audio_text` (transcripts) file readers.

Three layouts, each giving Examples whose inputs are absolute file paths (nothing is decoded here):
- class folders: `root/<label>/**/<file>`, the torchvision ImageFolder layout;
- a table (CSV / TSV / JSONL / Parquet) with `data.audio_column` (default `path`) and `data.label_column`
  (`audio`) or `data.text_column` (default `text`, `audio_text`); paths are relative to the table's folder;
- a folder of files labelled by their names: `data.label_from: {regex: "^(\\d)_"}` (the first group of a
  `re.search` in the file name is the label; every file under the folder, at any depth, is read).
With `label_from` set, the regex labels a table's files too (it wins over a label column, which may be absent).

Splits are found as for images (`read_split` sees `folders = True`): `data.dir` with `train/` and `val/`
(`dev/`, `valid/`, ...) folders, or `train.csv` / `val.csv`, or `data.dir` itself as the train pool (val then split
off, stratified). A layout whose split is encoded in file names, such as FSDD (`{digit}_{speaker}_{index}.wav`, test =
index 0-4), is split with two small tables, `train.csv` and `val.csv` with a `path` column, and
`label_from` for the labels: a list of files is the one split description that fits every dataset, can be
reviewed and versioned, and needs no second regex language with match rules. For FSDD, in `data.dir`:

    files = sorted(Path("recordings").glob("*.wav"))
    is_val = lambda f: int(f.stem.split("_")[2]) < 5  # {digit}_{speaker}_{index}: index 0-4 is the test part
    Path("train.csv").write_text("path\n" + "".join(f"{f}\n" for f in files if not is_val(f)))
    Path("val.csv").write_text("path\n" + "".join(f"{f}\n" for f in files if is_val(f)))

(data.train = the folder and data.val = a table would train on the val files too; the data report's
val_in_train count, a content hash, would show it.) Hidden files and folders (names starting with '.', e.g. macOS
`._x.wav`) are skipped. Only suffixes that soundfile (libsndfile) decodes are listed.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import pandas as pd

from tuneforge.data.examples import Examples
from tuneforge.data.sources import FILE_READERS
from tuneforge.data.tables import TABLE_SUFFIXES, read_table, require_columns
from tuneforge.errors import DataError

# what libsndfile >= 1.1 reads (soundfile 0.12+ wheels bundle it, MP3 included)
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".caf",
                  ".w64", ".rf64"}
SKIP_HINT = "or set data.on_bad_sample: skip"


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def list_audio_files(root: Path) -> list[Path]:
    """Audio files under root at any depth, sorted, hidden files and folders left out."""
    return [f for f in sorted(root.rglob("*"))
            if f.suffix.lower() in AUDIO_SUFFIXES and f.is_file() and _visible(f, root)]


class BadRows:
    """Collects bad-row messages: raises the first one unless data.on_bad_sample is skip."""

    def __init__(self, on_bad: str):
        self.on_bad, self.messages = on_bad, []

    def add(self, message: str) -> None:
        if self.on_bad != "skip":
            raise DataError(message)
        self.messages.append(message)

    def log(self, source, log) -> None:
        if self.messages:
            log(f"data: skipped {len(self.messages)} file(s) in {source} (data.on_bad_sample: skip); "
                f"first: {self.messages[0]}")


def label_from_name(path: Path, regex: str) -> Optional[str]:
    """The first group of the regex searched in the file name, or None when it does not match (or is empty)."""
    m = re.search(regex, path.name)
    return m.group(1) if m and m.group(1) else None


def _name_label_error(path: Path, regex: str) -> str:
    return (f"{path}: file name does not match data.label_from.regex '{regex}' (its first group must capture the "
            f"label); rename the file or fix the regex, {SKIP_HINT}")


def list_named_files(root: Path, regex: str, on_bad: str, log=print) -> Examples:
    """A folder of files labelled by the regex's first group in their names."""
    files, labels, bad = [], [], BadRows(on_bad)
    for f in list_audio_files(root):
        label = label_from_name(f, regex)
        if label is None:
            bad.add(_name_label_error(f, regex))
            continue
        files.append(str(f))
        labels.append(label)
    bad.log(root, log)
    if not files:
        raise DataError(f"audio folder '{root}' holds no audio file whose name matches data.label_from.regex "
                        f"'{regex}' ({', '.join(sorted(AUDIO_SUFFIXES))})")
    return Examples(files, labels, list(files), bad.messages)


def list_class_folders(root: Path, log=print) -> Examples:
    """root/<label>/**/<audio file>."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"audio folder '{root}' has no class sub-folders; expected {root}/<class>/<audio files>, "
                        "or set data.label_from.regex to take labels from the file names")
    files, labels = [], []
    for c in classes:
        for f in list_audio_files(root / c):
            files.append(str(f))
            labels.append(c)
    loose = [f for f in root.iterdir() if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES]
    if loose:
        log(f"data: {len(loose)} audio file(s) directly under {root} are in no class folder and are not used")
    if not files:
        raise DataError(f"audio folder '{root}' holds no audio files in its class folders "
                        f"({', '.join(sorted(AUDIO_SUFFIXES))})")
    return Examples(files, labels, list(files))


def _cell(v) -> str:
    return "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)


def read_audio_table(path: Path, dcfg, log=print, need_label: bool = True, text: bool = False) -> Examples:
    """Rows of (audio path, label) or (audio path, transcript); a missing file or empty transcript is a bad row."""
    df = read_table(path)
    regex = dcfg.label_from.regex if dcfg.label_from is not None else None
    target = (dcfg.text_column or "text") if text else dcfg.label_column
    from_column = need_label and (text or regex is None)
    cols = [dcfg.audio_column] + ([target] if from_column else [])
    require_columns(df, path, cols, {dcfg.audio_column: "data.audio_column",
                                     target: "data.text_column" if text else "data.label_column"})
    files, labels, where, bad = [], [], [], BadRows(dcfg.on_bad_sample)
    values = df[target].tolist() if from_column else [None] * len(df)
    for rel, value, n in zip(df[dcfg.audio_column].tolist(), values, df["_line"].tolist()):
        here = f"{path} line {n}"
        p = Path(_cell(rel)).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if not _cell(rel).strip() or not p.is_file():
            bad.add(f"{here}: audio file '{_cell(rel)}' does not exist (paths are relative to the table's folder); "
                    f"fix the path, {SKIP_HINT}")
            continue
        if need_label and regex is not None and not text:
            value = label_from_name(p, regex)
            if value is None:
                bad.add(_name_label_error(p, regex))
                continue
        elif from_column and text and not _cell(value).strip():
            bad.add(f"{here}: empty transcript in column '{target}'; fill it or remove the row, {SKIP_HINT}")
            continue
        files.append(str(p))
        labels.append(_cell(value) if text else value)
        where.append(here)
    bad.log(path, log)
    if not files:
        raise DataError(f"{path}: no usable rows (all {len(df)} were bad)")
    return Examples(files, labels if need_label else None, where, bad.messages)


def _read(path: Path, dcfg, log, need_label: bool, text: bool) -> Examples:
    regex = dcfg.label_from.regex if dcfg.label_from is not None else None
    if path.is_dir():
        if not need_label:  # predict: every audio file, no labels
            files = [str(f) for f in list_audio_files(path)]
            if not files:
                raise DataError(f"audio folder '{path}' holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
            return Examples(files, None, list(files))
        if text:
            raise DataError(f"{path}: transcripts come from a table (path,text); give data.dir a train.csv / "
                            "val.csv or set data.train to the table")
        if regex is not None:
            return list_named_files(path, regex, dcfg.on_bad_sample, log)
        return list_class_folders(path, log)
    if path.suffix.lower() in AUDIO_SUFFIXES:  # a single file (predict, or a label in its name)
        label = label_from_name(path, regex) if regex and need_label and not text else None
        if need_label and label is None:
            raise DataError(f"{path}: a single audio file carries no label; give a folder or a table")
        return Examples([str(path)], [label] if need_label else None, [str(path)])
    return read_audio_table(path, dcfg, log, need_label, text)


@FILE_READERS.register("audio")
def read_audio(path: Path, dcfg, log=print, need_label: bool = True) -> Examples:
    """Audio with a class / value label (classification, regression, multilabel)."""
    return _read(Path(path), dcfg, log, need_label, text=False)


@FILE_READERS.register("audio_text")
def read_audio_transcripts(path: Path, dcfg, log=print, need_label: bool = True) -> Examples:
    """Audio with its transcript (ASR): labels are the raw transcript strings."""
    return _read(Path(path), dcfg, log, need_label, text=True)


for _reader in (read_audio, read_audio_transcripts):
    _reader.suffixes = TABLE_SUFFIXES  # split files read_split looks for: train.csv, val.tsv, ...
    _reader.folders = True  # and split folders: train/, val/, or data.dir itself as the train pool
