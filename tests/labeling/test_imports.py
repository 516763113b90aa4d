"""Importing pictures: formats, duplicates, bad files, labels, zips, limits, entry points, roles."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from PIL import Image

from labeling.imports.archives import from_bytes
from labeling.models import ExpertLabel, ImportBatch, Item
from labeling.services import imports as import_service
from labeling.services.imports import ImportRefused, import_files, import_path
from tests.factories import png_bytes

pytestmark = pytest.mark.django_db


def media_files(settings) -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size in a few bytes: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data)


def only_line(batch: ImportBatch) -> dict:
    assert len(batch.report) == 1, batch.report
    return batch.report[0]


# Formats ------------------------------------------------------------------------------------

def test_png_gray_is_imported_with_files_named_by_hash(project, settings):
    batch = import_files(project, [("patient-smith.png", png_bytes(1))])
    line = only_line(batch)
    assert line["status"] == "imported" and batch.n_imported == 1
    item = Item.objects.get(pk=line["item_ids"][0])
    assert (item.width, item.height, item.channels) == (8, 8, 1)
    assert item.source_name == "patient-smith.png"
    assert item.votes_wanted == project.overlap
    for field in (item.image, item.thumbnail):
        assert "smith" not in field.name and item.content_hash in field.name
    assert item.image.name.endswith(f"{item.content_hash}.png")
    assert item.thumbnail.name.endswith(f"{item.content_hash}-thumb.png")
    assert not item.array  # 8-bit: the PNG holds every value
    with item.image.open("rb") as f:
        assert np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(io.BytesIO(png_bytes(1)))))
    assert all("smith" not in str(p) for p in media_files(settings))


def test_jpeg_keeps_its_pixels_and_drops_exif(project):
    rgb = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x010E] = "Patient Jane Roe"  # ImageDescription
    data = encode(rgb, "JPEG", quality=90, exif=exif.tobytes())
    assert b"Jane Roe" in data
    batch = import_files(project, [("x.jpg", data)])
    item = Item.objects.get(pk=only_line(batch)["item_ids"][0])
    assert item.channels == 3 and item.image.name.endswith(".jpg")
    stored = item.image.read()
    assert b"Jane Roe" not in stored
    # Same compressed data: decodes to exactly the pixels the source decodes to.
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored))), np.asarray(Image.open(io.BytesIO(data))))


def test_tiff_16_bit_keeps_full_precision(project):
    values = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    batch = import_files(project, [("scan.tif", encode(values, "TIFF"))])
    item = Item.objects.get(pk=only_line(batch)["item_ids"][0])
    assert item.metadata["bits"] == 16 and item.channels == 1
    array = np.load(io.BytesIO(item.array.read()))
    assert array.dtype == np.float32 and np.array_equal(array, values.astype(np.float32))
    shown = np.asarray(Image.open(item.image))
    assert shown.dtype == np.uint8 and shown.min() == 0 and shown.max() == 255


def test_rgba_becomes_rgb_and_rgb_tiff(project):
    rgba = np.zeros((6, 6, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128
    rgb_tiff = encode(np.full((5, 5, 3), 7, dtype=np.uint8), "TIFF")
    batch = import_files(project, [("a.png", encode(rgba, "PNG")), ("b.tiff", rgb_tiff)])
    assert [line["status"] for line in batch.report] == ["imported", "imported"]
    items = Item.objects.order_by("id")
    assert [i.channels for i in items] == [3, 3]
    assert np.asarray(Image.open(items[0].image)).shape == (6, 6, 3)


def test_thumbnail_is_at_most_256_px(project):
    big = np.random.default_rng(1).integers(0, 255, (300, 600), dtype=np.uint8)
    batch = import_files(project, [("wide.png", encode(big, "PNG"))])
    item = Item.objects.get(pk=only_line(batch)["item_ids"][0])
    assert Image.open(item.thumbnail).size == (256, 128)


# Duplicates ---------------------------------------------------------------------------------

def test_reimport_is_a_duplicate(project, settings):
    first = import_files(project, [("a.png", png_bytes(3))])
    files_before = media_files(settings)
    second = import_files(project, [("renamed.png", png_bytes(3)), ("a-again.png", png_bytes(3))])
    assert [line["status"] for line in second.report] == ["duplicate", "duplicate"]
    assert second.report[0]["item_ids"] == first.report[0]["item_ids"]
    assert (second.n_imported, second.n_duplicates) == (0, 2)
    assert Item.objects.count() == 1 and media_files(settings) == files_before


def test_same_pixels_as_png_and_tiff_are_duplicates(project):
    pixels = np.random.default_rng(2).integers(0, 255, (8, 8), dtype=np.uint8)
    batch = import_files(project, [("a.png", encode(pixels, "PNG")), ("a.tif", encode(pixels, "TIFF"))])
    assert [line["status"] for line in batch.report] == ["imported", "duplicate"]


# Bad files: a specific message and nothing left behind ---------------------------------------

def assert_nothing_stored(settings):
    assert Item.objects.count() == 0
    assert media_files(settings) == []
    # A refused import is no history: no batch row either (on every entry point).
    assert not ImportBatch.objects.exists()


def test_not_an_image(project, settings):
    batch = import_files(project, [("notes.txt", b"hello, this is not an image at all" * 10)])
    line = only_line(batch)
    assert line["status"] == "failed" and "not an image" in line["message"]
    assert batch.n_failed == 1 and import_service.is_refused(batch)
    assert_nothing_stored(settings)


def test_empty_file(project, settings):
    assert "empty" in only_line(import_files(project, [("e.png", b"")]))["message"]
    assert_nothing_stored(settings)


def test_truncated_png(project, settings):
    data = encode(np.random.default_rng(4).integers(0, 255, (64, 64), dtype=np.uint8), "PNG")
    line = only_line(import_files(project, [("cut.png", data[: len(data) // 2])]))
    assert line["status"] == "failed" and "truncated" in line["message"]
    assert_nothing_stored(settings)


def test_decompression_bomb_header(project, settings):
    line = only_line(import_files(project, [("bomb.png", png_header_only(100_000, 100_000))]))
    assert line["status"] == "failed" and "decompression bomb" in line["message"]
    assert_nothing_stored(settings)


def test_image_over_the_pixel_limit(project, settings):
    settings.QUORUM_MAX_IMAGE_PIXELS = 32
    line = only_line(import_files(project, [("big.png", png_bytes(5))]))
    assert "decompression bomb" in line["message"] and "64 pixels" in line["message"]
    assert_nothing_stored(settings)


def test_wrong_channel_count(project, settings):
    project.expected_channels = 1
    project.save()
    line = only_line(import_files(project, [("rgb.png", png_bytes(6, mode="RGB"))]))
    assert line["status"] == "failed"
    assert "3 channel(s)" in line["message"] and "expects 1" in line["message"]
    assert_nothing_stored(settings)


def test_failure_while_writing_leaves_no_rows_or_files(project, settings, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ExpertLabel.objects, "bulk_create", broken)
    batch = import_files(project, [("a.png", png_bytes(7))], labels={"a.png": "normal"})
    line = only_line(batch)
    assert line["status"] == "failed" and "disk on fire" in line["message"]
    assert_nothing_stored(settings)


def test_one_bad_file_does_not_stop_the_folder(project, tmp_path, settings):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(png_bytes(8))
    (folder / "bad.png").write_bytes(b"garbage")
    (folder / "sub" / "c.png").write_bytes(png_bytes(9))
    (folder / ".DS_Store").write_bytes(b"junk")
    batch = import_path(project, folder)
    assert {line["name"]: line["status"] for line in batch.report} == {
        "a.png": "imported", "bad.png": "failed", "sub/c.png": "imported"}
    assert (batch.n_imported, batch.n_failed) == (2, 1)
    saved = ImportBatch.objects.get()
    assert saved.pk == batch.pk and (saved.n_imported, saved.n_failed) == (2, 1)
    assert saved.items.count() == 2 and len(saved.report) == 3


# Zips -----------------------------------------------------------------------------------------

def make_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def test_zip_with_unsafe_entries(project, tmp_path, settings):
    archive = tmp_path / "upload.zip"
    archive.write_bytes(make_zip({
        "ok/a.png": png_bytes(10),
        "../escape.png": png_bytes(11),
        "/etc/abs.png": png_bytes(12),
        "ok/../../up.png": png_bytes(13),
    }))
    batch = import_path(project, archive)
    lines = {line["name"]: line for line in batch.report}
    assert lines["ok/a.png"]["status"] == "imported"
    assert "leaves the archive" in lines["../escape.png"]["message"]
    assert "absolute path" in lines["/etc/abs.png"]["message"]
    assert lines["ok/../../up.png"]["status"] == "failed"
    assert Item.objects.count() == 1
    assert not (tmp_path / "escape.png").exists() and not Path("/etc/abs.png").exists()
    assert all(Path(settings.MEDIA_ROOT) in p.parents for p in media_files(settings))


def test_zip_entry_over_the_size_limit(project, tmp_path, settings):
    settings.QUORUM_MAX_UPLOAD_BYTES = 200
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"big.png": png_bytes(14, size=64)}))
    line = only_line(import_path(project, archive))
    assert line["status"] == "failed" and "exceeds the limit" in line["message"]


# Labels --------------------------------------------------------------------------------------

def test_labels_csv_sets_expert_answers(project):
    csv_bytes = b"filename,label\na.png,normal\nsub/b.png,PNEUMONIA\nc.png,\n"
    batch = import_files(project, [("a.png", png_bytes(20)), from_bytes("sub/b.png", png_bytes(21)),
                                   ("c.png", png_bytes(22))], labels=csv_bytes)
    answers = {i.source_name: (i.expert_answer.name if i.expert_answer else None) for i in Item.objects.all()}
    assert answers == {"a.png": "normal", "sub/b.png": "pneumonia", "c.png": None}
    assert batch.n_labels == 2
    labels = ExpertLabel.objects.all()
    assert all(lab.source == ExpertLabel.Source.IMPORT and lab.expert is None for lab in labels)


def test_labels_dict_by_base_name(project, tmp_path):
    (tmp_path / "x.png").write_bytes(png_bytes(23))
    batch = import_path(project, tmp_path, labels={"JPEGImages/x.png": "pneumonia", "y.png": None})
    assert batch.n_labels == 1
    assert Item.objects.get().expert_answer.name == "pneumonia"


def test_unknown_class_refuses_everything(project, settings):
    csv_bytes = b"a.png,normal\nb.png,tumour\n"
    with pytest.raises(ImportRefused) as refused:
        import_files(project, [("a.png", png_bytes(24)), ("b.png", png_bytes(25))], labels=csv_bytes)
    assert "row 2" in str(refused.value) and "'tumour'" in str(refused.value)
    assert not ImportBatch.objects.exists()
    assert_nothing_stored(settings)


def test_duplicate_brings_a_missing_label(project):
    import_files(project, [("a.png", png_bytes(26))])
    batch = import_files(project, [("a.png", png_bytes(26))], labels={"a.png": "normal"})
    assert only_line(batch)["status"] == "duplicate" and batch.n_labels == 1
    assert Item.objects.get().expert_answer.name == "normal"


# Hold-out ------------------------------------------------------------------------------------

def test_holdout_draw_is_reproducible(project, other_project):
    for p in (project, other_project):
        p.holdout_fraction = 0.5
        p.save()
    sources = [(f"{i}.png", png_bytes(100 + i)) for i in range(24)]
    import_files(project, sources, seed=7)
    import_files(other_project, sources, seed=7)
    first = list(project.items.order_by("id").values_list("is_holdout", flat=True))
    second = list(other_project.items.order_by("id").values_list("is_holdout", flat=True))
    assert first == second and 0 < sum(first) < len(first)


# Management command --------------------------------------------------------------------------

def test_command_imports_a_folder_with_labels(project, tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png_bytes(30))
    (tmp_path / "imgs" / "b.png").write_bytes(b"nope")
    (tmp_path / "labels.csv").write_text("a.png,pneumonia\n")
    out = io.StringIO()
    call_command("import_images", project.name, str(tmp_path / "imgs"), "--labels",
                 str(tmp_path / "labels.csv"), "--seed", "1", stdout=out)
    text = out.getvalue()
    assert "b.png" in text and "not an image" in text and "Items imported" in text
    batch = ImportBatch.objects.get()
    assert batch.source == ImportBatch.Source.COMMAND and (batch.n_imported, batch.n_labels) == (1, 1)


def test_command_refuses_unknown_class(project, tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(31))
    (tmp_path / "labels.csv").write_text("a.png,banana\n")
    with pytest.raises(CommandError, match="banana"):
        call_command("import_images", str(project.id), str(tmp_path / "a.png"),
                     "--labels", str(tmp_path / "labels.csv"), stdout=io.StringIO())
    assert Item.objects.count() == 0


def test_command_every_file_refused_is_an_error_and_writes_nothing(project, tmp_path, settings):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"not a picture" * 10)
    (tmp_path / "imgs" / "b.tif").write_bytes(b"II*\x00" + b"\xff" * 40)
    out = io.StringIO()
    with pytest.raises(CommandError, match="all 2 files were refused"):
        call_command("import_images", project.name, str(tmp_path / "imgs"), stdout=out)
    assert "a.png" in out.getvalue() and "b.tif" in out.getvalue()
    assert_nothing_stored(settings)


def test_command_empty_folder_is_an_error(project, tmp_path, settings):
    with pytest.raises(CommandError, match="no file to import"):
        call_command("import_images", project.name, str(tmp_path), stdout=io.StringIO())
    assert_nothing_stored(settings)


def test_command_unknown_project():
    with pytest.raises(CommandError, match="No project"):
        call_command("import_images", "nope", ".", stdout=io.StringIO())


# REST API ------------------------------------------------------------------------------------

def url(project) -> str:
    return f"/api/projects/{project.id}/imports/"


def test_api_upload_and_list(admin_client, project):
    response = admin_client.post(url(project), {
        "files": [upload("a.png", png_bytes(40)), upload("junk.bin", b"xx" * 50)],
        "labels": upload("labels.csv", b"a.png,normal\n"),
    }, format="multipart")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["n_imported"], body["n_failed"], body["n_labels"]) == (1, 1, 1)
    assert [line["status"] for line in body["report"]] == ["imported", "failed"]
    assert body["source"] == "api" and body["created_by"] == "admin1"
    listed = admin_client.get(url(project)).json()["results"]
    assert [b["id"] for b in listed] == [body["id"]]


def test_api_upload_of_a_zip(admin_client, project):
    data = make_zip({"x/a.png": png_bytes(41), "../b.png": png_bytes(42)})
    response = admin_client.post(url(project), {"files": [upload("set.zip", data)]}, format="multipart")
    assert response.status_code == 201
    assert {line["name"]: line["status"] for line in response.json()["report"]} == {
        "set.zip/x/a.png": "imported", "set.zip/../b.png": "failed"}


def test_api_400_when_nothing_imported_writes_nothing(admin_client, project, settings):
    response = admin_client.post(url(project), {
        "files": [upload("a.txt", b"text" * 40), upload("cut.png", png_bytes(47)[:30])],
    }, format="multipart")
    assert response.status_code == 400
    body = response.json()
    assert body["id"] is None and "all 2 files were refused" in body["detail"]
    assert [line["status"] for line in body["report"]] == ["failed", "failed"]
    assert body["n_failed"] == 2 and body["n_imported"] == 0
    assert_nothing_stored(settings)
    assert admin_client.get(url(project)).json()["results"] == []


def test_api_duplicate_only_is_201(admin_client, project):
    import_files(project, [("a.png", png_bytes(43))])
    response = admin_client.post(url(project), {"files": [upload("a.png", png_bytes(43))]}, format="multipart")
    assert response.status_code == 201 and response.json()["n_duplicates"] == 1


def test_api_unknown_class_is_400_and_writes_nothing(admin_client, project, settings):
    response = admin_client.post(url(project), {
        "files": [upload("a.png", png_bytes(44))],
        "labels": upload("l.csv", b"filename,label\na.png,giraffe\n"),
    }, format="multipart")
    assert response.status_code == 400
    assert "giraffe" in response.json()["detail"] and "row 2" in response.json()["detail"]
    assert not ImportBatch.objects.exists()
    assert_nothing_stored(settings)


def test_api_upload_over_the_limit_is_413(admin_client, project, settings):
    settings.QUORUM_MAX_UPLOAD_BYTES = 100
    response = admin_client.post(url(project), {"files": [upload("big.png", png_bytes(45, size=32))]},
                                 format="multipart")
    assert response.status_code == 413
    assert "big.png" in response.json()["detail"] and "at most 100 bytes" in response.json()["detail"]
    assert_nothing_stored(settings)


def test_api_requires_files(admin_client, project):
    assert admin_client.post(url(project), {}, format="multipart").status_code == 400


def test_api_roles(crowd_client, expert_client, admin_client, anon_client, staff_client, project, other_project):
    data = {"files": [upload("a.png", png_bytes(46))]}
    assert crowd_client.post(url(project), data, format="multipart").status_code == 403
    assert expert_client.post(url(project), data, format="multipart").status_code == 403
    assert crowd_client.get(url(project)).status_code == 403
    assert expert_client.get(url(project)).status_code == 403
    assert admin_client.get(url(other_project)).status_code == 404
    assert admin_client.post(url(other_project), data, format="multipart").status_code == 404
    assert anon_client.get(url(project)).status_code == 401
    assert staff_client.get(url(other_project)).status_code == 200
    assert Item.objects.count() == 0


def test_api_schema_documents_the_upload(staff_client):
    schema = staff_client.get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/projects/{project_id}/imports/"]["post"]
    assert "multipart/form-data" in operation["requestBody"]["content"]
    assert {"201", "400", "413"} <= set(operation["responses"])


# Upload page ---------------------------------------------------------------------------------

def page_url(project) -> str:
    return f"/projects/{project.id}/import/"


def test_page_upload_shows_the_report(admin_page, project):
    response = admin_page.get(page_url(project))
    assert response.status_code == 200
    assert b'type="file" name="files" multiple' in response.content
    response = admin_page.post(page_url(project), {
        "files": [upload("a.png", png_bytes(50)), upload("bad.png", b"bad" * 30)],
        "labels": upload("labels.csv", b"a.png,pneumonia\n"),
    }, follow=True)
    assert response.status_code == 200
    html = response.content.decode()
    assert "1 item imported" in html and "bad.png" in html and "not an image" in html
    batch = ImportBatch.objects.get()
    assert batch.source == ImportBatch.Source.UPLOAD and batch.n_labels == 1


def test_page_upload_of_only_bad_files_shows_why_and_writes_nothing(admin_page, project, settings):
    response = admin_page.post(page_url(project), {"files": [upload("bad.png", b"bad" * 30)]})
    assert response.status_code == 400
    html = response.content.decode()
    assert "the file was refused" in html and "bad.png" in html and "not an image" in html
    assert "Refused upload (nothing stored)" in html
    assert_nothing_stored(settings)


def test_page_refusals(admin_page, project, settings):
    response = admin_page.post(page_url(project), {
        "files": [upload("a.png", png_bytes(51))], "labels": upload("l.csv", b"a.png,zebra\n")})
    assert response.status_code == 400 and "zebra" in response.content.decode()
    settings.QUORUM_MAX_UPLOAD_BYTES = 50
    response = admin_page.post(page_url(project), {"files": [upload("a.png", png_bytes(51))]})
    assert response.status_code == 413 and "at most 50 bytes" in response.content.decode()
    assert admin_page.post(page_url(project), {}).status_code == 400
    assert_nothing_stored(settings)


def test_page_roles(crowd_page, expert_page, admin_page, anon_page, project, other_project):
    assert crowd_page.get(page_url(project)).status_code == 403
    assert expert_page.get(page_url(project)).status_code == 403
    assert crowd_page.post(page_url(project), {"files": [upload("a.png", png_bytes(52))]}).status_code == 403
    assert admin_page.get(page_url(other_project)).status_code == 404
    response = anon_page.get(page_url(project))
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert Item.objects.count() == 0


def test_bccd_demo_images_import_quickly(project, data_dir):
    """A slice of the real demo data: JPEG pass-through keeps this fast."""
    folder = data_dir / "bccd" / "JPEGImages"
    files = sorted(folder.glob("*.jpg"))[:12]
    batch = import_files(project, files, seed=0)
    assert batch.n_imported == 12 and batch.n_failed == 0


def test_progress_callback(project):
    calls = []
    import_files(project, [("a.png", png_bytes(60)), ("b.png", png_bytes(61))],
                 progress=lambda done, total, name: calls.append((done, total, name)))
    assert calls == [(1, 2, "a.png"), (2, 2, "b.png")]


def test_uid_key_is_stable():
    assert import_service.dicom_uid_key() == import_service.dicom_uid_key()
