"""Quorum's training engine: pure torch + timm, no Django.

The Django side calls :func:`train` (or :func:`train_mil` for bag projects) with a :class:`TrainConfig`, :class:`ItemSet` s and (for
crowd-aware label sources) :class:`CrowdVotes`, and :func:`evaluate` / the ``plot_*`` functions
on the hold-out predictions it gets back.
"""

from training.engine.aggnet import AggNetEM, sensitivity_specificity
from training.engine.backbones import DataConfig, build_model
from training.engine.balance import BALANCE_MODES, ClassBalance, plan_class_balance
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
from training.engine.mil import (
    MIL_LABEL_SOURCES,
    BagDataset,
    BagPreprocessing,
    GatedAttentionMIL,
    MILConfig,
    MILResult,
    load_mil_model,
    predict_bags,
    train_mil,
)
from training.engine.patches import (
    PatchGrid,
    attention_heatmap,
    localisation_scores,
    overlay_attention,
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
    "BALANCE_MODES",
    "ClassBalance",
    "plan_class_balance",
    "LABEL_SOURCES",
    "MIL_LABEL_SOURCES",
    "AggNetEM",
    "BagDataset",
    "BagPreprocessing",
    "GatedAttentionMIL",
    "MILConfig",
    "MILResult",
    "PatchGrid",
    "attention_heatmap",
    "localisation_scores",
    "load_mil_model",
    "overlay_attention",
    "predict_bags",
    "train_mil",
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
