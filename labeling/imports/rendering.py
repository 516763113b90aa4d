"""From full-precision pixels to what a browser shows: 8-bit windowing, PNG, thumbnail, .npy."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

THUMBNAIL_MAX_SIDE = 256
# Level 1 is several times faster than the default 6 and only slightly larger.
PNG_COMPRESS_LEVEL = 1


def window_to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear VOI window of DICOM PS3.3 C.11.2.1.2.1 mapped onto 0..255."""
    x = values.astype(np.float32, copy=False)
    if width <= 1:
        # A width of 1 is a threshold at the center.
        return np.where(x > center - 0.5, 255, 0).astype(np.uint8)
    y = (x - (center - 0.5)) / (width - 1) + 0.5
    return _unit_to_uint8(y)


def minmax_to_uint8(values: np.ndarray) -> np.ndarray:
    """Stretch the full range of the values onto 0..255 (a constant image becomes black)."""
    x = values.astype(np.float32, copy=False)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.zeros(x.shape, dtype=np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.uint8)
    return _unit_to_uint8((x - lo) / (hi - lo))


def _unit_to_uint8(y: np.ndarray) -> np.ndarray:
    y = np.nan_to_num(y, nan=0.0, posinf=1.0, neginf=0.0)
    return np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_image(display: np.ndarray, image_format: str = "png") -> bytes:
    """Encode an 8-bit (H, W) or (H, W, 3) array as PNG, or JPEG for photographic sources."""
    return _encode(Image.fromarray(display), image_format)


def encode_thumbnail(display: np.ndarray, image_format: str = "png") -> bytes:
    image = Image.fromarray(display)
    # Bicubic after a whole-factor reduce: a few times faster than Lanczos, alike at 256 px.
    image.thumbnail(
        (THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE), Image.Resampling.BICUBIC, reducing_gap=2.0
    )
    return _encode(image, image_format)


def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def viewer_pixels(
    array: np.ndarray, *, window: dict | None = None, unit: str = "", invert: bool = False,
    slices: int = 0,
) -> tuple[bytes, dict]:
    """The stored full-precision pixels as the browser viewer reads them.

    Returns little-endian raw bytes (C order: frames, rows, columns[, 3]) and their layout:
    ``dtype`` (``uint8``, ``int16``, ``uint16`` or ``float32``), ``frames``, ``height``,
    ``width``, ``channels``, the value ``range``, the default ``window`` (centre and width in
    the stored units: the one the rendering used, else the full range), ``unit`` and ``invert``
    (MONOCHROME1). Whole numbers are sent as 16-bit integers, half the bytes of float32.
    """
    values = np.asarray(array)
    if slices and values.ndim >= 3:
        frames = values.shape[0]
    else:
        frames = 1
        values = values[np.newaxis]
    height, width = values.shape[1], values.shape[2]
    channels = values.shape[3] if values.ndim == 4 else 1
    values = _compact(values)
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    low = float(finite.min()) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 0.0
    if window and window.get("width"):
        default = {"center": float(window["center"]), "width": float(window["width"])}
    else:
        # The full range, in the form window_to_uint8 maps end to end.
        default = {"center": (low + high + 1) / 2, "width": max(1.0, high - low + 1)}
    layout = {
        "dtype": values.dtype.name,
        "frames": int(frames),
        "height": int(height),
        "width": int(width),
        "channels": int(channels),
        "range": [low, high],
        "window": default,
        "unit": unit,
        "invert": bool(invert),
    }
    return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes(), layout


def _compact(values: np.ndarray) -> np.ndarray:
    """The smallest of uint8, int16, uint16 that holds whole-number values exactly; else float32."""
    if values.dtype in (np.uint8, np.int16, np.uint16):
        return values
    as_float = values.astype(np.float32, copy=False)
    if values.size == 0 or not np.all(np.isfinite(as_float)):
        return as_float
    low, high = float(as_float.min()), float(as_float.max())
    if not np.array_equal(np.rint(as_float), as_float):
        return as_float
    for dtype in (np.uint8, np.int16, np.uint16):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return as_float.astype(dtype)
    return as_float
