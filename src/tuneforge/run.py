"""The training recipe: validated config → data → model → loop → run folder. Read top to bottom."""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tuneforge.config import Config, load_config, to_yaml
from tuneforge.engine.callbacks import CallbackList, EarlyStopping, MetricsLogger, ProgressBar, TrainState
from tuneforge.engine import chaos
from tuneforge.engine.checkpoint import Checkpointer, atomic_write_text, load_weights_into, publish_dir
from tuneforge.engine.guards import NanGuard
from tuneforge.engine.loop import MATH_ATTENTION_BELOW, Components, evaluate, fit, make_loader, steps_per_epoch
from tuneforge.engine.optim import create_optimizer, create_scheduler, total_steps
from tuneforge.engine.resume import Resumer, RunContext, open_run_dir, user_errors
from tuneforge.engine.phases import cached_loaders, feature_cache_usable, phase_train_config, plan_phases, train_mode_fn
from tuneforge.errors import ConfigError
from tuneforge.metrics import scalars
from tuneforge.models import MODEL_SOURCES, create_model, save_model
from tuneforge.models.base import write_json
from tuneforge.models import resolve_source
from tuneforge.strategies import (WeightEMA, apply_freeze, freeze_lower_layers, head_names, merge_lora,
                                  prepare_trainable, unfreeze_all)
from tuneforge.data.report import build_report, describe
from tuneforge.tasks import create_task
from tuneforge.utils import (RunLog, console, count_params, peak_rss_mb, resolve_precision, rss_mb,
                             seed_everything, set_threads)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # final evaluation of the kept model
    summary: dict

    def __repr__(self) -> str:
        return f"RunResult(run_dir='{self.run_dir}', metrics={scalars(self.metrics)})"


def _accelerator(precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    import torch
    # Accelerate keeps one process-wide state and refuses a second run in another precision; each tuneforge run
    # sets its own (the distributed PartialState is kept)
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision={"fp32": "no"}.get(precision, precision), cpu=not torch.cuda.is_available())


def train(recipe: str | Path | dict, overrides: dict[str, Any] | list[str] | None = None, *,
          output: Optional[str] = None, overwrite: bool = False, resume: bool = False,
          quiet: bool = False, callbacks: Optional[list] = None) -> RunResult:
    """resume=True continues the run in the output folder from its latest checkpoint (or starts it).
    callbacks: extra Callbacks added to every phase's list, before the checkpointer (e.g. a sweep's pruner)."""
    ctx = RunContext()
    with user_errors(ctx):  # out-of-memory → a batch size to try; no half-written run folder after an error
        return _train(ctx, recipe, overrides, output, overwrite, resume, quiet, callbacks or [])


def resume(run_dir: str | Path, quiet: bool = False) -> RunResult:
    """Continue a run from its latest complete checkpoint, with the config it was started with."""
    path = Path(run_dir).expanduser()
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"cannot resume '{path}': not a tuneforge run folder (no config.yaml)")
    return train(path / "config.yaml", output=str(path), resume=True, quiet=quiet)


@dataclass
class Prepared:
    train_ex: object
    val_ex: object
    report: dict
    train_built: object
    val_built: object
    test_built: object


def prepare(cfg: Config, log) -> tuple:
    """Task, model and datasets, every check done (labels, files, images) and nothing written yet."""
    task = create_task(cfg, log)
    source, _, _ = resolve_source(cfg.model)
    modality = MODEL_SOURCES.get(source).modality
    train_ex, val_ex, test_ex = task.read_examples(modality)
    task.fit_labels(train_ex, val_ex)
    report = build_report(train_ex, val_ex, modality, task.class_counts(train_ex))
    for line in describe(report):
        log(line)
    report["imbalance_remedy"] = task.choose_imbalance(report)
    bundle = create_model(cfg.model, task.head_spec(), log=log)
    train_built = task.build(train_ex, bundle, train=True)
    val_built = task.build(val_ex, bundle, train=False)
    test_built = task.build(test_ex, bundle, train=False) if test_ex is not None else None  # checked up front
    log(f"data: {len(train_built.dataset)} train / {len(val_built.dataset)} val examples; "
        f"labels: {', '.join(task.labels[:12])}{' ...' if len(task.labels) > 12 else ''}")
    return task, bundle, Prepared(train_ex, val_ex, report, train_built, val_built, test_built)


def lr_find(recipe: str | Path | dict, overrides=None, plot: Optional[str] = None, quiet: bool = False) -> dict:
    """`tuneforge lr-find`: the LR range test on the recipe's data and model; writes a PNG, returns the suggestion."""
    from tuneforge.engine.lr_find import lr_range_test

    log = RunLog(quiet)
    cfg = load_config(recipe, overrides)
    set_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    task, bundle, data = prepare(cfg, log)
    plot_path = Path(plot or f"lr_find-{cfg.output.name or 'run'}.png")
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    log.attach(plot_path.with_suffix(".log"))
    prepare_trainable(bundle, cfg.train, log)
    loader = make_loader(data.train_built, cfg.train.batch_size, True, cfg.train.seed, cfg.data.num_workers)
    accelerator = _accelerator(resolve_precision(cfg.train.precision))
    result = lr_range_test(bundle, task, loader, cfg.train, accelerator, plot_path, log)
    return {"suggested_lr": result["suggested_lr"], "plot": str(plot_path), "steps": len(result["lrs"])}


def _train(ctx: RunContext, recipe, overrides, output, overwrite: bool, resume: bool, quiet: bool,
           extra_callbacks: list) -> RunResult:
    log = RunLog(quiet)
    cfg = ctx.cfg = load_config(recipe, overrides)
    threads = set_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    precision = resolve_precision(cfg.train.precision)

    # 1. data and model, fully checked before anything is written
    task, bundle, data = prepare(cfg, log)
    train_ex, val_ex, report = data.train_ex, data.val_ex, data.report
    train_built, val_built, test_built = data.train_built, data.val_built, data.test_built

    # 2. the run folder
    folder = ctx.folder = open_run_dir(cfg, output, overwrite, resume)
    run_dir = folder.path
    if folder.finished:
        log(f"{run_dir} already finished (summary.json); nothing to resume")
        return RunResult(run_dir, read_summary(run_dir)["eval"], read_summary(run_dir))
    log.attach(run_dir / "train.log", append=not folder.created)
    if folder.created:
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    write_json(run_dir / "data_report.json", report)

    # 3. strategies that change what trains: freezing, LoRA; the LR (maybe from the range test)
    seed_everything(cfg.train.seed)  # model init above consumed RNG differently per source
    tc = cfg.train
    accelerator = _accelerator(precision)
    if tc.channels_last and hasattr(bundle, "use_channels_last"):
        bundle.use_channels_last()
    if tc.first_token_shortcut and hasattr(bundle, "use_first_token_shortcut") and bundle.use_first_token_shortcut():
        log("speed: the last encoder layer runs for the first token only (the classifier reads nothing else)")
    checkpointing = prepare_trainable(bundle, tc, log)
    train_loader = make_loader(train_built, tc.batch_size, True, tc.seed, cfg.data.num_workers,
                               cfg.data.group_by_length)
    val_loader = make_loader(val_built, cfg.eval.batch_size or 2 * tc.batch_size, False, tc.seed,
                             cfg.data.num_workers)
    lr = tc.lr
    if lr == "auto":
        from tuneforge.engine.lr_find import lr_range_test

        lr = lr_range_test(bundle, task, train_loader, tc, accelerator, run_dir / "lr_find.png", log)["suggested_lr"]
    bundle.model = accelerator.prepare(bundle.model)
    full_model = bundle.model
    params = count_params(full_model)
    log(f"params: {params['trainable']:,} trainable / {params['frozen']:,} frozen "
        f"({100 * params['trainable'] / max(params['total'], 1):.1f}% train)")
    rss_at_start = rss_mb()  # runtime + model + data: what training adds is peak_rss_mb minus this

    # 4. train, phase by phase (one phase unless train.head_epochs asks for fastai-style fine_tune)
    metric = cfg.eval.metric or task.default_metric
    mode = task.metric_mode(metric)
    checkpointer = ctx.checkpointer = Checkpointer(run_dir, cfg.output.keep_checkpoints)
    ema = WeightEMA(accelerator.unwrap_model(full_model), tc.ema) if tc.ema else None
    if ema:
        checkpointer.best_weights = lambda: ema.shadow
    guard = NanGuard(tc.nan_policy, tc.nan_lr_factor, check_grads=accelerator.scaler is None, log=log)
    resumer = Resumer(folder, checkpointer, guard, cfg, full_model, log)
    state = TrainState()
    phases = plan_phases(tc, lr)
    for i, phase in enumerate(phases):
        if resumer.skip_phase(i):  # finished before the checkpoint being resumed
            continue
        ptc = phase_train_config(tc, phase)
        if len(phases) > 1:  # fine_tune: the head phase freezes the backbone, the next one unfreezes it
            unfreeze_all(full_model)
            apply_freeze(bundle, ptc, log)
            if phase.trainable_fraction < 1.0:
                groups = freeze_lower_layers(bundle, phase.trainable_fraction)
                log(f"phase {phase.name}: gradual unfreezing, the top {groups} layer groups train")
        if state.batch_in_epoch:  # a phase starts on a fresh epoch
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        head = feature_cache_usable(cfg, bundle, phase)
        run_bundle, p_train, p_val = bundle, train_loader, val_loader
        if head:
            run_bundle, p_train, p_val = cached_loaders(cfg, bundle, head, train_ex, val_ex, train_built, val_built,
                                                        accelerator, log)
        optimizer = accelerator.prepare(create_optimizer(full_model, ptc, head_names(bundle)))
        steps = total_steps(ptc, len(p_train.batch_sampler))
        scheduler = create_scheduler(optimizer, ptc, steps)
        state.total_steps, state.should_stop, state.stop_reason = state.step + steps, False, ""
        counts = count_params(full_model)
        log(f"phase {phase.name}: {steps} steps ({steps_per_epoch(p_train, ptc.grad_accum)}/epoch), batch "
            f"{tc.batch_size} x accum {tc.grad_accum}, {tc.optimizer} lr {phase.lr:g} {tc.schedule}"
            f"{f', head lr {phase.head_lr:g}' if phase.head_lr else ''}"
            f"{f', layer decay {phase.layer_decay}' if phase.layer_decay else ''}, precision {precision}, "
            f"{threads} threads; {counts['trainable']:,} trainable / {counts['frozen']:,} frozen params"
            f"{'; cached backbone features' if head else ''}")
        es = cfg.early_stopping
        stopper = EarlyStopping(metric, mode, es.patience, es.min_delta, es.target, es.enabled)
        callbacks = (([ema] if ema else []) + [MetricsLogger(run_dir, log), stopper] + list(extra_callbacks)
                     + [checkpointer])  # checkpointer last: it saves the others
        if chaos.enabled():
            callbacks.append(chaos.ChaosPoints())
        if cfg.output.progress and not quiet:
            callbacks.append(ProgressBar(console))
        c = Components(bundle=run_bundle, task=task, train_loader=p_train, val_loader=p_val,
                       optimizer=optimizer, scheduler=scheduler, accelerator=accelerator,
                       callbacks=CallbackList(callbacks), grad_accum=tc.grad_accum, grad_clip=tc.grad_clip,
                       eval_every=cfg.eval.every_steps, metric=metric, mode=mode,
                       train_mode=train_mode_fn(bundle, phase, tc), nan_guard=guard,
                       eval_weights=(lambda: ema.applied(accelerator.unwrap_model(full_model))) if ema else nullcontext)
        # restores the checkpoint of a resumed run (RNG last)
        resumer.start(c, state, i, stopper, {"ema": ema} if ema else None)
        fit(c, state)
        log(f"phase {phase.name} stopped: {state.stop_reason or 'finished'}; best {metric} "
            f"{state.best_metric:.4f} at step {state.best_step}")
        if state.stop_reason.startswith("target"):
            break

    # 5. keep the best model, evaluate it, write model/ and summary.json
    unwrapped = accelerator.unwrap_model(full_model)
    load_weights_into(unwrapped, checkpointer.best_path())  # in place: no second copy at the peak
    bundle.model = unwrapped
    merge_lora(bundle, run_dir / "adapter" if tc.lora is not None else None)
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
        "lr": lr,
        "strategies": {"phases": [p.name for p in phases], "freeze": tc.freeze, "freeze_embeddings":
                       tc.freeze_embeddings, "lora": tc.lora.model_dump() if tc.lora else None,
                       "layer_decay": tc.layer_decay, "head_lr": tc.head_lr,
                       "channels_last": getattr(bundle, "channels_last", None), "ema": tc.ema,
                       "first_token_shortcut": getattr(bundle, "first_token_shortcut", None),
                       "group_by_length": cfg.data.group_by_length and bundle.modality == "text",
                       "pad_to_multiple_of": cfg.data.pad_to_multiple_of if bundle.modality == "text" else None,
                       "dropout": cfg.model.dropout, "gradient_checkpointing": checkpointing,
                       "cpu_attention": (f"math kernel below {MATH_ATTENTION_BELOW} tokens" if
                                         accelerator.device.type == "cpu" and bundle.modality == "text" else None)},
        "train_seconds": round(state.wall_seconds, 3),
        "samples_seen": state.samples_seen,
        "eval_seconds": round(state.eval_seconds, 3),
        **throughput(state, bundle),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_at_train_start_mb": round(rss_at_start, 1),
        "precision": precision,
        "threads": threads,
        "params": params,
        "nan_guard": guard.summary(),
        "resumed_from_step": resumer.resumed_from,
        "data": {"train": len(train_built.dataset), "val": len(val_built.dataset),
                 "skipped": train_built.skipped + val_built.skipped, **task.report,
                 "imbalance_ratio": report.get("imbalance_ratio"), "imbalance_remedy": report["imbalance_remedy"]},
        "model": {"name": cfg.model.name, "source": bundle.source},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    shown = " ".join(f"{k} {v:.4f}" for k, v in scalars(final).items() if k != "samples")
    log(f"done: {shown}; {summary['train_seconds']:.1f}s, {summary['samples_per_second']:.1f} samples/s, "
        f"peak RSS {summary['peak_rss_mb']:.0f} MB → {run_dir}")
    return RunResult(run_dir, final, summary)


def throughput(state: TrainState, bundle) -> dict:
    """Training-loop rates (evaluation time excluded). For text: useful (non-padding) tokens/s and the achieved
    GFLOP/s by the usual 6 x non-embedding parameters x tokens estimate."""
    seconds = max(state.wall_seconds - state.eval_seconds, 1e-9)
    out = {"samples_per_second": round(state.samples_seen / seconds, 2)}
    if state.tokens_seen:
        non_embedding = sum(p.numel() for n, p in bundle.model.named_parameters() if "embeddings" not in n)
        out["tokens_per_second"] = round(state.tokens_seen / seconds, 1)
        out["non_embedding_params"] = non_embedding
        out["gflops_per_second"] = round(6 * non_embedding * state.tokens_seen / seconds / 1e9, 2)
    return out


def read_summary(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))
