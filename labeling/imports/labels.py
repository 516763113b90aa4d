"""Known labels shipped with the images: a ``filename,label`` CSV (header optional) or a dict."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence

_HEADER_FILE = {"filename", "file", "file_name", "image", "name", "path", "source"}
_HEADER_LABEL = {"label", "class", "class_name", "answer", "diagnosis"}


class LabelFileError(ValueError):
    """The labels cannot be used; nothing is imported."""


def match_class(value: str, class_names: Sequence[str]) -> str | None:
    """The class named ``value``: exact match, else a case-insensitive match if unambiguous."""
    value = value.strip()
    if value in class_names:
        return value
    folded = [name for name in class_names if name.casefold() == value.casefold()]
    return folded[0] if len(folded) == 1 else None


def _unknown(value: str, where: str, class_names: Sequence[str]) -> LabelFileError:
    return LabelFileError(
        f"{where}: unknown class '{value}'; this project's classes are {', '.join(class_names)}"
    )


def parse_label_csv(data: bytes | str, class_names: Sequence[str]) -> dict[str, str]:
    """``{filename: class name}`` from CSV rows ``filename,label``; an empty label is skipped."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise LabelFileError(f"the labels file is not UTF-8 text: {exc}") from exc
    try:
        rows = list(csv.reader(io.StringIO(data)))
    except csv.Error as exc:
        raise LabelFileError(f"the labels file is not a valid CSV: {exc}") from exc
    labels: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if number == 1 and _is_header(cells, class_names):
            continue
        if len(cells) < 2:
            raise LabelFileError(f"labels row {number}: expected 'filename,label', got {row!r}")
        filename, value = cells[0], cells[1]
        if not filename:
            raise LabelFileError(f"labels row {number}: the file name is empty")
        if not value:
            continue
        _add(labels, filename, value, f"labels row {number}", class_names)
    return labels


def resolve_labels(mapping: Mapping[str, str], class_names: Sequence[str]) -> dict[str, str]:
    """Check a ``{filename: class name}`` mapping given in code; values may be None (unlabelled)."""
    labels: dict[str, str] = {}
    for filename, value in mapping.items():
        if value is None or not str(value).strip():
            continue
        _add(labels, str(filename), str(value), f"label for '{filename}'", class_names)
    return labels


def _add(labels: dict[str, str], filename: str, value: str, where: str, class_names) -> None:
    name = match_class(value, class_names)
    if name is None:
        raise _unknown(value, where, class_names)
    if labels.get(filename, name) != name:
        raise LabelFileError(
            f"{where}: '{filename}' is labelled both '{labels[filename]}' and '{name}'"
        )
    labels[filename] = name


def _is_header(cells: list[str], class_names: Sequence[str]) -> bool:
    if len(cells) >= 2 and match_class(cells[1], class_names) is not None:
        return False
    return cells[0].lower() in _HEADER_FILE or (
        len(cells) >= 2 and cells[1].lower() in _HEADER_LABEL
    )
