"""The several-runs report: one comparison table and every shared curve overlaid."""
from __future__ import annotations

from tuneforge.metrics import scalars
from tuneforge.report import analysis as A
from tuneforge.report import figures as F
from tuneforge.report.html import details, esc, figure, fmt, note, section, table
from tuneforge.report.runs import RunFiles

MAX_DIFF_SHOWN = 6  # in the table's last column; all of them in the side-by-side table


def _best(run: RunFiles) -> tuple[str, object]:
    if run.summary:
        return run.summary.get("metric") or "", run.summary.get("best_metric")
    metric = run.metric or (A.metric_names(run.records) or [""])[-1]
    values = [v for v in A.metric_series(run.records, metric) if v is not None]
    return metric, (values[-1] if values else None)


def _differences(keys: list[str], flat: dict) -> str:
    return "<br>".join(f"<small>{esc(k)}</small> {fmt(flat.get(k))}" for k in keys)


def comparison_section(runs: list[RunFiles]) -> str:
    diff = A.differing_keys([r.config for r in runs])
    shown = [k for k in diff if k not in ("model.name", "task.type")][:MAX_DIFF_SHOWN]  # those have columns
    flat = [A.flatten(r.config) for r in runs]
    heads = ["run", "task", "model", "metric", "best", "train s", "samples/s", "peak RSS MB",
             "hyperparameters that differ"]
    rows = []
    for r, f in zip(runs, flat):
        s = r.summary or {}
        metric, best = _best(r)
        rows.append([esc(r.name) + ("" if r.finished else " <small>(unfinished)</small>"), esc(r.task),
                     esc(r.model_name.rsplit("/", 1)[-1]), esc(metric), fmt(best), fmt(s.get("train_seconds")),
                     fmt(s.get("samples_per_second")), fmt(s.get("peak_rss_mb")), _differences(shown, f)])
    body = table(heads, rows, "wide")
    if not diff:
        body += note("the runs' recipes are identical (apart from where they were written)")
    body += details(f"the {len(diff)} recipe keys that differ, side by side",
                    table(["key"] + [r.name for r in runs], ([esc(k)] + [fmt(f.get(k)) for f in flat]
                                                             for k in diff)), open_=len(diff) > len(shown))
    return section("compare", "Comparison", body, "best: the best validation value of each run's own metric "
                   "(summary.json); samples/s: training loop, evaluation excluded")


def _overlaid(runs: list[RunFiles], x_key: str) -> list[F.Panel]:
    """Train loss, then each validation metric that at least two runs recorded."""
    panels = [F.Panel("train loss", [F.Line(r.name, A.series(r.records, x_key), A.series(r.records, "train_loss"))
                                     for r in runs])]
    counts: dict[str, int] = {}
    for r in runs:
        for n in A.metric_names(r.records):
            counts[n] = counts.get(n, 0) + 1
    for name in [n for n, c in counts.items() if c >= 2][:8]:
        panels.append(F.Panel(f"validation {name}", [F.Line(r.name, A.series(r.records, x_key),
                                                             A.metric_series(r.records, name)) for r in runs]))
    return panels


def curves_section(runs: list[RunFiles]) -> str:
    if not any(r.records for r in runs):
        return section("curves", "Curves", note("no run has an evaluation yet"))
    body = figure(F.panel_grid(_overlaid(runs, "step"), "step", shared_legend=True), "overlaid curves against step")
    body += figure(F.panel_grid(_overlaid(runs, "wall_seconds"), "wall-clock seconds", shared_legend=True),
                   "overlaid curves against wall-clock time", "wall-clock seconds of training, evaluation included")
    return section("curves", "Curves", body)


def final_metrics_section(runs: list[RunFiles]) -> str:
    finals = [{k: v for k, v in scalars((r.summary or {}).get("eval") or {}).items() if k not in A.SKIPPED_METRICS}
              for r in runs]
    names = list(dict.fromkeys(k for f in finals for k in f))
    if not names:
        return ""
    rows = ([esc(n)] + [fmt(f.get(n)) for f in finals] for n in names)
    return section("final", "Final validation metrics", table(["metric"] + [r.name for r in runs], rows),
                   "the kept model of each run (summary.json eval)")
