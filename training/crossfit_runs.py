"""The ``crossfit_em`` label source: the soft targets of cross-fitted EM, for the run's final model.

:func:`training.engine.crossfit_em.cross_fitted_em` runs Raykar/AggNet EM over the crowd's votes
with each item's prior predicted by a classifier that never trained on it. Here that classifier
is the run's own backbone, trained by the engine's trainer for ``min(FOLD_EPOCHS, epochs)``
epochs (seeded per fold) on the other folds' current soft targets, its predictions on the
held-out fold brought back under the training prior when class balancing weighted its loss.
Gold and expert-answered training items stay clamped to their known answer in every E-step (as
in the Dawid-Skene fit EM starts from); the expert hold-out is never seen. The
final model then trains on every crowd item with the returned posteriors as soft targets, as
the ``dawid_skene`` source does.

The record (rounds, share of items changed per round) is stored in ``params["crowd_model"]``
and the posteriors and confusions in the run's folder before the final model trains, so a
resumed run trains on the same targets instead of running EM again.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np

from training import crowd_models, selectors
from training.models import TrainingRun

# each fold classifier trains this many epochs at most (the run's own count if smaller)
FOLD_EPOCHS = 2
# the benchmark's settings (benchmarks/learning_from_crowds.py: --crossfit-folds/-rounds)
FOLDS = 4
MAX_ROUNDS = 3
TARGETS_NAME = "crossfit-targets.npz"


class _Cancelled(Exception):
    """A fold's training stopped on the run's cancel request."""


def targets_path(run: TrainingRun):
    return selectors.run_folder(run) / TARGETS_NAME


def cross_fitted_targets(run: TrainingRun, data, progress, train, make_config):
    """``(record, posteriors, confusions)`` for ``run``'s training items, or None if cancelled.
    The service stores the record in the run's params (it holds the run); the targets are in
    the run's folder by then.

    ``data`` is the run's TrainingData (votes, Dawid-Skene start, known labels); ``train`` the
    engine's train function and ``make_config(data)`` the run's Dawid-Skene-soft TrainConfig,
    passed in by the service so this module imports no torch at import.
    """
    stored = _stored(run, data)
    if stored is not None:
        return stored
    from training.engine import ItemSet
    from training.engine.aggnet import undo_class_weights
    from training.engine.crossfit_em import cross_fitted_em
    from training.engine.data import TooFewItems

    params = run.params or {}
    fold_epochs = min(run.epochs, FOLD_EPOCHS)
    n_items = len(data.train)
    folds = min(params.get("crossfit_folds", FOLDS), n_items)
    # the smallest fold classifier trains on all but the largest fold, and training needs two
    if n_items - -(-n_items // folds) < 2:
        raise TooFewItems(
            f"crossfit_em in {folds} folds needs more than {n_items} crowd-labelled training "
            "items: each fold classifier trains on the other folds' items, two at least"
        )
    known = data.known_labels if data.known_labels is not None else np.full(len(data.train), -1)
    images, ids = list(data.train.images), data.train.item_ids
    base = make_config(data)
    folder = selectors.run_folder(run) / "crossfit-folds"

    def fit_predict(trained_on, targets, held_out, fold_seed) -> np.ndarray:
        config = dataclasses.replace(
            base, epochs=fold_epochs, seed=fold_seed, checkpoint_dir=str(folder / str(fold_seed))
        )
        result = train(
            config,
            ItemSet([images[i] for i in trained_on], None, [ids[i] for i in trained_on]),
            ItemSet([images[i] for i in held_out], None, [ids[i] for i in held_out]),
            init_posteriors=targets,
            callbacks=crowd_models.CandidateProgress(progress),
        )
        shutil.rmtree(folder / str(fold_seed), ignore_errors=True)
        if result.cancelled:
            raise _Cancelled
        balance = result.class_balance or {}
        weights = balance.get("class_weights") if balance.get("applied", "none") != "none" else None
        return undo_class_weights(result.holdout_probabilities, weights)

    try:
        result = cross_fitted_em(
            data.votes,
            data.init_posteriors,
            fit_predict,
            data.init_confusions,
            n_folds=folds,
            max_rounds=params.get("crossfit_rounds", MAX_ROUNDS),
            seed=run.seed,
            known_labels=known,  # gold and expert answers stay clamped, as in Dawid-Skene's fit
        )
    except _Cancelled:
        return None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    record = {
        **crowd_models.launch_record(run),
        "folds": folds,
        "fold_epochs": fold_epochs,
        "rounds": result.rounds,
        "changed": [round(share, 4) for share in result.changed],
    }
    _store(run, ids, result.posteriors, result.confusions)
    return record, result.posteriors, result.confusions


def _stored(run: TrainingRun, data):
    """The targets a previous attempt of this run computed, if they fit its training items."""
    record = (run.params or {}).get("crowd_model")
    path = targets_path(run)
    if not record or "rounds" not in record or not path.is_file():
        return None
    with np.load(path) as stored:
        if list(stored["item_ids"]) != list(data.train.item_ids):
            return None  # the items changed since: run EM again
        return record, stored["posteriors"], stored["confusions"]


def _store(run: TrainingRun, item_ids, posteriors, confusions) -> None:
    from training.engine.checkpoints import atomic_write

    def write(tmp) -> None:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                posteriors=posteriors,
                confusions=confusions,
                item_ids=np.asarray(item_ids, dtype=np.int64),
            )

    atomic_write(targets_path(run), write)
