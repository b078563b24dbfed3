"""Where examples come from: files under data.dir / data.train / data.val, or a built-in source."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from tuneforge.data.examples import Examples
from tuneforge.data.images import IMAGE_SUFFIXES, list_image_folder, sklearn_digits
from tuneforge.data.tables import (SPLIT_NAMES, TABLE_SUFFIXES, check_text, find_split_file, guess_text_columns,
                                   read_table, require_columns)
from tuneforge.errors import ConfigError, DataError
from tuneforge.registry import Registry

# A built-in source: `fn(data_cfg) -> Examples` (the train pool; val comes from a seeded split).
BUILTIN_SOURCES: Registry[Callable] = Registry("data source")
# A file reader for one modality: `fn(path, data_cfg, log) -> Examples`. Tasks with special formats
# (CoNLL, chat JSONL) register their own.
FILE_READERS: Registry[Callable] = Registry("file reader")


@BUILTIN_SOURCES.register("sklearn-digits")
def _digits(dcfg) -> Examples:
    return sklearn_digits(size=32)


def split_path(dcfg, split: str, suffixes=TABLE_SUFFIXES, folders: bool = False) -> Optional[Path]:
    """The file (or folder) for a split: explicit data.train / data.val, else discovered under data.dir."""
    explicit = {"train": dcfg.train, "val": dcfg.val, "test": dcfg.test or None}.get(split)
    base = Path(dcfg.dir).expanduser() if dcfg.dir else None
    if explicit:
        p = Path(explicit).expanduser()
        p = p if p.is_absolute() or base is None else base / p
        if not p.exists():
            raise DataError(f"data.{split} '{p}' does not exist")
        return p
    if base is None:
        return None
    if not base.is_dir():
        raise DataError(f"data.dir '{base}' does not exist or is not a folder")
    if folders:
        for name in SPLIT_NAMES[split]:
            if (base / name).is_dir():
                return base / name
        found = find_split_file(base, split, suffixes)  # an image CSV (path,label)
        if found is not None or split != "train":
            return found
        return base  # a bare ImageFolder tree (class folders directly under data.dir) is the train pool
    found = find_split_file(base, split, suffixes)
    if found is None and split == "train":
        raise DataError(f"data.dir '{base}' has no train file (train{'/'.join(suffixes)}); "
                        "set data.train to the file")
    return found


def _clean_text(v) -> str:
    return "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)


def _text_problem(text: str, pair: Optional[str], where: str, text_col: str, pair_col: Optional[str]) -> Optional[str]:
    for value, col in ((text, text_col), (pair, pair_col)):
        if value is None:
            continue
        if not value.strip():
            return f"{where}: empty text in column '{col}'; fill it or remove the row, or set data.on_bad_sample: skip"
        problem = check_text(value, where, col)
        if problem:
            return problem
    return None


@FILE_READERS.register("text")
def read_text_table(path: Path, dcfg, log=print, need_label: bool = True) -> Examples:
    df = read_table(path)
    text_col, pair_col = guess_text_columns(df, dcfg.text_column, dcfg.text_pair_column)
    cols = [text_col] + ([pair_col] if pair_col else []) + ([dcfg.label_column] if need_label else [])
    require_columns(df, path, cols, {text_col: "data.text_column", pair_col: "data.text_pair_column",
                                     dcfg.label_column: "data.label_column"})
    texts = [_clean_text(v) for v in df[text_col].tolist()]
    pairs = [_clean_text(v) for v in df[pair_col].tolist()] if pair_col else None
    where = [f"{path} line {n}" for n in df["_line"].tolist()]
    labels = df[dcfg.label_column].tolist() if need_label else None
    broken = df["_bad"].tolist() if "_bad" in df.columns else [None] * len(df)
    keep, skipped = [], []
    for i, t in enumerate(texts):
        msg = _text_problem(t, pairs[i] if pairs is not None else None, where[i], text_col, pair_col)
        msg = broken[i] if isinstance(broken[i], str) else msg
        if msg is None:
            keep.append(i)
            continue
        if dcfg.on_bad_sample != "skip":
            raise DataError(msg)
        skipped.append(msg)
    if skipped:
        log(f"data: skipped {len(skipped)} row(s) with empty or broken text in {path} (data.on_bad_sample: skip)")
    if not keep:
        raise DataError(f"{path}: no usable rows (all {len(texts)} have empty text)")
    inputs = [(texts[i], pairs[i]) if pairs is not None else texts[i] for i in keep]
    columns = {"text": text_col, **({"pair": pair_col} if pair_col else {})}
    return Examples(inputs, None if labels is None else [labels[i] for i in keep], [where[i] for i in keep], skipped,
                    columns=columns)


@FILE_READERS.register("image")
def read_images(path: Path, dcfg, log=print, need_label: bool = True) -> Examples:
    if path.is_dir():
        return list_image_folder(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:  # a single image (predict)
        return Examples([str(path)], None, [str(path)])
    df = read_table(path)
    cols = [dcfg.image_column] + ([dcfg.label_column] if need_label else [])
    require_columns(df, path, cols, {dcfg.image_column: "data.image_column", dcfg.label_column: "data.label_column"})
    images, where = [], []
    for rel, n in zip(df[dcfg.image_column].tolist(), df["_line"].tolist()):
        p = Path(str(rel)).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            raise DataError(f"{path} line {n}: image '{rel}' does not exist (paths are relative to the CSV's folder)")
        images.append(str(p))
        where.append(f"{path} line {n}")
    return Examples(images, df[dcfg.label_column].tolist() if need_label else None, where)


def read_split(dcfg, modality: str, split: str, log=print, reader: Optional[str] = None) -> Optional[Examples]:
    """Examples of one split, or None when the split is not given (then val is split off train)."""
    if dcfg.source:
        return BUILTIN_SOURCES.get(dcfg.source, "data.source")(dcfg) if split == "train" else None
    is_image = modality == "image"
    read = FILE_READERS.get(reader or modality)
    # a reader for a special format says which file names it reads (CoNLL: train.txt, valid.txt, ...)
    suffixes = getattr(read, "suffixes", None) or ((".csv",) if is_image else TABLE_SUFFIXES)
    folders = getattr(read, "folders", is_image)  # split folders (train/, val/) as well as split files
    if split == "train" and isinstance(dcfg.train, list):  # several files as one split, in the order given
        return concat_examples([read(p, dcfg, log) for p in explicit_paths(dcfg, dcfg.train)])
    path = split_path(dcfg, split, folders=folders, suffixes=suffixes)
    if path is None:
        return None
    return read(path, dcfg, log)


def explicit_paths(dcfg, given: list[str]) -> list[Path]:
    """data.train as a list: each file must exist (relative paths from data.dir)."""
    base = Path(dcfg.dir).expanduser() if dcfg.dir else None
    paths = []
    for name in given:
        p = Path(name).expanduser()
        p = p if p.is_absolute() or base is None else base / p
        if not p.is_file():
            raise DataError(f"data.train file '{p}' does not exist")
        paths.append(p)
    if not paths:
        raise DataError("data.train is an empty list; give at least one file")
    return paths


def repeat_files(train: Examples, dcfg, log=print) -> Examples:
    """data.train_repeat: the rows read from each named data.train file, N times each (upsampling a small set)."""
    if not dcfg.train_repeat:
        return train
    given = dcfg.train if isinstance(dcfg.train, list) else [dcfg.train]
    times = {}
    for name, n in dcfg.train_repeat.items():
        if name not in given:
            raise ConfigError(f"data.train_repeat names '{name}', which is not in data.train "
                              f"({', '.join(map(str, given))}); use one of those names")
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"data.train_repeat.{name} is {n!r}; give a whole number of copies, 1 or more")
        times[f"{explicit_paths(dcfg, [name])[0]} "] = n
    counts = [next((n for prefix, n in times.items() if w.startswith(prefix)), 1) for w in train.where]
    log(f"data: data.train_repeat: {sum(counts) - len(counts)} extra copies of "
        f"{sum(c > 1 for c in counts)} training rows ({len(train)} → {sum(counts)} rows)")
    return train.subset([i for i, c in enumerate(counts) for _ in range(c)])


def concat_examples(parts: list[Examples]) -> Examples:
    """One split from several files' examples (labels: all given, or none at all)."""
    if len({p.labels is None for p in parts}) > 1:
        raise DataError("data.train: some files have labels and some do not; give files of one kind")
    labels = None if parts[0].labels is None else [x for p in parts for x in p.labels]
    return Examples([x for p in parts for x in p.inputs], labels, [x for p in parts for x in p.where],
                    [x for p in parts for x in p.skipped])


from tuneforge.data import audio_readers  # noqa: E402,F401  registers the "audio" and "audio_text" readers
