"""Trackers (output.loggers): TensorBoard and MLflow read back with their own readers, across a crash and resume;
missing packages name the pip extra."""
from __future__ import annotations

import importlib.util

import pytest

from tuneforge.config import load_config
from tuneforge.engine import chaos
from tuneforge.errors import ConfigError
from tuneforge.run import train
from tuneforge.trackers import MLFLOW_RUN_ID_FILE, create_trackers

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
pytest.importorskip("mlflow", reason="the mlflow extra is not installed")


def tracked_recipe(text_recipe) -> dict:
    return text_recipe(train={"max_steps": 30}, eval={"every_steps": 10},
                       output={"loggers": ["jsonl", "tensorboard", "mlflow"], "name": "tracked"})


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, text_recipe):
    """A run with both trackers that crashes at step 15 (checkpoint at 10), then is resumed to step 30."""
    mp = pytest.MonkeyPatch()
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    recipe = tracked_recipe(text_recipe)
    chaos.reset()
    mp.setenv(chaos.ENV, "step:15:interrupt")
    with pytest.raises(KeyboardInterrupt):
        train(recipe, output=str(run_dir), quiet=True)
    run_id = (run_dir / MLFLOW_RUN_ID_FILE).read_text().strip()
    mp.delenv(chaos.ENV)
    chaos.reset()
    result = train(recipe, output=str(run_dir), resume=True, quiet=True)
    mp.undo()
    return run_dir, run_id, result


def test_tensorboard_events_read_back_after_resume(resumed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, result = resumed_run
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "val/accuracy", "val/loss", "hparam/accuracy"} <= set(tags["scalars"])
    assert "val/confusion_matrix" in tags["images"]
    assert any(t.startswith("head/") for t in tags["histograms"])
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(1, 31))  # steps 11-15 of the crashed run were purged, not doubled
    assert [e.step for e in acc.Scalars("val/accuracy")] == [10, 20, 30]
    assert acc.Scalars("val/accuracy")[-1].value == pytest.approx(result.summary["eval"]["accuracy"], abs=1e-6)
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(acc.PluginTagToContent("hparams"))


def test_mlflow_run_is_continued_not_duplicated(resumed_run):
    from mlflow import MlflowClient

    run_dir, run_id, result = resumed_run
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tracked")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # resume reused the run
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.003" and run.data.params["task.type"] == "classification"
    assert run.data.metrics["final/accuracy"] == pytest.approx(result.summary["eval"]["accuracy"])
    losses = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, 31))  # the crashed run's steps 11-15 never sent
    assert [m.step for m in client.get_metric_history(run_id, "val/accuracy")] == [10, 20, 30]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"model", "report.html"} <= artifacts
    assert (run_dir / "report.html").is_file()


def test_mlflow_search_runs_sees_params_and_metrics(resumed_run):
    import mlflow

    run_dir, run_id, _ = resumed_run
    mlflow.set_tracking_uri(f"sqlite:///{run_dir / 'mlflow.db'}")
    try:
        frame = mlflow.search_runs(experiment_names=["tracked"])
    finally:
        mlflow.set_tracking_uri(None)
    assert list(frame["run_id"]) == [run_id]
    assert "params.train.batch_size" in frame and "metrics.val/accuracy" in frame


def test_missing_package_names_the_extra(monkeypatch, text_recipe, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    cfg = load_config(tracked_recipe(text_recipe))
    with pytest.raises(ConfigError, match=r"pip install 'tuneforge\[mlflow\]'") as err:
        create_trackers(cfg, tmp_path, None, [], False)
    assert len(str(err.value).splitlines()) == 1


def test_logger_names_are_checked(text_recipe):
    with pytest.raises(ConfigError, match="output.loggers"):
        load_config(text_recipe(output={"loggers": ["wandb"]}))
    assert create_trackers(load_config(text_recipe()), None, None, [], False) == []  # jsonl only: nothing to add


def test_lost_mlflow_run_is_one_line(tmp_path, resumed_run):
    from tuneforge.trackers import MLflowTracker

    (tmp_path / MLFLOW_RUN_ID_FILE).write_text("0123456789abcdef\n")
    store = f"sqlite:///{resumed_run[0] / 'mlflow.db'}"  # an existing store that lacks this run
    with pytest.raises(ConfigError, match="does not have") as err:
        MLflowTracker(tmp_path, {}, store, "x", resumed=True)
    assert len(str(err.value).splitlines()) == 1
