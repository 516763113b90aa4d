"""Vote aggregation: pure NumPy (+ numba) methods that turn crowd votes into posteriors.

No Django here. Every method is an estimator with crowd-kit's interface over integer-coded
votes (see :mod:`labeling.aggregation.base`)::

    from labeling.aggregation import METHODS, DawidSkene, VoteMatrix

    # a frame with columns task, worker, label (ids and class names of any hashable type)
    model = DawidSkene(n_iter=100, tol=1e-5).fit(votes_frame, classes=["normal", "pneumonia"],
                                                 known_labels={item_id: "pneumonia"})
    model.posteriors_        # ndarray [n_tasks, K], rows aligned with model.tasks_
    model.labels_            # Series task -> class name; model.probas_ DataFrame task x class
    model.confusions_        # ndarray [n_workers, K_true, K_observed], rows = model.workers_
    model.worker_accuracy_   # ndarray [n_workers]: expected share of each worker's votes right
    model.errors_            # crowd-kit layout: rows (worker, observed label), columns true label

    # or, with codes already in hand (the array entry point):
    votes = VoteMatrix.from_codes(task_idx, worker_idx, label_idx,
                                  tasks=item_ids, workers=user_ids, classes=class_names)
    METHODS["dawid_skene"]().fit(votes, known_labels=np.array([...]))  # -1 = unknown

``classes`` fixes the class list and order, so a class nobody used still gets a column.
``known_labels`` (task -> class, or int codes aligned with ``tasks``) are clamped one-hot and
inform the worker parameters. ``WeightedMajorityVote.fit`` also takes ``weights`` (worker ->
weight); without them it weights workers by their accuracy on ``known_labels``.
"""

from labeling.aggregation.adaptive import AdaptiveResult, simulate_adaptive, votes_wanted
from labeling.aggregation.agreement import fleiss_kappa, krippendorff_alpha, worker_agreement
from labeling.aggregation.base import Aggregator, VoteMatrix, code_votes
from labeling.aggregation.dawid_skene import DawidSkene
from labeling.aggregation.glad import GLAD
from labeling.aggregation.mace import MACE
from labeling.aggregation.majority_vote import MajorityVote, WeightedMajorityVote
from labeling.aggregation.one_coin import OneCoinDawidSkene
from labeling.aggregation.selection import AutoSelect, Selection, select_method
from labeling.aggregation.simulation import (
    WorkerProfile,
    confusions_from_accuracy,
    make_profiles,
    simulate_crowd,
    simulate_votes,
    worker_confusion,
)

METHODS: dict[str, type[Aggregator]] = {
    "majority_vote": MajorityVote,
    "weighted_majority_vote": WeightedMajorityVote,
    "dawid_skene": DawidSkene,
    "one_coin": OneCoinDawidSkene,
    "glad": GLAD,
    "mace": MACE,
    # picks one of the above per project (labeling.aggregation.selection)
    "auto": AutoSelect,
}

__all__ = [
    "GLAD",
    "MACE",
    "METHODS",
    "AdaptiveResult",
    "Aggregator",
    "AutoSelect",
    "DawidSkene",
    "MajorityVote",
    "OneCoinDawidSkene",
    "Selection",
    "VoteMatrix",
    "WeightedMajorityVote",
    "WorkerProfile",
    "code_votes",
    "confusions_from_accuracy",
    "fleiss_kappa",
    "krippendorff_alpha",
    "make_profiles",
    "select_method",
    "simulate_adaptive",
    "simulate_crowd",
    "simulate_votes",
    "votes_wanted",
    "worker_agreement",
    "worker_confusion",
]
