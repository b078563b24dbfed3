"""The sections every single-run report has: summary, curves, data, strategies and speed, recipe.
Each returns an HTML string (empty when the run has nothing for it)."""
from __future__ import annotations

from tuneforge.metrics import scalars
from tuneforge.report import analysis as A
from tuneforge.report import figures as F
from tuneforge.report.html import cards, details, esc, figure, fmt, kv_table, note, section, subsection, table
from tuneforge.report.runs import RunFiles

MAX_CURVE_PANELS = 9


def summary_section(run: RunFiles) -> str:
    s = run.summary
    if s is None:
        last = run.records[-1] if run.records else None
        body = note("unfinished run (no summary.json yet): the numbers below are from its latest evaluation", "warn")
        if last:
            body += cards([("step", last["step"], None), ("wall seconds", last["wall_seconds"], None)]
                          + [(k, v, None) for k, v in list(scalars(last["metrics"]).items())[:6]])
        return section("summary", "Summary", body)
    final = {k: v for k, v in scalars(s.get("eval") or {}).items() if k not in A.SKIPPED_METRICS}
    head = [(f"best {s.get('metric')}", s.get("best_metric"), f"at step {s.get('best_step')}")]
    head += [(f"final {k}", v, "kept model, validation") for k, v in list(final.items())[:7] if k != s.get("metric")]
    head += [("train time (s)", s.get("train_seconds"), f"{s.get('steps')} steps, {s.get('epochs')} epochs"),
             ("samples / s", s.get("samples_per_second"), "training loop, eval excluded"),
             ("peak RSS (MB)", s.get("peak_rss_mb"), f"{s.get('rss_at_train_start_mb')} MB at train start")]
    body = cards(head) + note(f"stopped: {s.get('stop_reason') or 'finished'}")
    if s.get("test"):
        test = {k: v for k, v in scalars(s["test"]).items() if k not in A.SKIPPED_METRICS}
        body += subsection("Test split (kept model)", kv_table(test.items()))
    return section("summary", "Summary", body)


def _metric_panels(records: list[dict]) -> list[F.Panel]:
    steps = A.series(records, "step")
    names = A.metric_names(records)
    loss = F.Panel("loss", [F.Line("train (last step)", steps, A.series(records, "train_loss"))])
    if "loss" in names:
        loss.lines.append(F.Line("validation", steps, A.metric_series(records, "loss")))
    panels = [loss] + [F.Panel(f"validation {n}", [F.Line(n, steps, A.metric_series(records, n))])
                       for n in names if n != "loss"]
    return panels[:MAX_CURVE_PANELS]


def _with_x(panels: list[F.Panel], x: list) -> list[F.Panel]:
    return [F.Panel(p.title, [F.Line(line.label, x, line.y, line.style) for line in p.lines]) for p in panels]


def curves_section(run: RunFiles) -> str:
    records = run.records
    if not records:
        return section("curves", "Training curves", note("no evaluation recorded yet (metrics.jsonl is empty)"))
    panels = _metric_panels(records)
    body = figure(F.panel_grid(panels, "step"), "loss and validation metrics against step",
                  "train loss is the loss of the last step before each evaluation")
    main = next((p for p in panels if p.title == f"validation {run.metric}"), panels[1] if len(panels) > 1 else None)
    timed = _with_x([panels[0]] + ([main] if main else []), A.series(records, "wall_seconds"))
    body += details("loss and the kept-model metric against wall-clock time",
                    figure(F.panel_grid(timed, "wall-clock seconds", columns=3), "curves against wall-clock time",
                           "wall-clock seconds of training, evaluation included"))
    steps = A.series(records, "step")
    resources = [F.Panel("learning rate", [F.Line("lr", steps, A.lr_values(records))],
                         empty_note="LR not recorded\n(metrics.jsonl has no lr field)"),
                 F.Panel("throughput", [F.Line("samples/s", steps, A.throughput(records))], ylabel="samples / s"),
                 F.Panel("memory", [F.Line("RSS", steps, A.series(records, "rss_mb"))], ylabel="RSS (MB)",
                         empty_note="RSS not recorded\n(metrics.jsonl has no rss_mb field)")]
    missing = [what for what, values in (("LR not recorded (no lr field)", A.lr_values(records)),
                                         ("RSS not recorded (no rss_mb field)", A.series(records, "rss_mb")))
               if not A.recorded(values)]
    body += subsection("Schedule and resources", figure(F.panel_grid(resources, "step", height=2.4),
                       "learning rate, throughput and memory against step",
                       "throughput: samples seen between two evaluations / wall-clock seconds between them "
                       "(evaluation time included)" + "".join(f"; {m}" for m in missing)))
    return section("curves", "Training curves", body)


def data_section(run: RunFiles) -> str:
    d = run.data_report
    if not d:
        return ""
    flags = [("train examples", d.get("train_examples")), ("validation examples", d.get("val_examples")),
             ("exact-duplicate train rows", d.get("train_duplicates")),
             ("validation examples also in train (leakage)", d.get("val_in_train"))]
    if d.get("imbalance_ratio") is not None:
        flags += [("imbalance ratio (max / min class count)", d["imbalance_ratio"]),
                  ("imbalance remedy", d.get("imbalance_remedy"))]
    rows = [[esc(k), f'<span class="flag">{fmt(v)}</span>' if ("dupl" in k or "leak" in k) and v else fmt(v)]
            for k, v in flags]
    left = table(["", ""], rows, "kv")
    sizes = {k.replace("_", " "): v for k, v in d.items()
             if k in ("text_words", "text_chars", "image_width", "image_height") and v}
    if sizes:
        left += figure(F.percentiles(sizes, "input sizes (train)"), "input size percentiles")
    parts = [f"<div>{left}</div>"]
    counts = d.get("class_counts") or {}
    if counts:
        shown = sorted(counts.items(), key=lambda kv: -kv[1])[:40]
        parts.append(figure(F.hbars([k for k, _ in shown], {"train examples": [v for _, v in shown]},
                                    "train examples per class" + (" (40 largest)" if len(counts) > 40 else ""),
                                    "examples", width=4.6), "class counts"))
    body = '<div class="row">' + "".join(parts) + "</div>"
    windows = ((run.summary or {}).get("data") or {}).get("windows")
    if windows:
        keys = list(next(iter(windows.values())))
        body += subsection("Sentence windows", table(["split"] + [k.replace("_", " ") for k in keys],
                                                     ([esc(s)] + [fmt(c.get(k)) for k in keys]
                                                      for s, c in windows.items())))
    return section("data", "Data", body, "from data_report.json, written before training")


def strategies_section(run: RunFiles) -> str:
    s = run.summary
    if not s:
        return ""
    keys = ("precision", "threads", "samples_per_second", "tokens_per_second", "gflops_per_second", "eval_seconds",
            "peak_rss_mb", "rss_at_train_start_mb", "lr")
    speed = [(k.replace("_", " "), s.get(k)) for k in keys if s.get(k) is not None]
    params = s.get("params") or {}
    speed += [(f"parameters {k}", v) for k, v in params.items()]
    strategies = [(k.replace("_", " "), v) for k, v in (s.get("strategies") or {}).items()]
    body = (f'<div class="row"><div>{subsection("Speed and size", kv_table(speed))}</div>'
            f'<div>{subsection("Strategies", kv_table(strategies))}</div></div>')
    return section("strategies", "Strategies and speed", body, "from summary.json")


def recipe_section(run: RunFiles) -> str:
    return section("recipe", "Recipe", details("the resolved recipe (config.yaml)",
                                               f"<pre>{esc(run.config_text)}</pre>"))
