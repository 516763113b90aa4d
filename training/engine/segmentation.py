"""U-Net-style segmentation over any timm encoder, trained on a soft consensus map.

Architecture: O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical
Image Segmentation", MICCAI 2015: the encoder's feature maps at strides 2..32 (timm's
``features_only=True``) are merged back from the deepest one, each step upsampling 2x,
concatenating the skip at that stride and applying two 3x3 conv-BN-ReLU layers. One 1x1 conv
gives a logit per class and pixel; classes are independent (sigmoid), so the target is the
per-class foreground probability ``[C, H, W]``: STAPLE's soft map (Warfield et al., IEEE TMI
23(7), 2004: the posterior ``W`` of eq. 14) or a hard expert / majority-vote mask.

Loss: binary cross-entropy with the soft target plus the soft Dice loss
``1 - (2 sum p t + eps) / (sum p + sum t + eps)`` per image and class (F. Milletari, N. Navab,
S.-A. Ahmadi, "V-Net", 3DV 2016, eq. 1 with a linear denominator, which keeps soft targets
meaningful). A learned per-annotator noise model is not part of this module: on the simulated
nuclei crowds STAPLE's map already carries each rater's sensitivity and specificity.

The encoder's ImageNet weights come through :func:`training.engine.backbones.build_model`
(offline for the default backbone), so every weights option of a classification run applies.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from training.engine.backbones import DataConfig, build_model
from training.engine.weights import WeightsError

__all__ = [
    "SegmentationNet",
    "UNetDecoder",
    "build_encoder",
    "mask_loss",
    "soft_dice_loss",
]

DEFAULT_DECODER_CHANNELS = (128, 64, 32, 16)


def build_encoder(
    name: str,
    weights: str | os.PathLike[str] = "imagenet",
    *,
    in_chans: int = 3,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[nn.Module, DataConfig]:
    """``timm.create_model(name, features_only=True)`` with the weights a classification run
    would get; returns the encoder and its DataConfig (mean, std of the pretraining).

    The classifier model is built once by ``build_model`` (its offline conversion, weight-file
    checks and hub tags), and the encoder takes every one of its weights by name.
    """
    encoder = timm.create_model(name, features_only=True, pretrained=False, in_chans=in_chans)
    classifier, data_config = build_model(
        name, 1, weights, in_chans=in_chans, cache_dir=cache_dir
    )
    if os.fspath(weights) != "none":
        missing, _ = encoder.load_state_dict(classifier.state_dict(), strict=False)
        if missing:
            raise WeightsError(
                f"the weights of {name!r} do not cover its feature encoder: {len(missing)} "
                f"missing keys (e.g. {missing[:3]})"
            )
    return encoder, data_config


class _ConvBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNetDecoder(nn.Module):
    """Merge encoder features (shallow to deep) back up to the shallowest ``stop_stride``.

    ``encoder_channels[i]`` is the width of feature ``i``; ``channels[j]`` is the decoder's
    width after merging the ``j``-th skip counted from the deepest (one entry per merge).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        deep_to_shallow = list(encoder_channels)[::-1]
        if len(channels) > len(deep_to_shallow) - 1:
            raise ValueError(
                f"{len(channels)} decoder stages but only {len(deep_to_shallow) - 1} skips"
            )
        blocks = []
        width = deep_to_shallow[0]
        for skip, out in zip(deep_to_shallow[1:], channels, strict=False):
            blocks.append(_ConvBlock(width + skip, out))
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = width

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        deep_to_shallow = list(features)[::-1]
        x = deep_to_shallow[0]
        for block, skip in zip(self.blocks, deep_to_shallow[1:], strict=False):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return x


class SegmentationNet(nn.Module):
    """Encoder + U-Net decoder + a 1x1 conv: ``[B, num_classes, H, W]`` logits at input size."""

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("num_classes must be at least 1")
        self.encoder = encoder
        self.decoder = UNetDecoder(encoder.feature_info.channels(), decoder_channels)
        self.head = nn.Conv2d(self.decoder.out_channels, num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.decoder(self.encoder(images)))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over images and classes of ``1 - soft Dice`` (``targets`` in [0, 1], same shape)."""
    probabilities = torch.sigmoid(logits.float())
    dims = tuple(range(2, logits.ndim))
    overlap = (probabilities * targets).sum(dims)
    total = probabilities.sum(dims) + targets.sum(dims)
    return (1.0 - (2.0 * overlap + eps) / (total + eps)).mean()


def mask_loss(
    logits: torch.Tensor, targets: torch.Tensor, dice_weight: float = 1.0
) -> torch.Tensor:
    """BCE with the soft targets + ``dice_weight`` x soft Dice loss."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets)
    return bce + dice_weight * soft_dice_loss(logits, targets)
