"""Quorum's training engine: pure torch + timm, no Django.

The Django side calls :func:`train` with a :class:`TrainConfig`, :class:`ItemSet` s and (for
crowd-aware label sources) :class:`CrowdVotes`, and :func:`evaluate` / the ``plot_*`` functions
on the hold-out predictions it gets back.
"""

from training.engine.aggnet import AggNetEM, sensitivity_specificity
from training.engine.backbones import DataConfig, build_model
from training.engine.checkpoints import CheckpointError
from training.engine.crowd_layer import CrowdLayer
from training.engine.data import CrowdVotes, ItemDataset, ItemSet, Preprocessing, make_loader
from training.engine.inference import load_trained_model, predict
from training.engine.metrics import (
    EvaluationReport,
    evaluate,
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_roc_curves,
    plot_training_curves,
)
from training.engine.trainer import (
    LABEL_SOURCES,
    EpochRecord,
    TrainConfig,
    TrainingCallbacks,
    TrainingResult,
    train,
)
from training.engine.weights import WeightsError, converted_weights_path

__all__ = [
    "LABEL_SOURCES",
    "AggNetEM",
    "CheckpointError",
    "CrowdLayer",
    "CrowdVotes",
    "DataConfig",
    "EpochRecord",
    "EvaluationReport",
    "ItemDataset",
    "ItemSet",
    "Preprocessing",
    "TrainConfig",
    "TrainingCallbacks",
    "TrainingResult",
    "WeightsError",
    "build_model",
    "converted_weights_path",
    "evaluate",
    "load_trained_model",
    "make_loader",
    "plot_confusion_matrix",
    "plot_reliability_diagram",
    "plot_roc_curves",
    "plot_training_curves",
    "predict",
    "sensitivity_specificity",
    "train",
]
