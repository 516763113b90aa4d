"""Centre-heatmap detection (points, boxes, counts) on the segmentation model's encoder.

X. Zhou, D. Wang, P. Krähenbühl, "Objects as Points", arXiv:1904.07850, 2019 (CenterNet): the
U-Net decoder of :mod:`training.engine.segmentation` stops at stride 4, where three small heads
predict a heatmap per class (a Gaussian peak at each object's centre), the sub-cell offset of
the centre, and for boxes the box's width and height. Loss: the penalty-reduced focal loss of
eq. 1 (alpha 2, beta 4) on the heatmap, L1 on the offset and size at the centre cells (eq. 2-3;
the size is regressed as a log, so one weight serves small platelets and large white cells).

A consensus object carries a confidence: it weights the object's positive term and its
regression, so a point half the crowd marked pulls half as hard as one everyone marked.
The Gaussian's sigma is a third of the project's match distance for points, and a sixth of the
box's geometric-mean side for boxes (CenterNet sizes it by the box, too).

Decoding: a peak is a heatmap cell at least ``threshold`` and the maximum of its 3x3
neighbourhood (eq. 4's max-pool NMS) over all classes, so an object uncertain between two classes
counts once, as its likelier class; the count of an image is its number of peaks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.engine.segmentation import DEFAULT_DECODER_CHANNELS, UNetDecoder

__all__ = [
    "OUTPUT_STRIDE",
    "CentreNet",
    "centre_loss",
    "centre_targets",
    "decode_centres",
]

OUTPUT_STRIDE = 4
Kind = Literal["points", "boxes"]
_MIN_SIGMA = 0.7  # output cells: a narrower peak is one cell and trains like a needle


class CentreNet(nn.Module):
    """Encoder + U-Net decoder to stride 4 + heads: ``{"heatmap": [B, C, h, w] logits,
    "offset": [B, 2, h, w], "size": [B, 2, h, w] (log width and height in cells; boxes)}``."""

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        kind: Kind,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        if kind not in ("points", "boxes"):
            raise ValueError("kind must be 'points' or 'boxes'")
        self.kind = kind
        self.encoder = encoder
        # the decoder's last merge would reach stride 2; stride 4 is CenterNet's output
        self.decoder = UNetDecoder(encoder.feature_info.channels(), list(decoder_channels)[:3])
        width = self.decoder.out_channels
        self.heatmap = self._head(width, num_classes)
        # CenterNet's prior: each cell starts at p = 0.1, so the first focal losses are sane
        nn.init.constant_(self.heatmap[-1].bias, -2.19)
        self.offset = self._head(width, 2)
        self.size = self._head(width, 2) if kind == "boxes" else None

    @staticmethod
    def _head(width: int, out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, out, 1)
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.decoder(self.encoder(images))
        out = {"heatmap": self.heatmap(features), "offset": self.offset(features)}
        if self.size is not None:
            out["size"] = self.size(features)
        return out


def centre_targets(
    centres: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    sizes: np.ndarray | None,
    num_classes: int,
    output_shape: tuple[int, int],
    point_sigma: float,
) -> dict[str, np.ndarray]:
    """Dense targets at stride 4 for objects given in input pixels.

    ``centres`` ``[n, 2]`` x, y; ``labels`` ``[n]``; ``weights`` ``[n]`` confidences; ``sizes``
    ``[n, 2]`` widths and heights (boxes) or None (points, whose Gaussian has ``point_sigma``
    input pixels). Returns ``heatmap`` ``[C, h, w]`` (max of the objects' Gaussians),
    ``positive`` ``[C, h, w]`` (an object's confidence at its centre cell), ``offset``,
    ``size`` ``[2, h, w]`` and ``centre`` ``[h, w]`` (the regression weight of each cell).
    """
    h, w = output_shape
    heatmap = np.zeros((num_classes, h, w), dtype=np.float32)
    positive = np.zeros((num_classes, h, w), dtype=np.float32)
    offset = np.zeros((2, h, w), dtype=np.float32)
    size = np.zeros((2, h, w), dtype=np.float32)
    centre = np.zeros((h, w), dtype=np.float32)
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    for n in range(len(centres)):
        cx, cy = centres[n] / OUTPUT_STRIDE
        col, row = int(np.floor(cx)), int(np.floor(cy))
        if not (0 <= col < w and 0 <= row < h):
            continue
        if sizes is not None:
            side = float(np.sqrt(max(sizes[n][0], 1.0) * max(sizes[n][1], 1.0)))
            sigma = max(side / 6.0 / OUTPUT_STRIDE, _MIN_SIGMA)
        else:
            sigma = max(point_sigma / OUTPUT_STRIDE, _MIN_SIGMA)
        k = int(labels[n])
        gaussian = np.exp(-((xs - col) ** 2 + (ys - row) ** 2) / (2 * sigma * sigma))
        np.maximum(heatmap[k], gaussian, out=heatmap[k])
        weight = float(weights[n])
        if weight > positive[k, row, col]:
            positive[k, row, col] = weight
        if weight >= centre[row, col]:
            centre[row, col] = weight
            offset[:, row, col] = (cx - col, cy - row)
            if sizes is not None:
                size[:, row, col] = np.log(np.maximum(sizes[n], 1.0) / OUTPUT_STRIDE)
    return {"heatmap": heatmap, "positive": positive, "offset": offset, "size": size,
            "centre": centre}


def centre_loss(
    outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], size_weight: float = 0.1
) -> torch.Tensor:
    """Focal heatmap loss + L1 offset + ``size_weight`` x L1 log size, per positive weight."""
    logits = outputs["heatmap"].float()
    heat, positive = targets["heatmap"], targets["positive"]
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    is_positive = positive > 0
    positive_term = positive * (1 - p) ** 2 * log_p
    negative_term = (1 - heat) ** 4 * p**2 * log_not_p
    n_positive = positive.sum().clamp(min=1.0)
    focal = -(torch.where(is_positive, positive_term, negative_term)).sum() / n_positive

    centre = targets["centre"].unsqueeze(1)  # [B, 1, h, w]
    n_centres = centre.sum().clamp(min=1.0)
    regression = (centre * (outputs["offset"].float() - targets["offset"]).abs()).sum() / n_centres
    if "size" in outputs:
        regression = regression + size_weight * (
            centre * (outputs["size"].float() - targets["size"]).abs()
        ).sum() / n_centres
    return focal + regression


@torch.no_grad()
def decode_centres(
    outputs: dict[str, torch.Tensor], threshold: float = 0.3, max_objects: int = 300
) -> list[dict[str, np.ndarray]]:
    """Peaks of each image's heatmap as ``{"points" [n, 2] (input pixels), "boxes" [n, 4]
    (with a size head), "labels" [n], "scores" [n]}``, highest score first."""
    heat = torch.sigmoid(outputs["heatmap"].float())
    # the 3x3 maximum over every class: one object is one class, not a peak in two channels
    best = F.max_pool2d(heat.amax(dim=1, keepdim=True), 3, stride=1, padding=1)
    peaks = (heat == best) & (heat >= threshold)
    results = []
    for b in range(heat.shape[0]):
        k, rows, cols = torch.nonzero(peaks[b], as_tuple=True)
        scores = heat[b, k, rows, cols]
        order = torch.argsort(scores, descending=True)[:max_objects]
        k, rows, cols, scores = k[order], rows[order], cols[order], scores[order]
        offset = outputs["offset"][b, :, rows, cols].float()
        x = (cols.float() + offset[0]) * OUTPUT_STRIDE
        y = (rows.float() + offset[1]) * OUTPUT_STRIDE
        found = {
            "points": torch.stack([x, y], dim=1).cpu().numpy().astype(np.float64),
            "labels": k.cpu().numpy().astype(np.int64),
            "scores": scores.cpu().numpy().astype(np.float64),
        }
        if "size" in outputs:
            wh = torch.exp(outputs["size"][b, :, rows, cols].float()) * OUTPUT_STRIDE
            found["boxes"] = (
                torch.stack([x - wh[0] / 2, y - wh[1] / 2, x + wh[0] / 2, y + wh[1] / 2], dim=1)
                .cpu()
                .numpy()
                .astype(np.float64)
            )
        results.append(found)
    return results
