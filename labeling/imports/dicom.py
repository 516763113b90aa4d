"""DICOM: read, de-identify, decode (every transfer syntax pydicom handles), window, render.

De-identification follows DICOM PS3.15 Annex E, the Basic Application Level Confidentiality
Profile (E.1.1), as the explicit table :data:`BASIC_PROFILE` of attributes and actions taken
from PS3.15 Table E.1-1 (column "Basic Prof."). Action codes, as in Table E.1-1:

- ``D``: replace with a non-zero-length dummy value consistent with the VR;
- ``Z``: replace with a zero-length value (or a dummy);
- ``X``: remove;
- ``U``: replace a UID with a non-zero-length UID that is internally consistent within a set
  of instances (here a keyed hash, so that the same original UID always maps to the same new
  one within an installation: ``2.25.<128-bit integer>``, PS3.5 B.2);
- compound codes (``X/Z``, ``X/Z/D``, ``Z/D``, ``X/Z/U*``) leave the choice to the
  implementation according to the attribute's type in the IOD; we take the first of X, Z, D,
  U that the code allows (remove when allowed, else empty), which is always permitted by the
  profile for a research copy that keeps only the image pixel module intact.

Also, as the profile requires (E.1.1 and E.3): private attributes are removed, the Patient
Identity Removed attribute is set to YES, De-identification Method and its code sequence
(DCM 113100) are filled, and the rules are applied recursively inside sequences. Files whose
Burned In Annotation is YES are refused: the profile does not make their pixels safe.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import warnings
from collections.abc import Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_rescale, apply_voi_lut
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from labeling.imports.frames import DecodedFile, Frame, ImportFileError, slice_position
from labeling.imports.images import bomb_message
from labeling.imports.rendering import minmax_to_uint8, window_to_uint8

# (center, width) of the common CT windows, keyed like Project.WindowPreset.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
FROM_FILE = "file"
MINMAX = "minmax"

# De-identification Method is an LO: at most 64 characters.
DEIDENTIFICATION_METHOD = "PS3.15 E.1.1 Basic Application Level Confidentiality Profile"

# PS3.15 Table E.1-1, Basic Profile column: (tag, attribute name, action).
BASIC_PROFILE_TABLE: list[tuple[int, str, str]] = [
    (0x00001000, "Affected SOP Instance UID", "X"),
    (0x00001001, "Requested SOP Instance UID", "U"),
    (0x00020003, "Media Storage SOP Instance UID", "U"),
    (0x00020016, "Source Application Entity Title", "X"),
    (0x00041511, "Referenced SOP Instance UID in File", "U"),
    (0x00080012, "Instance Creation Date", "X/D"),
    (0x00080013, "Instance Creation Time", "X/Z/D"),
    (0x00080014, "Instance Creator UID", "U"),
    (0x00080015, "Instance Coercion DateTime", "X"),
    (0x00080018, "SOP Instance UID", "U"),
    (0x00080020, "Study Date", "Z"),
    (0x00080021, "Series Date", "X/D"),
    (0x00080022, "Acquisition Date", "X/Z"),
    (0x00080023, "Content Date", "Z/D"),
    (0x00080024, "Overlay Date", "X"),
    (0x00080025, "Curve Date", "X"),
    (0x0008002A, "Acquisition DateTime", "X/Z/D"),
    (0x00080030, "Study Time", "Z"),
    (0x00080031, "Series Time", "X/D"),
    (0x00080032, "Acquisition Time", "X/Z"),
    (0x00080033, "Content Time", "Z/D"),
    (0x00080034, "Overlay Time", "X"),
    (0x00080035, "Curve Time", "X"),
    (0x00080050, "Accession Number", "Z"),
    (0x00080058, "Failed SOP Instance UID List", "U"),
    (0x00080080, "Institution Name", "X/Z/D"),
    (0x00080081, "Institution Address", "X"),
    (0x00080082, "Institution Code Sequence", "X/Z/D"),
    (0x00080090, "Referring Physician's Name", "Z"),
    (0x00080092, "Referring Physician's Address", "X"),
    (0x00080094, "Referring Physician's Telephone Numbers", "X"),
    (0x00080096, "Referring Physician Identification Sequence", "X"),
    (0x0008009C, "Consulting Physician's Name", "Z"),
    (0x0008009D, "Consulting Physician Identification Sequence", "X"),
    (0x00080201, "Timezone Offset From UTC", "X"),
    (0x00081010, "Station Name", "X/Z/D"),
    (0x00081030, "Study Description", "X"),
    (0x0008103E, "Series Description", "X"),
    (0x00081040, "Institutional Department Name", "X"),
    (0x00081048, "Physician(s) of Record", "X"),
    (0x00081049, "Physician(s) of Record Identification Sequence", "X"),
    (0x00081050, "Performing Physician's Name", "X"),
    (0x00081052, "Performing Physician Identification Sequence", "X"),
    (0x00081060, "Name of Physician(s) Reading Study", "X"),
    (0x00081062, "Physician(s) Reading Study Identification Sequence", "X"),
    (0x00081070, "Operators' Name", "X/Z/D"),
    (0x00081072, "Operator Identification Sequence", "X/D"),
    (0x00081080, "Admitting Diagnoses Description", "X"),
    (0x00081084, "Admitting Diagnoses Code Sequence", "X"),
    (0x00081110, "Referenced Study Sequence", "X/Z"),
    (0x00081111, "Referenced Performed Procedure Step Sequence", "X/Z/D"),
    (0x00081120, "Referenced Patient Sequence", "X"),
    (0x00081140, "Referenced Image Sequence", "X/Z/U*"),
    (0x00081155, "Referenced SOP Instance UID", "U"),
    (0x00081195, "Transaction UID", "U"),
    (0x00082112, "Source Image Sequence", "X/Z/U*"),
    (0x00083010, "Irradiation Event UID", "U"),
    (0x00084000, "Identifying Comments", "X"),
    (0x00100010, "Patient's Name", "Z"),
    (0x00100020, "Patient ID", "Z"),
    (0x00100021, "Issuer of Patient ID", "X"),
    (0x00100024, "Issuer of Patient ID Qualifiers Sequence", "X"),
    (0x00100030, "Patient's Birth Date", "Z"),
    (0x00100032, "Patient's Birth Time", "X"),
    (0x00100040, "Patient's Sex", "Z"),
    (0x00100050, "Patient's Insurance Plan Code Sequence", "X"),
    (0x00100101, "Patient's Primary Language Code Sequence", "X"),
    (0x00100102, "Patient's Primary Language Modifier Code Sequence", "X"),
    (0x00101000, "Other Patient IDs", "X"),
    (0x00101001, "Other Patient Names", "X"),
    (0x00101002, "Other Patient IDs Sequence", "X"),
    (0x00101005, "Patient's Birth Name", "X"),
    (0x00101010, "Patient's Age", "X"),
    (0x00101020, "Patient's Size", "X"),
    (0x00101030, "Patient's Weight", "X"),
    (0x00101040, "Patient's Address", "X"),
    (0x00101050, "Insurance Plan Identification", "X"),
    (0x00101060, "Patient's Mother's Birth Name", "X"),
    (0x00101080, "Military Rank", "X"),
    (0x00101081, "Branch of Service", "X"),
    (0x00101090, "Medical Record Locator", "X"),
    (0x00101100, "Referenced Patient Photo Sequence", "X"),
    (0x00102000, "Medical Alerts", "X"),
    (0x00102110, "Allergies", "X"),
    (0x00102150, "Country of Residence", "X"),
    (0x00102152, "Region of Residence", "X"),
    (0x00102154, "Patient's Telephone Numbers", "X"),
    (0x00102155, "Patient's Telecom Information", "X"),
    (0x00102160, "Ethnic Group", "X"),
    (0x00102180, "Occupation", "X"),
    (0x001021A0, "Smoking Status", "X"),
    (0x001021B0, "Additional Patient History", "X"),
    (0x001021C0, "Pregnancy Status", "X"),
    (0x001021D0, "Last Menstrual Date", "X"),
    (0x001021F0, "Patient's Religious Preference", "X"),
    (0x00102203, "Patient's Sex Neutered", "X/Z"),
    (0x00102297, "Responsible Person", "X"),
    (0x00102299, "Responsible Organization", "X"),
    (0x00104000, "Patient Comments", "X"),
    (0x00180010, "Contrast/Bolus Agent", "Z/D"),
    (0x00181000, "Device Serial Number", "X/Z/D"),
    (0x00181002, "Device UID", "U"),
    (0x00181004, "Plate ID", "X"),
    (0x00181005, "Generator ID", "X"),
    (0x00181007, "Cassette ID", "X"),
    (0x00181008, "Gantry ID", "X"),
    (0x00181012, "Date of Secondary Capture", "X"),
    (0x00181014, "Time of Secondary Capture", "X"),
    (0x00181030, "Protocol Name", "X/D"),
    (0x00181200, "Date of Last Calibration", "X"),
    (0x00181201, "Time of Last Calibration", "X"),
    (0x00181400, "Acquisition Device Processing Description", "X/D"),
    (0x00184000, "Acquisition Comments", "X"),
    (0x0018700A, "Detector ID", "X/D"),
    (0x00189424, "Acquisition Protocol Description", "X"),
    (0x0018A003, "Contribution Description", "X"),
    (0x0020000D, "Study Instance UID", "U"),
    (0x0020000E, "Series Instance UID", "U"),
    (0x00200010, "Study ID", "Z"),
    (0x00200052, "Frame of Reference UID", "U"),
    (0x00200200, "Synchronization Frame of Reference UID", "U"),
    (0x00203401, "Modifying Device ID", "X"),
    (0x00203404, "Modifying Device Manufacturer", "X"),
    (0x00203406, "Modified Image Description", "X"),
    (0x00204000, "Image Comments", "X"),
    (0x00209158, "Frame Comments", "X"),
    (0x00209161, "Concatenation UID", "U"),
    (0x00209164, "Dimension Organization UID", "U"),
    (0x00281199, "Palette Color Lookup Table UID", "U"),
    (0x00281214, "Large Palette Color Lookup Table UID", "U"),
    (0x00284000, "Image Presentation Comments", "X"),
    (0x00320012, "Study ID Issuer", "X"),
    (0x00321020, "Scheduled Study Location", "X"),
    (0x00321021, "Scheduled Study Location AE Title", "X"),
    (0x00321030, "Reason for Study", "X"),
    (0x00321032, "Requesting Physician", "X"),
    (0x00321033, "Requesting Service", "X"),
    (0x00321060, "Requested Procedure Description", "X/Z"),
    (0x00321070, "Requested Contrast Agent", "X"),
    (0x00324000, "Study Comments", "X"),
    (0x00380010, "Admission ID", "X"),
    (0x00380011, "Issuer of Admission ID", "X"),
    (0x00380014, "Issuer of Admission ID Sequence", "X"),
    (0x0038001E, "Scheduled Patient Institution Residence", "X"),
    (0x00380020, "Admitting Date", "X"),
    (0x00380021, "Admitting Time", "X"),
    (0x00380040, "Discharge Diagnosis Description", "X"),
    (0x00380050, "Special Needs", "X"),
    (0x00380060, "Service Episode ID", "X"),
    (0x00380061, "Issuer of Service Episode ID", "X"),
    (0x00380062, "Service Episode Description", "X"),
    (0x00380300, "Current Patient Location", "X"),
    (0x00380400, "Patient's Institution Residence", "X"),
    (0x00380500, "Patient State", "X"),
    (0x00384000, "Visit Comments", "X"),
    (0x00400001, "Scheduled Station AE Title", "X"),
    (0x00400002, "Scheduled Procedure Step Start Date", "X"),
    (0x00400003, "Scheduled Procedure Step Start Time", "X"),
    (0x00400004, "Scheduled Procedure Step End Date", "X"),
    (0x00400005, "Scheduled Procedure Step End Time", "X"),
    (0x00400006, "Scheduled Performing Physician's Name", "X"),
    (0x00400007, "Scheduled Procedure Step Description", "X"),
    (0x0040000B, "Scheduled Performing Physician Identification Sequence", "X"),
    (0x00400010, "Scheduled Station Name", "X"),
    (0x00400011, "Scheduled Procedure Step Location", "X"),
    (0x00400012, "Pre-Medication", "X"),
    (0x00400241, "Performed Station AE Title", "X"),
    (0x00400242, "Performed Station Name", "X"),
    (0x00400243, "Performed Location", "X"),
    (0x00400244, "Performed Procedure Step Start Date", "X"),
    (0x00400245, "Performed Procedure Step Start Time", "X"),
    (0x00400248, "Performed Station Name Code Sequence", "X"),
    (0x00400253, "Performed Procedure Step ID", "X"),
    (0x00400254, "Performed Procedure Step Description", "X"),
    (0x00400275, "Request Attributes Sequence", "X"),
    (0x00400280, "Comments on the Performed Procedure Step", "X"),
    (0x00400555, "Acquisition Context Sequence", "X"),
    (0x00401001, "Requested Procedure ID", "X"),
    (0x00401004, "Patient Transport Arrangements", "X"),
    (0x00401005, "Requested Procedure Location", "X"),
    (0x00401010, "Names of Intended Recipients of Results", "X"),
    (0x00401011, "Intended Recipients of Results Identification Sequence", "X"),
    (0x00401101, "Person Identification Code Sequence", "D"),
    (0x00401102, "Person's Address", "X"),
    (0x00401103, "Person's Telephone Numbers", "X"),
    (0x00401104, "Person's Telecom Information", "X"),
    (0x00401400, "Requested Procedure Comments", "X"),
    (0x00402001, "Reason for the Imaging Service Request", "X"),
    (0x00402008, "Order Entered By", "X"),
    (0x00402009, "Order Enterer's Location", "X"),
    (0x00402010, "Order Callback Phone Number", "X"),
    (0x00402016, "Placer Order Number / Imaging Service Request", "Z"),
    (0x00402017, "Filler Order Number / Imaging Service Request", "Z"),
    (0x00402400, "Imaging Service Request Comments", "X"),
    (0x00403001, "Confidentiality Constraint on Patient Data Description", "X"),
    (0x00404023, "Referenced General Purpose Scheduled Procedure Step Transaction UID", "U"),
    (0x00404025, "Scheduled Station Name Code Sequence", "X"),
    (0x00404027, "Scheduled Station Geographic Location Code Sequence", "X"),
    (0x00404030, "Performed Station Geographic Location Code Sequence", "X"),
    (0x00404034, "Scheduled Human Performers Sequence", "X"),
    (0x00404035, "Actual Human Performers Sequence", "X"),
    (0x00404036, "Human Performer's Organization", "X"),
    (0x00404037, "Human Performer's Name", "X"),
    (0x0040A027, "Verifying Organization", "X"),
    (0x0040A073, "Verifying Observer Sequence", "D"),
    (0x0040A075, "Verifying Observer Name", "D"),
    (0x0040A078, "Author Observer Sequence", "X"),
    (0x0040A07A, "Participant Sequence", "X"),
    (0x0040A07C, "Custodial Organization Sequence", "X"),
    (0x0040A088, "Verifying Observer Identification Code Sequence", "Z"),
    (0x0040A123, "Person Name", "D"),
    (0x0040A124, "UID", "U"),
    (0x0040A730, "Content Sequence", "X"),
    (0x0040DB0C, "Template Extension Organization UID", "U"),
    (0x0040DB0D, "Template Extension Creator UID", "U"),
    (0x00700001, "Graphic Annotation Sequence", "D"),
    (0x00700084, "Content Creator's Name", "Z"),
    (0x00700086, "Content Creator's Identification Code Sequence", "X"),
    (0x0070031A, "Fiducial UID", "U"),
    (0x00880140, "Storage Media File-set UID", "U"),
    (0x00880200, "Icon Image Sequence", "X"),
    (0x00880904, "Topic Title", "X"),
    (0x00880906, "Topic Subject", "X"),
    (0x00880910, "Topic Author", "X"),
    (0x00880912, "Topic Keywords", "X"),
    (0x20300020, "Text String", "X"),
    (0x3006_0024, "Referenced Frame of Reference UID", "U"),
    (0x3006_00C2, "Related Frame of Reference UID", "U"),
    (0x300A_0013, "Dose Reference UID", "U"),
    (0x300E_0008, "Reviewer Name", "X/Z"),
    (0x04000100, "Digital Signature UID", "X"),
    (0x04000402, "Referenced Digital Signature Sequence", "X"),
    (0x04000403, "Referenced SOP Instance MAC Sequence", "X"),
    (0x04000404, "MAC", "X"),
    (0x04000550, "Modified Attributes Sequence", "X"),
    (0x04000561, "Original Attributes Sequence", "X"),
    (0x40000010, "Arbitrary", "X"),
    (0x40004000, "Text Comments", "X"),
    (0x40080042, "Results ID Issuer", "X"),
    (0x40080102, "Interpretation Recorder", "X"),
    (0x4008010A, "Interpretation Transcriber", "X"),
    (0x4008010B, "Interpretation Text", "X"),
    (0x4008010C, "Interpretation Author", "X"),
    (0x40080111, "Interpretation Approver Sequence", "X"),
    (0x40080114, "Physician Approving Interpretation", "X"),
    (0x40080115, "Interpretation Diagnosis Description", "X"),
    (0x40080118, "Results Distribution List Sequence", "X"),
    (0x40080119, "Distribution Name", "X"),
    (0x4008011A, "Distribution Address", "X"),
    (0x40080202, "Interpretation ID Issuer", "X"),
    (0x40080300, "Impressions", "X"),
    (0x40084000, "Results Comments", "X"),
    (0xFFFAFFFA, "Digital Signatures Sequence", "X"),
]

# Repeating groups of Table E.1-1: (group base, element or None for all, name, action).
# Curve Data is (50xx,xxxx); Overlay Data (60xx,3000) and Overlay Comments (60xx,4000).
BASIC_PROFILE_REPEATING: list[tuple[int, int | None, str, str]] = [
    (0x5000, None, "Curve Data", "X"),
    (0x6000, 0x3000, "Overlay Data", "X"),
    (0x6000, 0x4000, "Overlay Comments", "X"),
]


def _resolve(action: str) -> str:
    """One concrete action for a Table E.1-1 code: X where allowed, then Z, D, U."""
    options = action.replace("*", "").split("/")
    for choice in ("X", "Z", "D", "U"):
        if choice in options:
            return choice
    raise ValueError(f"unknown de-identification action {action!r}")


BASIC_PROFILE: dict[int, str] = {tag: _resolve(action) for tag, _, action in BASIC_PROFILE_TABLE}


def _action_for(tag: BaseTag) -> str | None:
    action = BASIC_PROFILE.get(int(tag))
    if action is not None:
        return action
    group = tag.group
    for base, element, _, repeating_action in BASIC_PROFILE_REPEATING:
        if base <= group <= base + 0xFF and group % 2 == 0:
            if element is None or tag.element == element:
                return _resolve(repeating_action)
    return None


_DUMMY_BY_VR = {
    "PN": "ANONYMIZED",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "IS": "0",
    "DS": "0",
}
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}


def replacement_uid(original: str, key: bytes) -> str:
    """The same original UID always gives the same new UID for a given key (PS3.5 B.2 form)."""
    digest = hmac.new(key, original.strip().encode(), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def deidentify(ds: Dataset, *, uid_key: bytes) -> None:
    """Apply the Basic Application Level Confidentiality Profile to ``ds`` in place."""
    _clean(ds, uid_key)
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:
        _clean(file_meta, uid_key)
    ds.preamble = None
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    ds.LongitudinalTemporalInformationModified = "REMOVED"


def _clean(ds: Dataset, uid_key: bytes) -> None:
    for tag in list(ds.keys()):
        if tag.is_private:
            del ds[tag]
            continue
        action = _action_for(tag)
        if action == "X":
            del ds[tag]
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            if action == "Z":
                elem.value = Sequence([])
                continue
            # D on a sequence, or an attribute the profile keeps: clean what is inside.
            for item in elem.value or []:
                _clean(item, uid_key)
            continue
        if action == "Z":
            elem.value = "" if elem.VR in _TEXT_VRS else None
        elif action == "D":
            elem.value = _DUMMY_BY_VR.get(elem.VR, "ANONYMIZED" if elem.VR in _TEXT_VRS else None)
        elif action == "U":
            elem.value = _map_uids(elem.value, lambda uid: replacement_uid(uid, uid_key))


def _map_uids(value, convert: Callable[[str], str]):
    if value in (None, ""):
        return value
    if isinstance(value, MultiValue | list | tuple):
        return [convert(str(v)) for v in value if str(v)]
    return convert(str(value))


def looks_like_dicom(name: str, data: bytes) -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom", ".dic"))


def read_dataset(data: bytes) -> Dataset:
    """Parse a DICOM file (with or without the Part 10 header)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            # Parse every element now, so that a truncated header fails here and not later.
            for _ in ds.iterall():
                pass
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise ImportFileError(f"not a readable DICOM file (truncated or corrupt): {exc}") from exc
    if len(ds) == 0 or not ("SOPClassUID" in ds or _has_pixels(ds)):
        raise ImportFileError("not a readable DICOM file: no DICOM attributes found")
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        # A file without the Part 10 header: name the encoding it was read with.
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit
            else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds


def _has_pixels(ds: Dataset) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _first_float(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def decode_dicom(
    data: bytes,
    *,
    max_pixels: int,
    window_preset: str = FROM_FILE,
    uid_key: bytes,
    keep_original: bool = False,
) -> DecodedFile:
    """De-identify first, then decode every frame into an item-ready :class:`Frame`."""
    ds = read_dataset(data)
    modality = str(ds.get("Modality", "") or "")
    if not _has_pixels(ds):
        kind = modality or _sop_class_name(ds) or "this object"
        raise ImportFileError(f"DICOM file has no pixel data ({kind}); there is no image to label")
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise ImportFileError(
            "DICOM file has burned-in annotation (patient data may be in the pixels); refused"
        )
    deidentify(ds, uid_key=uid_key)

    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    n_frames = int(_first_float(ds.get("NumberOfFrames")) or 1)
    if rows * columns > max_pixels:
        raise ImportFileError(bomb_message(columns, rows, max_pixels))
    transfer_syntax = _transfer_syntax_name(ds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except Exception as exc:  # decoders raise ValueError, RuntimeError, NotImplementedError ...
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        first_line = " ".join(lines[:2]) if lines else type(exc).__name__
        if "less than expected" in first_line or "truncated" in first_line.lower():
            raise ImportFileError(
                f"truncated DICOM file: the pixel data is shorter than {n_frames} frame(s) of "
                f"{rows} x {columns} need ({first_line})"
            ) from exc
        raise ImportFileError(
            f"DICOM pixel data could not be decoded ({transfer_syntax}): {first_line}"
        ) from exc

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    stack = pixels if n_frames > 1 else pixels[np.newaxis]
    if photometric == "PALETTE COLOR":
        colour = apply_color_lut(stack, ds)
        frames, window = _colour_frames(stack, colour, bits=16 if colour.dtype != np.uint8 else 8)
        channels = 3
    elif stack.ndim == 4:
        frames, window = _colour_frames(stack, stack, bits=int(ds.get("BitsStored", 8) or 8))
        channels = 3
    else:
        frames, window = _gray_frames(stack, ds, window_preset, invert=photometric == "MONOCHROME1")
        channels = 1
    for index, frame in enumerate(frames):
        frame.frame_index = index

    metadata = _technical_metadata(ds, transfer_syntax, n_frames)
    metadata["window"] = window
    original = _encode_dataset(ds) if keep_original else None
    return DecodedFile(
        frames=frames,
        width=columns,
        height=rows,
        channels=channels,
        modality=modality[:16],
        metadata=metadata,
        original=original,
        hash_frame_index=n_frames > 1,
        series=str(ds.get("SeriesInstanceUID", "") or ""),
        slice_position=slice_position(
            ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient"),
            ds.get("InstanceNumber"),
        ),
    )


def _gray_frames(
    stack: np.ndarray, ds: Dataset, window_preset: str, *, invert: bool
) -> tuple[list[Frame], dict]:
    rescaled = apply_rescale(stack, ds).astype(np.float32)
    center, width, source = None, None, MINMAX
    if window_preset in WINDOW_PRESETS:
        center, width = WINDOW_PRESETS[window_preset]
        source = f"preset:{window_preset}"
    elif window_preset == FROM_FILE:
        center = _first_float(ds.get("WindowCenter"))
        width = _first_float(ds.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            source = "file"
        elif "VOILUTSequence" in ds:
            source = "file:voi_lut"
    frames = []
    for i in range(stack.shape[0]):
        if source == MINMAX:
            display = minmax_to_uint8(rescaled[i])
        elif source == "file:voi_lut":
            display = minmax_to_uint8(apply_voi_lut(rescaled[i], ds, prefer_lut=True))
        else:
            display = window_to_uint8(rescaled[i], center, width)
        if invert:
            # MONOCHROME1: the lowest value is white.
            display = 255 - display
        frames.append(Frame(pixels=stack[i], display=display, array=rescaled[i]))
    window = {"source": source}
    if center is not None and source not in (MINMAX, "file:voi_lut"):
        window.update(center=center, width=width)
    return frames, window


def _colour_frames(
    stack: np.ndarray, colour: np.ndarray, *, bits: int
) -> tuple[list[Frame], dict]:
    frames = []
    for i in range(stack.shape[0]):
        rgb = colour[i]
        if rgb.dtype == np.uint8:
            frames.append(Frame(pixels=stack[i], display=rgb))
            continue
        array = rgb.astype(np.float32)
        scale = 255.0 / float(2**bits - 1)
        display = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
        frames.append(Frame(pixels=stack[i], display=display, array=array))
    return frames, {"source": "colour"}


def _transfer_syntax_name(ds: Dataset) -> str:
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return UID(uid).name if uid else "unknown"


def _sop_class_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return UID(str(uid)).name if uid else ""


def _technical_metadata(ds: Dataset, transfer_syntax: str, n_frames: int) -> dict:
    """Only what describes the pixels: no names, dates, places or identifiers."""
    spacing = ds.get("PixelSpacing")
    pixel_spacing = None
    if spacing is not None:
        try:
            pixel_spacing = [float(v) for v in spacing]
        except (TypeError, ValueError):
            pixel_spacing = None
    metadata = {
        "format": "DICOM",
        "modality": str(ds.get("Modality", "") or ""),
        "sop_class": _sop_class_name(ds),
        "rows": int(ds.get("Rows", 0) or 0),
        "columns": int(ds.get("Columns", 0) or 0),
        "number_of_frames": n_frames,
        "samples_per_pixel": int(ds.get("SamplesPerPixel", 1) or 1),
        "bits_allocated": int(ds.get("BitsAllocated", 0) or 0),
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "") or ""),
        "pixel_spacing": pixel_spacing,
        "slice_thickness": _first_float(ds.get("SliceThickness")),
        "transfer_syntax": transfer_syntax,
        "deidentification": DEIDENTIFICATION_METHOD,
    }
    slope, intercept = _first_float(ds.get("RescaleSlope")), _first_float(ds.get("RescaleIntercept"))
    if slope is not None or intercept is not None:
        metadata["rescale"] = {"slope": slope if slope is not None else 1.0,
                               "intercept": intercept if intercept is not None else 0.0}
    return metadata


def _encode_dataset(ds: Dataset) -> bytes:
    """The de-identified dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "SOPInstanceUID" in ds:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    try:
        ds.save_as(buffer, enforce_file_format=True)
    except Exception:  # no transfer syntax in a header-less file: write it as it was read
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()

