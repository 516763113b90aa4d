"""Server-side SVG charts for the dashboard, drawn with matplotlib's object API (no pyplot: no
global figure state, safe in threaded web servers). Each function returns an ``<svg>`` element
ready to inline in a page; an empty data set gives a chart that says so rather than nothing.
The look (palette, font, sizes) is the one a training run's report plots share:
``training.engine.chart_style``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from html import escape

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from training.engine.chart_style import ACCENT, MUTED, PALETTE, REFERENCE, SECOND, styled  # noqa: E402


def _figure(width: float = 4.8, height: float = 2.8) -> Figure:
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _chart(name: str):
    """The house style, plus: several charts share a page, so a per-chart salt keeps their
    internal element ids distinct, and text stays text (smaller, selectable, findable by
    tests)."""
    return styled(**{"svg.hashsalt": f"quorum-{name}", "svg.fonttype": "none"})


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
    ax.text(0.5, 0.5, message, ha="center", va="center", color=MUTED, transform=ax.transAxes)
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
    ax.set_title("Votes per item")
    return _to_svg(fig, "votes-per-item")


@_chart("agreement")
def agreement_over_time(points: Sequence[dict]) -> str:
    """Lines: Fleiss' kappa and Krippendorff's alpha of the votes cast up to each point
    (``reports.agreement_series``), against the number of votes cast."""
    fig = _figure()
    ax = fig.add_subplot()
    drawn = []
    for key, label, color in (
        ("fleiss_kappa", "Fleiss' κ", ACCENT),
        ("krippendorff_alpha", "Krippendorff's α", SECOND),
    ):
        xy = [(p["votes"], p[key]) for p in points if p[key] is not None]
        if xy:
            drawn += ax.plot(*zip(*xy, strict=True), marker="o", ms=3, label=label, color=color)
    if drawn:
        _mark_data(drawn)
        values = [p[k] for p in points for k in ("fleiss_kappa", "krippendorff_alpha")]
        ax.set_ylim(min(0.0, *(v for v in values if v is not None)) - 0.05, 1.05)
        ax.set_xlim(0, points[-1]["votes"] * 1.03)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("votes cast")
        ax.set_ylabel("agreement")
        ax.legend(loc="lower right")
        ax.grid(True)
    else:
        _empty(ax, "No item has two votes yet" if points else "No votes yet")
    ax.set_title("Agreement as votes came in")
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
    ax.set_title("Methods vs experts")
    return _to_svg(fig, "methods")


CALIBRATION_COLUMNS = 4


@_chart("calibration")
def calibration(scores: Sequence[dict]) -> str:
    """Reliability diagrams, one small panel per method (seven lines on one axes could not be
    told apart): mean posterior confidence against accuracy on the hold-out per bin, each dot
    sized by its bin's items, against the diagonal of perfect calibration."""
    scored = [s for s in scores if s["calibration"]]
    if not scored:
        fig = _figure(4.2, 2.8)
        ax = fig.add_subplot()
        _empty(ax, "No hold-out item scored yet")
        ax.set_title("Calibration")
        return _to_svg(fig, "calibration")
    columns = min(CALIBRATION_COLUMNS, len(scored))
    rows = math.ceil(len(scored) / columns)
    fig = _figure(1.55 * columns + 0.5, 1.6 * rows + 0.6)
    axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    most = max(b["n"] for s in scored for b in s["calibration"])
    for i, (ax, s) in enumerate(zip(axes, scored, strict=False)):
        bins = s["calibration"]
        ax.plot([0, 1], [0, 1], ls="--", color=REFERENCE, lw=1)
        confidence = [b["confidence"] for b in bins]
        accuracy = [b["accuracy"] for b in bins]
        color = PALETTE[i % len(PALETTE)]
        line = ax.plot(confidence, accuracy, color=color, lw=1.2)
        dots = ax.scatter(
            confidence, accuracy, s=[8 + 40 * b["n"] / most for b in bins], color=color, zorder=3
        )
        _mark_data([*line, dots])
        ax.set_title(f"{s['method']} (n={s['n']})", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xticks([0, 0.5, 1])
        ax.set_yticks([0, 0.5, 1])
        ax.grid(True)
    for ax in axes[len(scored) :]:
        ax.set_visible(False)
    fig.supxlabel("posterior confidence", fontsize=8)
    fig.supylabel("accuracy on the hold-out", fontsize=8)
    fig.suptitle("Calibration per method", fontsize=10, fontweight="bold")
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

