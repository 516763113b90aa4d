"""Region consensus: points, boxes and masks from several annotators (pure NumPy, no Django).

Each method is an estimator in crowd-kit's style (hyperparameters in ``__init__``, ``fit`` on a
frame with one row per annotation, learned state in attributes ending in ``_``):

    from labeling.aggregation.regions import STAPLE, PointConsensus, BoxConsensus

    STAPLE().fit(frame)            # columns task, worker, segmentation (crowd-kit's layout)
    PointConsensus(radius=8).fit(frame)    # columns task, worker, points ([n, 2] x, y)
    BoxConsensus(iou=0.5).fit(frame)       # columns task, worker, boxes ([n, 4] x0, y0, x1, y1)

Every model gives a consensus per task, a confidence for it, each annotator's reliability
(sensitivity and specificity or precision) and ``uncertainty_`` per task (the review order).
"""

from labeling.aggregation.regions.agreement import (
    detection_agreement,
    detection_f1,
    mask_agreement,
    review_order,
)
from labeling.aggregation.regions.detections import (
    BoxConsensus,
    BoxMajorityVote,
    PointConsensus,
    PointMajorityVote,
)
from labeling.aggregation.regions.geometry import box_iou, dice, iou, polygon_mask
from labeling.aggregation.regions.masks import STAPLE, MaskMajorityVote
from labeling.aggregation.regions.matching import match_marks
from labeling.aggregation.regions.simulation import (
    RegionAnnotator,
    make_annotators,
    simulate_boxes,
    simulate_masks,
    simulate_points,
)

__all__ = [
    "STAPLE",
    "BoxConsensus",
    "BoxMajorityVote",
    "MaskMajorityVote",
    "PointConsensus",
    "PointMajorityVote",
    "RegionAnnotator",
    "box_iou",
    "detection_agreement",
    "detection_f1",
    "dice",
    "iou",
    "make_annotators",
    "mask_agreement",
    "match_marks",
    "polygon_mask",
    "review_order",
    "simulate_boxes",
    "simulate_masks",
    "simulate_points",
]
