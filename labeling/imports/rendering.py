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
