"""A bag as a grid of square patches, and what the grid is used for outside the network.

An image of ``height x width`` pixels is cut into ``rows x cols`` patches of ``patch_size``
pixels every ``stride`` pixels; the last row and column are padded past the image edge so that
every pixel lies in at least one patch. Everything here is in the image's own pixel
coordinates (the ones expert ``Region`` boxes and points use), so attention maps, heatmaps and
localisation scores line up with the image whatever resolution the backbone saw.

Localisation scores (how well attention finds the evidence an expert marked):

* ``point_hit_rate``: the share of annotated points and box centres that fall inside one of the
  ``k`` most-attended patches of their image, ``k = ceil(top_fraction * rows * cols)``;
* ``argmax_box_overlap``: the share of images whose single most-attended patch overlaps a box
  (or contains a point);
* ``chance_*``: the same two numbers for patches picked uniformly at random, the baseline a
  useless attention map reaches (a large box overlaps many patches by chance).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PatchGrid", "attention_heatmap", "localisation_scores", "overlay_attention"]

Box = tuple[float, float, float, float]  # x0, y0, x1, y1; a point has x0 == x1 and y0 == y1


@dataclass(frozen=True)
class PatchGrid:
    """Where each patch of a bag lies in its image."""

    rows: int
    cols: int
    patch_size: int
    stride: int

    @classmethod
    def for_image(cls, height: int, width: int, patch_size: int, stride: int) -> PatchGrid:
        if patch_size < 1 or stride < 1:
            raise ValueError("patch_size and stride must be positive")
        if stride > patch_size:
            # pixels between patches would never be seen
            raise ValueError(f"stride {stride} must not exceed patch_size {patch_size}")

        def count(extent: int) -> int:
            return max(1, math.ceil(max(extent - patch_size, 0) / stride) + 1)

        return cls(count(height), count(width), patch_size, stride)

    @property
    def n_patches(self) -> int:
        return self.rows * self.cols

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    @property
    def padded_size(self) -> tuple[int, int]:
        """(height, width) covered by the grid, at least the image's."""
        return (
            (self.rows - 1) * self.stride + self.patch_size,
            (self.cols - 1) * self.stride + self.patch_size,
        )

    def boxes(self) -> np.ndarray:
        """``[rows * cols, 4]`` patch rectangles (x0, y0, x1, y1), row-major, x1/y1 exclusive."""
        r, c = np.divmod(np.arange(self.n_patches), self.cols)
        x0, y0 = c * self.stride, r * self.stride
        return np.stack([x0, y0, x0 + self.patch_size, y0 + self.patch_size], axis=1).astype(
            np.float64
        )

    def overlaps(self, region: Box) -> np.ndarray:
        """``[rows * cols]`` bool: which patches a box overlaps (or a point falls in)."""
        x0, y0, x1, y1 = region
        boxes = self.boxes()
        if x0 == x1 and y0 == y1:
            return (
                (boxes[:, 0] <= x0) & (x0 < boxes[:, 2]) & (boxes[:, 1] <= y0) & (y0 < boxes[:, 3])
            )
        return (boxes[:, 0] < x1) & (x0 < boxes[:, 2]) & (boxes[:, 1] < y1) & (y0 < boxes[:, 3])


def attention_heatmap(
    attention: np.ndarray | Sequence[Sequence[float]], grid: PatchGrid, height: int, width: int
) -> np.ndarray:
    """``[height, width]`` map: each pixel gets the mean attention of the patches covering it."""
    weights = np.asarray(attention, dtype=np.float64).reshape(grid.rows, grid.cols)
    padded_h, padded_w = grid.padded_size
    total = np.zeros((padded_h, padded_w))
    count = np.zeros((padded_h, padded_w))
    for r in range(grid.rows):
        for c in range(grid.cols):
            rows = slice(r * grid.stride, r * grid.stride + grid.patch_size)
            cols = slice(c * grid.stride, c * grid.stride + grid.patch_size)
            total[rows, cols] += weights[r, c]
            count[rows, cols] += 1
    return (total / np.maximum(count, 1))[:height, :width]


def overlay_attention(
    image: np.ndarray,
    attention: np.ndarray | Sequence[Sequence[float]],
    grid: PatchGrid,
    *,
    alpha: float = 0.45,
    max_side: int | None = 512,
    colormap: str = "inferno",
) -> bytes:
    """PNG of ``image`` (``HxW`` or ``HxWxC`` in [0, 1] or uint8) with the attention on top.

    Attention is rescaled to [0, 1] between its minimum and maximum (as Ilse et al. show it),
    so the map shows where the bag looks, not how peaked it is; a uniform map shows no colour.
    The picture is shrunk to ``max_side``, because a gallery does not need full resolution.
    """
    from matplotlib import colormaps
    from PIL import Image

    pixels = np.asarray(image)
    if pixels.dtype == np.uint8:
        pixels = pixels.astype(np.float32) / 255.0
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    pixels = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[:, :, :3]
    height, width = pixels.shape[:2]
    heat = attention_heatmap(attention, grid, height, width)
    spread = heat.max() - heat.min()
    heat = (heat - heat.min()) / spread if spread > 1e-12 else np.zeros_like(heat)
    colours = colormaps[colormap](heat)[:, :, :3]
    # the hot patches are tinted more than cold ones so the cells stay readable under them
    weight = alpha * (0.35 + 0.65 * heat)[:, :, None]
    blended = (1 - weight) * np.clip(pixels, 0, 1) + weight * colours
    picture = Image.fromarray((blended * 255).round().astype(np.uint8))
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
        picture = picture.resize(
            (max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR
        )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def localisation_scores(
    attentions: Sequence[np.ndarray | Sequence[Sequence[float]]],
    grids: Sequence[PatchGrid],
    regions: Sequence[Sequence[Box]],
    top_fraction: float = 0.1,
) -> dict[str, float | int | None]:
    """Localisation of the attention maps against expert boxes/points (see module docstring).

    Images without any region are skipped; ``n_items`` counts those scored.
    """
    if not len(attentions) == len(grids) == len(regions):
        raise ValueError("attentions, grids and regions must have one entry per image")
    if not 0 < top_fraction <= 1:
        raise ValueError("top_fraction must lie in (0, 1]")
    n_items = n_points = point_hits = argmax_hits = 0
    chance_points = chance_argmax = 0.0
    for attention, grid, marked in zip(attentions, grids, regions, strict=True):
        if not marked:
            continue
        weights = np.asarray(attention, dtype=np.float64).reshape(-1)
        if weights.size != grid.n_patches:
            raise ValueError(f"attention has {weights.size} values for a {grid.shape} grid")
        k = max(1, math.ceil(top_fraction * grid.n_patches))
        top = np.zeros(grid.n_patches, dtype=bool)
        # a stable sort breaks ties by patch order, so the score is reproducible
        top[np.argsort(-weights, kind="stable")[:k]] = True
        touched = np.zeros(grid.n_patches, dtype=bool)
        for region in marked:
            x0, y0, x1, y1 = region
            centre = ((x0 + x1) / 2, (y0 + y1) / 2)
            holds_centre = grid.overlaps((*centre, *centre))
            point_hits += bool((holds_centre & top).any())
            # chance that k random patches include one holding the centre
            m = int(holds_centre.sum())
            chance_points += 1 - math.comb(grid.n_patches - m, k) / math.comb(grid.n_patches, k)
            n_points += 1
            touched |= grid.overlaps(region)
        argmax_hits += bool(touched[int(np.argmax(weights))])
        chance_argmax += float(touched.mean())
        n_items += 1
    if n_items == 0:
        return {"n_items": 0, "n_points": 0, "top_fraction": top_fraction}
    return {
        "n_items": n_items,
        "n_points": n_points,
        "top_fraction": top_fraction,
        "point_hit_rate": point_hits / n_points,
        "argmax_box_overlap": argmax_hits / n_items,
        "chance_point_hit_rate": chance_points / n_points,
        "chance_argmax_box_overlap": chance_argmax / n_items,
    }
