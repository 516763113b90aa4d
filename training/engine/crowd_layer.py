"""Crowd layers: each annotator's noisy vote modelled on top of the classifier's softmax.

Rodrigues & Pereira, "Deep Learning from Crowds", AAAI 2018, section 4: the classifier's class
probabilities ``sigma(x)`` ([K]) pass through one small layer per annotator ``a`` whose output
scores are turned into that annotator's label distribution by a softmax, and the loss is the
cross-entropy of each observed vote (missing votes are masked). Their four forms:

* ``"mw"``   ``q_a(. | x) = softmax(sigma(x) @ W_a)``, ``W_a`` a free K x K matrix
  initialised at the identity (the paper's best form);
* ``"vw"``   ``q_a(. | x) = softmax(w_a * sigma(x))``, a per-annotator scale vector (ones);
* ``"vb"``   ``q_a(. | x) = softmax(sigma(x) + b_a)``, a per-annotator bias vector (zeros);
* ``"vw+b"`` ``q_a(. | x) = softmax(w_a * sigma(x) + b_a)``.

Beside them, ``"confusion_trace"`` (the layer Quorum has used since round one): ``W_a`` a proper
confusion matrix (rows softmax-normalised, ``[true, observed]``), ``q_a(. | x) = sigma(x) @ W_a``
with no outer softmax, and Tanno et al., "Learning From Noisy Labels By Regularized Estimation
Of Annotator Confusion", CVPR 2019, eq. (4): ``+ lambda * trace(W_a)`` so that, among the
(model, confusion) pairs that explain the votes equally well, the one putting the noise into the
confusions wins. The trace penalty belongs to this form only (Rodrigues & Pereira use none).

Initialisation (``init``): ``"identity"`` (the paper's: ``W_a = I``, ``w_a = 1``, ``b_a = 0``;
for ``confusion_trace`` 0.9 on the diagonal) or ``"dawid_skene"``: the layer starts where it
reproduces Dawid-Skene's confusion ``pi_a`` for a confident classifier (one-hot ``sigma``):
``W_a = log pi_a`` for ``mw``; for the vector forms the least-squares fit of their (few)
parameters to ``log pi_a`` up to a per-row constant (exact for ``vw`` when the annotator's
errors are uniform within each row).

:meth:`annotator_confusions` gives every form's ``[n_workers, K, K]`` confusion,
``[worker, true, observed]``: the parameters themselves for ``confusion_trace``, the rows
``softmax(W_a[k])`` (the layer's output for a one-hot class ``k``) for ``mw``. For the vector
forms the layer's output depends on how confident ``sigma`` is, so, given the classifier's
probabilities on the training items and the votes, it is estimated from the layer's outputs on
the items each annotator labelled: ``C_a[k, l] = sum_i p_ik q_a(l | x_i) / sum_i p_ik``
(annotators without a vote fall back to the one-hot rows).

Every layer is used only in training; predictions come from the classifier alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from training.engine.data import CrowdVotes

__all__ = [
    "CROWD_LAYER_FORMS",
    "CROWD_LAYER_INITS",
    "BaseCrowdLayer",
    "CrowdLayer",
    "MatrixCrowdLayer",
    "VectorCrowdLayer",
    "make_crowd_layer",
]

CROWD_LAYER_FORMS: tuple[str, ...] = ("confusion_trace", "mw", "vw", "vb", "vw+b", "conal")
CROWD_LAYER_INITS: tuple[str, ...] = ("identity", "dawid_skene")
_FLOOR = 1e-3  # keeps log finite and lets EM-estimated zeros still move


class BaseCrowdLayer(nn.Module):
    """What every crowd layer shares: the masked vote cross-entropy and the confusion export.

    A subclass gives :meth:`vote_log_probabilities` (``[n_votes, K]`` log ``q_a(l | x)``) and,
    if it has one, :meth:`penalty`. ``needs_features`` layers (CoNAL) also read the
    classifier's penultimate features.
    """

    form: str = ""
    needs_features: bool = False

    def __init__(self, n_workers: int, num_classes: int) -> None:
        super().__init__()
        if n_workers < 1 or num_classes < 2:
            raise ValueError("a crowd layer needs at least one worker and two classes")
        self.n_workers = n_workers
        self.num_classes = num_classes

    def vote_log_probabilities(
        self,
        probabilities: torch.Tensor,
        workers: torch.Tensor,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, workers: torch.Tensor, trace_weight: float) -> torch.Tensor | None:
        """Regulariser added to the vote loss (None: none)."""
        return None

    def loss(
        self,
        class_logits: torch.Tensor,
        vote_workers: torch.Tensor,
        vote_labels: torch.Tensor,
        trace_weight: float = 0.0,
        item_weights: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy of the observed votes, plus the form's penalty.

        ``vote_workers``/``vote_labels`` are ``[B, V]`` padded with -1 where no vote exists;
        ``item_weights`` ``[B]`` (class balancing) scale the votes on each item; ``features``
        ``[B, D]`` only for layers that need them. ``trace_weight`` is Tanno's lambda, used by
        ``confusion_trace`` and ignored by the forms of Rodrigues & Pereira.
        """
        if self.needs_features and features is None:
            raise ValueError(f"the {self.form!r} crowd layer needs the classifier's features")
        probabilities = class_logits.float().softmax(dim=-1)  # float32 even under AMP
        present = vote_workers >= 0
        if not bool(present.any()):
            return class_logits.sum() * 0.0
        rows = torch.nonzero(present, as_tuple=True)
        workers = vote_workers[rows]
        labels = vote_labels[rows]
        log_q = self.vote_log_probabilities(
            probabilities[rows[0]],
            workers,
            features[rows[0]].float() if features is not None else None,
        )
        if item_weights is None:
            vote_loss = F.nll_loss(log_q, labels)
        else:
            per_vote = F.nll_loss(log_q, labels, reduction="none")
            vote_loss = (per_vote * item_weights[rows[0]]).mean()
        extra = self.penalty(workers, trace_weight)
        return vote_loss if extra is None else vote_loss + extra

    def one_hot_confusions(self) -> torch.Tensor:
        """``[n_workers, K, K]``: row ``k`` is the layer's output for a one-hot class ``k``."""
        eye = torch.eye(self.num_classes, device=self._device())
        workers = torch.arange(self.n_workers, device=eye.device).repeat_interleave(
            self.num_classes
        )
        probabilities = eye.repeat(self.n_workers, 1)
        log_q = self.vote_log_probabilities(probabilities, workers, None)
        return log_q.exp().reshape(self.n_workers, self.num_classes, self.num_classes)

    def annotator_confusions(
        self, probabilities: np.ndarray | None = None, votes: CrowdVotes | None = None
    ) -> np.ndarray:
        """``[n_workers, K, K]`` NumPy confusions ``[worker, true, observed]`` (what the Django
        side stores); see the module docstring for how each form defines them."""
        with torch.no_grad():
            return self.one_hot_confusions().detach().cpu().double().numpy()

    def _device(self) -> torch.device:
        return next(self.parameters()).device


class CrowdLayer(BaseCrowdLayer):
    """``confusion_trace``: per-annotator confusion matrices ``W_a`` (rows sum to 1) with
    Tanno's trace penalty.

    ``init_confusions`` (e.g. from Dawid-Skene) sets the starting matrices; otherwise each
    starts at ``identity_weight`` on the diagonal and the rest spread evenly, i.e. near identity.
    """

    form = "confusion_trace"

    def __init__(
        self,
        n_workers: int,
        num_classes: int,
        init_confusions: np.ndarray | None = None,
        identity_weight: float = 0.9,
        floor: float = _FLOOR,
    ) -> None:
        super().__init__(n_workers, num_classes)
        if init_confusions is None:
            off = (1.0 - identity_weight) / max(num_classes - 1, 1)
            start = np.full((n_workers, num_classes, num_classes), off)
            start[:, np.arange(num_classes), np.arange(num_classes)] = identity_weight
        else:
            start = _checked_confusions(init_confusions, n_workers, num_classes)
        start = np.maximum(start, floor)
        start = start / start.sum(axis=2, keepdims=True)
        self.confusion_logits = nn.Parameter(torch.from_numpy(np.log(start)).float())

    def confusions(self) -> torch.Tensor:
        """``[n_workers, K, K]`` with ``confusions()[a, true, observed]``."""
        return self.confusion_logits.softmax(dim=-1)

    def vote_log_probabilities(
        self,
        probabilities: torch.Tensor,
        workers: torch.Tensor,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        confusions = self.confusions()[workers]
        observed = torch.bmm(probabilities.unsqueeze(1), confusions).squeeze(1)
        return observed.clamp_min(1e-8).log()

    def penalty(self, workers: torch.Tensor, trace_weight: float) -> torch.Tensor | None:
        # averaged over the batch's votes: each annotator is regularised in proportion to how
        # much they labelled, the stochastic estimate of Tanno's sum over annotators
        if trace_weight == 0.0:
            return None
        traces = self.confusions().diagonal(dim1=1, dim2=2).sum(dim=1)
        return trace_weight * traces[workers].mean()

    def annotator_confusions(
        self, probabilities: np.ndarray | None = None, votes: CrowdVotes | None = None
    ) -> np.ndarray:
        with torch.no_grad():
            return self.confusions().detach().cpu().double().numpy()


class MatrixCrowdLayer(BaseCrowdLayer):
    """``mw``: ``q_a(. | x) = softmax(sigma(x) @ W_a)`` with a free ``W_a`` (Rodrigues &
    Pereira 2018, "MW"), ``W_a = I`` at ``init_weights=None``."""

    form = "mw"

    def __init__(
        self, n_workers: int, num_classes: int, init_weights: np.ndarray | None = None
    ) -> None:
        super().__init__(n_workers, num_classes)
        if init_weights is None:
            start = np.broadcast_to(np.eye(num_classes), (n_workers, num_classes, num_classes))
        else:
            start = np.asarray(init_weights, dtype=np.float64)
            if start.shape != (n_workers, num_classes, num_classes):
                raise ValueError(
                    f"init_weights must have shape {(n_workers, num_classes, num_classes)}, "
                    f"got {start.shape}"
                )
        self.weights = nn.Parameter(torch.tensor(np.array(start), dtype=torch.float32))

    def vote_log_probabilities(
        self,
        probabilities: torch.Tensor,
        workers: torch.Tensor,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        scores = torch.bmm(probabilities.unsqueeze(1), self.weights[workers]).squeeze(1)
        return scores.log_softmax(dim=-1)


class VectorCrowdLayer(BaseCrowdLayer):
    """``vw``, ``vb`` and ``vw+b``: ``q_a(. | x) = softmax(w_a * sigma(x) + b_a)`` with ``w_a``
    fixed at 1 for ``vb`` and ``b_a`` fixed at 0 for ``vw`` (Rodrigues & Pereira 2018)."""

    def __init__(
        self,
        form: str,
        n_workers: int,
        num_classes: int,
        init_scale: np.ndarray | None = None,
        init_bias: np.ndarray | None = None,
    ) -> None:
        if form not in ("vw", "vb", "vw+b"):
            raise ValueError(f"VectorCrowdLayer form must be 'vw', 'vb' or 'vw+b', got {form!r}")
        super().__init__(n_workers, num_classes)
        self.form = form
        shape = (n_workers, num_classes)
        scale = np.ones(shape) if init_scale is None else np.asarray(init_scale, dtype=np.float64)
        bias = np.zeros(shape) if init_bias is None else np.asarray(init_bias, dtype=np.float64)
        if scale.shape != shape or bias.shape != shape:
            raise ValueError(f"init_scale and init_bias must have shape {shape}")
        scale_tensor = torch.tensor(scale, dtype=torch.float32)
        bias_tensor = torch.tensor(bias, dtype=torch.float32)
        # the fixed part stays a buffer so it moves with .to(device) and is saved with the layer
        if form == "vb":
            self.register_buffer("scale", torch.ones(shape))
        else:
            self.scale = nn.Parameter(scale_tensor)
        if form == "vw":
            self.register_buffer("bias", torch.zeros(shape))
        else:
            self.bias = nn.Parameter(bias_tensor)

    def vote_log_probabilities(
        self,
        probabilities: torch.Tensor,
        workers: torch.Tensor,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        scores = self.scale[workers] * probabilities + self.bias[workers]
        return scores.log_softmax(dim=-1)

    def annotator_confusions(
        self, probabilities: np.ndarray | None = None, votes: CrowdVotes | None = None
    ) -> np.ndarray:
        """Estimated from the layer's outputs on the voted items when ``probabilities``
        (``[n_items, K]``, the classifier's on the training items) and ``votes`` are given."""
        one_hot = super().annotator_confusions()
        if probabilities is None or votes is None or not len(votes):
            return one_hot
        return data_implied_confusions(self, probabilities, votes, one_hot)

    def _device(self) -> torch.device:
        return self.scale.device


def data_implied_confusions(
    layer: BaseCrowdLayer,
    probabilities: np.ndarray,
    votes: CrowdVotes,
    fallback: np.ndarray,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """``C_a[k, l] = sum_i p_ik q_a(l | x_i) / sum_i p_ik`` over the items annotator ``a``
    labelled; ``fallback`` rows where an annotator has no class mass (or no vote)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    device = layer._device()
    with torch.no_grad():
        p_votes = torch.tensor(probabilities[votes.items], dtype=torch.float32, device=device)
        f_votes = (
            torch.tensor(features[votes.items], dtype=torch.float32, device=device)
            if features is not None
            else None
        )
        workers = torch.from_numpy(votes.workers).to(device)
        q = layer.vote_log_probabilities(p_votes, workers, f_votes).exp().cpu().double().numpy()
    p = probabilities[votes.items]
    joint = np.zeros((layer.n_workers, layer.num_classes, layer.num_classes))
    np.add.at(joint, votes.workers, p[:, :, None] * q[:, None, :])
    mass = joint.sum(axis=2, keepdims=True)
    return np.where(mass > 1e-6, joint / np.maximum(mass, 1e-12), fallback)


def vector_form_init(form: str, confusions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale, bias) ``[n_workers, K]`` whose one-hot outputs best match ``log confusions``.

    For class ``k`` the form's scores are ``w_k e_k + b`` and the softmax ignores a per-row
    constant ``c_k``, so ``[l == k] w_k + b_l + c_k = log pi[k, l]`` is solved by least squares
    (the same design matrix for every annotator, one pseudo-inverse); ``vb`` fixes ``w = 1``
    and ``vw`` fixes ``b = 0``.
    """
    n_workers, k, _ = confusions.shape
    log_pi = np.log(np.maximum(confusions, _FLOOR)).reshape(n_workers, k * k)
    rows, columns = np.divmod(np.arange(k * k), k)
    diagonal = (rows == columns).astype(np.float64)
    blocks = [np.eye(k)[rows]]  # c_k
    if form != "vb":
        blocks.append(np.eye(k)[rows] * diagonal[:, None])  # w_k on the diagonal
    if form != "vw":
        blocks.append(np.eye(k)[columns])  # b_l
    design = np.concatenate(blocks, axis=1)
    target = log_pi - (diagonal if form == "vb" else 0.0)  # vb: the fixed w = 1 moves over
    solution = target @ np.linalg.pinv(design).T  # [n_workers, n_unknowns]
    scale = np.ones((n_workers, k))
    bias = np.zeros((n_workers, k))
    offset = k
    if form != "vb":
        scale = solution[:, offset : offset + k]
        offset += k
    if form != "vw":
        bias = solution[:, offset : offset + k]
        bias = bias - bias.mean(axis=1, keepdims=True)  # only differences matter to a softmax
    return scale, bias


def make_crowd_layer(
    form: str,
    init: str,
    n_workers: int,
    num_classes: int,
    init_confusions: np.ndarray | None = None,
    feature_dim: int | None = None,
) -> BaseCrowdLayer:
    """The crowd layer named by ``form`` (``CROWD_LAYER_FORMS``), started per ``init``
    (``CROWD_LAYER_INITS``); ``"dawid_skene"`` needs ``init_confusions`` ``[n_workers, K, K]``
    (``[worker, true, observed]``). ``"conal"`` (see :mod:`training.engine.conal`) needs
    ``feature_dim``, the width of the classifier's penultimate features."""
    if form not in CROWD_LAYER_FORMS:
        raise ValueError(f"crowd layer form must be one of {CROWD_LAYER_FORMS}, got {form!r}")
    if init not in CROWD_LAYER_INITS:
        raise ValueError(f"crowd layer init must be one of {CROWD_LAYER_INITS}, got {init!r}")
    confusions = None
    if init == "dawid_skene":
        if init_confusions is None:
            raise ValueError("init 'dawid_skene' needs init_confusions (Dawid-Skene's)")
        confusions = _checked_confusions(init_confusions, n_workers, num_classes)
    if form == "confusion_trace":
        return CrowdLayer(n_workers, num_classes, confusions)
    if form == "mw":
        weights = None if confusions is None else np.log(_normalised_with_floor(confusions))
        return MatrixCrowdLayer(n_workers, num_classes, weights)
    if form == "conal":
        from training.engine.conal import CoNAL  # conal builds on this module

        if feature_dim is None:
            raise ValueError("the 'conal' crowd layer needs feature_dim")
        return CoNAL(n_workers, num_classes, feature_dim, init_confusions=confusions)
    scale, bias = (None, None) if confusions is None else vector_form_init(form, confusions)
    return VectorCrowdLayer(form, n_workers, num_classes, scale, bias)


def _normalised_with_floor(confusions: np.ndarray) -> np.ndarray:
    floored = np.maximum(confusions, _FLOOR)
    return floored / floored.sum(axis=2, keepdims=True)


def _checked_confusions(confusions: np.ndarray, n_workers: int, num_classes: int) -> np.ndarray:
    array = np.asarray(confusions, dtype=np.float64)
    if array.shape != (n_workers, num_classes, num_classes):
        raise ValueError(
            f"init_confusions must have shape {(n_workers, num_classes, num_classes)}, "
            f"got {array.shape}"
        )
    return array
