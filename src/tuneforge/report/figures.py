"""Matplotlib figures (Agg, no display) returned as data: URIs, so the report is one file that opens offline.

Each function takes plain numbers and returns `data:image/png;base64,...`; the caller decides where it goes."""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: never a display, also in threads / sub-processes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100
WIDTH = 10.8  # inches: the page's content width at DPI
plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False,
                     "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8, "legend.frameon": False})


def to_uri(fig, fmt: str = "png") -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class Line:
    label: str
    x: Sequence[float]
    y: Sequence[Optional[float]]
    style: str = "-"


@dataclass
class Panel:
    title: str
    lines: list[Line] = field(default_factory=list)
    ylabel: str = ""
    empty_note: str = "not recorded"
    log_y: bool = False


def _draw(ax, panel: Panel, xlabel: str, legend: bool = True) -> None:
    ax.set_title(panel.title)
    ax.set_xlabel(xlabel)
    if panel.ylabel:
        ax.set_ylabel(panel.ylabel)
    drawn = False
    for line in panel.lines:
        pts = [(x, y) for x, y in zip(line.x, line.y) if y is not None and math.isfinite(y)]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, line.style, marker="o" if len(pts) < 30 else None, markersize=3, label=line.label)
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, panel.empty_note, ha="center", va="center", transform=ax.transAxes, color="#888")
        ax.set_xticks([]), ax.set_yticks([]), ax.set_xlabel(""), ax.set_ylabel("")
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_facecolor("#f5f7fa")
        return
    if panel.log_y:
        ax.set_yscale("log")
    if legend and len(panel.lines) > 1:
        ax.legend(loc="best")


def _columns(n: int) -> int:
    """Panels per row with the fewest empty slots in the last row (at most 4 a row)."""
    return n if n <= 4 else min((4, 3), key=lambda c: (-n % c, -c))


def panel_grid(panels: list[Panel], xlabel: str, columns: Optional[int] = None, height: float = 2.6,
               shared_legend: bool = False) -> str:
    """Small multiples: one axes per panel, `columns` to a row (default: balanced rows). shared_legend: one
    legend above the grid (the same lines, e.g. runs, in every panel) instead of one per panel."""
    columns = min(columns or _columns(len(panels)), len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(WIDTH, height * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        _draw(ax, panel, xlabel, legend=not shared_legend)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    if shared_legend:
        handles = {}
        for ax in axes.flat:
            for h, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, h)
        fig.legend(handles.values(), handles.keys(), loc="lower center", bbox_to_anchor=(0.5, 1.0),
                   ncol=min(len(handles), 6), fontsize=9)
    return to_uri(fig)


def heatmap(matrix: np.ndarray, row_labels: list[str], col_labels: list[str], title: str,
            xlabel: str = "predicted", ylabel: str = "true") -> str:
    return to_uri(heatmap_figure(matrix, row_labels, col_labels, title, xlabel, ylabel))


def heatmap_figure(matrix: np.ndarray, row_labels: list[str], col_labels: list[str], title: str,
                   xlabel: str = "predicted", ylabel: str = "true"):
    """Counts, coloured by share of their row (recall), annotated while the cells are large enough to read."""
    m = np.asarray(matrix, dtype=float)
    n = max(len(row_labels), len(col_labels))
    side = min(max(2.8, 0.34 * n + 1.3), 8.5)
    fig, ax = plt.subplots(figsize=(side + 0.9, side))
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    ticks = n <= 60
    long = n * max((len(str(c)) for c in col_labels), default=0) > 24  # would overlap when horizontal
    ax.set_xticks(range(len(col_labels)), col_labels if ticks else [], rotation=90 if long else 0)
    ax.set_yticks(range(len(row_labels)), row_labels if ticks else [])
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.set_title(title)
    if n <= 25:
        for (i, j), v in np.ndenumerate(m):
            if v:
                ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=8 if n <= 12 else 6,
                        color="white" if share[i, j] > 0.55 else "#222")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return fig


def _roc_pr(ax1, ax2, probs: np.ndarray, gold: np.ndarray, labels: list[str], max_classes: int) -> dict:
    """One-vs-rest ROC and precision-recall curves (binary: the second class only; many classes: the
    `max_classes` with the most support, plus the micro average). Returns the AUC and AP of every class."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    k = len(labels)
    support = np.bincount(gold, minlength=k)
    shown = [1] if k == 2 else [int(i) for i in np.argsort(-support, kind="stable")[:max_classes]]
    aucs = {}
    for i in range(k):
        y = gold == i
        if y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, probs[:, i])
        aucs[labels[i]] = {"roc_auc": float(auc(fpr, tpr)), "average_precision":
                           float(average_precision_score(y, probs[:, i]))}
        if i in shown:
            prec, rec, _ = precision_recall_curve(y, probs[:, i])
            ax1.plot(fpr, tpr, label=f"{labels[i]} (AUC {aucs[labels[i]]['roc_auc']:.3f})")
            ax2.plot(rec, prec, label=f"{labels[i]} (AP {aucs[labels[i]]['average_precision']:.3f})")
    if k > 2:
        onehot = np.eye(k)[gold].ravel()
        fpr, tpr, _ = roc_curve(onehot, probs.ravel())
        prec, rec, _ = precision_recall_curve(onehot, probs.ravel())
        ax1.plot(fpr, tpr, "k--", label=f"micro average (AUC {auc(fpr, tpr):.3f})")
        ax2.plot(rec, prec, "k--", label="micro average")
    ax1.plot([0, 1], [0, 1], ":", color="#999")
    ax1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one-vs-rest)")
    ax2.set(xlabel="recall", ylabel="precision", title="precision-recall (one-vs-rest)", ylim=(0, 1.02))
    small = 6.5 if len(shown) > 5 else 8
    ax1.legend(loc="lower right", fontsize=small)
    ax2.legend(loc="lower left", fontsize=small)
    return aucs


def _reliability(ax, rel: dict) -> None:
    """Accuracy per confidence bin against the diagonal (hatched: the gap to the bin's mean confidence), each
    bar labelled with how many predictions fall in it."""
    bins = rel["bins"]
    centers = (np.arange(bins) + 0.5) / bins
    has = rel["counts"] > 0
    acc, conf = np.nan_to_num(rel["accuracy"]), np.nan_to_num(rel["confidence"])
    ax.bar(centers[has], acc[has], width=1 / bins, color="#6fa8dc", edgecolor="#1f4e79", label="accuracy")
    ax.bar(centers[has], (conf - acc)[has], bottom=acc[has], width=1 / bins, fill=False, hatch="//",
           edgecolor="#c62828", linewidth=0.6, label="gap to mean confidence")
    for x, top, n in zip(centers[has], np.maximum(acc, conf)[has], rel["counts"][has]):
        ax.text(x, top + 0.015, str(n), ha="center", va="bottom", fontsize=6, color="#555")
    ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
    ax.set(xlabel="confidence (top probability); numbers: predictions", ylabel="accuracy", xlim=(0, 1),
           ylim=(0, 1.1), title=f"reliability ({bins} bins), ECE {rel['ece']:.4f}")
    ax.legend(loc="upper left", fontsize=7)


def classifier_curves(probs: np.ndarray, gold: np.ndarray, labels: list[str], rel: dict,
                      max_classes: int = 10) -> tuple[str, dict]:
    """ROC, precision-recall and the reliability diagram side by side; returns the figure and per-class AUCs."""
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(WIDTH, 3.7))
    aucs = _roc_pr(ax1, ax2, probs, gold, labels, max_classes)
    _reliability(ax3, rel)
    fig.tight_layout()
    return to_uri(fig), aucs


def hbars(names: list[str], groups: dict[str, Sequence[float]], title: str, xlabel: str,
          xlim: Optional[tuple] = None, marks: Optional[Sequence[float]] = None, mark_label: str = "",
          width: float = 5.0) -> str:
    """Horizontal bars, one row per name and one bar per group (e.g. precision / recall / F1 per class)."""
    n, g = len(names), len(groups)
    height = min(max(1.5, 0.2 * n * max(g, 1.5) + 0.9), 14)
    fig, ax = plt.subplots(figsize=(width, height))
    y = np.arange(n)
    width = 0.8 / g
    for i, (label, values) in enumerate(groups.items()):
        ax.barh(y + (i - (g - 1) / 2) * width, values, height=width, label=label)
    if marks is not None:
        ax.scatter(marks, y, marker="|", s=200, color="k", zorder=3, label=mark_label)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set(title=title, xlabel=xlabel)
    if xlim:
        ax.set_xlim(*xlim)
    if g > 1 or marks is not None:  # outside, right of the axes: never over a bar
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
    fig.tight_layout()
    return to_uri(fig)


def regression_plots(gold: np.ndarray, pred: np.ndarray) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(WIDTH, 4.0))
    ax1.scatter(gold, pred, s=10, alpha=0.6)
    lo, hi = float(min(gold.min(), pred.min())), float(max(gold.max(), pred.max()))
    ax1.plot([lo, hi], [lo, hi], "k:", label="predicted = true")
    ax1.set(xlabel="true", ylabel="predicted", title="predicted vs true")
    ax1.legend(loc="upper left")
    residual = pred - gold
    ax2.hist(residual, bins=min(40, max(10, len(residual) // 5)), color="#6fa8dc", edgecolor="#1f4e79")
    ax2.axvline(0, color="k", linestyle=":")
    ax2.set(xlabel="residual (predicted - true)", ylabel="examples",
            title=f"residuals: mean {residual.mean():+.4g}, std {residual.std():.4g}")
    fig.tight_layout()
    return to_uri(fig)


def percentiles(stats: dict[str, dict], title: str) -> str:
    """One strip per measure (text words, characters, image width, height), each on its own scale:
    the p5-p95 range as a bar, the median as a dot, the maximum as a cross."""
    fig, axes = plt.subplots(len(stats), 1, figsize=(5.0, 0.75 * len(stats) + 0.7), squeeze=False)
    for ax, (name, p) in zip(axes[:, 0], stats.items()):
        ax.barh([0], [p["p95"] - p["p5"]], left=[p["p5"]], height=0.5, color="#9fc5e8", label="p5 to p95")
        ax.plot([p["p50"]], [0], "o", color="#1f4e79", label="median")
        ax.plot([p["max"]], [0], "x", color="#c62828", label="max")
        ax.set_yticks([0], [name])
        ax.set_ylim(-0.6, 0.6)
        ax.set_xlim(0, p["max"] * 1.08 + 1e-9)
        if p["p5"] == p["max"]:  # every input the same size
            ax.text(p["max"], 0.32, f"all {p['max']:g}", ha="center", fontsize=7)
            continue
        ax.text(p["p50"], 0.32, f"{p['p50']:g}", ha="center", fontsize=7)
        ax.text(p["max"], 0.32, f"{p['max']:g}", ha="center", fontsize=7, color="#c62828")
    axes[0, 0].set_title(title)
    axes[-1, 0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, fontsize=7)
    fig.tight_layout()
    return to_uri(fig)


def thumbnail(image, max_px: int = 128, min_px: int = 96) -> Optional[str]:
    """A JPEG data URI of an image path or pixel array, at most max_px on its long side (tiny images are
    enlarged to min_px with nearest-neighbour so that their pixels stay visible)."""
    from PIL import Image

    try:
        im = Image.fromarray(np.asarray(image, dtype=np.uint8)) if not isinstance(image, str) else Image.open(image)
        im = im.convert("RGB")
    except (OSError, ValueError, TypeError):
        return None
    im.thumbnail((max_px, max_px))
    if max(im.size) < min_px:
        scale = min_px / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
