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
    series: str = ""
    """DICOM: the (de-identified) Series Instance UID, which groups slices into a stack."""
    slice_position: float | None = None
    """DICOM: where the slice lies along the series' normal, for ordering a stack."""


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


def slice_position(orientation, position, instance_number) -> float | None:
    """A slice's place in its series: its ImagePositionPatient along the normal of its
    ImageOrientationPatient (PS3.3 C.7.6.2.1.1), else its InstanceNumber, else None."""
    try:
        row, column = np.asarray(orientation, dtype=float).reshape(2, 3)
        return float(np.dot(np.cross(row, column), np.asarray(position, dtype=float).reshape(3)))
    except (TypeError, ValueError):
        pass
    try:
        return float(instance_number)
    except (TypeError, ValueError):
        return None


def stack_series(files: list[tuple[str, DecodedFile]]) -> list[tuple[list[str], DecodedFile]]:
    """Single-frame grayscale files of one series as stacks, one per slice size, in slice order.

    Returns (names of the files, decoded) pairs: a stack (see :func:`stack_frames`) where two
    or more slices share a size, else the file as it was. Slices are ordered by
    ``slice_position``, those without one after the others, by name.
    """
    by_shape: dict[tuple, list[tuple[str, DecodedFile]]] = {}
    for name, decoded in files:
        by_shape.setdefault((decoded.height, decoded.width), []).append((name, decoded))
    stacks = []
    for group in by_shape.values():
        group.sort(key=lambda f: (f[1].slice_position is None, f[1].slice_position or 0.0, f[0]))
        if len(group) == 1:
            stacks.append(([group[0][0]], group[0][1]))
            continue
        first = group[0][1]
        frames = [replace(d.frames[0], frame_index=i) for i, (_, d) in enumerate(group)]
        metadata = {**first.metadata, "number_of_frames": len(frames)}
        # One item has room for one original file; a series has one per slice.
        note = "the de-identified original files of a series are not kept" if first.original else ""
        series = replace(first, frames=frames, metadata=metadata, original=None, note=note)
        stacks.append(([name for name, _ in group], stack_frames(series)))
    return stacks
