"""`preset: auto` with little given (`tuneforge train --data DIR`): the model by the data's modality and the label
column of a table, filled into the raw recipe before it is validated (config.load_config). The preset's rules
themselves are in presets.py."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from tuneforge.errors import ConfigError

DEFAULT_MODELS = {"text": "minilm-l6", "image": "efficientnet-lite0", "audio": "whisper-base"}


LABEL_COLUMNS = ("label", "labels", "score", "target", "y", "class", "category", "sentiment", "rating")


def fill_recipe(raw: dict) -> dict:
    """preset: auto with little given: the model by the data's modality, and for a table without a `label`
    column the first usual label column it has (score, target, ...)."""
    if not raw.get("model"):
        raw["model"] = default_model(raw)
    data = raw.get("data") or {}
    if isinstance(data, dict) and data.get("dir") and not data.get("label_column"):
        guessed = _label_column(Path(str(data["dir"])).expanduser())
        if guessed:
            raw["data"] = {**data, "label_column": guessed}
    return raw


def _label_column(folder: Path) -> Optional[str]:
    from tuneforge.data.tables import TABLE_SUFFIXES, find_split_file, read_table

    path = find_split_file(folder, "train", TABLE_SUFFIXES) if folder.is_dir() else None
    if path is None:
        return None
    try:
        columns = set(read_table(path).columns)
    except Exception:  # noqa: BLE001 - an unreadable table is reported by the reader itself, with its row
        return None
    return None if "label" in columns else next((c for c in LABEL_COLUMNS if c in columns), None)


def default_model(raw: dict) -> str:
    """The model for a recipe that names none: minilm-l6 for text, efficientnet-lite0 for images, whisper-base
    for audio files and speech recognition."""
    from tuneforge.data.audio_readers import AUDIO_SUFFIXES
    from tuneforge.data.images import IMAGE_SUFFIXES

    data = raw.get("data") or {}
    task = raw.get("task")
    if (task.get("type") if isinstance(task, dict) else task) == "asr":
        return DEFAULT_MODELS["audio"]
    if data.get("source"):
        return DEFAULT_MODELS["image"]  # the built-in sources are image sets (sklearn-digits)
    root = Path(str(data.get("dir") or "")).expanduser() / str(data.get("train") or "")  # train: relative to dir
    if not root.exists():
        raise ConfigError(f"preset auto: data '{root}' does not exist; set data.dir (or model.name)")
    files = [root] if root.is_file() else [p for p in sorted(root.rglob("*"))[:2000] if p.is_file()]
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
        return DEFAULT_MODELS["image"]
    if any(p.suffix.lower() in AUDIO_SUFFIXES for p in files):
        return DEFAULT_MODELS["audio"]
    if any(p.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt", ".conll") for p in files):
        return DEFAULT_MODELS["text"]
    raise ConfigError(f"preset auto: no text tables or images under '{root}'; set model.name for this data")
