"""One look for every chart Quorum draws: the dashboard's inline SVGs (labeling/charts.py) and
a training run's report plots (metrics.py), so both pages read alike: the site's palette
(quorum.css), one font at the same sizes, light grids, no top/right frame.

Pure matplotlib (no Django), imported lazily: the engine imports without it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

# The site's colours (frontend/static/frontend/quorum.css): accent first.
ACCENT = "#2f6fde"
SECOND = "#e07b39"
GOOD = "#1a7f37"
PALETTE = [ACCENT, SECOND, GOOD, "#9c27b0", "#c62828", "#00838f", "#6d4c41"]
FOREGROUND = "#1d2330"
MUTED = "#667085"
GRID = "#e3e6eb"
REFERENCE = "#98a2b3"  # diagonals and other reference lines
CMAP = "Blues"


def rc_params() -> dict[str, Any]:
    from cycler import cycler

    return {
        "font.family": "sans-serif",
        "font.sans-serif": ["DejaVu Sans"],
        "font.size": 8,
        "axes.titlesize": 10,
        "axes.titleweight": "bold",
        "axes.labelsize": 8,
        "xtick.labelsize": 7.5,
        "ytick.labelsize": 7.5,
        "legend.fontsize": 7.5,
        "legend.frameon": False,
        "text.color": FOREGROUND,
        "axes.labelcolor": FOREGROUND,
        "axes.edgecolor": REFERENCE,
        "xtick.color": MUTED,
        "ytick.color": MUTED,
        "axes.prop_cycle": cycler(color=PALETTE),
        "axes.spines.top": False,
        "axes.spines.right": False,
        "grid.color": GRID,
        "grid.linewidth": 0.8,
        "lines.linewidth": 1.8,
        "lines.markersize": 4,
        "image.cmap": CMAP,
        "figure.dpi": 100,
        "savefig.dpi": 100,
        "figure.facecolor": "white",
    }


def styled(func: Callable | None = None, **extra: Any) -> Callable:
    """Draw under the house style (plus ``extra`` rcParams), never the process-wide rcParams:
    safe in threaded web servers and workers."""

    def decorator(inner: Callable) -> Callable:
        @wraps(inner)
        def wrapped(*args, **kwargs):
            import matplotlib

            with matplotlib.rc_context({**rc_params(), **extra}):
                return inner(*args, **kwargs)

        return wrapped

    return decorator(func) if func is not None else decorator
