"""Decoding of imported files, free of Django: pictures, DICOM, archives, label files.

:func:`decode_file` turns the bytes of one file into frames ready to hash and store, or raises
:class:`ImportFileError` with a message for the import report. The service
``labeling.services.imports`` does the storing.
"""

from __future__ import annotations

from labeling.imports.dicom import FROM_FILE, decode_dicom, looks_like_dicom, read_dataset
from labeling.imports.frames import DecodedFile, Frame, ImportFileError, content_hash
from labeling.imports.images import decode_image

__all__ = ["DecodedFile", "Frame", "ImportFileError", "content_hash", "decode_file"]


def decode_file(
    name: str,
    data: bytes,
    *,
    max_pixels: int,
    uid_key: bytes,
    window_preset: str = FROM_FILE,
    keep_original: bool = False,
) -> DecodedFile:
    """Decode a picture (PNG, JPEG, TIFF) or a DICOM file, told apart by content first."""
    if not data:
        raise ImportFileError("the file is empty")
    dicom_options = dict(
        max_pixels=max_pixels, window_preset=window_preset, uid_key=uid_key,
        keep_original=keep_original,
    )
    if looks_like_dicom(name, data):
        return decode_dicom(data, **dicom_options)
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImportFileError as picture_error:
        # A DICOM file without the Part 10 preamble has no magic number: try it as one.
        if not str(picture_error).startswith("not an image"):
            raise
        try:
            read_dataset(data)
        except ImportFileError:
            raise picture_error from None
        return decode_dicom(data, **dicom_options)
