"""Fault suite (issue 19): a fuzz corpus of malformed files through the import API.

Generated damage (truncated and bit-flipped PNG/JPEG/TIFF, zips with escaping paths, a bounded
zip bomb, a zip entry whose declared size lies, nested and junk archives, DICOM with truncated
pixel data, no transfer syntax, wrong value lengths, impossible geometry) plus pydicom's own
damaged test files, each POSTed alone to /api/projects/<id>/imports/ as a project admin, then
all of them in one upload. Every answer is a 4xx, or a 201 whose report refuses the bad file;
never a 5xx and never an "unexpected error" line (an unplanned exception in a decoder). A refused
file leaves nothing: the database holds exactly the items the 201 reports list, each with its
image and thumbnail, and the media folder holds exactly those items' files.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from pydicom.data import get_testdata_file

from labeling.models import ImportBatch, Item
from tests.labeling.test_imports import encode, make_zip, media_files, png_header_only

pytestmark = pytest.mark.django_db

# pydicom's test files that are damaged on purpose (or hold no image).
PYDICOM_BAD = [
    "badVR.dcm",
    "no_meta_group_length.dcm",
    "rtplan_truncated.dcm",
    "MR_truncated.dcm",
    "empty_charset_LEI.dcm",
    "reportsi_with_empty_number_tags.dcm",
    "rtplan.dcm",
    "no_meta.dcm",
]


def _flip(data: bytes, positions: list[int]) -> bytes:
    out = bytearray(data)
    for position in positions:
        out[position % len(out)] ^= 0xFF
    return bytes(out)


def _pictures() -> dict[str, bytes]:
    rng = np.random.default_rng(19)
    gray = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    png, jpeg = encode(gray, "PNG"), encode(gray, "JPEG", quality=80)
    tiff = encode((gray.astype(np.uint16) * 200), "TIFF")
    corpus = {
        "header-only.png": png[:8],
        "no-iend.png": png[: len(png) - 12],
        "half.png": png[: len(png) // 2],
        "ihdr-flipped.png": _flip(png, [16, 17, 18, 19]),  # width (and the CRC no longer fits)
        "idat-flipped.png": _flip(png, [len(png) // 2, len(png) // 2 + 3]),
        "bomb-header.png": png_header_only(60_000, 60_000),
        "soi-only.jpg": jpeg[:2],
        "half.jpg": jpeg[: len(jpeg) // 2],
        "sof-flipped.jpg": _flip(jpeg, list(range(150, 170))),
        "header-only.tif": tiff[:8],
        "half.tif": tiff[: len(tiff) // 2],
        "ifd-offset-past-end.tif": tiff[:4] + struct.pack("<I", 10**9) + tiff[8:],
        "ifd-flipped.tif": _flip(tiff, list(range(len(tiff) - 200, len(tiff) - 150))),
        "random.bin": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty.png": b"",
        "text.png": b"this is not a picture\n" * 20,
    }
    return corpus


def _zips() -> dict[str, bytes]:
    inner = make_zip({"x.png": b"junk" * 10})
    lying = io.BytesIO()
    with zipfile.ZipFile(lying, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("liar.png", b"\0" * 300_000)
    lying_bytes = bytearray(lying.getvalue())
    # Both headers' uncompressed size say 100 bytes; the entry inflates to 300,000.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = bytes(lying_bytes).index(signature)
        lying_bytes[at + offset: at + offset + 4] = struct.pack("<I", 100)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.png", b"\0" * 3_000_000)  # 3 MB from ~3 kB, over the test's limit
    good = make_zip({"fine.png": encode(np.full((4, 4), 9, np.uint8), "PNG")})
    return {
        "escape.zip": make_zip({"../../escape.png": b"\x89PNG", "/etc/abs.png": b"\x89PNG",
                                "ok/../../up.png": b"x"}),
        "nested.zip": make_zip({"inner.zip": inner, "deeper/junk.txt": b"\0\1\2" * 30}),
        "lying-size.zip": bytes(lying_bytes),
        "bomb.zip": bomb.getvalue(),
        "truncated.zip": good[: len(good) // 2],
        "junk.zip": b"PK\x03\x04" + os.urandom(200),
        "crc-flipped.zip": _flip(good, [good.index(b"PK\x01\x02") - 20]),
    }


def _dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def _dicoms() -> dict[str, bytes]:
    source = Path(get_testdata_file("CT_small.dcm"))
    data = source.read_bytes()
    corpus = {
        "pixels-truncated.dcm": data[: len(data) - 9000],
        "preamble-only.dcm": b"\0" * 128 + b"DICM",
        "meta-only.dcm": data[:300],
    }
    ds = pydicom.dcmread(source)
    del ds.file_meta.TransferSyntaxUID
    corpus["no-transfer-syntax.dcm"] = _dicom_bytes(ds)
    # (0028,0010) Rows, explicit VR little endian: its 2-byte length says 0x7FFF instead of 2.
    rows_at = data.index(b"\x28\x00\x10\x00US")
    corpus["rows-length-wrong.dcm"] = data[: rows_at + 6] + b"\xff\x7f" + data[rows_at + 8:]
    for name, changes in {
        "rows-too-many.dcm": {"Rows": 10_000},
        "bits-allocated-0.dcm": {"BitsAllocated": 0},
        "samples-7.dcm": {"SamplesPerPixel": 7},
        "photometric-junk.dcm": {"PhotometricInterpretation": "NOPE"},
        "frames-negative.dcm": {"NumberOfFrames": -3},
    }.items():
        changed = pydicom.dcmread(source)
        for keyword, value in changes.items():
            setattr(changed, keyword, value)
        corpus[name] = _dicom_bytes(changed)
    for name in PYDICOM_BAD:
        path = get_testdata_file(name)
        assert path is not None, f"pydicom's test file {name} is missing"
        corpus[f"pydicom-{name}"] = Path(path).read_bytes()
    return corpus


def corpus() -> dict[str, bytes]:
    return {**_pictures(), **_zips(), **_dicoms()}


def _post(client, project, files: dict[str, bytes]):
    uploads = [SimpleUploadedFile(name, data) for name, data in files.items()]
    return client.post(f"/api/projects/{project.id}/imports/", {"files": uploads},
                       format="multipart")


def _check_report(name: str, response, reported_items: set[int]) -> None:
    status = response.status_code
    assert status in (201, 400, 413), f"{name}: {status} {response.content[:300]!r}"
    body = response.json()
    if status == 413:
        return
    lines = body["report"]
    assert lines, f"{name}: no report"
    for line in lines:
        assert not line["message"].startswith("unexpected error"), f"{name}: {line}"
        if line["status"] == "failed":
            assert line["message"] and not line["item_ids"], f"{name}: {line}"
    if status == 400:
        assert body["id"] is None and all(line["status"] == "failed" for line in lines), body
    for line in lines:
        if line["status"] == "imported":
            reported_items.update(line["item_ids"])


def _assert_nothing_partial(settings, reported_items: set[int], batches: int) -> None:
    items = list(Item.objects.all())
    assert {item.pk for item in items} == reported_items
    assert ImportBatch.objects.count() == batches
    expected = set()
    for item in items:
        for field in (item.image, item.thumbnail, item.array, item.original):
            if field:
                path = Path(field.path)
                assert path.is_file() and path.stat().st_size > 0, (item.source_name, field.name)
                expected.add(path)
    assert set(media_files(settings)) == expected, "files left behind by a refused import"


@pytest.mark.slow
def test_fuzz_corpus_through_the_import_api(admin_client, project, settings):
    settings.QUORUM_MAX_UPLOAD_BYTES = 1_000_000  # the bomb inflates past it; real files do not
    files = corpus()
    reported: set[int] = set()
    batches = 0
    refused = 0
    for name, data in files.items():
        response = _post(admin_client, project, {name: data})
        _check_report(name, response, reported)
        batches += response.status_code == 201
        refused += response.status_code >= 400
        _assert_nothing_partial(settings, reported, batches)
    # Damage that any reader must notice: these are refused whatever the decoders learn.
    assert refused >= len(files) - 6, f"only {refused} of {len(files)} refused"

    # All of them in one upload, with one good picture: one batch, one new item, the rest refused.
    good = encode(np.arange(36, dtype=np.uint8).reshape(6, 6) * 7, "PNG")
    response = _post(admin_client, project, {**files, "good.png": good})
    _check_report("everything", response, reported)
    assert response.status_code == 201
    statuses = {line["name"]: line["status"] for line in response.json()["report"]}
    assert statuses["good.png"] == "imported"
    _assert_nothing_partial(settings, reported, batches + 1)


def test_bomb_and_lying_zip_entries_are_refused_with_a_reason(admin_client, project, settings):
    settings.QUORUM_MAX_UPLOAD_BYTES = 1_000_000
    zips = _zips()
    for name in ("bomb.zip", "lying-size.zip", "crc-flipped.zip", "escape.zip"):
        response = _post(admin_client, project, {name: zips[name]})
        assert response.status_code == 400, (name, response.content[:300])
        messages = " ".join(line["message"] for line in response.json()["report"])
        assert messages and "unexpected" not in messages, (name, messages)
    _assert_nothing_partial(settings, set(), 0)


def test_corpus_is_what_it_claims():
    """The generators damage what they say they do (a fuzz test of intact files proves nothing)."""
    files = corpus()
    assert len(files) >= 40
    with pytest.raises(zipfile.BadZipFile):
        with zipfile.ZipFile(io.BytesIO(files["lying-size.zip"])) as archive:
            archive.read("liar.png")
    assert zipfile.ZipFile(io.BytesIO(files["bomb.zip"])).infolist()[0].file_size == 3_000_000
    assert len(files["bomb.zip"]) < 20_000
    with pytest.raises(Exception):  # noqa: B017 - pydicom raises several kinds
        pydicom.dcmread(io.BytesIO(files["pixels-truncated.dcm"])).pixel_array  # noqa: B018
