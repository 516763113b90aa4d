"""Files the engine writes: atomic writes, training checkpoints and the final model file.

A Celery worker can be killed at any moment (OOM, redeploy, cancelled run). Every file is
therefore written to a temporary name in the destination folder and moved into place with
``os.replace``, so a reader sees either the previous complete file or the new complete one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "CheckpointError",
    "atomic_write",
    "load_checkpoint",
    "load_model_file",
    "save_checkpoint",
    "save_model_file",
]


class CheckpointError(RuntimeError):
    """A checkpoint or model file is missing, unreadable or does not belong to this run."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename.

    The temporary file lives in the destination folder because ``os.replace`` is only atomic
    within one file system.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp_path = Path(tmp_name)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a resumable training state (model, optimizer, scaler, RNG, ...) atomically."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with a readable error if it is bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # checkpoints hold only tensors and plain containers, so unpickling stays restricted
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from error
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path} is not a Quorum training checkpoint")
    return state


def save_model_file(
    model: nn.Module, path: str | os.PathLike[str], metadata: dict[str, Any]
) -> Path:
    """Save the trained weights as safetensors with the facts needed to rebuild the model.

    ``metadata`` (model name, classes, preprocessing) is stored as one JSON string because
    safetensors metadata values must be strings.
    """
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    header = {"quorum": json.dumps(metadata, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def load_model_file(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_model_file`: (state dict, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"model file {path} cannot be read: {error}") from error
    if "quorum" not in header:
        raise CheckpointError(f"{path} has no Quorum metadata; it is not a trained-model file")
    return state_dict, json.loads(header["quorum"])
