"""The run report's picture of the annotator confusions a crowd model learned (crowd layer,
AggNet, CoNAL): a grid of small heatmaps, one per annotator, the annotators with the most votes
first. Each is ``P(vote = column | true class = row)``, drawn in the house style
(:mod:`training.engine.chart_style`) like the report's other plots.

Drawn by the worker that trained the run (matplotlib, no Django); the PNG lives in the run's
folder, beside its checkpoints, and the run page and the API serve it from there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.engine.chart_style import styled

# annotators shown: the most active ones (a grid of 12 still reads at a glance)
MAX_ANNOTATORS = 12
COLUMNS = 4


@styled
def plot_annotator_confusions(
    confusions: np.ndarray,
    names: Sequence[str],
    n_votes: Sequence[int],
    class_names: Sequence[str],
    limit: int = MAX_ANNOTATORS,
) -> bytes:
    """PNG of ``confusions`` ``[n_workers, K, K]`` (rows: true class, columns: vote) for the
    ``limit`` annotators with the most votes, each titled with its name, votes and accuracy
    (mean of its diagonal)."""
    from training.engine.metrics import _figure, _png

    confusions = np.asarray(confusions, dtype=np.float64)
    if confusions.ndim != 3 or confusions.shape[1] != confusions.shape[2]:
        raise ValueError(f"confusions must be [n_workers, K, K], got {confusions.shape}")
    if not (len(names) == len(n_votes) == len(confusions)):
        raise ValueError("one name and one vote count per annotator")
    shown = top_annotators(n_votes, limit)
    if not shown:
        raise ValueError("no annotator to draw")
    k = confusions.shape[1]
    columns = min(COLUMNS, len(shown))
    rows = -(-len(shown) // columns)
    cell = 1.0 + 0.25 * k
    figure = _figure(cell * columns + 0.8, cell * rows + 0.4)
    grid = figure.subplots(rows, columns, squeeze=False)
    image = None
    short = [name[:6] for name in class_names]
    for slot, axes in enumerate(grid.flat):
        if slot >= len(shown):
            axes.set_axis_off()
            continue
        worker = shown[slot]
        matrix = confusions[worker]
        image = axes.imshow(matrix, vmin=0.0, vmax=1.0, cmap="Blues")
        accuracy = float(np.mean(np.diag(matrix)))
        axes.set_title(
            f"{names[worker][:14]}\n{n_votes[worker]} votes · {accuracy:.2f}", fontsize=7.5
        )
        axes.set_xticks(range(k), short if slot // columns == rows - 1 else [""] * k, rotation=90)
        axes.set_yticks(range(k), short if slot % columns == 0 else [""] * k)
        if k <= 5:
            for (r, c), value in np.ndenumerate(matrix):
                axes.text(
                    c, r, f"{value:.2f}"[1:] if value < 1 else "1", ha="center", va="center",
                    fontsize=6, color="white" if value > 0.5 else "black",
                )  # fmt: skip
    figure.supxlabel("vote", fontsize=8)
    figure.supylabel("true class", fontsize=8)
    if image is not None:
        figure.colorbar(image, ax=grid.ravel().tolist(), fraction=0.02, pad=0.02)
    return _png(figure)


def top_annotators(n_votes: Sequence[int], limit: int = MAX_ANNOTATORS) -> list[int]:
    """Indices of the ``limit`` annotators with the most votes (ties: lower index first)."""
    votes = np.asarray(n_votes, dtype=np.int64)
    order = np.argsort(-votes, kind="stable")
    return [int(i) for i in order[:limit] if votes[i] > 0]
