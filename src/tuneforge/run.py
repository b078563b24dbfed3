"""The training recipe, as named steps (read `train` top to bottom):

prepare (task, data, model, what trains, loaders: every check done, nothing written) → open the run folder
(locked) → record the start → the learning rate (maybe from the range test) → for each phase: build its
components, fit → finish (the kept model, final and test evaluation, model/) → summary.json.
`lr_find` reuses `prepare`."""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

from tuneforge.config import Config, load_config, to_yaml
from tuneforge.data.report import build_report, describe, fingerprint
from tuneforge.engine import chaos
from tuneforge.engine import distributed as dist
from tuneforge.engine.callbacks import Callback, CallbackList, EarlyStopping, MetricsLogger, ProgressBar
from tuneforge.engine.checkpoint import Checkpointer, best_path, load_weights_into, publish_dir
from tuneforge.engine.device import make_accelerator
from tuneforge.engine.dist_checkpoint import RankCheckpointer, ShardedCheckpointer, ShardedSnapshot
from tuneforge.engine.ema import WeightEMA
from tuneforge.engine.feature_cache import cached_loaders, feature_cache_usable
from tuneforge.engine.guards import NanGuard, is_oom, oom_error
from tuneforge.engine.loop import MATH_ATTENTION_BELOW, Components, evaluate, evaluating, fit, make_loader, \
    steps_per_epoch
from tuneforge.engine.budget import STOPPED as BUDGET_STOPPED
from tuneforge.engine.budget import Deadline, TimeBudget
from tuneforge.engine.optim import Horizon, create_optimizer, create_scheduler, total_steps
from tuneforge.engine.restore import StateRestorer
from tuneforge.engine.run_folder import RunFolder, check_run_record, environment, open_run_folder, shared_run_folder
from tuneforge.engine.snapshot import ProcessRNG, TrainingSnapshot
from tuneforge.engine.state import LoopState
from tuneforge.engine.timing import mean_step_size
from tuneforge.engine.trainable import Phase, check_trainable, head_names, merge_lora, plan_phases, prepare_trainable
from tuneforge.errors import ConfigError
from tuneforge.metrics import scalars
from tuneforge.models import MODEL_SOURCES, create_model, resolve_source, save_model
from tuneforge.models.base import write_json
from tuneforge.presets import apply_preset
from tuneforge.probe import probe_strategy
from tuneforge.tasks import Task, create_task
from tuneforge.tasks.base import Built
from tuneforge.trackers import create_trackers, require_packages
from tuneforge.utils import (RunLog, SilentLog, atomic_write_text, console, count_params, loader_workers,
                             peak_device_memory_mb, peak_rss_mb, resolve_precision, rss_mb, seed_everything,
                             set_threads)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # final evaluation of the kept model
    summary: dict

    def __repr__(self) -> str:
        return f"RunResult(run_dir='{self.run_dir}', metrics={scalars(self.metrics)})"

    @classmethod
    def read(cls, run_dir: Path) -> "RunResult":
        summary = read_summary(run_dir)
        return cls(run_dir, summary["eval"], summary)


@dataclass
class Setup:
    """What `prepare` checked and built before anything is written."""

    cfg: Config
    task: Task
    bundle: Any  # ModelBundle
    accelerator: Any
    precision: str
    threads: int
    train_ex: Any
    val_ex: Any
    test_ex: Any
    report: dict
    train_built: Built
    val_built: Built
    test_built: Optional[Built]
    train_loader: Any
    val_loader: Any
    speed: dict  # the speed features that are on
    checkpointing: bool
    world: dist.World  # this process among the launched ones (one, unless torchrun / accelerate launch)
    strategy: str  # none | ddp | fsdp
    preset: Optional[dict] = None  # preset: auto's choices and their reasons (presets.py)


@dataclass
class Training:
    """The run-wide pieces every phase shares."""

    folder: RunFolder
    lr: float
    phases: list[Phase]
    restorer: StateRestorer
    guard: NanGuard
    ema: Optional[WeightEMA]
    model: Any  # the accelerator-prepared model (DDP: its wrapper; FSDP: sharded in place), trained in every phase
    bundle: Any  # the bundle the loop runs (holds `model`); setup.bundle keeps the plain model
    twin: Optional[dist.MetaTwin]  # FSDP: a weightless plain copy, filled with the kept weights at the end
    params: dict
    rss_at_start: float
    metric: str
    mode: str
    trackers: list  # TensorBoard / MLflow (output.loggers): callbacks in every phase, told when the run ends
    deadline: Optional[Deadline] = None  # train.time_budget
    lr_auto: Optional[dict] = None  # lr: auto's range tests and the LRs they chose


def train(recipe: str | Path | dict, overrides: dict[str, Any] | list[str] | None = None, *,
          output: Optional[str] = None, overwrite: bool = False, resume: bool = False, quiet: bool = False,
          callbacks: tuple[Callback, ...] = (), accept_changes: bool = False,
          started: Optional[float] = None, examples: Optional[tuple] = None) -> RunResult:
    """resume=True continues the run in the output folder from its latest checkpoint (or starts it);
    accept_changes=True lets it continue although threads, precision or library versions changed.
    `callbacks` are added to every phase's callbacks (before the checkpointer, which saves their effect).
    `started`: the time.perf_counter() value train.time_budget counts from (default: now; the CLI passes its
    process start, so imports count too). `examples`: (train, val, test) Examples instead of the recipe's files
    (the strategy probe's split of train)."""
    world = dist.World.from_env()
    log, state = RunLog(quiet) if world.main else SilentLog(), LoopState()  # rank 0 speaks for every process
    started = time.perf_counter() if started is None else started
    cfg = load_config(recipe, overrides)
    with oom_as_error(cfg, state):
        setup = prepare(cfg, log, examples)
        opener = partial(open_run_folder, setup.cfg, output, overwrite, resume, _user_paths(recipe, cfg), log)
        with shared_run_folder(world, setup.accelerator, opener) as folder:  # rank 0 opens it, the others follow
            if folder.finished:
                log(f"{folder.path} already finished (summary.json); nothing to resume")
                return RunResult.read(folder.path)
            record_start(setup, folder, accept_changes, log)
            training = prepare_training(setup, folder, log, started)
            folder.keep()  # training starts: from here on the folder is the user's record, never removed
            for index, phase in enumerate(training.phases):
                if training.restorer.skip_phase(index):  # finished before the checkpoint being resumed
                    continue
                components = build_phase(setup, training, phase, index, state, callbacks, quiet, log)
                fit_phase(components, state, phase, training.metric, log)
                if state.stop_reason.startswith(("target", BUDGET_STOPPED)):
                    break
            final, test = finish(setup, training, state, log)
            summary = build_summary(setup, training, state, final, test)
            if world.main:
                write_summary(folder.path, summary, log)
                publish_run(setup, training, summary, log)
            return RunResult(folder.path, final, summary)


def resume(run_dir: str | Path, quiet: bool = False, accept_changes: bool = False,
           trust_remote_code: bool = False, started: Optional[float] = None) -> RunResult:
    """Continue a run from its latest complete checkpoint, with the config it was started with. A run folder's
    config.yaml can ask for remote code: that runs only with trust_remote_code."""
    path = Path(run_dir).expanduser()
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"cannot resume '{path}': not a tuneforge run folder (no config.yaml)")
    cfg = load_config(path / "config.yaml")
    if cfg.model.trust_remote_code and not trust_remote_code:
        raise ConfigError(f"{path / 'config.yaml'} sets model.trust_remote_code: true (resuming runs code from the "
                          "model folder); pass --trust-remote-code if you trust this run folder")
    return train(path / "config.yaml", output=str(path), resume=True, quiet=quiet, accept_changes=accept_changes,
                 started=started)


@contextmanager
def oom_as_error(cfg: Config, state: LoopState):
    """Out of memory becomes a one-line error with a batch size to try."""
    try:
        yield
    except Exception as e:
        if not is_oom(e):
            raise
        tc = cfg.train
        raise oom_error(tc.batch_size, tc.grad_accum, cfg.eval_batch_size,
                        "eval" if state.evaluating else "training") from None


def _user_paths(recipe, cfg: Config) -> list[Path]:
    """The recipe and data: --overwrite never empties a folder holding them."""
    paths = [Path(recipe)] if not isinstance(recipe, dict) else []
    train = cfg.data.train if isinstance(cfg.data.train, list) else [cfg.data.train]
    paths += [Path(p).expanduser() for p in (cfg.data.dir, *train, cfg.data.val) if p]
    return paths


# ---------------------------------------------------------------- 1. prepare: everything checked, nothing written


def prepare(cfg: Config, log, examples: Optional[tuple] = None) -> Setup:
    """Task, data, model and what trains, every check done (labels, files, images, losses, metric, trainable
    parameters) and nothing written yet."""
    world = dist.World.from_env()
    strategy = dist.choose_strategy(cfg.train.distributed, world)
    dist.check_supported(cfg, strategy, world)
    threads = set_threads(cfg.train.threads or (dist.threads_per_process(world) if world.distributed else None))
    seed_everything(cfg.train.seed)
    task = create_task(cfg, log)
    require_packages(cfg.output.loggers)
    modality = MODEL_SOURCES.get(resolve_source(cfg.model)[0]).modality
    train_ex, val_ex, test_ex = examples or task.read_examples(modality)
    task.fit_labels(train_ex, val_ex)
    report = build_report(train_ex, val_ex, modality, task.class_counts(train_ex))
    for line in describe(report):
        log(line)
    preset = None
    if cfg.preset == "auto":  # the recipe, chosen from the data report; the task is rebuilt on it
        cfg, preset = auto_recipe(cfg, report, modality, train_ex, task, log)
        task = create_task(cfg, log)
        task.fit_labels(train_ex, val_ex)
    report["imbalance_remedy"] = task.choose_imbalance(report)
    task.make_loss()
    bundle = create_model(cfg.model, task.head_spec(), log=log)
    built = {split: task.build(ex, bundle, split) for split, ex in
             (("train", train_ex), ("val", val_ex), ("test", test_ex)) if ex is not None}
    task.add_to_report(report, log)
    labels = f"; labels: {', '.join(task.labels[:12])}{' ...' if len(task.labels) > 12 else ''}" if task.labels else ""
    log(f"data: {len(built['train'].dataset)} train / {len(built['val'].dataset)} val examples{labels}")
    seed_everything(cfg.train.seed)  # model init above consumed RNG differently per source
    precision = resolve_precision(cfg.train.precision)
    accelerator = make_accelerator(precision, world.size)
    speed = use_speed_features(bundle, cfg, log)
    checkpointing = prepare_trainable(bundle, cfg.train, log)
    check_trainable(bundle.model)
    tc, data = cfg.train, cfg.data
    if world.distributed:  # the model (LoRA included) is built the same on every rank; from here each has its RNG
        seed_everything(dist.rank_seed(tc.seed, world))
    workers = loader_workers(data.num_workers, log)
    train_loader = make_loader(built["train"], tc.batch_size, True, tc.seed, workers, data.group_by_length, world)
    val_loader = make_loader(built["val"], cfg.eval_batch_size, False, tc.seed, workers, world=world)
    return Setup(cfg, task, bundle, accelerator, precision, threads, train_ex, val_ex, test_ex, report,
                 built["train"], built["val"], built.get("test"), train_loader, val_loader, speed, checkpointing,
                 world, strategy, preset)


def auto_recipe(cfg: Config, report: dict, modality: str, train_ex, task, log) -> tuple[Config, dict]:
    """preset: auto's recipe; with probe.enabled, its strategy measured first on a split of train (probe.py)."""
    probe = None
    if cfg.probe.enabled:
        cfg, probe = probe_strategy(train, cfg, report, modality, train_ex, task.metric_mode, log)
        seed_everything(cfg.train.seed)  # the probe's runs drew from the RNGs: the run starts as it would without
    chosen = bool(probe and probe.get("chosen"))
    cfg, preset = apply_preset(cfg, report, modality, train_ex, log,
                               "chosen by the probe" if chosen else "set in the recipe")
    return cfg, {**preset, "probe": probe} if probe else preset


def use_speed_features(bundle, cfg: Config, log) -> dict:
    """Exact speed features the model supports (each reported in summary.json `strategies`)."""
    tc = cfg.train
    channels_last = tc.channels_last and bundle.use_channels_last()
    first_token = tc.first_token_shortcut and bundle.use_first_token_shortcut()
    if first_token:
        log("speed: the last encoder layer runs for the first token only (the classifier reads nothing else)")
    segments = tc.segment_attention and bundle.use_segment_attention()
    if segments:
        log("speed: attention computed per example of each packed / padded row (segment attention)")
    return {"channels_last": channels_last if bundle.modality == "image" else None,
            "first_token_shortcut": first_token if bundle.modality == "text" else None,
            "segment_attention": segments if bundle.head.kind == "causal_lm" else None}


def lr_find(recipe: str | Path | dict, overrides=None, plot: Optional[str] = None, quiet: bool = False) -> dict:
    """`tuneforge lr-find`: the LR range test on the recipe's data and model; writes a PNG, returns the suggestion."""
    from tuneforge.engine.lr_find import lr_range_test

    log = RunLog(quiet)
    cfg = load_config(recipe, overrides)
    if dist.World.from_env().distributed:
        raise ConfigError("tuneforge lr-find runs on one process; start it with plain `tuneforge lr-find`, not "
                          "torchrun / accelerate launch")
    setup = prepare(cfg, log)
    plot_path = Path(plot or f"lr_find-{cfg.output.name or 'run'}.png")
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    log.attach(plot_path.with_suffix(".log"))
    result = lr_range_test(setup.bundle, setup.task, setup.train_loader, cfg.train, setup.accelerator, plot_path,
                           log)
    return {"suggested_lr": result["suggested_lr"], "suggestions": result["suggestions"], "plot": str(plot_path),
            "steps": len(result["lrs"])}


# ---------------------------------------------------------------- 2. the run folder and the run-wide pieces


def record_start(setup: Setup, folder: RunFolder, accept_changes: bool, log) -> None:
    """run.json (data fingerprint, environment; checked first on resume: a refused resume leaves the folder as it
    was, train.log included), train.log, config.yaml, data_report.json. Only rank 0 writes; the other ranks check
    run.json too, so a refused resume is refused by every rank."""
    data = dict(setup.report["fingerprint"])
    if setup.test_ex is not None:
        data["test"] = fingerprint(setup.test_ex, [repr(x) for x in setup.test_ex.inputs], "text")
    env = environment(setup.precision, setup.threads, setup.world.size)
    check_run_record(folder, data, env, accept_changes, log, write=setup.world.main)
    if not setup.world.main:
        return
    log.attach(folder.path / "train.log", append=not folder.created)
    if folder.created:
        atomic_write_text(folder.path / "config.yaml", to_yaml(setup.cfg))
    write_json(folder.path / "data_report.json", setup.report)


def prepare_training(setup: Setup, folder: RunFolder, log, started: Optional[float] = None) -> Training:
    cfg, tc, accelerator, world = setup.cfg, setup.cfg.train, setup.accelerator, setup.world
    if world.main:  # e.g. the base model's generations, written into the run folder
        setup.task.before_training(setup.bundle, folder.path, resumed=not folder.created, log=log)
    lr, lr_auto = tc.lr, None
    if lr == "auto":  # one process (dist.check_supported); deterministic: a resumed run finds the same LRs
        lr_auto = choose_lrs(setup, folder.path, log)
        lr = lr_auto["lr"]
    phases = plan_phases(tc, lr)
    if lr_auto and lr_auto.get("head_phase_lr") and len(phases) > 1:
        phases[0] = dataclasses.replace(phases[0], lr=lr_auto["head_phase_lr"])
    twin = dist.MetaTwin(setup.bundle.model) if setup.strategy == "fsdp" else None
    model = dist.wrap_model(setup.bundle.model, setup.strategy, accelerator, setup.precision, world, tc.compile)
    bundle = dist.training_bundle(setup.bundle, model)
    params = count_params(model)
    log(f"params: {params['trainable']:,} trainable / {params['frozen']:,} frozen "
        f"({100 * params['trainable'] / max(params['total'], 1):.1f}% train)")
    rss_at_start = rss_mb()  # runtime + model + data: what training adds is peak_rss_mb minus this
    metric = cfg.eval.metric or setup.task.default_metric
    ema = WeightEMA(accelerator.unwrap_model(model), tc.ema) if tc.ema else None
    guard = NanGuard(tc.nan_policy, tc.nan_lr_factor, check_grads=accelerator.scaler is None, log=log)
    trackers = create_trackers(cfg, folder.path, setup.bundle, setup.task.labels,
                               resumed=not folder.created) if world.main else []
    restorer = StateRestorer(folder, log, writer=world.main)
    deadline = make_deadline(setup, restorer, started) if tc.time_budget else None
    return Training(folder, lr, phases, restorer, guard, ema, model, bundle, twin, params, rss_at_start,
                    metric, setup.task.metric_mode(metric), trackers, deadline, lr_auto)


def choose_lrs(setup: Setup, plot_dir: Path, log) -> dict:
    """lr: auto: the LR range test once for the new head alone (a head phase or a linear probe; on cached backbone
    features where they apply), once for the whole model (the phase that trains it) → {lr, head_phase_lr, tests}."""
    from tuneforge.engine.lr_find import RULES, guard, lr_range_test
    from tuneforge.presets import lr_priors

    cfg, tc, bundle, quiet = setup.cfg, setup.cfg.train, setup.bundle, (lambda *_: None)
    phases = plan_phases(tc, 1.0)  # which kinds of phases run; their LRs come from here
    head_phase = next((p for p in phases if p.frozen_backbone), None)
    body_phase = next((p for p in phases if not p.frozen_backbone), None)
    tests = {}
    if head_phase is not None and not (body_phase and tc.head_lr):
        head_phase.apply(bundle, tc, quiet)
        head = feature_cache_usable(cfg, setup.task, bundle, head_phase)
        run_bundle, loader, _ = cached_loaders(cfg, setup.task, bundle, head, setup, setup.accelerator, log) \
            if head else (bundle, setup.train_loader, None)
        tests["head"] = lr_range_test(run_bundle, setup.task, loader, tc, setup.accelerator,
                                      plot_dir / "lr_find_head.png", log, start=1e-5, end=10.0, what="the new head",
                                      rule=RULES["head"])
    if body_phase is not None:
        body_phase.apply(bundle, tc, quiet)
        fixed = (head_names(bundle), tc.head_lr) if tc.head_lr else None  # the head keeps its own LR
        tests["body"] = lr_range_test(bundle, setup.task, setup.train_loader, tc, setup.accelerator,
                                      plot_dir / "lr_find.png", log, what="the whole model", rule=RULES["body"],
                                      fixed=fixed)
    priors = lr_priors(cfg, setup.report, bundle.modality, setup.train_ex)
    for kind, test in tests.items():
        test["used_lr"], test["guard"] = guard(test["suggested_lr"], *priors[kind])
        log(f"lr-find ({kind}): lr {test['used_lr']:.3g}: {test['guard']}")
    lr = (tests.get("body") or tests["head"])["used_lr"]
    head_lr = tests["head"]["used_lr"] if "head" in tests and body_phase is not None else None
    return {"lr": lr, "head_phase_lr": head_lr,
            "tests": {k: {"suggested_lr": v["suggested_lr"], "used_lr": v["used_lr"], "guard": v["guard"],
                          "rule": v["rule"], "suggestions": v["suggestions"],
                          "curve": [[float(f"{a:.3g}"), round(b, 4)] for a, b in zip(v["lrs"], v["losses"])]}
                      for k, v in tests.items()}}


def make_deadline(setup: Setup, restorer: StateRestorer, started: Optional[float]) -> Deadline:
    """train.time_budget from `started` (a resumed run adds what its checkpoint had trained), and what the end of
    the run needs: the kept model's evaluation, report.html's pass over validation, the test split, saving."""
    val_rows = max(len(setup.val_built.dataset), 1)
    test_rows = len(setup.test_built.dataset) if setup.test_built is not None else 0
    report_pass = setup.cfg.output.report and setup.task.report_predictions  # SFT's report runs no pass
    passes = 1 + (1 if report_pass else 0) + test_rows / val_rows
    weights = sum(p.numel() * p.element_size() for p in setup.bundle.model.parameters())
    return Deadline(setup.cfg.train.time_budget, started or time.perf_counter(), restorer.resumed_wall_seconds,
                    passes, save_seconds=0.5 + 2 * weights / 100e6)  # reading the best checkpoint, writing model/


# ---------------------------------------------------------------- 3. phases


def build_phase(setup: Setup, training: Training, phase: Phase, index: int, state: LoopState,
                extra_callbacks, quiet: bool, log) -> Components:
    """This phase's loaders, optimizer and schedule, callbacks and checkpointing; a resumed run's state is
    restored last (it sets the RNG)."""
    cfg, tc, bundle, accelerator = setup.cfg, setup.cfg.train, setup.bundle, setup.accelerator
    ptc = phase.train_config(tc)
    phase.apply(bundle, tc, log)
    # cached features train the bare head, outside DDP / FSDP: one process only
    head = feature_cache_usable(cfg, setup.task, bundle, phase) if not setup.world.distributed else None
    run_bundle, train_loader, val_loader = training.bundle, setup.train_loader, setup.val_loader
    if head:
        run_bundle, train_loader, val_loader = cached_loaders(cfg, setup.task, bundle, head, setup, accelerator, log)
    plain = accelerator.unwrap_model(training.model)  # the plain model's names (DDP adds `module.`)
    optimizer = accelerator.prepare(create_optimizer(plain, ptc, head_names(bundle)))
    steps = total_steps(ptc, train_loader.batch_sampler.total)
    horizon = Horizon(ptc, steps) if training.deadline else None  # train.time_budget sets it while training
    scheduler = create_scheduler(optimizer, ptc, steps, horizon)
    state.start_phase(steps)
    log_phase(setup, training, phase, steps, steps_per_epoch(train_loader, tc.grad_accum), bool(head), log)
    es = cfg.early_stopping
    stopper = EarlyStopping(training.metric, training.mode, es.patience, es.min_delta, es.target, es.enabled)
    ema = training.ema
    stateful = {"early_stopping": stopper, "nan_guard": training.guard, **({"ema": ema} if ema else {})}
    snapshot, checkpointer = make_checkpointer(setup, training, plain, optimizer, scheduler, stateful, index)
    writer = setup.world.main  # rank 0 logs; every rank stops, averages (EMA) and checkpoints together
    callbacks = ([ema] if ema else []) + ([MetricsLogger(training.folder.path, log)] if writer else []) + [
        stopper, *extra_callbacks, *training.trackers, checkpointer]  # last: it saves the others' state
    if horizon is not None:  # after the checkpointer: an evaluation's cost includes its checkpoint
        callbacks.append(phase_budget(setup, training, index, horizon, steps, train_loader, log))
    callbacks += [chaos.ChaosPoints()] if chaos.enabled() else []
    callbacks += [ProgressBar(console)] if cfg.output.progress and not quiet and writer else []
    training.restorer.restore(snapshot, state)
    return Components(
        bundle=run_bundle, task=setup.task, train_loader=train_loader, val_loader=val_loader, optimizer=optimizer,
        scheduler=scheduler, accelerator=accelerator, callbacks=CallbackList(callbacks), nan_guard=training.guard,
        rollback=training.restorer.rollback_fn(snapshot, state, tc.nan_policy == "rollback"),
        train_mode=phase.train_mode(bundle, tc), eval_weights=ema.applied if ema else nullcontext,
        grad_accum=tc.grad_accum, grad_clip=tc.grad_clip, eval_every=cfg.eval.every_steps, metric=training.metric,
        mode=training.mode)


def phase_budget(setup: Setup, training: Training, index: int, horizon: Horizon, steps: int, train_loader,
                 log) -> TimeBudget:
    """This phase's part of train.time_budget: all that is left for the last phase, else its share by planned
    epochs."""
    tc, phases = setup.cfg.train, training.phases
    share = phases[index].epochs / sum(p.epochs for p in phases[index:])
    per_epoch = steps_per_epoch(train_loader, tc.grad_accum)
    sizes = (mean_step_size(setup.train_built, per_epoch, tokens=True), len(train_loader.dataset) / per_epoch)
    eval_rows = len(setup.val_built.dataset) / (tc.batch_size * tc.grad_accum)
    return TimeBudget(training.deadline, horizon, steps, share, per_epoch, setup.cfg.eval.every_steps, sizes,
                      eval_rows, phases[index].name, log)


def make_checkpointer(setup: Setup, training: Training, plain, optimizer, scheduler, stateful: dict,
                      index: int) -> tuple[TrainingSnapshot, Checkpointer]:
    """The phase's snapshot and the callback that writes it: one process as ever; DDP: rank 0 writes, with every
    rank's RNG; FSDP: sharded by every rank (engine/dist_checkpoint.py)."""
    cfg, accelerator, world, ema = setup.cfg, setup.accelerator, setup.world, training.ema
    rng = dist.RankRNG(accelerator, world) if world.distributed else ProcessRNG()
    kind = ShardedSnapshot if setup.strategy == "fsdp" else TrainingSnapshot
    snapshot = kind(plain, optimizer, scheduler, accelerator.scaler, stateful, cfg.model_dump(mode="json"), index,
                    rng)
    keep, run_dir, best = cfg.output.keep_checkpoints, training.folder.path, ema.weights if ema else None
    if setup.strategy == "fsdp":
        return snapshot, ShardedCheckpointer(run_dir, keep, snapshot, world, accelerator)
    if world.distributed:
        return snapshot, RankCheckpointer(run_dir, keep, snapshot, best, world, accelerator)
    return snapshot, Checkpointer(run_dir, keep, snapshot, best)


def log_phase(setup: Setup, training: Training, phase: Phase, steps: int, per_epoch: int, cached: bool, log) -> None:
    tc, counts = setup.cfg.train, count_params(training.model)
    log(f"phase {phase.name}: {steps} steps ({per_epoch}/epoch), batch "
        f"{tc.batch_size} x accum {tc.grad_accum}, {tc.optimizer} lr {phase.lr:g} {tc.schedule}"
        f"{f', head lr {phase.head_lr:g}' if phase.head_lr else ''}"
        f"{f', layer decay {phase.layer_decay}' if phase.layer_decay else ''}, precision {setup.precision}, "
        f"{setup.threads} threads; {counts['trainable']:,} trainable / {counts['frozen']:,} frozen params"
        f"{'; cached backbone features' if cached else ''}")
    line = dist.global_batch_line(setup.world, tc.batch_size, tc.grad_accum)
    if line:
        log(f"{line} ({setup.strategy}, {setup.accelerator.state.backend})")


def fit_phase(c: Components, state: LoopState, phase: Phase, metric: str, log) -> None:
    fit(c, state)
    log(f"phase {phase.name} stopped: {state.stop_reason or 'finished'}; best {metric} "
        f"{state.best_metric:.4f} at step {state.best_step}")


# ---------------------------------------------------------------- 4. finish: the kept model, evaluated and saved


def finish(setup: Setup, training: Training, state: LoopState, log) -> tuple[dict, Optional[dict]]:
    cfg, bundle, task, accelerator, world = setup.cfg, setup.bundle, setup.task, setup.accelerator, setup.world
    run_dir = training.folder.path
    accelerator.wait_for_everyone()  # best.safetensors (rank 0's) is on disk
    if training.twin is not None:  # FSDP: the kept model is evaluated and saved unsharded
        from safetensors.torch import load_file

        bundle.replace_model(training.twin.materialize(load_file(str(best_path(run_dir))), accelerator.device))
    else:
        bundle.replace_model(accelerator.unwrap_model(training.model))
        load_weights_into(bundle.model, best_path(run_dir))  # in place: no second copy at the peak
    merge_lora(bundle, run_dir / "adapter" if cfg.train.lora is not None and world.main else None)
    with evaluating(state):
        final = evaluate(bundle, task, setup.val_loader, accelerator)
        task.finalize()  # what was tuned on validation (thresholds) is fixed from here on, test included
        test = None
        if setup.test_built is not None:  # an optional test split under data.dir: evaluated once, kept model
            loader = make_loader(setup.test_built, cfg.eval_batch_size, False, cfg.train.seed,
                                 setup.train_loader.num_workers, world=world)
            test = evaluate(bundle, task, loader, accelerator)
            log("test: " + " ".join(f"{k} {v:.4f}" for k, v in scalars(test).items() if k != "samples"))
    if not world.main:
        return final, test
    task.after_training(bundle, run_dir, log)
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".model.", suffix=".tmp"))  # model/ appears whole or not at all
    save_model(bundle, tmp, {"task_state": task.state(), "precision": setup.precision,
                             "config": cfg.model_dump(mode="json")})
    publish_dir(tmp, run_dir / "model")
    return final, test


# ---------------------------------------------------------------- 5. summary.json


def build_summary(setup: Setup, training: Training, state: LoopState, final: dict, test: Optional[dict]) -> dict:
    cfg, built = setup.cfg, setup
    return {
        "eval": final,
        "test": test,
        "metric": training.metric,
        "best_step": state.best_step,
        "best_metric": state.best_metric,
        "stop_reason": state.stop_reason,
        "steps": state.step,
        "epochs": state.epoch_progress(setup.train_loader.batch_sampler.total),
        "lr": training.lr,
        "lr_auto": training.lr_auto,
        "strategies": strategies_summary(setup, training.phases),
        "preset": setup.preset,
        "time_budget": training.deadline.summary() if training.deadline else None,
        "train_seconds": round(state.wall_seconds, 3),
        "samples_seen": state.samples_seen,
        "eval_seconds": round(state.eval_seconds, 3),
        **throughput(state, setup.bundle),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_device_memory_mb": peak_device_memory_mb(setup.accelerator.device),
        "rss_at_train_start_mb": round(training.rss_at_start, 1),
        "precision": setup.precision,
        "threads": setup.threads,
        "params": training.params,
        "nan_guard": training.guard.summary(),
        "resumed_from_step": training.restorer.resumed_from,
        "data": {"train": len(built.train_built.dataset), "val": len(built.val_built.dataset),
                 "skipped": built.train_built.skipped + built.val_built.skipped, **setup.task.report,
                 "imbalance_ratio": setup.report.get("imbalance_ratio"),
                 "imbalance_remedy": setup.report["imbalance_remedy"]},
        "model": {"name": cfg.model.name, "source": setup.bundle.source},
        "distributed": dist.summary(setup.strategy, setup.world, setup.accelerator, cfg.train.batch_size,
                                    cfg.train.grad_accum),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def strategies_summary(setup: Setup, phases: list[Phase]) -> dict:
    cfg, tc, text = setup.cfg, setup.cfg.train, setup.bundle.modality == "text"
    cpu_text = setup.accelerator.device.type == "cpu" and text
    return {"phases": [p.name for p in phases], "freeze": tc.freeze,
            "freeze_embeddings": tc.freeze_embeddings, "lora": tc.lora.model_dump() if tc.lora else None,
            "layer_decay": tc.layer_decay, "head_lr": tc.head_lr,
            "channels_last": setup.speed["channels_last"], "ema": tc.ema,
            "first_token_shortcut": setup.speed["first_token_shortcut"],
            **({"segment_attention": setup.speed["segment_attention"]}  # causal LMs only (golden summaries unchanged)
               if setup.speed["segment_attention"] is not None else {}),
            "group_by_length": cfg.data.group_by_length and text,
            "pad_to_multiple_of": cfg.data.pad_to_multiple_of if text else None,
            "dropout": cfg.model.dropout, "gradient_checkpointing": setup.checkpointing,
            "cpu_attention": f"math kernel below {MATH_ATTENTION_BELOW} tokens" if cpu_text else None}


def write_summary(run_dir: Path, summary: dict, log) -> None:
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    shown = " ".join(f"{k} {v:.4f}" for k, v in scalars(summary["eval"]).items() if k != "samples")
    log(f"done: {shown}; {summary['train_seconds']:.1f}s, {summary['samples_per_second']:.1f} samples/s, "
        f"peak RSS {summary['peak_rss_mb']:.0f} MB → {run_dir}")


def publish_run(setup: Setup, training: Training, summary: dict, log) -> None:
    """After summary.json: report.html (output.report), then the trackers' end of run (MLflow artifacts)."""
    run_dir = training.folder.path
    if setup.cfg.output.report:
        from tuneforge.report import build_report

        log(f"report: {build_report([run_dir])}")
    for tracker in training.trackers:
        tracker.on_run_end(summary)


def throughput(state: LoopState, bundle) -> dict:
    """Training-loop rates (evaluation time excluded). For text: useful (non-padding) tokens/s and the achieved
    GFLOP/s by the usual 6 x non-embedding parameters x tokens estimate."""
    seconds = max(state.wall_seconds - state.eval_seconds, 1e-9)
    out = {"samples_per_second": round(state.samples_seen / seconds, 2)}
    if state.tokens_seen and bundle.modality == "text":  # (audio batches carry a frame mask, not tokens)
        non_embedding = sum(p.numel() for n, p in bundle.model.named_parameters() if "embeddings" not in n)
        out["tokens_seen"] = state.tokens_seen
        out["tokens_per_second"] = round(state.tokens_seen / seconds, 1)
        out["non_embedding_params"] = non_embedding
        out["gflops_per_second"] = round(6 * non_embedding * state.tokens_seen / seconds / 1e9, 2)
    return out


def read_summary(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))
