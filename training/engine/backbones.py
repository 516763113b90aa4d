"""Build a timm backbone with the requested weights, and the preprocessing it expects.

Every model goes through ``timm.create_model``; weights that live in a local file reach timm via
``pretrained_cfg_overlay=dict(file=path)`` (timm's own offline path), so any timm name works.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models import load_state_dict
from torch import nn

from training.engine.weights import CONVERTIBLE_MODELS, WeightsError, converted_weights_path

__all__ = ["DataConfig", "WeightsError", "build_model", "data_config_for"]

_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


@dataclass(frozen=True)
class DataConfig:
    """What a backbone expects of its input (from timm's pretrained config)."""

    input_size: tuple[int, int, int]  # (channels, height, width)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str  # "bicubic" | "bilinear" | "nearest"
    crop_pct: float = 1.0

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.input_size[1], self.input_size[2]


def data_config_for(model: nn.Module, in_chans: int) -> DataConfig:
    """Read mean/std/size/interpolation from timm's config, adapted to ``in_chans`` channels."""
    resolved = timm.data.resolve_model_data_config(model)
    mean, std = tuple(resolved["mean"]), tuple(resolved["std"])
    if len(mean) != in_chans:
        # a grayscale stem built from RGB weights sees the channel average, so use its statistics
        mean = tuple([sum(mean) / len(mean)] * in_chans)
        std = tuple([sum(std) / len(std)] * in_chans)
    _, height, width = resolved["input_size"]
    return DataConfig(
        input_size=(in_chans, int(height), int(width)),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        interpolation=str(resolved.get("interpolation", "bilinear")),
        crop_pct=float(resolved.get("crop_pct", 1.0)),
    )


def build_model(
    name: str,
    num_classes: int,
    weights: str | os.PathLike[str] = "imagenet",
    *,
    in_chans: int = 3,
    cache_dir: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
) -> tuple[nn.Module, DataConfig]:
    """Create timm model ``name`` with a fresh ``num_classes`` head and return it with its DataConfig.

    ``weights``:
      - ``"imagenet"``: the offline converted checkpoint for names in ``CONVERTIBLE_MODELS``,
        otherwise timm's normal pretrained download (needs network);
      - ``"none"``: random initialisation;
      - a path to a state dict (``.pth``/``.pt``/``.bin``/``.safetensors``; a ``state_dict`` or
        ``model`` wrapper is accepted); the classifier is dropped when its size differs;
      - ``"hub:<tag>"``: timm's pretrained weights ``name.<tag>`` from the Hugging Face hub.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    common = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"unknown timm model {name!r}")

    weights_text = os.fspath(weights)
    if weights_text == "none":
        model = timm.create_model(name, pretrained=False, **common)
    elif weights_text == "imagenet" and name in CONVERTIBLE_MODELS:
        path = converted_weights_path(name, cache_dir)
        model = _create_from_file(name, path, common)
    elif weights_text == "imagenet" or weights_text.startswith("hub:"):
        tag = weights_text.removeprefix("hub:") if weights_text.startswith("hub:") else ""
        model = _create_from_hub(name, tag, common)
    else:
        model = _create_from_file(name, Path(weights_text), common)
    head_from_weights = weights_text != "none" and num_classes == model.pretrained_cfg.get(
        "num_classes"
    )
    if not head_from_weights:
        _reset_head(model)
    return model, data_config_for(model, in_chans)


def _reset_head(model: nn.Module) -> None:
    """Give a fresh classifier small weights and zero bias.

    Some timm families (EfficientNet's Google-style init) scale the head by
    1/sqrt(num_classes): fine for 1000 classes, but for two it gives logits in the tens on
    pretrained features and a loss that starts near 4 and fine-tunes badly.
    """
    head = model.pretrained_cfg.get("classifier") or ()
    for head_name in (head,) if isinstance(head, str) else tuple(head):
        try:
            layer = model.get_submodule(head_name)
        except AttributeError:
            continue
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _create_from_hub(name: str, tag: str, common: dict) -> nn.Module:
    full_name = f"{name}.{tag}" if tag else name
    try:
        return timm.create_model(full_name, pretrained=True, **common)
    except Exception as error:  # network, hub and missing-tag errors come in many types
        raise WeightsError(
            f"could not fetch pretrained weights {full_name!r} from the model hub "
            f"(offline, or unknown tag?): {type(error).__name__}: {error}"
        ) from error


def _create_from_file(name: str, path: Path, common: dict) -> nn.Module:
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist (weights must be 'imagenet', 'none', "
            "'hub:<tag>' or a path to a state dict file)"
        )
    if path.suffix not in _WEIGHT_SUFFIXES:
        raise WeightsError(f"weights file {path} should end in one of {_WEIGHT_SUFFIXES}")
    try:
        # read once up front: timm silently loads non-strictly when it replaces the head
        file_state = load_state_dict(str(path))
    except Exception as error:  # safetensors, pickle and zip each raise their own types
        raise WeightsError(
            f"weights file {path} is corrupt or not a state dict: {error}"
        ) from error
    if not isinstance(file_state, dict) or not all(
        isinstance(value, torch.Tensor) for value in file_state.values()
    ):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")

    try:
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **common
        )
    except RuntimeError as error:  # size mismatches are raised even in non-strict loads
        raise WeightsError(f"weights file {path} does not fit {name}: {error}") from error

    head = model.pretrained_cfg.get("classifier") or ()
    heads = (head,) if isinstance(head, str) else tuple(head)
    head_keys = {f"{h}.{suffix}" for h in heads for suffix in ("weight", "bias")}
    model_keys = set(model.state_dict())
    missing = sorted(model_keys - set(file_state) - head_keys)
    unexpected = sorted(set(file_state) - model_keys - head_keys)
    if missing or unexpected:
        raise WeightsError(
            f"weights file {path} does not fit {name}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    return model
