"""`tuneforge sweep RECIPE --space space.yaml --trials N`: hyperparameter search with Optuna.

Each trial is a normal run folder DIR/trial-NNN trained by `tuneforge.run.train`. The sampler is TPE, seeded
(the seed is offset by the trials already in the study, so a resumed sweep does not replay its first proposals).
The pruner is Optuna's MedianPruner fed by every evaluation: a trial stops once its best value so far is worse than
the median of earlier trials at the same point, from its second evaluation on. Median rather than successive halving / ASHA: a sweep here has
tens of trials with a handful of evaluations each, and ASHA's rungs only pay off with many trials and geometric
budgets; the median rule needs no budget settings and never stops the first 3 trials.

The study lives in DIR/study.db (sqlite, load_if_exists), so the same command continues an interrupted sweep up to
N trials in all. `--jobs J` runs J worker processes on the shared study, each trial with cores // J threads.
A trial that fails with a TuneforgeError is recorded as failed with its one-line error and the sweep goes on.
At the end: DIR/best.yaml (the best trial's full recipe), a table of trials and DIR/sweep.html."""
from __future__ import annotations

import copy
import importlib.util
import math
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import yaml

from tuneforge.config import apply_overrides, load_config, read_recipe, to_yaml
from tuneforge.engine.callbacks import Callback
from tuneforge.engine.state import LoopState
from tuneforge.errors import ConfigError, TuneforgeError

PRUNED_REASON = "pruned by the sweep"
STEP_CHANGING = ("train.batch_size", "train.grad_accum")  # a step then means a different amount of data
SPEC_FIELDS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
               "categorical": {"type", "choices"}}


# ---------------------------------------------------------------- the search space


def _require_optuna():
    if importlib.util.find_spec("optuna") is None:
        raise ConfigError("tuneforge sweep needs the optuna package; install it with pip install 'tuneforge[sweep]'")
    import optuna

    return optuna


def _check_spec(where: str, spec: Any) -> None:
    if not isinstance(spec, dict) or spec.get("type") not in SPEC_FIELDS:
        raise ConfigError(f"{where}: give a mapping with type float, int or categorical, e.g. "
                          "{type: float, low: 1e-5, high: 1e-3, log: true}")
    extra = set(spec) - SPEC_FIELDS[spec["type"]]
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(extra))} for type {spec['type']}; allowed: "
                          f"{', '.join(sorted(SPEC_FIELDS[spec['type']]))}")
    if spec["type"] == "categorical":
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            raise ConfigError(f"{where}: categorical needs a non-empty list of choices, e.g. choices: [true, false]")
        return
    number = float if spec["type"] == "float" else int
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or \
            (number is int and not all(float(v).is_integer() for v in (low, high))):
        raise ConfigError(f"{where}: low and high must be {spec['type']} numbers (got low {low!r}, high {high!r})")
    if low >= high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
    if spec.get("log") and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0 (got {low})")
    if spec.get("log") and spec.get("step") is not None:
        raise ConfigError(f"{where}: step and log: true exclude each other")
    if spec.get("step") is not None and not (isinstance(spec["step"], (int, float)) and spec["step"] > 0):
        raise ConfigError(f"{where}: step must be a positive number (got {spec['step']!r})")


def _values(spec: dict) -> list:
    return list(spec["choices"]) if spec["type"] == "categorical" else [spec["low"], spec["high"]]


def read_space(path: str | Path, recipe: dict) -> dict[str, dict]:
    """space.yaml → {recipe key: spec}; every spec is checked and every bound / choice validated against the recipe
    schema, so a bad space fails before the first trial."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--space '{p}' not found; give a YAML file like: train.lr: {{type: float, low: 1e-5, "
                          "high: 1e-3, log: true}")
    try:
        space = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"--space '{p}' is not valid YAML: {str(e).strip().splitlines()[0]}") from None
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"--space '{p}': expected a mapping of recipe keys to ranges, e.g. train.lr: {{...}}")
    for key, spec in space.items():
        _check_spec(f"{p}: '{key}'", spec)
        for value in _values(spec):
            try:
                load_config(recipe, {key: value})
            except ConfigError as e:
                raise ConfigError(f"{p}: '{key}' value {value!r} does not fit the recipe ({e})") from None
    return space


def suggest(trial, space: dict[str, dict]) -> dict[str, Any]:
    out = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            out[key] = trial.suggest_categorical(key, spec["choices"])
        elif spec["type"] == "float":
            out[key] = trial.suggest_float(key, spec["low"], spec["high"], log=bool(spec.get("log")),
                                           step=spec.get("step"))
        else:
            out[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")),
                                         step=int(spec.get("step") or 1))
    return out


# ---------------------------------------------------------------- trials


FIRST_PRUNABLE_EVAL = 2


class PruneOnEval(Callback):
    """Reports every evaluation to the trial; stops the run once the pruner says so. `by_eval`: report at the
    evaluation's number instead of its step (steps differ in meaning when batch sizes are swept)."""

    def __init__(self, trial, metric: str, by_eval: bool = False):
        self.trial, self.metric, self.by_eval = trial, metric, by_eval
        self.evals = 0
        self.pruned = False

    def on_eval_end(self, state: LoopState, record: dict) -> None:
        self.evals += 1
        value = record["metrics"].get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), self.evals if self.by_eval else record["step"])
        # never at a trial's first evaluation: runs with a longer LR warm-up are still behind there (here and not
        # MedianPruner's n_warmup_steps: reports are at global steps, so it cannot know where evaluation 2 is)
        if self.pruned or (self.evals >= FIRST_PRUNABLE_EVAL and self.trial.should_prune()):
            self.pruned = True  # later phases (head_epochs) stop at once too
            state.should_stop, state.stop_reason = True, PRUNED_REASON


@dataclass
class SweepSetup:
    """Everything a worker process needs (plain data: it is sent to spawned processes)."""

    recipe: dict
    recipe_name: str
    overrides: dict
    space: dict
    output: str
    metric: str
    direction: str
    storage: str
    threads: int
    seed: int
    pruner: Any = None  # None: MedianPruner(n_startup_trials=3)


def _by_eval(space: dict) -> bool:
    return any(k in space for k in STEP_CHANGING)


def run_trial(setup: SweepSetup, trial) -> float:
    import optuna

    from tuneforge.run import train

    params = suggest(trial, setup.space)
    out = Path(setup.output) / f"trial-{trial.number:03d}"
    trial.set_user_attr("run_dir", str(out))
    pruner = PruneOnEval(trial, setup.metric, _by_eval(setup.space))
    overrides = {**setup.overrides, "train.threads": setup.threads, "eval.metric": setup.metric,
                 "output.name": f"{setup.recipe_name}-sweep", **params}  # the name is the MLflow experiment
    t0 = time.perf_counter()
    try:
        result = train(setup.recipe, overrides, output=str(out), overwrite=True, quiet=True, callbacks=[pruner])
    except TuneforgeError as e:
        trial.set_user_attr("error", str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    except KeyboardInterrupt:  # not counted as one of the N trials: the next run of the sweep replaces it
        trial.set_user_attr("interrupted", True)
        trial.set_user_attr("error", "interrupted (Ctrl-C or a crash) during this trial")
        raise
    finally:
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
    trial.set_user_attr("stop_reason", result.summary.get("stop_reason", ""))
    if pruner.pruned:
        raise optuna.TrialPruned(f"pruned at evaluation {pruner.evals}")
    return float(result.metrics[setup.metric])


def _study(setup: SweepSetup, seed_offset: int):
    import optuna

    storage = optuna.storages.RDBStorage(setup.storage, engine_kwargs={"connect_args": {"timeout": 60}})
    pruner = setup.pruner or optuna.pruners.MedianPruner(n_startup_trials=3)
    sampler = optuna.samplers.TPESampler(seed=setup.seed + seed_offset)
    return optuna.create_study(study_name="sweep", storage=storage, sampler=sampler, pruner=pruner,
                               direction=setup.direction, load_if_exists=True)


def work(setup: SweepSetup, n_trials: int, worker: int, timeout: Optional[float]) -> None:
    """One worker: `n_trials` trials on the shared study (a process of its own when --jobs > 1)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _study(setup, seed_offset=1000 * worker + len(study_trials(setup)))
    study.optimize(lambda t: run_trial(setup, t), n_trials=n_trials, timeout=timeout, catch=(TuneforgeError,))


def study_trials(setup: SweepSetup) -> list:
    import optuna

    try:
        return optuna.load_study(study_name="sweep", storage=setup.storage).trials
    except KeyError:  # no study yet
        return []


# ---------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    output: Path
    metric: str
    direction: str
    trials: list[dict] = field(default_factory=list)  # number, state, value, seconds, params, note
    best: Optional[dict] = None  # the best trial's row
    best_recipe: Optional[Path] = None  # DIR/best.yaml
    html: Optional[Path] = None  # DIR/sweep.html
    reported_at: str = "step"  # what the pruner's intermediate values are keyed by: step or evaluation number


def counted(trial) -> bool:
    """Trials that count towards --trials: finished ones, not those cut short by an interruption."""
    name = trial.state.name
    return name in ("COMPLETE", "PRUNED") or (name == "FAIL" and not trial.user_attrs.get("interrupted"))


def mark_interrupted(storage_url: str) -> int:
    """Trials still RUNNING in the study were cut off by a crash or Ctrl-C of an earlier sweep process (one sweep
    command per folder): recorded as failed and interrupted, so they do not count and the sweep replaces them."""
    import optuna
    from optuna.trial import TrialState

    storage = optuna.storages.RDBStorage(storage_url)
    try:
        study_id = storage.get_study_id_from_name("sweep")
    except KeyError:
        return 0
    stale = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:  # FrozenTrial keeps its storage id private; the storage API needs it
        storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        storage.set_trial_user_attr(t._trial_id, "error", "interrupted: the sweep process stopped during this trial")
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return len(stale)


def _objective(cfg, metric: Optional[str]) -> tuple[str, str]:
    from tuneforge.tasks import create_task

    task = create_task(cfg, lambda *_a, **_k: None)
    metric = metric or cfg.eval.metric or task.default_metric
    return metric, "maximize" if task.metric_mode(metric) == "max" else "minimize"


def _check_same_objective(setup: SweepSetup) -> None:
    import optuna

    try:
        study = optuna.load_study(study_name="sweep", storage=setup.storage)
    except KeyError:
        return
    saved = study.user_attrs.get("metric")
    if (saved and saved != setup.metric) or study.direction.name.lower() != setup.direction:
        raise ConfigError(f"{setup.output}/study.db holds a sweep of {saved} ({study.direction.name.lower()}); "
                          f"this one optimises {setup.metric} ({setup.direction}): use another --output")


def _threads(jobs: int, recipe_threads: Optional[int]) -> int:
    """The cores split between parallel trials (never more than the recipe asks for)."""
    share = max(1, len(os.sched_getaffinity(0)) // jobs)
    return min(share, recipe_threads) if recipe_threads else share


def die_with_parent(parent_pid: int) -> None:
    """Linux: this process gets SIGTERM when `parent_pid` dies, even by SIGKILL, so that killing a sweep never
    leaves its workers training on unseen (their RUNNING trials are marked interrupted by the next sweep)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(setup: SweepSetup, n_trials: int, worker: int, timeout: Optional[float], parent_pid: int) -> None:
    die_with_parent(parent_pid)
    work(setup, n_trials, worker, timeout)


def _run_workers(setup: SweepSetup, remaining: int, jobs: int, timeout: Optional[float]) -> None:
    if jobs == 1:
        work(setup, remaining, 0, timeout)
        return
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch / sqlite state
    shares = [remaining // jobs + (i < remaining % jobs) for i in range(min(jobs, remaining))]
    procs = [ctx.Process(target=_worker, args=(setup, n, i, timeout, os.getpid()), name=f"sweep-worker-{i}")
             for i, n in enumerate(shares)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    finally:  # Ctrl-C or an error here: the workers stop with the sweep
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
    failed = [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode]
    if failed:
        raise TuneforgeError(f"sweep worker(s) {', '.join(failed)} stopped; the study in {setup.output}/study.db "
                             "keeps every finished trial: run the same command again to continue")


def prepare(recipe: str | Path | dict, space: str | Path, jobs: int, output: Optional[str | Path],
            metric: Optional[str], overrides: Optional[dict | list], seed: int, pruner) -> SweepSetup:
    """Recipe, overrides and space read and validated; the metric and its direction; the study's location."""
    raw = copy.deepcopy(recipe) if isinstance(recipe, dict) else read_recipe(recipe)
    name = "sweep" if isinstance(recipe, dict) else Path(recipe).stem
    over = dict(_pairs(overrides)) if isinstance(overrides, list) else {
        k.replace("__", "."): v for k, v in (overrides or {}).items()}
    cfg = load_config(raw, over)
    out = Path(output or Path("sweeps") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}")
    if "mlflow" in cfg.output.loggers and not cfg.output.mlflow_uri:  # one store for the sweep: a new sqlite
        over["output.mlflow_uri"] = f"sqlite:///{(out / 'mlflow.db').resolve()}"  # store costs seconds to set up
    metric, direction = _objective(cfg, metric)
    space_spec = read_space(space, apply_overrides(copy.deepcopy(raw), over))
    return SweepSetup(raw, name, over, space_spec, str(out), metric, direction,
                      f"sqlite:///{(out / 'study.db').resolve()}", _threads(jobs, cfg.train.threads), seed, pruner)


def run_sweep(recipe: str | Path | dict, space: str | Path, trials: int, *, timeout: Optional[float] = None,
              jobs: int = 1, output: Optional[str | Path] = None, metric: Optional[str] = None,
              overrides: Optional[dict | list] = None, seed: int = 0, pruner=None, log=print) -> SweepResult:
    """Runs (or continues) a sweep until the study in DIR/study.db has `trials` finished trials; writes
    DIR/best.yaml and DIR/sweep.html. `pruner`: an Optuna pruner instead of the median rule (tests)."""
    optuna = _require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if trials < 1 or jobs < 1:
        raise ConfigError(f"--trials and --jobs must be at least 1 (got {trials} and {jobs})")
    setup = prepare(recipe, space, jobs, output, metric, overrides, seed, pruner)
    Path(setup.output).mkdir(parents=True, exist_ok=True)
    _check_same_objective(setup)
    if mark_interrupted(setup.storage):
        log("sweep: trials interrupted by an earlier run are marked failed and will be replaced")
    _study(setup, 0).set_user_attr("metric", setup.metric)
    done = sum(counted(t) for t in study_trials(setup))
    if done < trials:
        log(f"sweep: {done} of {trials} trials done; running {trials - done} ({jobs} job(s), "
            f"{setup.threads} thread(s) each) → {setup.output}")
        _run_workers(setup, trials - done, jobs, timeout)
    return summarize(setup)


def _pairs(items: list[str]) -> list[tuple[str, Any]]:
    from tuneforge.config import parse_override

    return [(".".join(path), value) for path, value in (parse_override(i) for i in items)]


def _row(t) -> dict:
    note = t.user_attrs.get("error") or (t.user_attrs.get("stop_reason") if t.state.name == "COMPLETE" else "")
    if t.state.name == "PRUNED":
        note = f"pruned after {len(t.intermediate_values)} evaluation(s)"
    return {"number": t.number, "state": t.state.name.lower(), "value": t.value, "seconds": t.user_attrs.get(
        "seconds"), "params": dict(t.params), "note": note or "", "run_dir": t.user_attrs.get("run_dir"),
        "intermediate": dict(t.intermediate_values)}


def best_recipe(setup: SweepSetup, params: dict) -> str:
    """The best trial's full recipe: the sweep's recipe and overrides with the trial's values, resolved."""
    cfg = load_config(setup.recipe, {**setup.overrides, "eval.metric": setup.metric, **params})
    cfg.output.name = cfg.output.name or f"{setup.recipe_name}-best"
    return to_yaml(cfg)


def summarize(setup: SweepSetup) -> SweepResult:
    """Reads the study back: the trials table, DIR/best.yaml and DIR/sweep.html."""
    import optuna

    from tuneforge.report.sweep_page import write_sweep_page

    study = optuna.load_study(study_name="sweep", storage=setup.storage)
    out = Path(setup.output)
    result = SweepResult(out, setup.metric, setup.direction, [_row(t) for t in study.trials],
                         reported_at="evaluation number" if _by_eval(setup.space) else "step")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    recipe_text = None
    if complete:
        best = study.best_trial
        result.best = next(r for r in result.trials if r["number"] == best.number)
        recipe_text = best_recipe(setup, best.params)
        result.best_recipe = out / "best.yaml"
        result.best_recipe.write_text(recipe_text, encoding="utf-8")
    result.html = write_sweep_page(study, result, recipe_text, out / "sweep.html")
    return result


def format_trials(result: SweepResult) -> str:
    """A plain-text table of the trials (what `tuneforge sweep` prints)."""
    keys = list(dict.fromkeys(k for r in result.trials for k in r["params"]))
    head = ["trial", "state", result.metric, "seconds"] + keys + ["note"]
    rows = [[str(r["number"]), r["state"], "" if r["value"] is None else f"{r['value']:.4f}",
             "" if r["seconds"] is None else f"{r['seconds']:.1f}"]
            + [_short(r["params"].get(k)) for k in keys] + [r["note"][:70]] for r in result.trials]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head] + rows]
    return "\n".join(lines)


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
