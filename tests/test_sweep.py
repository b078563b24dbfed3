"""`tuneforge sweep`: space validation, pruning through the loop, a resumable study, failed and interrupted trials,
best.yaml and sweep.html."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from tuneforge.cli import main
from tuneforge.config import load_config
from tuneforge.engine import chaos
from tuneforge.errors import ConfigError
from tuneforge.sweep import PRUNED_REASON, mark_interrupted, prepare, read_space, run_sweep

optuna = pytest.importorskip("optuna", reason="the sweep extra (optuna) is not installed")

SPACE = {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
         "train.warmup_ratio": {"type": "float", "low": 0, "high": 0.2},
         "train.freeze_embeddings": {"type": "categorical", "choices": [True, False]}}


class PruneTrial(optuna.pruners.BasePruner):
    """Prunes one trial (by number) at its first report: deterministic, unlike the median rule."""

    def __init__(self, number: int):
        self.number = number

    def prune(self, study, trial) -> bool:
        return trial.number == self.number


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path, text_recipe):
    recipe = text_recipe(train={"max_steps": 30}, eval={"every_steps": 10})
    return write_yaml(tmp_path / "recipe.yaml", recipe), write_yaml(tmp_path / "space.yaml", SPACE), recipe


def quiet(*_a, **_k):
    pass


@pytest.mark.parametrize("spec, message", [
    ({"train.lr": {"type": "normal"}}, "type float, int or categorical"),
    ({"train.lr": {"type": "float", "low": 1e-3, "high": 1e-4}}, "must be below high"),
    ({"train.lr": {"type": "float", "low": 0, "high": 1e-3, "log": True}}, "log: true needs low > 0"),
    ({"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "spread": 2}}, "unknown field"),
    ({"train.batch_size": {"type": "int", "low": 8.5, "high": 16}}, "must be int numbers"),
    ({"train.freeze_embeddings": {"type": "categorical", "choices": []}}, "non-empty list"),
    ({"train.lrr": {"type": "float", "low": 1e-5, "high": 1e-3}}, "did you mean 'train.lr'"),
    ({"train.warmup_ratio": {"type": "float", "low": 0, "high": 2}}, "does not fit the recipe"),
    ([1, 2], "mapping of recipe keys"),
])
def test_space_errors_are_one_line(tmp_path, text_recipe, spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        read_space(write_yaml(tmp_path / "space.yaml", spec), text_recipe())
    assert len(str(err.value).splitlines()) == 1


def test_sweep_prunes_resumes_and_writes_best(files, tmp_path, capsys, monkeypatch):
    recipe_path, space_path, _ = files
    out = tmp_path / "sweep"
    first = run_sweep(recipe_path, space_path, 2, output=out, pruner=PruneTrial(1), log=quiet)
    assert [t["state"] for t in first.trials] == ["complete", "pruned"]
    pruned = json.loads((out / "trial-001" / "summary.json").read_text())
    # never at its first evaluation (warm-up): stopped at its second
    assert pruned["stop_reason"] == PRUNED_REASON and pruned["steps"] == 20
    assert sorted(first.trials[1]["intermediate"]) == [10, 20]

    # the process is interrupted during the next trial: recorded as interrupted, not counted, replaced later
    chaos.reset()
    monkeypatch.setenv(chaos.ENV, "step:5:interrupt")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(recipe_path, space_path, 3, output=out, log=quiet)
    monkeypatch.delenv(chaos.ENV)
    chaos.reset()

    args = ["sweep", str(recipe_path), "--space", str(space_path), "--trials", "4", "--output", str(out)]
    assert main(args) == 0  # the same command, more trials: continues the study
    printed = capsys.readouterr().out
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert states[:3] == ["COMPLETE", "PRUNED", "FAIL"] and study.trials[2].user_attrs["interrupted"]
    assert len(states) == 5 and states[3:] != ["FAIL", "FAIL"]  # 4 counted trials in all
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 5  # the resumed sampler did not replay

    best = load_config(yaml.safe_load((out / "best.yaml").read_text()))  # a valid, complete recipe
    assert best.train.lr == pytest.approx(study.best_trial.params["train.lr"])
    assert best.train.max_steps == 30 and best.eval.metric == "accuracy"
    assert "best: trial" in printed and "pruned" in printed and "interrupted" in printed
    assert printed.endswith((out / "best.yaml").read_text())  # the full recipe, printed last
    html = (out / "sweep.html").read_text()
    assert "optimisation history" in html and "<script" not in html and "http://" not in html


def test_two_jobs_share_the_study(files, tmp_path):
    recipe_path, space_path, _ = files
    result = run_sweep(recipe_path, space_path, 2, jobs=2, output=tmp_path / "two", log=quiet)
    assert [t["state"] for t in result.trials] == ["complete", "complete"]
    assert (tmp_path / "two" / "best.yaml").is_file()


def test_failed_trial_is_recorded_and_the_sweep_goes_on(files, tmp_path):
    recipe_path, _, _ = files
    space = write_yaml(tmp_path / "bad.yaml", {"data.text_column": {"type": "categorical", "choices": ["nope"]}})
    result = run_sweep(recipe_path, space, 2, output=tmp_path / "failing", log=quiet)
    assert [t["state"] for t in result.trials] == ["fail", "fail"]
    assert "nope" in result.trials[0]["note"] and "\n" not in result.trials[0]["note"]
    assert result.best is None and not (tmp_path / "failing" / "best.yaml").exists()
    assert result.html.is_file()


def test_stale_running_trials_are_marked_interrupted(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="sweep", storage=storage)
    study.ask()  # a trial left RUNNING, as a killed sweep process leaves it
    assert mark_interrupted(storage) == 1
    trial = optuna.load_study(study_name="sweep", storage=storage).trials[0]
    assert trial.state.name == "FAIL" and trial.user_attrs["interrupted"]
    assert mark_interrupted(storage) == 0


KILLED_PARENT = """
import multiprocessing, sys, time
from tuneforge.sweep import die_with_parent

def child(parent_pid, path):
    die_with_parent(parent_pid)
    open(path, "w").write(str(multiprocessing.current_process().pid))
    time.sleep(120)

if __name__ == "__main__":
    import os
    multiprocessing.get_context("spawn").Process(target=child, args=(os.getpid(), sys.argv[1])).start()
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has stopped; only its exit status waits to be collected


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_sweep_worker_stops_when_the_sweep_process_is_killed(tmp_path):
    """`kill -9` of a `--jobs 2` sweep once left its spawned workers training on for 20 minutes."""
    import signal
    import subprocess
    import sys
    import time

    script, pid_file = tmp_path / "parent.py", tmp_path / "child.pid"
    script.write_text(KILLED_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    try:
        deadline = time.time() + 60
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.time() < deadline and parent.poll() is None, "the child never started"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while _alive(child) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the worker outlived the killed sweep process"
    finally:
        parent.kill()
        if pid_file.is_file() and pid_file.read_text() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_setup_direction_threads_and_shared_mlflow_store(files, tmp_path, monkeypatch):
    recipe_path, space_path, recipe = files
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    setup = prepare(recipe_path, space_path, 2, tmp_path / "s", None, ["output.loggers=[jsonl, mlflow]"], 0, None)
    assert (setup.metric, setup.direction) == ("accuracy", "maximize")
    assert setup.threads == 1  # 8 cores / 2 jobs = 4, but the recipe asks for 1 thread
    assert setup.overrides["output.mlflow_uri"] == f"sqlite:///{(tmp_path / 's' / 'mlflow.db').resolve()}"
    recipe["train"]["threads"] = None
    setup = prepare(recipe, space_path, 2, tmp_path / "s", "loss", None, 0, None)
    assert (setup.metric, setup.direction, setup.threads) == ("loss", "minimize", 4)


def test_metric_direction_and_bad_arguments(files, tmp_path):
    recipe_path, space_path, _ = files
    with pytest.raises(ConfigError, match="--trials and --jobs"):
        run_sweep(recipe_path, space_path, 0, output=tmp_path / "x", log=quiet)
    with pytest.raises(ConfigError, match="not found"):
        run_sweep(recipe_path, tmp_path / "missing.yaml", 1, output=tmp_path / "x", log=quiet)
