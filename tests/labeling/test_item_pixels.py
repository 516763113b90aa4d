"""The viewer's full-precision pixels: same rules as the item's image, nothing else leaks."""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from labeling.imports.rendering import viewer_pixels
from labeling.models import Item
from labeling.services.imports import import_files
from tests.factories import ItemFactory, ProjectFactory
from tests.labeling.test_crowd_api import next_of
from tests.labeling.test_dicom_import import dicom

pytestmark = pytest.mark.django_db

LAYOUT_KEYS = {"dtype", "frames", "height", "width", "channels", "range", "window", "unit", "invert"}


def imported(project, name: str, **options) -> Item:
    batch = import_files(project, [(name, dicom(name))], **options)
    return Item.objects.get(pk=batch.report[0]["item_ids"][0])


def pixels_of(response) -> tuple[np.ndarray, dict]:
    layout = json.loads(response["X-Pixels"])
    data = response.content
    if response.get("Content-Encoding") == "gzip":
        data = gzip.decompress(data)
    values = np.frombuffer(data, dtype=np.dtype(layout["dtype"]).newbyteorder("<"))
    shape = (layout["frames"], layout["height"], layout["width"])
    if layout["channels"] > 1:
        shape += (layout["channels"],)
    return values.reshape(shape), layout


def test_crowd_gets_the_hounsfield_units_of_a_leased_item_only(
    crowd_client, expert_client, anon_client, project, other_project
):
    ct = imported(project, "CT_small.dcm")
    other = imported(other_project, "CT_small.dcm")
    url = f"/api/items/{ct.id}/pixels/"
    assert crowd_client.get(url).status_code == 404  # not leased to them
    assert anon_client.get(url).status_code in (401, 403)
    lease = next_of(crowd_client, project).json()
    assert lease["item"]["id"] == ct.id
    response = crowd_client.get(url, HTTP_ACCEPT_ENCODING="gzip")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Encoding"] == "gzip"
    assert "Content-Disposition" not in response
    values, layout = pixels_of(response)
    # Only what rendering needs: no modality name, no file or DICOM metadata.
    assert set(layout) == LAYOUT_KEYS
    assert layout["unit"] == "HU" and layout["dtype"] == "int16" and layout["invert"] is False
    stored = np.load(io.BytesIO(ct.array.read()))
    assert np.array_equal(values[0], stored)
    assert layout["range"] == [float(stored.min()), float(stored.max())]
    # CT_small names no window: the default is the full range, as its rendering.
    assert "window" not in ct.metadata or "width" not in ct.metadata["window"]
    assert layout["window"]["width"] == stored.max() - stored.min() + 1
    raw = json.dumps(layout) + response["X-Pixels"]
    for secret in ("CT_small", "transfer_syntax", "pixel_spacing", "CT\"", "DICOM"):
        assert secret not in raw
    # Another project's item stays hidden, even from this project's expert.
    assert crowd_client.get(f"/api/items/{other.id}/pixels/").status_code == 404
    assert expert_client.get(f"/api/items/{other.id}/pixels/").status_code == 404
    assert expert_client.get(url).status_code == 200


def test_project_window_and_plain_bytes(expert_client, project):
    project.window_preset = "lung"
    project.save()
    ct = imported(project, "CT_small.dcm")
    response = expert_client.get(f"/api/items/{ct.id}/pixels/")
    assert "Content-Encoding" not in response  # the client asked for no gzip
    values, layout = pixels_of(response)
    assert layout["window"] == {"center": -600.0, "width": 1500.0}
    assert values.shape == (1, ct.height, ct.width)


def test_eight_bit_picture_has_no_pixels_to_send(expert_client, project):
    item = ItemFactory(project=project)
    response = expert_client.get(f"/api/items/{item.id}/pixels/")
    assert response.status_code == 204 and response.content == b""


def test_stack_import_is_one_item_and_its_pixels_are_every_slice(expert_client, project):
    item = imported(project, "emri_small.dcm", stack=True)
    assert Item.objects.filter(project=project).count() == 1
    assert item.metadata["stack"] == {"slices": 10, "shown": 5}
    full = np.load(io.BytesIO(item.array.read()))
    assert full.shape == (10, item.height, item.width)
    values, layout = pixels_of(expert_client.get(f"/api/items/{item.id}/pixels/"))
    assert layout["frames"] == 10 and layout["unit"] == ""  # MR: the stored values
    assert np.array_equal(values, full)


def test_viewer_pixels_types():
    whole = np.array([[0, 70000]], dtype=np.float32)
    assert viewer_pixels(whole)[1]["dtype"] == "float32"  # past uint16
    halves = np.array([[0.5, 2]], dtype=np.float32)
    data, layout = viewer_pixels(halves)
    assert layout["dtype"] == "float32" and np.frombuffer(data, "<f4").tolist() == [0.5, 2.0]
    negative = np.array([[-1024, 3000]], dtype=np.float32)
    data, layout = viewer_pixels(negative)
    assert layout["dtype"] == "int16" and np.frombuffer(data, "<i2").tolist() == [-1024, 3000]
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    assert viewer_pixels(rgb)[1]["channels"] == 3


def test_stack_trains_on_the_slice_its_rendering_shows(project):
    from training.datasets import item_image

    item = imported(project, "emri_small.dcm", stack=True)
    full = np.load(io.BytesIO(item.array.read()))
    assert np.array_equal(item_image(item), full[5])


def test_api_import_takes_the_stack_option(admin_client, project):
    def post(**fields):
        data = {"files": [SimpleUploadedFile("mr.dcm", dicom("emri_small.dcm"))], **fields}
        return admin_client.post(f"/api/projects/{project.id}/imports/", data, format="multipart")

    assert post(stack="true").json()["n_imported"] == 1
    other = ProjectFactory()
    response = admin_client.post(
        f"/api/projects/{other.id}/imports/",
        {"files": [SimpleUploadedFile("mr.dcm", dicom("emri_small.dcm"))]}, format="multipart",
    )
    assert response.status_code in (403, 404)  # not their project: no import at all
    assert post().json()["n_imported"] == 10  # the default: an item per frame


def test_sixteen_bit_picture_is_sent_at_full_precision(expert_client, project):
    values = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 13) % 60000
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    batch = import_files(project, [("deep.png", buffer.getvalue())])
    item = Item.objects.get(pk=batch.report[0]["item_ids"][0])
    sent, layout = pixels_of(expert_client.get(f"/api/items/{item.id}/pixels/"))
    assert layout["dtype"] == "uint16" and layout["unit"] == ""
    assert np.array_equal(sent[0], values)
    # No window in the file: the full range, as the 8-bit rendering was made.
    low, high = int(values.min()), int(values.max())
    assert layout["window"] == {"center": (low + high + 1) / 2, "width": high - low + 1}
