"""Small HTML builders. Every piece of text from a run (inputs, labels, config values) goes through `esc`."""
from __future__ import annotations

import html
import math
from pathlib import Path
from string import Template
from typing import Any, Iterable, Optional

TEMPLATE = Path(__file__).with_name("template.html")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers with a fixed number of decimals (columns line up), None as a dash, lists comma-separated.
    Returns escaped HTML."""
    if value is None:
        return "&#8212;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return esc(value)
        if abs(value) >= 1e6:
            return f"{value:.{digits - 1}e}"
        if value != 0 and abs(value) < 0.01:  # learning rates and the like: significant digits
            return f"{value:.3g}"
        return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value) or "[]"
    if isinstance(value, dict):
        return esc(", ".join(f"{k}: {v}" for k, v in value.items()))
    return esc(value)


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    """Cells are HTML already (use fmt / esc)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def kv_table(items: Iterable[tuple[str, Any]]) -> str:
    return table(["", ""], ([esc(k), fmt(v)] for k, v in items), "kv")


def figure(uri: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{esc(alt)}">{cap}</figure>'


def section(anchor: str, title: str, body: str, intro: str = "") -> str:
    lead = f'<p class="intro">{esc(intro)}</p>' if intro else ""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{lead}{body}</section>'


def subsection(title: str, body: str) -> str:
    return f"<h3>{esc(title)}</h3>{body}"


def details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def note(text: str, kind: str = "") -> str:
    return f'<p class="note {kind}">{esc(text)}</p>'


def cards(items: Iterable[tuple[str, Any, Optional[str]]]) -> str:
    """Big numbers: (label, value, optional small print)."""
    out = []
    for label, value, small in items:
        sub = f"<small>{esc(small)}</small>" if small else ""
        out.append(f'<div class="card"><span>{esc(label)}</span><b>{fmt(value)}</b>{sub}</div>')
    return f'<div class="cards">{"".join(out)}</div>'


def nav(links: Iterable[tuple[str, str]]) -> str:
    return "<nav>" + "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in links) + "</nav>"


def page(title: str, subtitle: str, body: str) -> str:
    return Template(TEMPLATE.read_text(encoding="utf-8")).substitute(title=esc(title), subtitle=subtitle, body=body)
