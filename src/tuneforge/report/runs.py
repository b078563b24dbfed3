"""A run folder's files, read once and tolerantly: a running or crashed run has no summary.json or model/ yet,
and its metrics.jsonl may end in a half-written line."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.report.predictions import PREDICTIONS_FILE, read_predictions, write_val_predictions


@dataclass
class RunFiles:
    path: Path
    name: str
    config: dict
    config_text: str
    records: list[dict]
    summary: Optional[dict]
    data_report: Optional[dict]
    labels: list[str] = field(default_factory=list)
    predictions: Optional[list[dict]] = None
    predictions_note: str = ""  # why there are no predictions

    @property
    def task(self) -> str:
        task = self.config.get("task", "classification")
        return task if isinstance(task, str) else task.get("type", "classification")

    @property
    def model_name(self) -> str:
        model = self.config.get("model", {})
        return model if isinstance(model, str) else str(model.get("name", "?"))

    @property
    def metric(self) -> Optional[str]:
        if self.summary:
            return self.summary.get("metric")
        return (self.config.get("eval") or {}).get("metric")

    @property
    def finished(self) -> bool:
        return self.summary is not None


def _json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_records(path: Path) -> list[dict]:
    """metrics.jsonl; a line still being written (or cut by a crash) is left out."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def load_run(path: str | Path) -> RunFiles:
    p = Path(path).expanduser()
    if not (p / "config.yaml").is_file():
        raise ConfigError(f"'{p}' is not a tuneforge run folder (no config.yaml); pass the folder `tuneforge train` "
                          "wrote")
    text = (p / "config.yaml").read_text(encoding="utf-8")
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raise ConfigError(f"'{p / 'config.yaml'}' is not valid YAML; the run folder is damaged") from None
    labels = _json(p / "model" / "labels.json")
    summary = _json(p / "summary.json")
    if not labels and summary:
        labels = list((summary.get("eval") or {}).get("per_class") or {})
    return RunFiles(p, p.resolve().name, config, text, read_records(p / "metrics.jsonl"), summary,
                    _json(p / "data_report.json"), list(labels or []))


def attach_predictions(run: RunFiles, compute: bool = True) -> None:
    """Reads RUN/predictions/val.jsonl, writing it first (with the kept model) when it is absent."""
    from tuneforge.tasks import TASKS

    path = run.path / PREDICTIONS_FILE
    task = TASKS.get(run.task) if run.task in TASKS else None
    if task is not None and not task.report_predictions and not path.is_file():
        run.predictions_note = (f"no validation predictions: task {run.task} generates answers, which is costly; "
                                "see generations.jsonl (sampled validation prompts, before and after training)")
        return
    if not path.is_file():
        if not (run.path / "model").is_dir():
            run.predictions_note = "no validation predictions: the run has no model/ folder yet (unfinished)"
            return
        if not compute:
            run.predictions_note = f"no validation predictions ({PREDICTIONS_FILE} is absent)"
            return
        try:
            write_val_predictions(run.path)
        except TuneforgeError as e:
            run.predictions_note = f"no validation predictions: {e}"
            return
    run.predictions = read_predictions(run.path)


def unique_names(runs: list[RunFiles]) -> None:
    """Runs with the same folder name get their parent's name in front."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r in runs:
        if counts[r.name] > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
