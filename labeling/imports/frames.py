"""What every decoder returns: the frames of one file, ready to hash, render and store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np


class ImportFileError(Exception):
    """A file that cannot be imported; the message is shown to the admin in the import report."""


@dataclass
class Frame:
    """One image a crowd worker will see (a picture, or one frame of a DICOM file)."""

    pixels: np.ndarray
    """The decoded pixels as the file holds them; the content hash is taken over these."""
    display: np.ndarray
    """uint8, (H, W) or (H, W, 3): what the browser shows."""
    array: np.ndarray | None = None
    """float32 full-precision pixels for training (e.g. DICOM after rescale); None when the
    8-bit rendering already holds every value."""
    frame_index: int = 0
    encoded: bytes | None = None
    """Ready-made browser file (a JPEG source with its metadata segments stripped)."""
    encoded_format: str = "png"


@dataclass
class DecodedFile:
    frames: list[Frame]
    width: int
    height: int
    channels: int
    modality: str = ""
    metadata: dict = field(default_factory=dict)
    original: bytes | None = None
    """De-identified DICOM file, stored only when the project keeps originals."""
    hash_frame_index: bool = False
    """Multi-frame DICOM: two equal frames of one file are still two items."""
    note: str = ""
    """Something the admin should know although the import succeeded."""


def content_hash(pixels: np.ndarray, frame_index: int | None = None) -> str:
    """SHA-256 of the decoded pixel bytes, their shape and dtype (and frame index when given).

    Byte order is normalised so that a big-endian and a little-endian file of the same image
    hash alike.
    """
    array = np.ascontiguousarray(pixels)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    digest = hashlib.sha256()
    digest.update(f"{array.shape}|{array.dtype.str}|".encode())
    if frame_index is not None:
        digest.update(f"frame={frame_index}|".encode())
    digest.update(array.data)
    return digest.hexdigest()


def stack_frames(decoded: DecodedFile) -> DecodedFile:
    """The frames of one grayscale file as ONE item: a stack read slice by slice.

    The item's ``array`` holds every slice (frames x rows x columns, full precision), its
    rendering and thumbnail show the middle slice, and ``metadata["stack"]`` says how many
    slices there are and which one the rendering shows. The content hash covers the whole
    stack. A single frame, or colour frames, are left as they are.
    """
    frames = decoded.frames
    if len(frames) < 2 or decoded.channels != 1:
        return decoded
    shown = len(frames) // 2
    volume = np.stack(
        [f.array if f.array is not None else f.display.astype(np.float32) for f in frames]
    ).astype(np.float32, copy=False)
    stack = Frame(
        pixels=np.stack([f.pixels for f in frames]),
        display=frames[shown].display,
        array=volume,
        frame_index=0,
    )
    metadata = {**decoded.metadata, "stack": {"slices": len(frames), "shown": shown}}
    return replace(decoded, frames=[stack], metadata=metadata, hash_frame_index=False)
