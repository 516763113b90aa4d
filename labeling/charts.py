"""Server-side SVG charts for the dashboard, drawn with matplotlib's object API (no pyplot: no
global figure state, safe in threaded web servers). Each function returns an ``<svg>`` element
ready to inline in a page; an empty data set gives a chart that says so rather than nothing.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import wraps
from html import escape

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

ACCENT = "#2f6fde"
SECOND = "#e07b39"
PALETTE = ["#2f6fde", "#e07b39", "#1a7f37", "#9c27b0", "#c62828", "#00838f", "#6d4c41"]


def _figure(width: float = 4.8, height: float = 2.8) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def _chart(name: str):
    """Draw under local settings, never the process-wide rcParams. Several charts share a
    page: a per-chart salt keeps their internal element ids distinct, and text stays text
    (smaller, selectable, findable by tests)."""

    def decorator(func):
        @wraps(func)
        def wrapped(*args, **kwargs) -> str:
            style = {"font.size": 8, "svg.hashsalt": f"quorum-{name}", "svg.fonttype": "none"}
            with matplotlib.rc_context(style):
                return func(*args, **kwargs)

        return wrapped

    return decorator


def _to_svg(fig: Figure, name: str) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    text = buffer.getvalue()
    svg = text[text.index("<svg") :]
    return svg.replace("<svg ", f'<svg data-chart="{escape(name)}" role="img" ', 1)


def _mark_data(artists) -> None:
    """Tag the artists that draw data (``<g id="data-...">`` in the SVG), so a test can tell a
    chart with data from empty axes."""
    for i, artist in enumerate(artists):
        artist.set_gid(f"data-{i}")


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", color="#667085", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


@_chart("votes-per-item")
def votes_histogram(rows: Sequence[dict]) -> str:
    """Bars: number of items per vote count."""
    fig = _figure()
    ax = fig.add_subplot()
    if rows:
        bars = ax.bar([r["votes"] for r in rows], [r["items"] for r in rows], color=ACCENT, width=0.8)
        _mark_data(bars)
        ax.set_xticks([r["votes"] for r in rows])
        # A lone bar would otherwise fill the whole axes.
        ax.set_xlim(min(r["votes"] for r in rows) - 1.5, max(r["votes"] for r in rows) + 1.5)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("votes on the item")
        ax.set_ylabel("items")
    else:
        _empty(ax, "No items yet")
    ax.set_title("Votes per item", fontsize=10)
    return _to_svg(fig, "votes-per-item")


@_chart("agreement")
def agreement_over_time(rows: Sequence[dict]) -> str:
    """Lines: Fleiss' kappa and Krippendorff's alpha of each aggregation run, in run order."""
    fig = _figure()
    ax = fig.add_subplot()
    if rows:
        x = list(range(1, len(rows) + 1))
        for key, label, color in (
            ("fleiss_kappa", "Fleiss' κ", ACCENT),
            ("krippendorff_alpha", "Krippendorff's α", SECOND),
        ):
            points = [(i, r[key]) for i, r in zip(x, rows, strict=True) if r[key] is not None]
            if points:
                lines = ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=label, color=color)
                _mark_data(lines)
        ax.set_xlabel("aggregation run")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(min(0.0, *(r["fleiss_kappa"] or 0 for r in rows)) - 0.05, 1.05)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    else:
        _empty(ax, "No aggregation run yet")
    ax.set_title("Agreement over time", fontsize=10)
    return _to_svg(fig, "agreement")


@_chart("methods")
def method_accuracy(scores: Sequence[dict]) -> str:
    """Horizontal bars: each method's hold-out accuracy with its 95% Wilson interval."""
    scored = [s for s in scores if s["accuracy"] is not None]
    fig = _figure(height=max(1.8, 0.45 * len(scored) + 1.0))
    ax = fig.add_subplot()
    if scored:
        y = list(range(len(scored)))
        acc = [s["accuracy"] for s in scored]
        # max(0, .): at p = 1 the upper bound is 1 only up to rounding.
        err = [
            [max(0.0, a - s["ci_low"]) for a, s in zip(acc, scored, strict=True)],
            [max(0.0, s["ci_high"] - a) for a, s in zip(acc, scored, strict=True)],
        ]
        _mark_data(ax.barh(y, acc, xerr=err, color=ACCENT, capsize=3, height=0.6))
        ax.set_yticks(y, [s["method"] for s in scored])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("accuracy on the expert hold-out (95% CI)")
    else:
        _empty(ax, "No hold-out item has both a consensus and an expert label")
    ax.set_title("Methods vs experts", fontsize=10)
    return _to_svg(fig, "methods")


@_chart("calibration")
def calibration(scores: Sequence[dict]) -> str:
    """Reliability diagram: mean posterior confidence vs observed accuracy per bin, per method."""
    fig = _figure(4.2, 3.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1, label="perfectly calibrated")
    drawn = False
    for i, s in enumerate(scores):
        bins = s["calibration"]
        if not bins:
            continue
        drawn = True
        lines = ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            marker="o",
            ms=3,
            color=PALETTE[i % len(PALETTE)],
            label=s["method"],
        )
        _mark_data(lines)
    if not drawn:
        ax.text(0.5, 0.55, "No hold-out item scored yet", ha="center", color="#667085")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("posterior confidence")
    ax.set_ylabel("accuracy on the hold-out")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_title("Calibration", fontsize=10)
    return _to_svg(fig, "calibration")


def confusion_heatmap(matrix: Sequence[Sequence[float]] | None, classes: Sequence[str]) -> str:
    """A tiny K x K heatmap (rows: true class, columns: vote), written directly as SVG: one per
    annotator row, and matplotlib would cost tens of milliseconds each on a page of hundreds."""
    if not matrix:
        return ""
    k = len(matrix)
    cell = 16 if k <= 5 else 10
    size = k * cell
    rects = []
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            v = max(0.0, min(1.0, float(value)))
            # White (0) to the accent blue (1).
            r, g, b = (int(255 - v * (255 - c)) for c in (0x2F, 0x6F, 0xDE))
            title = f"true {classes[i] if i < len(classes) else i} → vote {classes[j] if j < len(classes) else j}: {v:.2f}"
            rects.append(
                f'<rect x="{j * cell}" y="{i * cell}" width="{cell}" height="{cell}" '
                f'fill="rgb({r},{g},{b})"><title>{escape(title)}</title></rect>'
            )
    return (
        f'<svg data-chart="confusion" role="img" xmlns="http://www.w3.org/2000/svg" '
        f'width="{size}" height="{size}" viewBox="0 0 {size} {size}">'
        f'<rect width="{size}" height="{size}" fill="none" stroke="#dde1e7"/>'
        + "".join(rects)
        + "</svg>"
    )

