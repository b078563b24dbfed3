"""Experiment trackers (`output.loggers`): TensorBoard and MLflow, each a Callback built with what it needs.

`jsonl` (metrics.jsonl, MetricsLogger) is always on. The others are optional extras: a missing package is a
one-line ConfigError naming the pip extra. A tracker hears the loop's events and one more, `on_run_end(summary)`,
fired by the runner once model/ and summary.json exist (final metrics, hparams, artifacts).

Resume continues the same tracker run: TensorBoard writes to the same RUN/tensorboard folder with `purge_step`
just after the resumed step (events a crashed run wrote after its checkpoint are hidden), MLflow reopens the run
whose id is in RUN/mlflow_run_id (per-step metrics are sent with each evaluation, so those of steps after the last
checkpoint are never sent by a run that fails)."""
from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path
from typing import Optional

from tuneforge.engine.callbacks import Callback
from tuneforge.engine.state import LoopState
from tuneforge.errors import ConfigError
from tuneforge.metrics import scalars
from tuneforge.registry import Registry
from tuneforge.utils import flatten

# name → factory(cfg, run_dir, bundle, labels, resumed) -> Tracker
TRACKERS: Registry = Registry("logger")
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}  # logger: (module, extra)
MLFLOW_RUN_ID_FILE = "mlflow_run_id"


class Tracker(Callback):
    """A Callback that is also told when the whole run has finished (after model/ and summary.json)."""

    def on_run_end(self, summary: dict) -> None: ...


def lr_scalars(state: LoopState) -> dict[str, float]:
    """The last step's learning rate (the first parameter group's); nothing before the first step."""
    return {} if math.isnan(state.last_lr) else {"train/lr": state.last_lr}


def final_metrics(summary: dict) -> dict[str, float]:
    return {k: float(v) for k, v in scalars(summary.get("eval") or {}).items() if k != "samples"}


def require_packages(loggers: list[str]) -> None:
    """One line naming the pip extra for the first requested logger whose package is missing."""
    for name in loggers:
        module, extra = PACKAGES.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise ConfigError(f"output.loggers: {name} needs the {module} package; install it with "
                              f"pip install 'tuneforge[{extra}]' or remove {name} from output.loggers")


def create_trackers(cfg, run_dir: Path, model, labels: list[str], resumed: bool) -> list[Tracker]:
    """The trackers `cfg.output.loggers` asks for (jsonl is MetricsLogger, always on). `model` is the run's
    ModelBundle (its head is histogrammed); `resumed`: the run folder is being continued."""
    wanted = [name for name in dict.fromkeys(cfg.output.loggers) if name != "jsonl"]
    require_packages(wanted)
    return [TRACKERS.get(name, "output.loggers")(cfg, Path(run_dir), model, labels, resumed) for name in wanted]


# ---------------------------------------------------------------- TensorBoard


class TensorBoardTracker(Tracker):
    """RUN/tensorboard: train/loss and train/lr per step, val/<metric> per evaluation, histograms of the head's
    parameters and the confusion matrix (as an image) at each evaluation, hparams (flattened recipe + final
    metrics) at the end of the run."""

    def __init__(self, run_dir: Path, config: dict, bundle, labels: list[str], resumed: bool):
        self.log_dir = Path(run_dir) / "tensorboard"
        self.config, self.bundle, self.labels = config, bundle, list(labels)
        self.purge_pending = resumed  # the first writer of a resumed run hides events after its step
        self.writer = None
        self.step = 0

    def _open(self, step: Optional[int]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a checkpoint is written after its evaluation's events, which the resumed run does not repeat: hide only
        # what came after it
        purge = step + 1 if self.purge_pending and step is not None else None
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge, flush_secs=30)
        self.purge_pending = False

    def on_fit_start(self, state: LoopState) -> None:
        self._open(state.step)  # once per phase: each phase closes its writer at its end

    def on_step_end(self, state: LoopState) -> None:
        self.step = state.step
        if math.isfinite(state.last_loss):
            self.writer.add_scalar("train/loss", state.last_loss, state.step)
        for tag, value in lr_scalars(state).items():
            self.writer.add_scalar(tag, value, state.step)

    def on_eval_end(self, state: LoopState, record: dict) -> None:
        step = record["step"]
        for name, value in scalars(record["metrics"]).items():
            if name != "samples":
                self.writer.add_scalar(f"val/{name}", value, step)
        self._head_histograms(step)
        matrix = record["metrics"].get("confusion_matrix")
        if matrix is not None and self.labels:
            from tuneforge.report.figures import heatmap_figure

            self.writer.add_figure("val/confusion_matrix", heatmap_figure(matrix, self.labels, self.labels,
                                                                          f"confusion matrix, step {step}"), step)
        self.writer.flush()

    def _head_histograms(self, step: int) -> None:
        from tuneforge.engine.trainable import head_names

        heads = head_names(self.bundle)
        for name, p in self.bundle.model.named_parameters():
            if name in heads:
                self.writer.add_histogram(f"head/{name}", p.detach().float().cpu(), step)

    def on_fit_end(self, state: LoopState) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_run_end(self, summary: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        self._open(None)
        metrics = {f"hparam/{k}": v for k, v in final_metrics(summary).items()}
        params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(self.config).items()}
        for event in hparams(params, metrics):
            self.writer.file_writer.add_summary(event)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, summary.get("steps", self.step))
        self.writer.close()
        self.writer = None


@TRACKERS.register("tensorboard")
def _tensorboard(cfg, run_dir: Path, bundle, labels: list[str], resumed: bool) -> Tracker:
    return TensorBoardTracker(run_dir, cfg.model_dump(mode="json"), bundle, labels, resumed)


# ---------------------------------------------------------------- MLflow


def default_mlflow_uri(run_dir: Path) -> str:
    """A sqlite store inside the run folder: works offline with nothing running. MLflow 3.x refuses the old
    file store (./mlruns) unless MLFLOW_ALLOW_FILE_STORE is set, and its UI and search read sqlite directly."""
    return f"sqlite:///{(Path(run_dir) / 'mlflow.db').resolve()}"


def _artifact_root(uri: str, run_dir: Path) -> Optional[str]:
    """Artifacts next to a sqlite store (MLflow's default is ./mlruns under whatever the current folder is);
    a tracking server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


class MLflowTracker(Tracker):
    """One MLflow run per tuneforge run: params (the flattened recipe) at the start, train/loss and train/lr per
    step and val/<metric> per evaluation (sent in one batch per evaluation), final/<metric> and the summary's
    speed numbers, model/ and report.html as artifacts at the end."""

    def __init__(self, run_dir: Path, config: dict, uri: Optional[str], experiment: str, resumed: bool):
        from mlflow import MlflowClient

        self.run_dir = Path(run_dir)
        self.uri = uri or default_mlflow_uri(self.run_dir)
        self.client = MlflowClient(self.uri)
        self.pending: list = []  # metrics since the last batch
        self.run_id = self._reopen() if resumed else None
        if self.run_id is None:
            self.run_id = self._create(experiment)
            self._log_params(config)

    def _reopen(self) -> Optional[str]:
        path = self.run_dir / MLFLOW_RUN_ID_FILE
        if not path.is_file():
            return None
        from mlflow.exceptions import MlflowException

        run_id = path.read_text(encoding="utf-8").strip()
        try:
            self.client.get_run(run_id)
        except MlflowException:
            raise ConfigError(f"{path} names MLflow run {run_id}, which the store {self.uri} does not have; "
                              "set output.mlflow_uri to the store it was logged to, or delete the file to start "
                              "a new MLflow run") from None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _create(self, experiment: str) -> str:
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=_artifact_root(self.uri, self.run_dir))
        run = self.client.create_run(exp_id, run_name=self.run_dir.name,
                                     tags={"tuneforge.run_dir": str(self.run_dir.resolve())})
        (self.run_dir / MLFLOW_RUN_ID_FILE).write_text(run.info.run_id + "\n", encoding="utf-8")
        return run.info.run_id

    def _log_params(self, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _add(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in values.items()]

    def _flush(self) -> None:
        for i in range(0, len(self.pending), 1000):
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + 1000])
        self.pending = []

    def on_step_end(self, state: LoopState) -> None:
        self._add({"train/loss": state.last_loss, **lr_scalars(state)}, state.step)

    def on_eval_end(self, state: LoopState, record: dict) -> None:
        self._add({f"val/{k}": v for k, v in scalars(record["metrics"]).items() if k != "samples"}, record["step"])
        self._flush()

    def on_fit_end(self, state: LoopState) -> None:
        # every phase ends with an evaluation (which sent its batch); anything still pending was logged after the
        # last checkpoint by a run that is failing, and its resume will log those steps again
        self.pending = []

    def on_run_end(self, summary: dict) -> None:
        speed = {k: summary[k] for k in ("train_seconds", "samples_per_second", "peak_rss_mb")
                 if isinstance(summary.get(k), (int, float))}
        self._add({**{f"final/{k}": v for k, v in final_metrics(summary).items()}, **speed}, summary.get("steps", 0))
        self._flush()
        if (self.run_dir / "model").is_dir():
            self.client.log_artifacts(self.run_id, str(self.run_dir / "model"), "model")
        self.client.log_artifact(self.run_id, str(self._report()))
        self.client.set_terminated(self.run_id, "FINISHED")

    def _report(self) -> Path:
        path = self.run_dir / "report.html"
        if not path.is_file():
            from tuneforge.report import build_report

            build_report([self.run_dir], path)
        return path


@TRACKERS.register("mlflow")
def _mlflow(cfg, run_dir: Path, bundle, labels: list[str], resumed: bool) -> Tracker:
    return MLflowTracker(run_dir, cfg.model_dump(mode="json"), cfg.output.mlflow_uri, cfg.output.name or "tuneforge",
                         resumed)
