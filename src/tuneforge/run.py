"""The training recipe: validated config → data → model → loop → run folder. Read top to bottom."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from tuneforge.config import Config, load_config, to_yaml
from tuneforge.engine.callbacks import CallbackList, EarlyStopping, MetricsLogger, ProgressBar, TrainState
from tuneforge.engine.checkpoint import Checkpointer, load_weights
from tuneforge.engine.loop import Components, evaluate, fit, make_loader, steps_per_epoch
from tuneforge.engine.optim import create_optimizer, create_scheduler, total_steps
from tuneforge.errors import ConfigError
from tuneforge.metrics import scalars
from tuneforge.models import MODEL_SOURCES, create_model, save_model
from tuneforge.models.base import write_json
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


def make_run_dir(cfg: Config, output: Optional[str], overwrite: bool) -> Path:
    if output or cfg.output.dir:
        run_dir = Path(output or cfg.output.dir).expanduser()
    else:
        run_dir = Path("runs") / f"{cfg.output.name or 'run'}-{datetime.now():%Y%m%d-%H%M%S}"
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"output folder '{run_dir}' already exists and is not empty; "
                              "pass --overwrite to replace it or --output to choose another")
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ".write-test").touch()
        (run_dir / ".write-test").unlink()
    except OSError as e:
        raise ConfigError(f"output folder '{run_dir}' cannot be written ({e.strerror}); "
                          "choose another with --output or output.dir") from None
    return run_dir


def _accelerator(precision: str):
    from accelerate import Accelerator

    import torch
    return Accelerator(mixed_precision={"fp32": "no"}.get(precision, precision), cpu=not torch.cuda.is_available())


def train(recipe: str | Path | dict, overrides: dict[str, Any] | list[str] | None = None, *,
          output: Optional[str] = None, overwrite: bool = False, quiet: bool = False) -> RunResult:
    log = RunLog(quiet)
    cfg = load_config(recipe, overrides)
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
    run_dir = make_run_dir(cfg, output, overwrite)
    log.attach(run_dir / "train.log")
    (run_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")

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
    checkpointer = Checkpointer(run_dir, lambda: accelerator.unwrap_model(bundle.model).state_dict(),
                                cfg.output.keep_checkpoints)
    es = cfg.early_stopping
    callbacks = [MetricsLogger(run_dir, log), checkpointer,
                 EarlyStopping(metric, mode, es.patience, es.min_delta, es.target, es.enabled)]
    if cfg.output.progress and not quiet:
        callbacks.append(ProgressBar(console))
    c = Components(bundle=bundle, task=task, train_loader=train_loader, val_loader=val_loader,
                   optimizer=optimizer, scheduler=scheduler, accelerator=accelerator,
                   callbacks=CallbackList(callbacks), grad_accum=tc.grad_accum, grad_clip=tc.grad_clip,
                   eval_every=cfg.eval.every_steps, metric=metric, mode=mode,
                   freeze_norm_stats=tc.freeze_norm_stats)

    # 4. train
    state = fit(c, TrainState(total_steps=steps))
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
    save_model(bundle, run_dir / "model", {"task_state": task.state(), "precision": precision,
                                           "config": cfg.model_dump(mode="json")})
    summary = {
        "eval": final,
        "test": test,
        "metric": metric,
        "best_step": state.best_step,
        "best_metric": state.best_metric,
        "stop_reason": state.stop_reason,
        "steps": state.step,
        "epochs": round(state.epoch + (state.batch_in_epoch / max(len(train_loader.batch_sampler), 1)), 4),
        "train_seconds": round(state.wall_seconds, 3),
        "samples_seen": state.samples_seen,
        "samples_per_second": round(state.samples_seen / max(state.wall_seconds, 1e-9), 2),
        "tokens_per_second": round(state.tokens_seen / max(state.wall_seconds, 1e-9), 1) if state.tokens_seen else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "precision": precision,
        "threads": threads,
        "params": params,
        "data": {"train": len(train_built.dataset), "val": len(val_built.dataset),
                 "skipped": train_built.skipped + val_built.skipped, **task.report},
        "model": {"name": cfg.model.name, "source": bundle.source},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(run_dir / "summary.json", summary)
    shown = " ".join(f"{k} {v:.4f}" for k, v in scalars(final).items() if k != "samples")
    log(f"done: {shown}; {summary['train_seconds']:.1f}s, {summary['samples_per_second']:.1f} samples/s, "
        f"peak RSS {summary['peak_rss_mb']:.0f} MB → {run_dir}")
    return RunResult(run_dir, final, summary)


def read_summary(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))
