"""Where files come from: a folder, a zip archive, uploaded files or bytes.

Zip entries are read into memory one at a time and never extracted to disk, so an entry named
``../x`` or ``/etc/x`` cannot write anywhere; such entries are reported and skipped.
"""

from __future__ import annotations

import stat
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from labeling.imports.frames import ImportFileError

# Operating-system litter that is not part of an upload.
_IGNORED_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class SourceFile:
    """One file to import: its name (as the admin knows it) and a way to read its bytes."""

    name: str
    read: Callable[[], bytes]
    size: int | None = None
    error: str | None = None
    """Set when the file is refused without being read (e.g. an unsafe zip entry)."""


def from_bytes(name: str, data: bytes) -> SourceFile:
    return SourceFile(name=name, read=lambda: data, size=len(data))


def from_path(path: Path, name: str | None = None) -> SourceFile:
    return SourceFile(name=name or path.name, read=path.read_bytes, size=path.stat().st_size)


def is_zip(name: str) -> bool:
    return name.lower().endswith(".zip")


def _ignored(parts: tuple[str, ...]) -> bool:
    return any(part in _IGNORED_PARTS or part.startswith(".") for part in parts)


def folder_sources(root: Path) -> list[SourceFile]:
    """Every regular file under ``root`` (links to files included), sorted, hidden ones skipped."""
    sources = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if _ignored(relative.parts) or not path.is_file():
            continue
        sources.append(from_path(path, relative.as_posix()))
    return sources


def unsafe_entry_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a zip entry must not be touched, or None when it is an ordinary relative file."""
    raw = info.filename
    posix = raw.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return "absolute path in the archive; the entry was not extracted"
    if ".." in PurePosixPath(posix).parts:
        return "path leaves the archive ('..'); the entry was not extracted"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link in the archive; the entry was not extracted"
    return None


def zip_sources(
    archive: zipfile.ZipFile, *, max_bytes: int, prefix: str = ""
) -> list[SourceFile]:
    """The files of an open archive, in archive order; unsafe or oversized entries carry an error."""
    sources = []
    for info in archive.infolist():
        if info.is_dir():
            continue
        name = prefix + info.filename
        reason = unsafe_entry_reason(info)
        if reason is None and _ignored(PurePosixPath(info.filename.replace("\\", "/")).parts):
            continue
        if reason is None and info.file_size > max_bytes:
            reason = f"{info.file_size:,} bytes uncompressed exceeds the limit of {max_bytes:,} bytes"
        if reason is not None:
            sources.append(SourceFile(name=name, read=_refused, error=reason))
            continue
        sources.append(
            SourceFile(name=name, read=_entry_reader(archive, info, max_bytes), size=info.file_size)
        )
    return sources


def _refused() -> bytes:
    raise RuntimeError("a refused entry is never read")


def _entry_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int):
    def read() -> bytes:
        try:
            with archive.open(info) as entry:
                # The declared size can lie (zip bombs): never read more than the limit.
                data = entry.read(max_bytes + 1)
        except RuntimeError as exc:  # zipfile's word for an encrypted entry
            raise ImportFileError(f"unreadable zip entry: {exc}") from exc
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
            # A damaged archive, a size or CRC that does not match, an unknown compression.
            raise ImportFileError(f"damaged zip entry: {exc}") from exc
        if len(data) > max_bytes:
            raise ImportFileError(f"entry inflates beyond the limit of {max_bytes:,} bytes")
        return data

    return read
