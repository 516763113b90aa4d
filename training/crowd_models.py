"""Which crowd model a run trains: the ``auto`` label source's pick by validation, its fallback,
and the sentence the report names the crowd model with.

``auto`` trains each candidate (a label source, for the crowd layer with its form and
initialisation) for a few epochs on the crowd's training items *minus* the validation items, and
lets :func:`training.engine.selection.pick_by_validation` choose by the candidates' predictions on
those validation items: the non-hold-out items whose answer is known (gold items and items an
expert labelled in review). The expert hold-out is never used: it is what the finished run is
scored on. With fewer than ``MIN_VALIDATION`` such items, balanced accuracy on them is too noisy
to choose by, and the run trains ``DEFAULT`` instead, saying so. The choice is stored in the
run's ``params["crowd_model"]`` before the chosen model trains, so a resumed run trains the same
one, and copied into its report (``Evaluation.extra["crowd_model"]``).

The engine names (forms and inits) are listed here too, without torch: web processes check a
launch without importing the engine (tests hold the two lists equal).
"""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any

from labeling.aggregation.selection import MIN_REFERENCE
from labeling.models import Item
from training.datasets import class_codes, item_image
from training.models import TrainingRun

Source = TrainingRun.LabelSource

# training.engine.crowd_layer's CROWD_LAYER_FORMS and CROWD_LAYER_INITS
CROWD_LAYER_FORMS = ("confusion_trace", "mw", "vw", "vb", "vw+b", "conal")
CROWD_LAYER_INITS = ("identity", "dawid_skene")
# a crowd_layer run's form and init when its params name none (TrainConfig's defaults)
LAUNCH_FORM, LAUNCH_INIT = "confusion_trace", "dawid_skene"
FORM_NAMES = {
    "confusion_trace": "normalised confusion with trace penalty",
    "mw": "MW",
    "vw": "VW",
    "vb": "VB",
    "vw+b": "VW+B",
    "conal": "CoNAL",
}
INIT_NAMES = {"identity": "identity init", "dawid_skene": "Dawid-Skene init"}
SOURCE_NAMES = {
    Source.MAJORITY_VOTE: "majority vote (hard labels)",
    Source.DAWID_SKENE: "Dawid-Skene soft labels",
    Source.AGGNET: "AggNet (EM with the CNN in the loop)",
}
# sources an admin launches but auto never tries (too costly to train as a candidate)
LAUNCH_ONLY_NAMES = {
    Source.CROSSFIT_EM: "cross-fitted EM (out-of-fold CNN prior, then its soft labels)",
}

# the same floor as auto aggregation's: fewer reference items and their accuracy is noise
MIN_VALIDATION = MIN_REFERENCE
# what auto tries: soft Dawid-Skene labels (the baseline every crowd model must beat) and the
# crowd layer in today's form and Rodrigues & Pereira's MW and VW+B, from both starts
CANDIDATES = (
    "dawid_skene",
    "crowd_layer/confusion_trace/dawid_skene",
    "crowd_layer/mw/identity",
    "crowd_layer/mw/dawid_skene",
    "crowd_layer/vw+b/dawid_skene",
)
# too few validation items: Rodrigues & Pereira's MW form as they formulate it (identity start),
# the crowd layer that did best on the real 59-annotator crowd of issue 16 (.833 against .806
# for the normalised confusion and .805 for Dawid-Skene's soft labels)
DEFAULT = "crowd_layer/mw/identity"
# candidates train this many epochs at most (the run's own count if smaller): enough to rank
# them, and it bounds auto's extra cost to about len(CANDIDATES) * 2 epochs
CANDIDATE_EPOCHS = 2


@dataclasses.dataclass(frozen=True)
class CrowdModel:
    """A label source, with the crowd layer's form and initialisation when it has one."""

    source: str
    form: str | None = None
    init: str | None = None

    @classmethod
    def parse(cls, name: str) -> CrowdModel:
        """``"dawid_skene"`` or ``"crowd_layer/<form>/<init>"`` (the benchmark's names)."""
        parts = name.split("/")
        if parts[0] == Source.CROWD_LAYER and len(parts) == 3:
            form, init = parts[1], parts[2]
            if form not in CROWD_LAYER_FORMS:
                raise ValueError(
                    f"unknown crowd layer form {form!r}; known: {list(CROWD_LAYER_FORMS)}"
                )
            if init not in CROWD_LAYER_INITS:
                raise ValueError(
                    f"unknown crowd layer init {init!r}; known: {list(CROWD_LAYER_INITS)}"
                )
            return cls(Source.CROWD_LAYER, form, init)
        if len(parts) == 1 and parts[0] in SOURCE_NAMES:
            return cls(parts[0])
        raise ValueError(
            f"unknown crowd model {name!r}: one of {sorted(SOURCE_NAMES)} or "
            "crowd_layer/<form>/<init>"
        )

    @property
    def name(self) -> str:
        return "/".join(p for p in (self.source, self.form, self.init) if p)

    @property
    def label(self) -> str:
        """What people read: ``MW, Dawid-Skene init`` or ``Dawid-Skene soft labels``."""
        if self.source == Source.CROWD_LAYER:
            return f"crowd layer {FORM_NAMES[self.form]}, {INIT_NAMES[self.init]}"
        return (SOURCE_NAMES | LAUNCH_ONLY_NAMES)[self.source]

    def config_changes(self) -> dict[str, Any]:
        """The TrainConfig fields this model sets."""
        changes: dict[str, Any] = {"label_source": self.source}
        if self.form:
            changes |= {"crowd_layer_form": self.form, "crowd_layer_init": self.init}
        return changes


def candidates_of(run: TrainingRun) -> list[CrowdModel]:
    """The run's candidates: ``params["auto_candidates"]`` (comma-separated names) or CANDIDATES."""
    names = (run.params or {}).get("auto_candidates") or ",".join(CANDIDATES)
    return [CrowdModel.parse(n.strip()) for n in names.split(",") if n.strip()]


def check_candidates(text: str) -> None:
    """Raise ValueError naming the first unknown candidate in a comma-separated list."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("auto_candidates names no crowd model")
    for name in names:
        CrowdModel.parse(name)


def validation_items(run: TrainingRun) -> list[Item]:
    """Gold items and expert-labelled items outside the hold-out, in id order."""
    return list(
        Item.objects.filter(
            project=run.project, is_holdout=False, expert_answer__isnull=False
        ).order_by("id")
    )


def launch_record(run: TrainingRun) -> dict[str, Any] | None:
    """The crowd model of a run that is not ``auto``: its source and, for the crowd layer, the
    form and init it was launched with (the engine's defaults when the params leave them out)."""
    source = run.label_source
    params = run.params or {}
    if source == Source.CROWD_LAYER:
        model = CrowdModel(
            source,
            params.get("crowd_layer_form", LAUNCH_FORM),
            params.get("crowd_layer_init", LAUNCH_INIT),
        )
    elif source in (Source.AGGNET, Source.CROSSFIT_EM):
        model = CrowdModel(source)
    else:
        return None
    return {**_model_fields(model), "picked_by": "launch", "reason": "set at launch"}


def _model_fields(model: CrowdModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "source": model.source,
        "form": model.form,
        "init": model.init,
        "label": model.label,
    }


def choose(run: TrainingRun, progress, train, build_data, make_config) -> dict[str, Any] | None:
    """Pick the run's crowd model (see the module docstring); None if the run was cancelled.

    ``train`` is the engine's train function, ``build_data(source, exclude)`` the run's
    TrainingData for a source, ``make_config(data, model)`` the run's TrainConfig for a
    candidate; the service passes
    them in, so this module stays free of the engine at import.
    """
    from training.engine import ItemSet
    from training.engine.selection import pick_by_validation

    validation = validation_items(run)
    n_gold = sum(1 for i in validation if i.is_gold)
    counts = {
        "n_validation": len(validation),
        "n_gold": n_gold,
        "n_expert": len(validation) - n_gold,
    }
    if len(validation) < MIN_VALIDATION:
        model = CrowdModel.parse(DEFAULT)
        return {
            **_model_fields(model),
            **counts,
            "picked_by": "default",
            "reason": (
                f"only {len(validation)} gold or expert-labelled items outside the hold-out "
                f"({MIN_VALIDATION} needed to pick by validation): the default, Rodrigues & "
                "Pereira's MW crowd layer from the identity"
            ),
        }
    _, code_of = class_codes(run)
    answers = [code_of[i.expert_answer_id] for i in validation]
    held = ItemSet([item_image(i) for i in validation], answers, [i.id for i in validation])
    exclude = [i.id for i in validation]
    folder = run_candidates_folder(run)
    probabilities: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:
        for model in candidates_of(run):
            data = build_data(model.source, exclude)
            config = dataclasses.replace(
                make_config(data, model),
                epochs=min(run.epochs, CANDIDATE_EPOCHS),
                checkpoint_dir=str(folder / model.name.replace("/", "-")),
            )
            try:
                result = train(
                    config, data.train, held, votes=data.votes,
                    init_posteriors=data.init_posteriors, init_confusions=data.init_confusions,
                    callbacks=CandidateProgress(progress),
                )  # fmt: skip
            except Exception as error:  # a candidate that cannot train is reported, not fatal
                if _cancel_like(error):
                    raise
                errors[model.name] = f"{type(error).__name__}: {error}"[:200]
                continue
            if result.cancelled:
                return None
            probabilities[model.name] = result.holdout_probabilities
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not probabilities:
        raise RuntimeError(f"no auto candidate could be trained: {errors}")
    pick = pick_by_validation(probabilities, held.hard_targets())
    model = CrowdModel.parse(pick.chosen)
    return {
        **_model_fields(model),
        **counts,
        "picked_by": "validation",
        "candidate_epochs": min(run.epochs, CANDIDATE_EPOCHS),
        "scores": {name: {k: round(v, 4) for k, v in s.items()} for name, s in pick.scores.items()},
        "errors": errors,
        "reason": pick.reason,
    }


def run_candidates_folder(run: TrainingRun):
    from training.selectors import run_folder

    return run_folder(run) / "auto-candidates"


def _cancel_like(error: BaseException) -> bool:
    from training.leases import LeaseLost

    return isinstance(error, LeaseLost)


class CandidateProgress:
    """A candidate's callbacks: the run's cancel check and lease, no epoch rows (the run's
    epochs are the chosen model's)."""

    def __init__(self, progress) -> None:
        self.progress = progress

    def should_stop(self) -> bool:
        return self.progress.should_stop()

    def on_epoch_end(self, record) -> None:
        self.progress.heartbeat()


def sentence(record: dict[str, Any] | None) -> str:
    """``crowd model: MW, Dawid-Skene init — picked by validation on 40 gold items (scores ...)``."""
    if not record:
        return ""
    head = f"crowd model: {record['label']}"
    if record.get("picked_by") == "validation":
        n, gold, expert = record["n_validation"], record["n_gold"], record["n_expert"]
        what = (
            f"{n} gold items" if gold == n
            else f"{n} expert-labelled items" if expert == n
            else f"{n} items ({gold} gold, {expert} expert-labelled)"
        )  # fmt: skip
        scores = ", ".join(
            f"{CrowdModel.parse(name).label} {s['balanced_accuracy']:.3f}"
            for name, s in sorted(
                record["scores"].items(), key=lambda kv: -kv[1]["balanced_accuracy"]
            )
        )
        return (
            f"{head} — picked by validation on {what} outside the hold-out "
            f"(balanced accuracy after {record['candidate_epochs']} epoch"
            f"{'s' if record['candidate_epochs'] != 1 else ''}: {scores})"
        )
    if record.get("picked_by") == "default":
        return f"{head} — the default: {record['reason']}"
    if "rounds" in record:  # crossfit_em: its EM rounds, each item's prior out of fold
        changed = ", ".join(f"{share:.1%}" for share in record["changed"])
        epochs = record["fold_epochs"]
        return (
            f"{head} — set at launch; {record['rounds']} EM round"
            f"{'s' if record['rounds'] != 1 else ''} of {record['folds']} fold classifiers "
            f"({epochs} epoch{'s' if epochs != 1 else ''} each), items changed per round: "
            f"{changed}"
        )
    return f"{head} — set at launch"
