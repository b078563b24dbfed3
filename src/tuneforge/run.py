"""The training recipe: validated config → data → model → loop → run folder. Read top to bottom."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tuneforge.config import Config, load_config, to_yaml
from tuneforge.engine.callbacks import CallbackList, EarlyStopping, MetricsLogger, ProgressBar, TrainState
from tuneforge.engine import chaos
from tuneforge.engine.checkpoint import Checkpointer, atomic_write_text, load_weights, publish_dir
from tuneforge.engine.guards import NanGuard
from tuneforge.engine.loop import Components, evaluate, fit, make_loader, steps_per_epoch
from tuneforge.engine.optim import create_optimizer, create_scheduler, total_steps
from tuneforge.engine.resume import Resumer, RunContext, open_run_dir, user_errors
from tuneforge.errors import ConfigError
from tuneforge.metrics import scalars
from tuneforge.models import MODEL_SOURCES, create_model, save_model
from tuneforge.models import resolve_source
from tuneforge.tasks import create_task
from tuneforge.utils import (RunLog, console, count_params, peak_rss_mb, resolve_precision, seed_everything,
                             set_threads)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # final evaluation of the kept model
    summary: dict

    def __repr__(self) -> str:
        return f"RunResult(run_dir='{self.run_dir}', metrics={scalars(self.metrics)})"


def _accelerator(precision: str):
    from accelerate import Accelerator

    import torch
    return Accelerator(mixed_precision={"fp32": "no"}.get(precision, precision), cpu=not torch.cuda.is_available())


def train(recipe: str | Path | dict, overrides: dict[str, Any] | list[str] | None = None, *,
          output: Optional[str] = None, overwrite: bool = False, resume: bool = False,
          quiet: bool = False) -> RunResult:
    """resume=True continues the run in the output folder from its latest checkpoint (or starts it)."""
    ctx = RunContext()
    with user_errors(ctx):  # out-of-memory → a batch size to try; no half-written run folder after an error
        return _train(ctx, recipe, overrides, output, overwrite, resume, quiet)


def resume(run_dir: str | Path, quiet: bool = False) -> RunResult:
    """Continue a run from its latest complete checkpoint, with the config it was started with."""
    path = Path(run_dir).expanduser()
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"cannot resume '{path}': not a tuneforge run folder (no config.yaml)")
    return train(path / "config.yaml", output=str(path), resume=True, quiet=quiet)


def _train(ctx: RunContext, recipe, overrides, output, overwrite: bool, resume: bool, quiet: bool) -> RunResult:
    log = RunLog(quiet)
    cfg = ctx.cfg = load_config(recipe, overrides)
    threads = set_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    precision = resolve_precision(cfg.train.precision)

    # 1. data and model, fully checked before anything is written
    task = create_task(cfg, log)
    source, _, _ = resolve_source(cfg.model)
    modality = MODEL_SOURCES.get(source).modality
    train_ex, val_ex, test_ex = task.read_examples(modality)
    task.fit_labels(train_ex, val_ex)
    bundle = create_model(cfg.model, task.head_spec(), log=log)
    train_built = task.build(train_ex, bundle, train=True)
    val_built = task.build(val_ex, bundle, train=False)
    test_built = task.build(test_ex, bundle, train=False) if test_ex is not None else None  # checked up front
    log(f"data: {len(train_built.dataset)} train / {len(val_built.dataset)} val examples; "
        f"labels: {', '.join(task.labels[:12])}{' ...' if len(task.labels) > 12 else ''}")

    # 2. the run folder
    folder = ctx.folder = open_run_dir(cfg, output, overwrite, resume)
    run_dir = folder.path
    if folder.finished:
        log(f"{run_dir} already finished (summary.json); nothing to resume")
        return RunResult(run_dir, read_summary(run_dir)["eval"], read_summary(run_dir))
    log.attach(run_dir / "train.log", append=not folder.created)
    if folder.created:
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))

    # 3. loop components
    seed_everything(cfg.train.seed)  # model init above consumed RNG differently per source
    tc = cfg.train
    train_loader = make_loader(train_built, tc.batch_size, True, tc.seed, cfg.data.num_workers)
    val_loader = make_loader(val_built, cfg.eval.batch_size or 2 * tc.batch_size, False, tc.seed,
                             cfg.data.num_workers)
    accelerator = _accelerator(precision)
    model = bundle.model
    optimizer = create_optimizer(model, tc, set(bundle.new_params))
    steps = total_steps(tc, len(train_loader.batch_sampler))
    scheduler = create_scheduler(optimizer, tc, steps)
    bundle.model, optimizer = accelerator.prepare(model, optimizer)
    params = count_params(bundle.model)
    log(f"train: {steps} steps ({steps_per_epoch(train_loader, tc.grad_accum)}/epoch), batch {tc.batch_size}"
        f" x accum {tc.grad_accum}, {tc.optimizer} lr {tc.lr} {tc.schedule}, precision {precision}, "
        f"{threads} threads; params {params['trainable']:,} trainable / {params['frozen']:,} frozen")

    metric = cfg.eval.metric or task.default_metric
    mode = task.metric_mode(metric)
    checkpointer = ctx.checkpointer = Checkpointer(run_dir, cfg.output.keep_checkpoints)
    guard = NanGuard(tc.nan_policy, tc.nan_lr_factor, check_grads=accelerator.scaler is None, log=log)
    resumer = Resumer(folder, checkpointer, guard, cfg, bundle.model, log)
    es = cfg.early_stopping
    stopper = EarlyStopping(metric, mode, es.patience, es.min_delta, es.target, es.enabled)
    callbacks = [MetricsLogger(run_dir, log), stopper, checkpointer]  # checkpointer last: it saves the others
    if chaos.enabled():
        callbacks.append(chaos.ChaosPoints())
    if cfg.output.progress and not quiet:
        callbacks.append(ProgressBar(console))
    c = Components(bundle=bundle, task=task, train_loader=train_loader, val_loader=val_loader,
                   optimizer=optimizer, scheduler=scheduler, accelerator=accelerator,
                   callbacks=CallbackList(callbacks), grad_accum=tc.grad_accum, grad_clip=tc.grad_clip,
                   eval_every=cfg.eval.every_steps, metric=metric, mode=mode,
                   freeze_norm_stats=tc.freeze_norm_stats, nan_guard=guard)

    # 4. train
    state = TrainState(total_steps=steps)
    resumer.start(c, state, 0, stopper)  # restores the checkpoint of a resumed run (RNG last)
    state = fit(c, state)
    log(f"stopped: {state.stop_reason or 'finished'}; best {metric} {state.best_metric:.4f} at step {state.best_step}")

    # 5. keep the best model, evaluate it, write model/ and summary.json
    unwrapped = accelerator.unwrap_model(bundle.model)
    unwrapped.load_state_dict(load_weights(checkpointer.best_path()))
    bundle.model = unwrapped
    final = evaluate(bundle, task, val_loader, accelerator)
    task.finalize()  # what was tuned on validation (thresholds) is fixed from here on, test included
    test = None
    if test_built is not None:  # an optional test split under data.dir: evaluated once, with the kept model
        test = evaluate(bundle, task, make_loader(test_built, cfg.eval.batch_size or 2 * tc.batch_size, False,
                                                  tc.seed, cfg.data.num_workers), accelerator)
        log("test: " + " ".join(f"{k} {v:.4f}" for k, v in scalars(test).items() if k != "samples"))
    tmp_model = run_dir / ".model.tmp"  # model/ appears complete or not at all
    save_model(bundle, tmp_model, {"task_state": task.state(), "precision": precision,
                                   "config": cfg.model_dump(mode="json")})
    publish_dir(tmp_model, run_dir / "model")
    summary = {
        "eval": final,
        "test": test,
        "metric": metric,
        "best_step": state.best_step,
        "best_metric": state.best_metric,
        "stop_reason": state.stop_reason,
        "steps": state.step,
        "epochs": round(state.epoch + state.batch_in_epoch / max(len(train_loader.batch_sampler)
                                                                 + train_loader.batch_sampler.skip, 1), 4),
        "train_seconds": round(state.wall_seconds, 3),
        "samples_seen": state.samples_seen,
        "samples_per_second": round(state.samples_seen / max(state.wall_seconds, 1e-9), 2),
        "tokens_per_second": round(state.tokens_seen / max(state.wall_seconds, 1e-9), 1) if state.tokens_seen else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "precision": precision,
        "threads": threads,
        "params": params,
        "nan_guard": guard.summary(),
        "resumed_from_step": resumer.resumed_from,
        "data": {"train": len(train_built.dataset), "val": len(val_built.dataset),
                 "skipped": train_built.skipped + val_built.skipped, **task.report},
        "model": {"name": cfg.model.name, "source": bundle.source},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    shown = " ".join(f"{k} {v:.4f}" for k, v in scalars(final).items() if k != "samples")
    log(f"done: {shown}; {summary['train_seconds']:.1f}s, {summary['samples_per_second']:.1f} samples/s, "
        f"peak RSS {summary['peak_rss_mb']:.0f} MB → {run_dir}")
    return RunResult(run_dir, final, summary)


def read_summary(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))
