"""Class probabilities from a trained model, and reloading a model file the trainer wrote."""

from __future__ import annotations

import os
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.engine.backbones import build_model
from training.engine.checkpoints import load_model_file
from training.engine.data import Preprocessing

__all__ = ["load_trained_model", "predict"]


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    channels_last: bool = True,
) -> np.ndarray:
    """Softmax probabilities ``[N, K]`` (float32) for every item of ``dataset``, in order.

    ``dataset`` yields ``(image, ...)`` tuples (an :class:`ItemDataset` built without
    augmentation). The model is left in eval mode (and in channels-last layout if asked).
    """
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.float16)
        if device.type == "cuda"
        else nullcontext()
    )
    chunks = []
    for batch in loader:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        with autocast:
            logits = model(images.to(device, non_blocking=True, memory_format=memory_format))
        chunks.append(logits.float().softmax(dim=-1).cpu())
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(chunks).numpy()


def load_trained_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, Preprocessing]:
    """Rebuild a model from the trainer's ``model.safetensors``; returns it with its preprocessing."""
    state_dict, metadata = load_model_file(path)
    model, _ = build_model(
        metadata["model_name"],
        int(metadata["num_classes"]),
        "none",
        in_chans=int(metadata["in_chans"]),
    )
    model.load_state_dict(state_dict, strict=True)
    prep = metadata["preprocessing"]
    preprocessing = Preprocessing(
        image_size=tuple(prep["image_size"]),
        in_chans=int(prep["in_chans"]),
        mean=tuple(prep["mean"]),
        std=tuple(prep["std"]),
        interpolation=prep["interpolation"],
        intensity_percentiles=(
            tuple(prep["intensity_percentiles"]) if prep["intensity_percentiles"] else None
        ),
        augment=False,
        horizontal_flip=bool(prep["horizontal_flip"]),
    )
    return model.to(device).eval(), preprocessing
