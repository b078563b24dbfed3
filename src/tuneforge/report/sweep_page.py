"""DIR/sweep.html for `tuneforge sweep`: optimisation history, each trial's evaluations (pruned ones visible),
parameter importance and one slice plot per parameter, all as inline matplotlib figures; the trials table and
the best recipe."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from tuneforge.report import figures as F
from tuneforge.report.html import details, esc, figure, fmt, note, page, section, table

STATE_COLORS = {"complete": "#1f77b4", "pruned": "#ff7f0e", "fail": "#d62728", "running": "#999999"}


def _history(result) -> str:
    plt = F.plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(F.WIDTH, 3.6))
    done = [r for r in result.trials if r["value"] is not None]
    for state, color in STATE_COLORS.items():
        rows = [r for r in done if r["state"] == state]
        if not rows:
            continue
        ax1.scatter([r["number"] for r in rows], [r["value"] for r in rows], color=color, label=state, zorder=3)
    best, line = None, []
    for r in sorted(done, key=lambda r: r["number"]):
        if r["state"] == "complete" and (best is None or (r["value"] > best if result.direction == "maximize"
                                                          else r["value"] < best)):
            best = r["value"]
        line.append(best)
    ax1.step([r["number"] for r in sorted(done, key=lambda r: r["number"])], line, where="post", color="k",
             alpha=0.5, label="best so far")
    ax1.set(xlabel="trial", ylabel=result.metric, title=f"optimisation history ({result.direction})")
    ax1.legend(loc="best")
    for r in result.trials:
        if r["intermediate"]:
            steps = sorted(r["intermediate"])
            ax2.plot(steps, [r["intermediate"][s] for s in steps], color=STATE_COLORS.get(r["state"], "#999"),
                     linestyle="--" if r["state"] == "pruned" else "-", marker="o", markersize=2.5, alpha=0.8)
    ax2.set(xlabel=f"reported at ({result.reported_at})", ylabel=result.metric,
            title="every evaluation (orange dashed: pruned)")
    fig.tight_layout()
    return F.to_uri(fig)


def _importance(study) -> Optional[str]:
    """fANOVA importance (Optuna's default evaluator); None with too few complete trials to tell."""
    import warnings

    import optuna

    try:
        with warnings.catch_warnings():  # "too few trials" is answered by the note on the page
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError):
        return None
    if not imp:
        return None
    return F.hbars(list(imp), {"importance": list(imp.values())}, "parameter importance (fANOVA)",
                   "share of the objective's variance", width=5.0)


def _slices(result) -> Optional[str]:
    keys = list(dict.fromkeys(k for r in result.trials for k in r["params"]))
    rows = [r for r in result.trials if r["value"] is not None]
    if not keys or not rows:
        return None
    plt = F.plt
    cols = min(len(keys), 4)
    fig, axes = plt.subplots(math.ceil(len(keys) / cols), cols, figsize=(F.WIDTH, 2.6 * math.ceil(len(keys) / cols)),
                             squeeze=False)
    for ax, key in zip(axes.flat, keys):
        xs = [r["params"].get(key) for r in rows]
        categorical = any(isinstance(x, (str, bool)) or x is None for x in xs)
        ticks = sorted({str(x) for x in xs}) if categorical else None
        pos = [ticks.index(str(x)) for x in xs] if categorical else xs
        ax.scatter(pos, [r["value"] for r in rows], c=[STATE_COLORS.get(r["state"], "#999") for r in rows])
        if categorical:
            ax.set_xticks(range(len(ticks)), ticks)
        elif all(isinstance(x, (int, float)) and x > 0 for x in xs) and max(xs) / min(xs) > 50:
            ax.set_xscale("log")
        ax.set(title=key, ylabel=result.metric)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    return F.to_uri(fig)


def _table(result) -> str:
    keys = list(dict.fromkeys(k for r in result.trials for k in r["params"]))
    rows = [[fmt(r["number"]), f'<span style="color:{STATE_COLORS.get(r["state"], "#999")}">{esc(r["state"])}</span>',
             fmt(r["value"]), fmt(r["seconds"])] + [fmt(r["params"].get(k)) for k in keys]
            + [esc(r["note"]), f"<code>{esc(Path(r['run_dir']).name)}</code>" if r["run_dir"] else ""]
            for r in result.trials]
    return table(["trial", "state", result.metric, "seconds"] + keys + ["note", "run folder"], rows, "wide")


def write_sweep_page(study, result, recipe_text: Optional[str], path: Path) -> Path:
    parts = [section("history", "Trials", figure(_history(result), "optimisation history") + _table(result))]
    imp, slices = _importance(study), _slices(result)
    body = (figure(imp, "parameter importance") if imp else
            note("parameter importance needs at least two complete trials with different values"))
    body += figure(slices, "objective against each parameter") if slices else ""
    parts.append(section("params", "Parameters", body, "colour: trial state (blue complete, orange pruned)"))
    if recipe_text:
        best = result.best
        parts.append(section("best", f"Best trial: {best['number']}", details(
            "its full recipe (best.yaml)", f"<pre>{esc(recipe_text)}</pre>"),
            f"{result.metric} {best['value']:.4f}; run folder {best['run_dir']}"))
    counts = {s: sum(r["state"] == s for r in result.trials) for s in ("complete", "pruned", "fail")}
    subtitle = esc(f"{len(result.trials)} trials ({', '.join(f'{n} {s}' for s, n in counts.items())}) · "
                   f"{result.direction} {result.metric} · {result.output}")
    path.write_text(page("tuneforge sweep", subtitle, "".join(parts)), encoding="utf-8")
    return path
