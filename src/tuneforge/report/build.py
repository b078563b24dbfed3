"""`tuneforge report RUN [RUN ...]`: one self-contained HTML file (figures inline as base64 PNG / JPEG, CSS inline,
no script, no external resource), so it opens offline and can be mailed or archived as is."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from tuneforge.errors import ConfigError
from tuneforge.report import compare, sections
from tuneforge.report.html import esc, nav, note, page
from tuneforge.report.runs import RunFiles, attach_predictions, load_run, unique_names
from tuneforge.report.tasks import TASK_SECTIONS, mistakes_section

COMPARE_NAV = [("compare", "Comparison"), ("curves", "Curves"), ("final", "Final metrics")]


def single_run_html(run: RunFiles) -> str:
    parts = [("summary", "Summary", sections.summary_section(run)), ("curves", "Curves", sections.curves_section(run))]
    task_parts = TASK_SECTIONS.get(run.task)
    if task_parts and run.finished:
        errors, mistakes = task_parts
        parts += [("task", "Errors", errors(run)), ("mistakes", "Worst mistakes", mistakes_section(run, mistakes))]
    elif task_parts:
        parts.append(("", "", note("per-class analysis and mistakes appear once the run has finished (summary.json)")))
    parts += [("data", "Data", sections.data_section(run)),
              ("strategies", "Strategies and speed", sections.strategies_section(run)),
              ("recipe", "Recipe", sections.recipe_section(run))]
    links = [(anchor, label) for anchor, label, html in parts if anchor and html]
    status = f"finished {run.summary.get('finished_at', '')}" if run.summary else "unfinished"
    subtitle = f"{esc(run.task)} · {esc(run.model_name)} · {esc(status)} · <code>{esc(run.path)}</code>"
    return page(f"tuneforge run {run.name}", subtitle, nav(links) + "".join(html for _, _, html in parts))


def compare_html(runs: list[RunFiles]) -> str:
    body = [nav(COMPARE_NAV), compare.comparison_section(runs), compare.curves_section(runs),
            compare.final_metrics_section(runs)]
    subtitle = " · ".join(f"<code>{esc(r.path)}</code>" for r in runs)
    return page(f"tuneforge: {len(runs)} runs compared", subtitle, "".join(body))


def default_output(run_dirs: Sequence[Path]) -> Path:
    return Path(run_dirs[0]) / "report.html" if len(run_dirs) == 1 else Path("report-compare.html")


def build_report(run_dirs: Sequence[str | Path], output: Optional[str | Path] = None,
                 predictions: bool = True) -> Path:
    """Writes the report of one run (its curves, errors, worst mistakes, data, strategies, recipe) or the comparison
    of several; returns the file's path. predictions=False skips computing RUN/predictions/val.jsonl when absent."""
    if not run_dirs:
        raise ConfigError("tuneforge report needs at least one run folder")
    runs = [load_run(p) for p in run_dirs]
    unique_names(runs)
    if len(runs) == 1:
        attach_predictions(runs[0], compute=predictions)
        text = single_run_html(runs[0])
    else:
        text = compare_html(runs)
    path = Path(output) if output else default_output([r.path for r in runs])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"report '{path}' cannot be written ({e.strerror}); choose another with --output") from None
    return path
