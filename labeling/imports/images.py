"""PNG, JPEG and TIFF through Pillow: 8/16-bit, grayscale or colour (alpha dropped)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from labeling.imports.frames import DecodedFile, Frame, ImportFileError
from labeling.imports.rendering import minmax_to_uint8

SUPPORTED_FORMATS = {"PNG", "JPEG", "TIFF"}
_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_GRAY_MODES = {"1", "L", "LA", "La"}
# JPEG segments that carry no pixels and may carry identifying text (EXIF, XMP, comments).
# Kept: APP0 (JFIF), APP2 (ICC colour profile), APP14 (Adobe colour transform).
_JPEG_KEPT_APP = {0xE0, 0xE2, 0xEE}


def bomb_message(width: int, height: int, max_pixels: int) -> str:
    return (
        f"refused as a possible decompression bomb: {width} x {height} = {width * height:,} "
        f"pixels exceeds the limit of {max_pixels:,} pixels"
    )


def decode_image(data: bytes, *, max_pixels: int) -> DecodedFile:
    """Decode one picture; every failure is an :class:`ImportFileError` with a readable reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImportFileError(f"refused as a possible decompression bomb: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise ImportFileError(
                "not an image Quorum can read (PNG, JPEG, TIFF or DICOM expected)"
            ) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImportFileError(f"unreadable image header: {exc}") from exc
        if image.format not in SUPPORTED_FORMATS:
            raise ImportFileError(
                f"{image.format} images are not supported; use PNG, JPEG, TIFF or DICOM"
            )
        width, height = image.size
        # Checked before decoding, against our own limit (Pillow's is a process-wide global).
        if width * height > max_pixels:
            raise ImportFileError(bomb_message(width, height, max_pixels))
        try:
            image.load()
        except Image.DecompressionBombError as exc:
            raise ImportFileError(f"refused as a possible decompression bomb: {exc}") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImportFileError(f"truncated or corrupt {image.format} file: {exc}") from exc

    n_frames = getattr(image, "n_frames", 1)
    frame, channels, bits = _frame_of(image)
    if image.format == "JPEG" and image.mode in ("L", "RGB"):
        # The browser gets the source's own compressed data, minus metadata: no second loss.
        frame.encoded = strip_jpeg_metadata(data)
        frame.encoded_format = "jpeg"
    metadata = {
        "format": image.format,
        "mode": image.mode,
        "bits": bits,
        "rows": height,
        "columns": width,
    }
    decoded = DecodedFile(
        frames=[frame], width=width, height=height, channels=channels, metadata=metadata
    )
    if n_frames > 1:
        metadata["pages"] = n_frames
        decoded.note = f"the file has {n_frames} pages; only the first was imported"
    return decoded


def _frame_of(image: Image.Image) -> tuple[Frame, int, int]:
    """The pixels as an array, and the 8-bit rendering (with a float32 copy beyond 8 bits)."""
    if image.mode in _HIGH_DEPTH_MODES:
        pixels = np.asarray(image)
        if pixels.ndim != 2:
            raise ImportFileError(f"unsupported {image.mode} layout of shape {pixels.shape}")
        array = pixels.astype(np.float32)
        bits = 32 if image.mode in ("I", "F") else 16
        return Frame(pixels=pixels, display=minmax_to_uint8(array), array=array), 1, bits
    if image.mode in _GRAY_MODES:
        pixels = np.asarray(image if image.mode == "L" else image.convert("L"))
        return Frame(pixels=pixels, display=pixels), 1, 8
    if image.mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA"):
        rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        if image.mode in ("P", "PA") and _is_gray(rgb):
            # A palette of grays is a grayscale picture stored compactly.
            gray = np.ascontiguousarray(rgb[..., 0])
            return Frame(pixels=gray, display=gray), 1, 8
        return Frame(pixels=rgb, display=rgb), 3, 8
    raise ImportFileError(f"unsupported pixel mode {image.mode}")


def _is_gray(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def strip_jpeg_metadata(data: bytes) -> bytes | None:
    """The JPEG without EXIF/XMP/comment segments (same compressed pixels), or None if odd.

    Parses the marker segments before the first Start of Scan (ITU-T T.81 B.1.1); everything
    from there on is copied unchanged.
    """
    if data[:2] != b"\xff\xd8":
        return None
    out = bytearray(b"\xff\xd8")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # Start of Scan: the rest is entropy-coded data
            out += data[pos:]
            return bytes(out)
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if length < 2 or end > len(data):
            return None
        is_app = 0xE0 <= marker <= 0xEF
        if marker == 0xFE or (is_app and marker not in _JPEG_KEPT_APP):
            pos = end
            continue
        if marker == 0xE2 and not data[pos + 4 : pos + 16].startswith(b"ICC_PROFILE"):
            pos = end
            continue
        out += data[pos:end]
        pos = end
    return None
