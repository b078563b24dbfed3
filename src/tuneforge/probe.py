"""`preset: auto`'s optional strategy probe (`probe.enabled: true`): the rules in presets.py pick a strategy from
the data's size; the probe measures instead. Each candidate strategy, cheapest first, trains for the same short time
on part of the training split and is scored on a held-out part of the training split, never on the validation split
that picks and reports the final model. The best one is then trained on all the data, as if the recipe had set its
strategy keys.

A candidate gets the same seconds as the others (`probe.seconds`, or a share of `train.time_budget`), far fewer than
the final run, so a short probe favours what learns fast. Hence one exception to "the best held-out score wins": when
the rules' own choice ran out of time while its score was still rising, another candidate's higher score does not
show that it is worse, and the rules' choice stands (`decide`)."""
from __future__ import annotations

import shutil
import tempfile
import time
from typing import Optional

from tuneforge.config import TrainConfig, apply_overrides, explicit_keys, validate
from tuneforge.data.examples import Examples, sample, split
from tuneforge.engine.callbacks import Callback
from tuneforge.errors import TuneforgeError
from tuneforge.presets import (STRATEGY_KEYS, choose_strategy, data_facts, model_facts, recipe_strategy, size_class,
                               strategy_choices)

CANDIDATES = {"image": ("linear_probe", "fine_tune"),  # modality -> strategies, cheapest first
              "text": ("linear_probe", "full_fine_tune"),
              "audio": ("linear_probe", "full_fine_tune")}
TASKS = ("classification", "multilabel", "regression", "token_classification")  # generative tasks: no head to probe
NO_STRATEGY = {key: TrainConfig.model_fields[key.split(".")[1]].default for key in STRATEGY_KEYS}  # plain fine-tuning
HOLDOUT_MAX = 1_000  # held-out rows scored per candidate (more adds evaluation time, not much certainty)


def strategy_keys(strategy: str) -> dict:
    """The recipe keys that set `strategy` (explicitly, so the preset's other rules follow it)."""
    return {**NO_STRATEGY, **{c.key: c.value for c in strategy_choices(strategy, "")}}


def skip_reason(cfg, modality: str) -> Optional[str]:
    if cfg.task.type not in TASKS:
        return f"task {cfg.task.type} has no strategies to compare"
    if modality not in CANDIDATES:
        return f"no candidates for {modality} data"
    if recipe_strategy(cfg, explicit_keys(cfg)):
        return "the recipe sets the strategy itself"
    return None


def candidates(cfg, report: dict, modality: str, train_ex: Examples) -> tuple[list[str], str]:
    """→ (CANDIDATES for the modality, plus the rules' own choice where it is another (LoRA for a large model);
    the rules' choice)."""
    facts = data_facts(cfg, report, modality, train_ex, model_facts(cfg.model), durations=False)
    ruled, _ = choose_strategy(facts, size_class(facts.rows))
    names = list(CANDIDATES[modality])
    return (names + [ruled] if ruled not in names else names), ruled


def probe_splits(cfg, train_ex: Examples) -> tuple[Examples, Examples]:
    """(rows that train each candidate, held-out rows that score them), both from the training split."""
    p, seed = cfg.probe, cfg.train.seed
    labels = train_ex.labels if cfg.task.type == "classification" else None
    fit, held = split(train_ex, p.holdout, seed, stratify=labels)
    return sample(fit, p.rows, seed), sample(held, HOLDOUT_MAX, seed)


def seconds_each(cfg, n: int) -> float:
    tc, p = cfg.train, cfg.probe
    return tc.time_budget * p.budget_share / n if tc.time_budget else p.seconds


def run_candidate(train, cfg, strategy: str, seconds: float, examples, folder: str) -> dict:
    """One candidate's short run (quiet, in its own folder) → its row for the record. `train`: run.train."""
    raw = cfg.model_dump(mode="json", exclude_unset=True)
    raw = apply_overrides(raw, {**strategy_keys(strategy), "probe.enabled": False, "train.time_budget": seconds,
                                "output.report": False, "output.loggers": ["jsonl"], "output.progress": False})
    t0, last_eval = time.perf_counter(), LastEvaluation()
    try:
        result = train(raw, output=f"{folder}/{strategy}", quiet=True, examples=examples, callbacks=(last_eval,))
    except TuneforgeError as e:
        return {"strategy": strategy, "value": None, "error": str(e), "seconds": round(time.perf_counter() - t0, 1)}
    s = result.summary
    return {"strategy": strategy, "value": s["eval"][s["metric"]], "metric": s["metric"], "epochs": s["epochs"],
            "seconds": round(time.perf_counter() - t0, 1), "unfinished": last_eval.was_best and cut_short(s)}


class LastEvaluation(Callback):
    """Whether a run's last evaluation was its best so far: the curve was still rising when it stopped."""

    was_best = False

    def on_eval_end(self, state, record) -> None:
        self.was_best = state.is_best


def cut_short(summary: dict) -> bool:
    """The time budget ended the last phase before its planned steps (its horizon below them, or a stop). A curve cut
    short while still rising (a candidate's `unfinished`) has not shown where it ends."""
    phases = (summary.get("time_budget") or {}).get("phases") or [{}]
    last = phases[-1]
    return "stopped_at_step" in last or last.get("horizon_steps", last.get("cap", 0)) < last.get("cap", 0)


def decide(rows: list[dict], mode: str, ruled: str) -> tuple[Optional[dict], str]:
    """→ (the chosen row, why). The best held-out score wins, except over the rules' own choice when that one was
    unfinished (cut short while still rising): such a curve is not shown to be worse, so the rules stand."""
    winner = best(rows, mode)
    own = next((r for r in rows if r["strategy"] == ruled and r["value"] is not None), None)
    if winner is not None and own is not None and winner is not own and own.get("unfinished"):
        return own, (f"the rules' choice: its time ran out while its held-out {own['metric']} was still rising "
                     f"({own['value']:.4f} after {own['epochs']:.2f} epochs), so {winner['strategy']}'s "
                     f"{winner['value']:.4f} does not show it is worse")
    return winner, f"the best held-out {winner['metric']}" if winner else ""


def best(rows: list[dict], mode: str) -> Optional[dict]:
    """The best scored row; a tie goes to the cheaper (earlier) candidate."""
    scored = [r for r in rows if r["value"] is not None]
    if not scored:
        return None
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda r: (sign * r["value"], -rows.index(r)))


def probe_strategy(train, cfg, report: dict, modality: str, train_ex: Examples, metric_mode, log):
    """→ (cfg with the winner's strategy keys set, the record for summary.json's preset.probe).
    `train`: run.train, which trains each candidate; `metric_mode(metric)` → "max" or "min" (the task's)."""
    why = skip_reason(cfg, modality)
    if why:
        log(f"probe: skipped ({why}); the preset's rules choose the strategy")
        return cfg, {"skipped": why}
    names, ruled = candidates(cfg, report, modality, train_ex)
    fit, held = probe_splits(cfg, train_ex)
    seconds = seconds_each(cfg, len(names))
    log(f"probe: {', '.join(names)}, {seconds:.0f} s each on {len(fit)} train rows, scored on {len(held)} other "
        "train rows (the validation split is not used)")
    folder = tempfile.mkdtemp(prefix="tuneforge-probe-")
    try:
        rows = []
        for name in names:
            rows.append(run_candidate(train, cfg, name, seconds, (fit, held, None), folder))
            r = rows[-1]
            shown = f"{r['metric']} {r['value']:.4f} after {r['epochs']:.2f} epochs" if r["value"] is not None \
                else f"failed: {r['error']}"
            cut = ", cut short while still rising" if r.get("unfinished") else ""
            log(f"probe: {name}: {shown} ({r['seconds']:.0f} s{cut})")
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the probe's own scratch runs, never the user's folders
    record = {"candidates": rows, "rules_choice": ruled, "fit_rows": len(fit), "held_out_rows": len(held),
              "seconds_each": seconds}
    winner, why = decide(rows, metric_mode(next((r["metric"] for r in rows if r.get("metric")), "loss")), ruled)
    if winner is None:
        log("probe: every candidate failed; the preset's rules choose the strategy")
        return cfg, {**record, "chosen": None}
    log(f"probe: chose {winner['strategy']} ({why})")
    raw = apply_overrides(cfg.model_dump(mode="json", exclude_unset=True), strategy_keys(winner["strategy"]))
    return validate(raw, "probe"), {**record, "chosen": winner["strategy"], "why": why}
