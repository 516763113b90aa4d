"""What every decoder returns: the frames of one file, ready to hash, render and store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

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
