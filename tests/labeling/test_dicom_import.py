"""DICOM import over pydicom's real test files: transfer syntaxes, frames, windowing, bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from labeling.imports.rendering import window_to_uint8
from labeling.models import Item
from labeling.services.imports import import_files
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


def dicom(name: str) -> bytes:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is missing")
    return Path(path).read_bytes()


def media_files(settings) -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def import_one(project, name: str, data: bytes | None = None) -> dict:
    batch = import_files(project, [(name, data if data is not None else dicom(name))])
    assert len(batch.report) == 1
    return batch.report[0]


@pytest.mark.parametrize(
    "name, transfer_syntax, channels",
    [
        ("CT_small.dcm", "Explicit VR Little Endian", 1),
        ("MR_small.dcm", "Explicit VR Little Endian", 1),
        ("MR_small_implicit.dcm", "Implicit VR Little Endian", 1),
        ("MR_small_bigendian.dcm", "Explicit VR Big Endian", 1),
        ("MR_small_RLE.dcm", "RLE Lossless", 1),
        ("SC_rgb_jpeg_dcmtk.dcm", "JPEG Baseline (Process 1)", 3),
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])", 1),
        ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless Image Compression", 1),
        ("JPEGLSNearLossless_08.dcm", "JPEG-LS Lossy (Near-Lossless) Image Compression", 1),
        ("MR_small_jp2klossless.dcm", "JPEG 2000 Image Compression (Lossless Only)", 1),
        ("JPEG2000.dcm", "JPEG 2000 Image Compression", 1),
        ("SC_rgb_rle_16bit.dcm", "RLE Lossless", 3),
        ("OT-PAL-8-face.dcm", "Implicit VR Little Endian", 3),
    ],
)
def test_transfer_syntaxes(project, name, transfer_syntax, channels):
    line = import_one(project, name)
    assert line["status"] == "imported", line
    item = Item.objects.get(pk=line["item_ids"][0])
    ds = pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True, force=True)
    assert (item.height, item.width, item.channels) == (ds.Rows, ds.Columns, channels)
    assert item.metadata["transfer_syntax"] == transfer_syntax
    assert item.metadata["rows"] == ds.Rows and item.metadata["columns"] == ds.Columns
    shown = np.asarray(Image.open(item.image))
    assert shown.dtype == np.uint8 and shown.shape[:2] == (ds.Rows, ds.Columns)
    assert shown.max() > shown.min()
    assert item.image.name.endswith(f"{item.content_hash}.png")
    assert max(Image.open(item.thumbnail).size) <= 256
    if channels == 1:
        array = np.load(io.BytesIO(item.array.read()))
        assert array.dtype == np.float32 and array.shape == (ds.Rows, ds.Columns)


def test_lossless_encodings_decode_to_the_same_pixels(project):
    """Six encodings of one MR slice: the first is imported, the others are duplicates."""
    names = ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
             "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]
    batch = import_files(project, [(n, dicom(n)) for n in names])
    assert [line["status"] for line in batch.report] == ["imported"] + ["duplicate"] * 5
    assert Item.objects.count() == 1


def test_jpeg_baseline_colour_is_rgb(project):
    """SC_rgb: its top rows are red; after YBR -> RGB conversion they still are."""
    item = Item.objects.get(pk=import_one(project, "SC_rgb_jpeg_dcmtk.dcm")["item_ids"][0])
    red = np.asarray(Image.open(item.image))[2, 50]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm", "emri_small_RLE.dcm"])
def test_multiframe_gives_one_item_per_frame(project, name):
    line = import_one(project, name)
    items = list(Item.objects.filter(pk__in=line["item_ids"]).order_by("frame_index"))
    assert [i.frame_index for i in items] == list(range(10))
    assert len({i.content_hash for i in items}) == 10
    assert items[0].metadata["number_of_frames"] == 10
    full = pydicom.dcmread(get_testdata_file(name)).pixel_array
    for item in (items[0], items[9]):
        array = np.load(io.BytesIO(item.array.read()))
        assert np.array_equal(array, full[item.frame_index].astype(np.float32))
    again = import_one(project, name)
    assert again["status"] == "duplicate" and sorted(again["item_ids"]) == sorted(line["item_ids"])


def test_rescale_is_applied_to_the_training_array(project):
    item = Item.objects.get(pk=import_one(project, "CT_small.dcm")["item_ids"][0])
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert (ds.RescaleSlope, ds.RescaleIntercept) == (1, -1024)
    array = np.load(io.BytesIO(item.array.read()))
    assert np.array_equal(array, ds.pixel_array.astype(np.float32) - 1024)
    assert item.metadata["rescale"] == {"slope": 1.0, "intercept": -1024.0}
    assert item.modality == "CT" and item.metadata["pixel_spacing"] == pytest.approx([0.661468, 0.661468])


def test_window_from_the_file(project):
    item = Item.objects.get(pk=import_one(project, "MR_small.dcm")["item_ids"][0])
    assert item.metadata["window"] == {"source": "file", "center": 600.0, "width": 1600.0}
    array = np.load(io.BytesIO(item.array.read()))
    assert np.array_equal(np.asarray(Image.open(item.image)), window_to_uint8(array, 600.0, 1600.0))


@pytest.mark.parametrize("preset, center, width", [("lung", -600, 1500), ("bone", 400, 1800), ("brain", 40, 80)])
def test_window_presets(preset, center, width):
    project = ProjectFactory(window_preset=preset)
    item = Item.objects.get(pk=import_one(project, "CT_small.dcm")["item_ids"][0])
    assert item.metadata["window"] == {"source": f"preset:{preset}", "center": center, "width": width}
    array = np.load(io.BytesIO(item.array.read()))
    assert np.array_equal(np.asarray(Image.open(item.image)), window_to_uint8(array, center, width))


def test_minmax_preset_and_file_without_window():
    project = ProjectFactory(window_preset="minmax")
    item = Item.objects.get(pk=import_one(project, "MR_small.dcm")["item_ids"][0])
    shown = np.asarray(Image.open(item.image))
    assert item.metadata["window"] == {"source": "minmax"}
    assert (shown.min(), shown.max()) == (0, 255)


def test_monochrome1_is_inverted(project, other_project):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    normal = Item.objects.get(pk=import_one(project, "MR_small.dcm")["item_ids"][0])
    inverted = Item.objects.get(pk=import_one(other_project, "m1.dcm", buffer.getvalue())["item_ids"][0])
    assert np.array_equal(np.asarray(Image.open(inverted.image)), 255 - np.asarray(Image.open(normal.image)))


def test_header_less_dicom_is_recognised(project):
    """OT-PAL-8-face has no Part 10 preamble: no 'DICM' magic, and no .dcm suffix here."""
    line = import_one(project, "face", dicom("OT-PAL-8-face.dcm"))
    assert line["status"] == "imported"


def test_truncated_dicom(project, settings):
    line = import_one(project, "MR_truncated.dcm")
    assert line["status"] == "failed"
    assert line["message"].startswith("truncated DICOM file") and "8130 vs 8192" in line["message"]
    assert Item.objects.count() == 0 and media_files(settings) == []


def test_dicom_without_pixel_data(project, settings):
    line = import_one(project, "rtplan.dcm")
    assert line["status"] == "failed" and "no pixel data (RTPLAN)" in line["message"]
    assert Item.objects.count() == 0 and media_files(settings) == []


def test_undecodable_dicom(project, settings):
    """JPEG Extended 12-bit: no installed decoder handles this file; the reason is reported."""
    line = import_one(project, "JPEG-lossy.dcm")
    assert line["status"] == "failed"
    assert "could not be decoded (JPEG Extended (Process 2 and 4))" in line["message"]
    assert Item.objects.count() == 0 and media_files(settings) == []


def test_corrupt_dicom_header(project, settings):
    data = dicom("MR_small.dcm")[:300]
    line = import_one(project, "cut.dcm", data)
    assert line["status"] == "failed" and "DICOM" in line["message"]
    assert Item.objects.count() == 0 and media_files(settings) == []


def test_dicom_over_the_pixel_limit(project, settings):
    settings.QUORUM_MAX_IMAGE_PIXELS = 1000
    line = import_one(project, "MR_small.dcm")
    assert "decompression bomb" in line["message"] and "64 x 64" in line["message"]
    assert Item.objects.count() == 0 and media_files(settings) == []


def test_burned_in_annotation_is_refused(project, settings):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    line = import_one(project, "burned.dcm", buffer.getvalue())
    assert line["status"] == "failed" and "burned-in annotation" in line["message"]
    assert media_files(settings) == []


def test_channel_check_applies_to_dicom(settings):
    project = ProjectFactory(expected_channels=1)
    line = import_one(project, "SC_rgb_jpeg_dcmtk.dcm")
    assert line["status"] == "failed" and "expects 1" in line["message"]
    assert media_files(settings) == []


def ct_series(n: int, *, series_uid: str = "1.2.826.0.1.3680043.8.498.1",
              folder: str = "series") -> list[tuple[str, bytes]]:
    """``n`` slices of one CT series made from CT_small, each 10 mm further along the normal
    and a little brighter, shuffled, named in reverse slice order, numbered backwards."""
    files = []
    for i in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PixelData = (ds.pixel_array + 10 * i).astype(ds.pixel_array.dtype).tobytes()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = f"{series_uid}.{i + 1}"
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1], position[2] + 10 * i]
        ds.InstanceNumber = n - i  # disagrees with the position: the position wins
        buffer = io.BytesIO()
        ds.save_as(buffer)
        files.append((f"{folder}/{folder}-{n - 1 - i:02d}.dcm", buffer.getvalue()))
    rng = np.random.default_rng(3)
    return [files[j] for j in rng.permutation(n)]


def test_stack_import_of_a_series_is_one_item_in_slice_order(project):
    files = ct_series(5)
    other = ct_series(2, series_uid="1.2.826.0.1.3680043.8.498.2", folder="other")
    labels = {name: "pneumonia" for name, _ in files}
    batch = import_files(project, [*files, *other], stack=True, labels=labels)
    lines = sorted(batch.report, key=lambda line: line["name"])
    assert [line["status"] for line in lines] == ["imported", "imported"], lines
    assert batch.n_imported == 2 and Item.objects.filter(project=project).count() == 2
    items = {Item.objects.get(pk=line["item_ids"][0]).metadata["stack"]["slices"]: line for line in lines}
    five = Item.objects.get(pk=items[5]["item_ids"][0])
    assert "(series of 5 files)" in five.source_name
    volume = np.load(io.BytesIO(five.array.read()))
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(np.float32) - 1024
    assert volume.shape == (5, 128, 128)
    for i in range(5):  # ordered by ImagePositionPatient, whatever the file order and names
        assert np.array_equal(volume[i], base + 10 * i)
    assert five.metadata["stack"] == {"slices": 5, "shown": 2} and five.modality == "CT"
    assert five.expert_answer.name == "pneumonia"
    assert Item.objects.get(pk=items[2]["item_ids"][0]).expert_answer is None
    again = import_files(project, files, stack=True)
    assert [line["status"] for line in again.report] == ["duplicate"]
    # Without the option, each file is its own item (the default).
    assert import_files(ProjectFactory(), files).n_imported == 5


def test_series_with_different_labels_is_refused(project):
    files = ct_series(3)
    labels = {name: ("normal" if i else "pneumonia") for i, (name, _) in enumerate(files)}
    batch = import_files(project, files, stack=True, labels=labels)
    assert batch.report[0]["status"] == "failed"
    assert "different labels" in batch.report[0]["message"]
    assert not Item.objects.filter(project=project).exists()
