"""Quorum's training engine: pure torch + timm, no Django.

The Django side calls :func:`train` (or :func:`train_mil` for bag projects) with a :class:`TrainConfig`, :class:`ItemSet` s and (for
crowd-aware label sources) :class:`CrowdVotes`, and :func:`evaluate` / the ``plot_*`` functions
on the hold-out predictions it gets back.

The names below load their module (and torch) on first use: importing one light module of the
package, as the web process does for :mod:`chart_style`, does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF = {
    "AggNetEM": "aggnet",
    "sensitivity_specificity": "aggnet",
    "build_model": "backbones",
    "DataConfig": "backbones",
    "BALANCE_MODES": "balance",
    "ClassBalance": "balance",
    "plan_class_balance": "balance",
    "CheckpointError": "checkpoints",
    "CrowdLayer": "crowd_layer",
    "CrowdVotes": "data",
    "ItemDataset": "data",
    "ItemSet": "data",
    "make_loader": "data",
    "Preprocessing": "data",
    "load_trained_model": "inference",
    "predict": "inference",
    "evaluate": "metrics",
    "EvaluationReport": "metrics",
    "plot_confusion_matrix": "metrics",
    "plot_reliability_diagram": "metrics",
    "plot_roc_curves": "metrics",
    "plot_training_curves": "metrics",
    "BagDataset": "mil",
    "BagPreprocessing": "mil",
    "GatedAttentionMIL": "mil",
    "load_mil_model": "mil",
    "MIL_LABEL_SOURCES": "mil",
    "MILConfig": "mil",
    "MILResult": "mil",
    "predict_bags": "mil",
    "train_mil": "mil",
    "attention_heatmap": "patches",
    "localisation_scores": "patches",
    "overlay_attention": "patches",
    "PatchGrid": "patches",
    "EpochRecord": "trainer",
    "LABEL_SOURCES": "trainer",
    "train": "trainer",
    "TrainConfig": "trainer",
    "TrainingCallbacks": "trainer",
    "TrainingResult": "trainer",
    "converted_weights_path": "weights",
    "WeightsError": "weights",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        # a submodule reached as an attribute (training.engine.trainer) without its import
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
