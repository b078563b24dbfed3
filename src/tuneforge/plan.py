"""`tuneforge plan RECIPE`: what a run would do and cost on this machine; nothing is trained or written.

It runs `run.prepare` (data and model read, every check done), then for each phase times real training steps on
batches spread over the epoch's sizes (engine/timing.py; warm-up steps left out) and a few evaluation batches, and
puts the weights, the trainable flags and the RNG back. It reports the data report, parameter counts, time per
epoch and for the run with the estimate's standard error, the peak memory (RSS measured during the timed steps,
plus what the full run adds), the speed features summary.json would record, and warnings about the recipe."""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from functools import partial
from typing import Optional

import torch

from tuneforge.config import load_config
from tuneforge.data.sampling import EpochBatchSampler
from tuneforge.engine.feature_cache import HeadOnly, feature_cache_usable
from tuneforge.engine.loop import steps_per_epoch
from tuneforge.engine.optim import create_optimizer, total_steps
from tuneforge.engine.snapshot import capture_rng, restore_rng
from tuneforge.engine.timing import batch_shape, collate, mean_step_size, spread_batches, timed_eval, timed_steps
from tuneforge.engine.trainable import Phase, head_module_name, head_names, plan_phases
from tuneforge.utils import cache_dir, count_params, held_rss_mb, peak_rss_mb

TIMED_STEPS = 12  # 2 warm-up + 10 measured, fewer when they take over 30 s
LR_FIND_STEPS = 80
REPORT_SECONDS = 5.0  # report.html: figures and the page (measured 2-8 s on the shipped recipes)
SHAPE_MB = 7.0  # MB a new training batch shape keeps where it cannot be measured (minilm-l6; evaluation ~2.2)


class ShapeCost:
    """What each new (rows, padded width) batch shape keeps resident (kernels cached per tensor shape: ~7 MB a
    shape for minilm-l6 training, ~2.2 MB in evaluation): the held RSS (heap trimmed) after the warm-up steps and
    after the rest, over the new shapes between. `on_step` is timed_steps' / timed_eval's hook."""

    def __init__(self, keys: list, warmup: int):
        self.keys, self.warmup, self.done, self.start = keys, warmup, 0, None

    def on_step(self, i: int) -> None:
        self.done = i + 1
        if i == self.warmup - 1:
            self.start = held_rss_mb()

    def seen(self) -> set:
        return set(self.keys[:self.done])

    def mb_per_shape(self) -> float | None:
        end, new = held_rss_mb(), self.seen() - set(self.keys[:self.warmup])
        if self.start is None or end is None or not new:
            return None
        return max(end - self.start, 0.0) / len(new)


def plan(recipe, overrides=None) -> dict:
    from tuneforge.run import prepare, strategies_summary

    lines: list[str] = []
    cfg = load_config(recipe, overrides)
    if cfg.probe.enabled:  # the probe trains; plan never does
        lines.append("plan: the strategy probe is not run; this is the plan for the strategy the preset's rules pick")
        cfg = cfg.model_copy(update={"probe": cfg.probe.model_copy(update={"enabled": False})})
    t0 = time.perf_counter()
    setup = prepare(cfg, lines.append)
    startup = time.perf_counter() - t0
    setup.bundle.replace_model(setup.accelerator.prepare(setup.bundle.model))
    tc = setup.cfg.train
    phases = plan_phases(tc, 1e-4 if tc.lr == "auto" else tc.lr)  # the LR does not change a step's time
    shapes: dict = {"train": [], "eval": []}  # per timed pass: (MB a new shape keeps, the shapes it ran)
    with restored(setup.bundle.model):
        eval_pass = estimate_eval(setup, shapes)
        estimates = [estimate_phase(setup, phase, eval_pass, shapes) for phase in phases]
        measured_rss = peak_rss_mb()
    out = {"recipe": str(recipe) if not isinstance(recipe, dict) else "recipe", "data_report": lines,
           "preset": setup.preset, "phases": estimates, "startup_seconds": round(startup, 3),
           "strategies": strategies_summary(setup, phases), "precision": setup.precision, "threads": setup.threads}
    out["time"] = total_time(setup, estimates, eval_pass, startup)
    out["memory"] = memory_estimate(setup, estimates, measured_rss, shapes)
    out["warnings"] = warnings(setup, phases, estimates, out["time"])
    return out


@contextmanager
def restored(model: torch.nn.Module):
    """Weights (buffers included), trainable flags and every RNG are put back afterwards."""
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    rng = capture_rng()
    try:
        yield
    finally:
        model.load_state_dict(weights)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        restore_rng(*rng)
        model.eval()


def backup_mb(model: torch.nn.Module) -> float:
    return sum(v.numel() * v.element_size() for v in model.state_dict().values()) / 2 ** 20


# ---------------------------------------------------------------- time


def estimate_eval(setup, shapes: dict) -> dict:
    """One validation pass: a few of its batches timed (the largest first), the rest from the cost model."""
    built, loader = setup.val_built, setup.val_loader
    batches = loader.batch_sampler.batches()
    picked = spread_batches(batches, built.lengths, 6)
    probe = ShapeCost([batch_shape(built, b) for b in picked], warmup=1)
    timer = timed_eval(setup.task, setup.bundle, built, picked, setup.accelerator, on_step=probe.on_step)
    shapes["eval"].append((probe.mb_per_shape(), probe.seen()))
    tokens = "attention_mask" in collate(built, [0])
    est = timer.estimate(mean_step_size(built, len(batches), tokens))
    seconds, error = est.total(len(batches))
    return {"seconds": seconds, "error": error, "batches": len(batches)}


def estimate_phase(setup, phase: Phase, eval_pass: dict, shapes: dict) -> dict:
    cfg, bundle, tc = setup.cfg, setup.bundle, setup.cfg.train
    phase.apply(bundle, tc, lambda *_: None)
    counts = count_params(bundle.model)
    ptc = phase.train_config(tc)
    head = feature_cache_usable(cfg, setup.task, bundle, phase)
    batches = setup.train_loader.batch_sampler.total
    steps = total_steps(ptc, batches)
    per_epoch = steps_per_epoch(setup.train_loader, tc.grad_accum)
    out = {"phase": phase.name, "epochs": phase.epochs, "steps": steps, "steps_per_epoch": per_epoch,
           "trainable_params": counts["trainable"], "frozen_params": counts["frozen"], "cached_features": bool(head)}
    if head:
        out.update(cached_phase(setup, head, ptc, eval_pass, steps, per_epoch))
    else:
        out.update(timed_phase(setup, phase, ptc, steps, eval_pass, shapes))
    return out


def timed_phase(setup, phase: Phase, ptc, steps: int, eval_pass: dict, shapes: dict) -> dict:
    bundle, built, tc = setup.bundle, setup.train_built, setup.cfg.train
    optimizer = setup.accelerator.prepare(create_optimizer(bundle.model, ptc, head_names(bundle)))
    batches = spread_batches(setup.train_loader.batch_sampler.batches(), built.lengths, TIMED_STEPS)
    probe = ShapeCost([batch_shape(built, b) for b in batches], warmup=2)
    step = partial(timed_steps, setup.task, bundle, built, optimizer=optimizer, accelerator=setup.accelerator,
                   grad_clip=tc.grad_clip, train_mode=phase.train_mode(bundle, tc))
    timer = step(batches, on_step=probe.on_step)
    # the run meets its largest batch again after many smaller ones, on the heap they fragmented: so does plan
    step(batches[:1], warmup=0)
    shapes["train"].append((probe.mb_per_shape(), probe.seen()))
    optimizer.zero_grad(set_to_none=True)
    per_epoch = setup.train_loader.batch_sampler.total  # micro-batches (each timed with an optimizer step)
    tokens = "attention_mask" in collate(built, [0])
    est = timer.estimate(mean_step_size(built, per_epoch, tokens))
    epoch, epoch_error = est.total(per_epoch)
    train_s, train_error = est.total(steps * tc.grad_accum)
    evals = evaluations(setup.cfg, steps, steps_per_epoch(setup.train_loader, tc.grad_accum))
    eval_s, eval_error = evals * eval_pass["seconds"], evals * eval_pass["error"]
    return {"seconds_per_step": round(est.per_step, 4), "relative_error": round(est.relative_error, 4),
            "measured_steps": est.measured, "seconds_per_epoch": round(epoch, 3),
            "epoch_error": round(epoch_error, 3), "train_seconds": round(train_s, 3), "evaluations": evals,
            "eval_seconds": round(eval_s, 3),
            "lr_find_seconds": round(LR_FIND_STEPS * est.per_step, 1) if tc.lr == "auto" else 0.0,
            "seconds": round(train_s + eval_s, 1), "error": round(math.hypot(train_error, eval_error), 1)}


def cached_phase(setup, head: str, ptc, eval_pass: dict, steps: int, per_epoch: int) -> dict:
    """Head-only training on cached backbone features: computing them (one forward pass over train and val, unless
    the cache already holds them) dominates; the head's steps take milliseconds."""
    rows = len(setup.train_built.dataset) + len(setup.val_built.dataset)
    features = eval_pass["seconds"] * rows / max(len(setup.val_built.dataset), 1)
    hit = _cache_holds(setup, head)
    head_step = _time_head_steps(setup, head, ptc)
    return {"feature_seconds": 0.0 if hit else round(features, 3), "feature_cache_hit": hit,
            "seconds_per_step": round(head_step, 5), "train_seconds": round(steps * head_step, 1),
            "seconds": round((0.0 if hit else features) + steps * head_step, 1),
            "error": 0.0 if hit else round(eval_pass["error"] * rows / max(len(setup.val_built.dataset), 1), 1),
            "evaluations": evaluations(setup.cfg, steps, per_epoch)}


def _cache_holds(setup, head: str) -> bool:
    """Whether the feature cache has this run's train features already (the key hashes the weights and data)."""
    from tuneforge.engine.feature_cache import content_key

    cfg, acc = setup.cfg, setup.accelerator
    pre = {"precision": str(acc.mixed_precision), "max_length": cfg.data.max_length,
           "pad_to_multiple_of": cfg.data.pad_to_multiple_of, "image_size": cfg.data.image_size,
           "image_cfg": setup.bundle.image_cfg, "augment": False, "train": True}
    key = content_key(setup.bundle.model, head, setup.train_built, pre)
    return (cache_dir("features") / f"{key}.npy").is_file()


def _time_head_steps(setup, head: str, ptc) -> float:
    """The head's training step on features of one real batch (captured at the head's input)."""
    bundle, built = setup.bundle, setup.train_built
    captured = []
    hook = bundle.model.get_submodule(head).register_forward_pre_hook(lambda m, a: captured.append(a[0].detach()))
    indices = setup.train_loader.batch_sampler.batches()[0]
    batch = collate(built, indices)
    try:
        timed_eval(setup.task, bundle, built, [indices], setup.accelerator, warmup=0)
    finally:
        hook.remove()
    head_bundle = HeadOnly(bundle, head)
    optimizer = create_optimizer(head_bundle.model, ptc)
    feats = {"features": captured[0].float(), "labels": batch["labels"]}
    t = time.perf_counter()
    for _ in range(20):
        loss = setup.task.loss(head_bundle.logits(feats), feats)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - t) / 20


def evaluations(cfg, steps: int, per_epoch: int) -> int:
    """Evaluations a phase of `steps` runs: every eval.every_steps or every epoch, plus the one at its end."""
    every = cfg.eval.every_steps or max(per_epoch, 1)
    return steps // every + (0 if steps % every == 0 else 1)


def total_time(setup, phases: list[dict], eval_pass: dict, startup: float) -> dict:
    """The run's wall time: startup (prepare, as measured here) + phases + the end (the kept model's evaluation,
    the test split, report.html's pass over validation, saving)."""
    cfg = setup.cfg
    val_rows = max(len(setup.val_built.dataset), 1)
    test_rows = len(setup.test_built.dataset) if setup.test_built is not None else 0
    end_passes = 1 + test_rows / val_rows + (1 if cfg.output.report else 0)
    weights_mb = backup_mb(setup.bundle.model)
    end = end_passes * eval_pass["seconds"] + 2.0 + 2 * weights_mb / 100 + (REPORT_SECONDS if cfg.output.report
                                                                             else 0.0)
    training = sum(p["seconds"] + p.get("lr_find_seconds", 0.0) for p in phases)
    error = math.sqrt(sum(p["error"] ** 2 for p in phases) + (end_passes * eval_pass["error"]) ** 2)
    total = startup + training + end
    out = {"startup_seconds": round(startup, 3), "training_seconds": round(training, 3), "end_seconds": round(end, 3),
           "total_seconds": round(total, 3), "error_seconds": round(error, 3),
           "relative_error": round(error / max(total, 1e-9), 3)}
    if cfg.train.time_budget:
        out["time_budget_seconds"] = cfg.train.time_budget
    return out


# ---------------------------------------------------------------- memory


def memory_estimate(setup, phases: list[dict], measured: float, shapes: dict) -> dict:
    """Peak RSS: measured during the timed steps (the weight backup taken for them removed), plus what the full
    run adds that the timed steps did not hold: the EMA copy, the cached features, and the kernels of the batch
    shapes the run meets that plan did not (oneDNN keeps them per shape: ShapeCost)."""
    cfg, model = setup.cfg, setup.bundle.model
    weights = backup_mb(model)
    ema = weights if cfg.train.ema else 0.0
    features = 0.0
    if any(p["cached_features"] for p in phases):
        head = head_module_name(setup.bundle)
        width = _head_width(model, head)
        features = (len(setup.train_built.dataset) + len(setup.val_built.dataset)) * width * 4 / 2 ** 20
    kernels = {} if all(p["cached_features"] for p in phases) else shape_kernels(setup, phases, shapes)
    peak = measured - weights + ema + features + kernels.get("mb", 0.0)
    return {"peak_rss_mb": round(peak), "measured_mb": round(measured), "weight_backup_mb": round(weights),
            "ema_mb": round(ema), "feature_cache_mb": round(features),
            "shape_allowance_mb": round(kernels.pop("mb", 0.0)), "shapes": kernels}


def _head_width(model, head: Optional[str]) -> int:
    if head is None:
        return 0
    linears = [m for m in model.get_submodule(head).modules() if isinstance(m, torch.nn.Linear)]
    return linears[0].in_features if linears else 0


def run_shapes(setup, epochs: int) -> tuple[set, set]:
    """The (rows, width) batch shapes of the run's training epochs (the first 5: few new ones come later), and of
    evaluation (validation and test, each at the eval batch size, longest first as the run batches them) that
    training has not already run."""
    built, sampler = setup.train_built, setup.train_loader.batch_sampler
    train, current = set(), sampler.epoch
    for epoch in range(min(max(epochs, 1), 5)):
        sampler.set_epoch(epoch)
        train |= {batch_shape(built, b) for b in sampler.batches()}
    sampler.set_epoch(current)
    evals = set()
    for built in (setup.val_built, setup.test_built):
        if built is not None:
            sampler = EpochBatchSampler(len(built.dataset), setup.cfg.eval_batch_size, 0, built.lengths, shuffle=False)
            evals |= {batch_shape(built, b) for b in sampler.batches()}
    return train, evals - train


def shape_kernels(setup, phases: list[dict], shapes: dict) -> dict:
    """Memory for the shapes the run meets beyond those plan ran, at the cost per shape plan measured (the most
    any pass measured; SHAPE_MB for training where malloc_trim is missing, eval then at a third of it)."""
    per_epoch = max(setup.train_loader.batch_sampler.total, 1)
    train, evals = run_shapes(setup, math.ceil(sum(p["steps"] for p in phases) * setup.cfg.train.grad_accum
                                               / per_epoch))
    ran = set().union(*(seen for _, seen in shapes["train"] + shapes["eval"]))
    train_mb = max((mb for mb, _ in shapes["train"] if mb is not None), default=SHAPE_MB)
    eval_mb = max((mb for mb, _ in shapes["eval"] if mb is not None), default=SHAPE_MB / 3)
    new_train, new_eval = len(train - ran), len(evals - ran)
    return {"mb": train_mb * new_train + eval_mb * new_eval, "train_new": new_train, "eval_new": new_eval,
            "train_mb_each": round(train_mb, 2), "eval_mb_each": round(eval_mb, 2)}


# ---------------------------------------------------------------- warnings


def warnings(setup, phases: list[Phase], estimates: list[dict], time_: dict) -> list[str]:
    out = []
    for check in (_truncation, _validation_size, _lr_range, _batch_and_steps, _data_quality, _budget):
        out += check(setup, phases, estimates, time_)
    return out


def _truncation(setup, *_):
    """Text rows longer than max_length, counted with the tokenizer on up to 2,000 train rows."""
    if setup.bundle.modality != "text" or setup.cfg.task.type == "token_classification":
        return []  # NER splits long sentences into windows: nothing is cut
    inputs = setup.train_ex.inputs[:2000]
    limit = setup.task.max_length(setup.bundle)
    if setup.bundle.siamese:
        sides = [x for pair in inputs for x in (pair if isinstance(pair, tuple) else (pair,))]
        lengths = [len(ids) for ids in setup.bundle.tokenizer(sides, truncation=False)["input_ids"]]
    else:
        first = [x[0] if isinstance(x, tuple) else x for x in inputs]
        second = [x[1] for x in inputs] if inputs and isinstance(inputs[0], tuple) else None
        lengths = [len(ids) for ids in setup.bundle.tokenizer(first, second, truncation=False)["input_ids"]]
    cut = sum(n > limit for n in lengths) / max(len(lengths), 1)
    if cut > 0.05:
        return [f"data.max_length {limit} cuts {100 * cut:.1f}% of the train rows (sampled {len(lengths)}); raise "
                f"it (the longest sampled row has {max(lengths)} tokens) or accept the truncation"]
    return []


def _validation_size(setup, *_):
    n = len(setup.val_built.dataset)
    if n >= 200:
        return []
    return [f"the validation set has {n} examples: one example moves accuracy by {100 / n:.1f} points, so the kept "
            "model and early stopping follow noise; use a larger validation split if you can"]


def _lr_range(setup, phases: list[Phase], *_):
    out, tc = [], setup.cfg.train
    for p in phases:
        if tc.lr == "auto":
            continue
        head_only = p.frozen_backbone
        low, high = (1e-4, 1.0) if head_only else (1e-6, 1e-2 if setup.bundle.modality == "image" else 1e-3)
        if tc.optimizer == "sgd":
            low, high = low * 10, high * 100
        if not low <= p.lr <= high:
            out.append(f"phase {p.name}: lr {p.lr:g} is outside the usual {low:g}-{high:g} for "
                       f"{'a head alone' if head_only else 'fine-tuning'} with {tc.optimizer}; "
                       "try `tuneforge lr-find` or train.lr: auto")
    return out


def _batch_and_steps(setup, phases, estimates, _):
    out, tc = [], setup.cfg.train
    rows = len(setup.train_built.dataset)
    if tc.batch_size > rows:
        out.append(f"train.batch_size {tc.batch_size} is above the {rows} train examples: one step per epoch")
    for p, e in zip(phases, estimates):
        warm = tc.warmup_steps if tc.warmup_steps is not None else int(tc.warmup_ratio * e["steps"])
        if warm >= e["steps"]:
            out.append(f"phase {p.name}: {warm} warm-up steps but only {e['steps']} steps: the LR never reaches "
                       "train.lr")
        elif e["steps"] < 20:
            out.append(f"phase {p.name}: only {e['steps']} optimizer steps; raise train.epochs or lower batch_size")
    every = setup.cfg.eval.every_steps
    if every and estimates and every > sum(e["steps"] for e in estimates):
        out.append(f"eval.every_steps {every} is above the run's steps: only the final weights are evaluated")
    return out


def _data_quality(setup, *_):
    r, out = setup.report, []
    if r.get("val_in_train"):
        out.append(f"{r['val_in_train']} validation examples also occur in train: validation scores are optimistic")
    if r.get("imbalance_ratio") and r["imbalance_ratio"] >= 10 and r.get("imbalance_remedy") == "none":
        out.append(f"class imbalance {r['imbalance_ratio']} with no remedy; consider data.imbalance: auto")
    return out


def _budget(setup, phases, estimates, time_):
    budget = setup.cfg.train.time_budget
    if not budget:
        return []
    first = estimates[0].get("seconds_per_epoch") if estimates else None
    fixed = time_["startup_seconds"] + time_["end_seconds"]
    if budget <= fixed:
        return [f"train.time_budget {budget:g} s does not cover the startup and the end of the run ({fixed:.0f} s)"]
    if first and budget - fixed < first:
        return [f"train.time_budget {budget:g} s affords {(budget - fixed) / first:.2f} of an epoch"]
    return []


# ---------------------------------------------------------------- output


def format_plan(p: dict) -> str:
    lines = list(p["data_report"])
    for ph in p["phases"]:
        params = f"{ph['trainable_params']:,} trainable / {ph['frozen_params']:,} frozen params"
        if ph["cached_features"]:
            body = (f"cached backbone features ({'cache hit' if ph['feature_cache_hit'] else 'computed once: '}"
                    f"{'' if ph['feature_cache_hit'] else str(ph['feature_seconds']) + ' s'}), head steps "
                    f"{1000 * ph['seconds_per_step']:.1f} ms")
        else:
            body = (f"{ph['seconds_per_epoch']:.1f} s/epoch ± {100 * ph['relative_error']:.0f}% "
                    f"({ph['measured_steps']} steps timed), {ph['evaluations']} evaluations "
                    f"({ph['eval_seconds']:.1f} s)")
        lines.append(f"phase {ph['phase']}: {ph['steps']} steps ({ph['steps_per_epoch']}/epoch); {params}; {body}")
    t = p["time"]
    lines.append(f"time: startup {t['startup_seconds']:.0f} s + training {t['training_seconds']:.0f} s + end "
                 f"{t['end_seconds']:.0f} s = {t['total_seconds']:.0f} s ({t['total_seconds'] / 60:.1f} min) "
                 f"± {100 * t['relative_error']:.0f}% on this machine ({p['threads']} threads, {p['precision']})")
    m = p["memory"]
    lines.append(f"peak memory (RSS): ~{m['peak_rss_mb']:,} MB (measured {m['measured_mb']:,} MB in the timed steps; "
                 f"+{m['ema_mb']} EMA, +{m['feature_cache_mb']} cached features, +{m['shape_allowance_mb']} "
                 f"batch shapes, -{m['weight_backup_mb']} plan's own weight copy)")
    on = {k: v for k, v in p["strategies"].items() if v not in (None, False, [], {})}
    lines.append("strategies: " + ", ".join(f"{k}={v}" for k, v in on.items()))
    lines += [f"warning: {w}" for w in p["warnings"]] or ["warnings: none"]
    return "\n".join(lines)
