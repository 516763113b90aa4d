"""A finished training run's predictions as one more annotator in the project's aggregation.

The newest succeeded training run of the project that stored predictions (hold-out items and the
review queue, :mod:`training.services`) joins the next aggregation run: the method's crowd
posterior on the voted items (for Dawid-Skene, its whole EM) is combined with the model's answers, whose confusion is learned
from the data (:class:`labeling.aggregation.model_annotator.ModelAnnotator`, Raykar et al. 2010,
Albarqouni et al. 2016). The combined posterior is what the run stores, so ``Item.uncertainty``,
the review flag (the expert queue's order) and adaptive redundancy follow it; a model that agrees
with a confident posterior counts as one of the votes an item needs before it stops.

Hold-out predictions are out of sample (the model never trained on them); predictions on other
items are taken as in sample (the run trained on their crowd labels) and are down-weighted, and
the model's confusion is learned from the out-of-sample ones once there are enough.
The run records what the model contributed in ``AggregationRun.selection["model"]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from labeling.aggregation import Aggregator, DawidSkene, VoteMatrix
from labeling.aggregation.base import tie_broken_argmax
from labeling.aggregation.model_annotator import ModelAnnotator, dawid_skene_with_model
from labeling.models import Project


@dataclass(frozen=True)
class ModelInTheLoop:
    """What the model changed in one aggregation: the combined posterior and the record."""

    training_run_id: int
    posteriors: np.ndarray  # [n_tasks, K] combined
    predicted: np.ndarray  # [n_tasks] the model answered on the item
    agrees: np.ndarray  # [n_tasks] the model's top class is the combined posterior's
    record: dict

    def labels(self, method_labels: np.ndarray) -> np.ndarray:
        """The method's label where the model did not answer; the combined argmax elsewhere."""
        return np.where(self.predicted, tie_broken_argmax(self.posteriors), method_labels)


def annotator_name(training_run_id: int) -> str:
    return f"model: run {training_run_id}"


def latest_model_run(project: Project):
    """The newest succeeded training run of the project with stored predictions, or None."""
    from training.models import TrainingRun

    return (
        TrainingRun.objects.filter(
            project=project, status=TrainingRun.Status.SUCCEEDED, predictions__isnull=False
        )
        .distinct()
        .order_by("-finished_at", "-id")
        .first()
    )


def combine_with_model(
    project: Project, votes: VoteMatrix, known: np.ndarray, fitted: Aggregator
) -> ModelInTheLoop | None:
    """The fitted method's posterior combined with the latest model's predictions; None without a
    model or when it predicted on none of the voted items.

    A Dawid-Skene fit (or auto's choice of it) is continued as one EM with the model in it, so
    the workers are learned with its help (:func:`dawid_skene_with_model`); any other method's
    posterior is combined as it stands. Either way the stored worker reliabilities stay the
    method's own.
    """
    from training.models import Prediction

    run = latest_model_run(project)
    if run is None:
        return None
    k = votes.n_classes
    rows = [
        (item_id, probabilities, is_holdout)
        for item_id, probabilities, is_holdout in Prediction.objects.filter(run=run).values_list(
            "item_id", "probabilities", "item__is_holdout"
        )
        # a prediction of another shape (a run from before the classes changed) says nothing here
        if isinstance(probabilities, list) and len(probabilities) == k
    ]
    if not rows:
        return None
    where = pd.Index(votes.tasks).get_indexer([r[0] for r in rows])
    voted = where >= 0
    if not voted.any():
        return None
    probabilities = np.full((votes.n_tasks, k), np.nan)
    in_sample = np.zeros(votes.n_tasks, dtype=bool)
    for row, (_, probs, is_holdout), ok in zip(where, rows, voted, strict=True):
        if ok:
            p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, None)
            probabilities[row] = p / p.sum() if p.sum() > 0 else 1.0 / k
            in_sample[row] = not is_holdout
    crowd_posteriors = np.asarray(fitted.posteriors_, dtype=np.float64)
    annotator = ModelAnnotator()
    joint = getattr(fitted, "chosen_", None) == "dawid_skene" or isinstance(fitted, DawidSkene)
    if joint:
        combined, annotator, _ = dawid_skene_with_model(
            votes, probabilities, crowd_posteriors, known, in_sample, annotator
        )
    else:
        # every task of the vote matrix has votes: all carry crowd evidence
        combined = annotator.fit_combine(
            crowd_posteriors, probabilities, np.ones(votes.n_tasks, dtype=bool), in_sample, known
        )
    predicted = ~np.isnan(probabilities).any(axis=1)
    changed = predicted & (tie_broken_argmax(combined) != tie_broken_argmax(crowd_posteriors))
    record = {
        "training_run": run.pk,
        "name": annotator_name(run.pk),
        "label_source": run.label_source,
        "backbone": run.backbone,
        "n_predictions": int(predicted.sum()),
        "n_out_of_sample": int((predicted & ~in_sample).sum()),
        "in_sample_weight": annotator.in_sample_weight,
        "confusion_learned_from": annotator.fit_on_,
        "n_fit_items": annotator.n_fit_items_,
        "accuracy": round(annotator.accuracy_, 4),
        "confusion": np.round(annotator.confusion_argmax_, 4).tolist(),
        "labels_changed": int(changed.sum()),
        "workers_relearned_with_model": joint,
    }
    return ModelInTheLoop(
        training_run_id=run.pk,
        posteriors=combined,
        predicted=predicted,
        agrees=annotator.agrees(combined, probabilities),
        record=record,
    )
