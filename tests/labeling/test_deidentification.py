"""De-identification (PS3.15 Annex E basic profile): nothing identifying is stored or shown."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from labeling.imports.dicom import BASIC_PROFILE, BASIC_PROFILE_TABLE, deidentify, replacement_uid
from labeling.models import ImportBatch, Item
from labeling.services.imports import dicom_uid_key, import_files

pytestmark = pytest.mark.django_db


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


@pytest.fixture
def identified_ct() -> tuple[bytes, list[str]]:
    """CT_small.dcm as shipped (it carries a name, id, dates, institution) plus what it lacks."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    phi = [str(ds.PatientName), ds.PatientID, ds.StudyDate, ds.InstitutionName]
    assert all(phi), phi  # the test means something only if the file really carries them
    ds.PatientBirthDate = "19450312"
    ds.ReferringPhysicianName = "Watson^John"
    ds.OperatorsName = "Hudson^Martha"
    ds.AccessionNumber = "ACC99127"
    ds.InstitutionAddress = "221B Baker Street"
    block = ds.private_block(0x0099, "QUORUM TEST", create=True)
    block.add_new(0x01, "LO", "PRIVATE-Holmes-SECRET")
    phi += ["19450312", "Watson", "Hudson", "ACC99127", "Baker Street", "Holmes", "CompressedSamples"]
    return dicom_bytes(ds), phi


def assert_clean(text: str, phi: list[str]) -> None:
    for value in phi:
        assert value not in text, f"{value!r} leaked"


def test_nothing_identifying_is_stored_or_shown(identified_ct, admin_client, admin_page, project, settings):
    data, phi = identified_ct
    project.keep_original_files = True
    project.save()
    response = admin_client.post(f"/api/projects/{project.id}/imports/",
                                 {"files": [SimpleUploadedFile("CT_small.dcm", data)]}, format="multipart")
    assert response.status_code == 201, response.content
    assert_clean(response.content.decode(), phi)
    item = Item.objects.get()
    assert_clean(json.dumps(item.metadata), phi)
    for name in (item.image.name, item.thumbnail.name, item.array.name, item.original.name):
        assert "CT_small" not in name
        assert_clean(name, phi)
    # Every stored byte, including the kept original.
    stored = sorted(p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file())
    assert len(stored) == 4
    for path in stored:
        assert_clean(path.read_bytes().decode("latin-1"), phi)
    assert_clean(admin_client.get(f"/api/projects/{project.id}/imports/").content.decode(), phi)
    assert_clean(admin_client.get(f"/api/projects/{project.id}/").content.decode(), phi)
    assert_clean(admin_client.get("/api/projects/").content.decode(), phi)
    batch = ImportBatch.objects.get()
    page = admin_page.get(f"/projects/{project.id}/import/?batch={batch.id}")
    assert page.status_code == 200 and "CT_small.dcm" in page.content.decode()  # admins see names
    assert_clean(page.content.decode(), phi)


def test_kept_original_is_deidentified(identified_ct, project):
    data, _ = identified_ct
    project.keep_original_files = True
    project.save()
    import_files(project, [("ct.dcm", data)])
    item = Item.objects.get()
    before = pydicom.dcmread(io.BytesIO(data))
    after = pydicom.dcmread(item.original.open("rb"))
    assert after.PatientName == "" and after.PatientID == "" and after.PatientBirthDate == ""
    assert after.StudyDate == "" and after.AccessionNumber == "" and after.ReferringPhysicianName == ""
    for keyword in ("InstitutionName", "InstitutionAddress", "OperatorsName", "SeriesDate",
                    "AcquisitionDate", "PatientAge"):
        assert keyword not in after, keyword
    assert not any(elem.tag.is_private for elem in after.iterall())
    assert after.PatientIdentityRemoved == "YES"
    assert "PS3.15" in after.DeidentificationMethod
    assert after.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert after[keyword].value != before[keyword].value and after[keyword].value.startswith("2.25.")
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
    assert after.SOPClassUID == before.SOPClassUID  # kept: it says what the object is
    assert np.array_equal(after.pixel_array, before.pixel_array)


def test_uids_are_replaced_consistently_across_a_study(project, other_project):
    """Two instances of one study: same new study/series UIDs, distinct instance UIDs."""
    first = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    second = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    second.SOPInstanceUID = first.SOPInstanceUID + ".2"
    second.InstanceNumber = 2
    pixels = second.pixel_array.copy()
    pixels[0, 0] += 1
    second.PixelData = pixels.tobytes()
    for p in (project, other_project):
        p.keep_original_files = True
        p.save()
    batch = import_files(project, [("one.dcm", dicom_bytes(first)), ("two.dcm", dicom_bytes(second))])
    assert [line["status"] for line in batch.report] == ["imported", "imported"]
    one, two = (pydicom.dcmread(i.original.open("rb")) for i in project.items.order_by("id"))
    assert one.StudyInstanceUID == two.StudyInstanceUID != first.StudyInstanceUID
    assert one.SeriesInstanceUID == two.SeriesInstanceUID != first.SeriesInstanceUID
    assert one.FrameOfReferenceUID == two.FrameOfReferenceUID
    assert one.SOPInstanceUID != two.SOPInstanceUID
    # The same original UID maps to the same new one across imports in this installation.
    import_files(other_project, [("again.dcm", dicom_bytes(first))])
    again = pydicom.dcmread(other_project.items.get().original.open("rb"))
    assert again.StudyInstanceUID == one.StudyInstanceUID and again.SOPInstanceUID == one.SOPInstanceUID
    assert one.StudyInstanceUID == replacement_uid(first.StudyInstanceUID, dicom_uid_key())


def test_original_is_not_kept_unless_asked(identified_ct, project):
    import_files(project, [("ct.dcm", identified_ct[0])])
    assert not Item.objects.get().original


def test_replacement_uid_form():
    uid = replacement_uid("1.2.3.4", b"key")
    assert uid == replacement_uid("1.2.3.4", b"key") != replacement_uid("1.2.3.4", b"other")
    assert uid.startswith("2.25.") and len(uid) <= 64
    assert pydicom.uid.UID(uid).is_valid


def test_profile_table_is_explicit_and_consistent():
    tags = [tag for tag, _, _ in BASIC_PROFILE_TABLE]
    assert len(tags) == len(set(tags))
    expected = {
        0x00100010: "Z",  # Patient's Name
        0x00100020: "Z",  # Patient ID
        0x00100030: "Z",  # Patient's Birth Date
        0x00100040: "Z",  # Patient's Sex
        0x00101010: "X",  # Patient's Age
        0x00080080: "X",  # Institution Name (X/Z/D)
        0x00080081: "X",  # Institution Address
        0x00080090: "Z",  # Referring Physician's Name
        0x00081050: "X",  # Performing Physician's Name
        0x00081070: "X",  # Operators' Name
        0x00080050: "Z",  # Accession Number
        0x00080020: "Z",  # Study Date
        0x00080021: "X",  # Series Date
        0x00080023: "Z",  # Content Date (Z/D)
        0x00080022: "X",  # Acquisition Date
        0x0020000D: "U",  # Study Instance UID
        0x0020000E: "U",  # Series Instance UID
        0x00080018: "U",  # SOP Instance UID
        0x00200052: "U",  # Frame of Reference UID
    }
    assert {tag: BASIC_PROFILE[tag] for tag in expected} == expected


def test_profile_applies_inside_sequences():
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    inner = Dataset()
    inner.PatientName = "Doe^Jane"
    inner.ReferencedSOPInstanceUID = "1.2.3"
    inner.add_new(0x00111001, "LO", "private")
    ds.ReferencedSeriesSequence = Sequence([inner])
    ds.add_new(0x00091010, "LO", "private")
    deidentify(ds, uid_key=b"k")
    assert ds.PatientName == "" and 0x00091010 not in ds
    cleaned = ds.ReferencedSeriesSequence[0]
    assert cleaned.PatientName == "" and 0x00111001 not in cleaned
    assert cleaned.ReferencedSOPInstanceUID == replacement_uid("1.2.3", b"k")
