"""Combiners: turn n scalar losses into one loss to backpropagate, behind one interface.

Here: :class:`LinearScalarization`, :class:`PAMA` and :func:`make_combiner`; the interface is
:mod:`.combiner_base`'s, :class:`MGDA` lives in :mod:`.mgda` and the torchjd methods in
:mod:`.zoo` (all served from this module too).

>>> combiner = PAMA()                       # or MGDA(mode="params"), MGDA(mode="shared"),
>>> result = combiner(losses, shared=z)     #    LinearScalarization([0.5, 0.5])
>>> result.loss.backward()                  # one backward, whatever the combiner
>>> result.weights, result.stats            # for logging

Each combiner declares the extra input it needs in ``requires`` (``"shared"``: a tensor all
losses depend on; ``"params"``: the shared parameters; ``None``). A combiner never mutates
its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._validation import check_losses
from .combiner_base import (
    Combiner,
    CombineResult,
    _check_shared,
    _grads_wrt,
    _with_value,
)
from .functional import GRANULARITIES, Granularity, pama_closed_form
from .mgda import MGDA, NORMALIZATIONS
from .mgda import Normalization as Normalization

if TYPE_CHECKING:
    from .zoo import TorchJD


__all__ = [
    "MGDA",
    "NORMALIZATIONS",
    "PAMA",
    "CombineResult",
    "Combiner",
    "LinearScalarization",
    "TorchJD",
    "make_combiner",
]


class LinearScalarization(Combiner):
    r"""Fixed weights: :math:`\sum_i w_i L_i` (MORLHF when the losses are RLHF objectives).

    Args:
        weights: non-negative finite weights, one per objective; ``None`` means uniform
            :math:`1/n`. They are used as given (not renormalised).
    """

    name = "linear"

    def __init__(self, weights: Sequence[float] | Tensor | None = None) -> None:
        if weights is None:
            self.weights: tuple[float, ...] | None = None
            return
        w = [float(x) for x in (weights.tolist() if isinstance(weights, Tensor) else weights)]
        if not w:
            raise ValueError("weights is empty: give one weight per objective or None")
        for i, x in enumerate(w):
            if not math.isfinite(x) or x < 0:
                raise ValueError(f"weight of objective {i} must be finite and >= 0, got {x}")
        if sum(w) == 0:
            raise ValueError("weights are all zero: the combined loss would be constant")
        self.weights = tuple(w)

    def _hparams(self) -> dict[str, Any]:
        return {"weights": list(self.weights) if self.weights is not None else None}

    def _combine(self, losses, *, shared, params):  # type: ignore[override]
        n = len(losses)
        if self.weights is None:
            w = torch.full((n,), 1.0 / n, dtype=torch.float64)
        else:
            if len(self.weights) != n:
                raise ValueError(
                    f"LinearScalarization has {len(self.weights)} weights but got {n} losses"
                )
            w = torch.tensor(self.weights, dtype=torch.float64)
        loss = sum(float(w[i]) * losses[i] for i in range(n))
        assert isinstance(loss, Tensor)
        return CombineResult(loss=loss, weights=w, stats={})


class PAMA(Combiner):
    r"""Pareto Multi-Objective Alignment (He & Maghsudi 2025, arXiv 2508.07768), generic form.

    Given n losses and a shared tensor ``z`` that all of them depend on, PAMA takes the n
    gradients :math:`G_i = \partial L_i / \partial z` (vector-Jacobian products that stop at
    ``z``), solves the closed form of Theorem 1 per element of ``z``
    (:math:`s^*_e = \mathrm{relu}(\min_i G_{ie}) - \mathrm{relu}(-\max_i G_{ie})`) and
    backpropagates ``z`` with the gradient ``s*``: one backward through the model.

    For Noon PPO losses and ``z`` the per-token ratio this is exactly PAMA's update
    (see :func:`paretoopt.losses.pama_ppo_loss` for the advantage fast path). Only
    parameters reached through ``z`` receive gradients; add other terms (value loss, KL) to
    ``result.loss`` yourself.

    Outside RL (any losses, ``z`` e.g. a shared encoder's output) the rule is coordinate-wise:
    *move an element of z only where every task agrees on the direction, by the smallest amount
    any of them asks for*, and leave it still where they disagree. What that is and is not:

    * It is the exact min-norm point of each element's own n scalars (Theorem 1 per element),
      not MGDA's min-norm point over the whole ``dL_i/dz`` (MGDA-UB) nor over the parameters
      (MGDA): the weights differ from element to element, so no single convex combination of
      the task gradients produces the update.
    * It is a common descent direction *in z*: for every task,
      :math:`\sum_e s^*_e G_{ie} \ge 0`, term by term. When ``z`` is the parameters themselves
      this carries over; through a network it need not: the update the parameters receive,
      :math:`J_z^\top s^*`, can raise a task's loss to first order. docs/multitask.md measures
      how often it does.
    * Where the tasks disagree on most elements, ``s*`` is mostly zero and the trunk learns
      slowly (``stats["veto_rate"]``); where one task's gradients are much smaller than the
      others', that task sets the step.

    Scale: the closed form compares the objectives' gradients (with Noon PPO losses, their
    advantages) across objectives, so which objective binds in
    :math:`s^* = \min_i A_i` depends on the objectives' relative scales. Multiplying one
    reward model's output by 10 changes the update; dividing each objective by its own
    standard deviation (``advantage_normalization="scale"`` in the trainer) changes it too.
    Put the rewards on the scales you mean to compare.

    Args:
        granularity: ``"token"``: closed form per element of ``z``; ``"sample"``: one weight
            vector per index of ``z``'s first dimension, from the closed form on each
            objective's summed gradient over that sample; ``"batch"``: one weight vector for
            all of ``z``.

    Call with ``mask=`` (``z``'s shape) to average the logged weights and rates over valid
    elements only (see :meth:`__call__`).
    """

    requires = "shared"
    name = "pama"

    def __init__(self, granularity: Granularity = "token") -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.granularity = granularity
        # One batched backward for the n gradients, until vmap fails on a graph (see _grads_wrt).
        self._batched = [True]

    def _hparams(self) -> dict[str, Any]:
        return {"granularity": self.granularity}

    def __call__(  # type: ignore[override]
        self,
        losses: Sequence[Tensor] | Tensor,
        *,
        shared: Tensor | None = None,
        params: Iterable[Tensor] | None = None,
        mask: Tensor | None = None,
    ) -> CombineResult:
        """Combine; ``mask`` (optional, ``shared``'s shape, bool or 0/1) marks the valid elements.

        Masked elements (padding, tokens after EOS) have zero gradient in every objective, so
        the closed form gives them uniform weights; without a mask they would dilute the
        logged mean weights and the statistics. With a mask, ``result.weights`` and the rates
        in ``result.stats`` are means over valid elements only. The update is the same.
        """
        return self._combine(check_losses(losses), shared=shared, params=params, mask=mask)

    @staticmethod
    def _valid(mask: Any, z: Tensor) -> Tensor | None:
        if mask is None:
            return None
        if not isinstance(mask, Tensor):
            raise TypeError(f"PAMA: mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if tuple(mask.shape) != tuple(z.shape):
            raise ValueError(
                f"PAMA: mask has shape {tuple(mask.shape)} but the shared tensor has shape "
                f"{tuple(z.shape)}; they must match"
            )
        valid = mask.to(device=z.device, dtype=torch.bool)
        if not bool(valid.any()):
            raise ValueError("PAMA: mask marks no valid element")
        return valid

    def _combine(self, losses, *, shared, params, mask=None):  # type: ignore[override]
        z = _check_shared(shared, "PAMA")
        valid = self._valid(mask, z)
        g = _grads_wrt(losses, z, "shared tensor", self._batched)  # [n, *z.shape]
        n = g.shape[0]
        if self.granularity == "token" or z.dim() == 0:
            s_star, w = pama_closed_form(g, dim=0)
            direction = s_star
        else:
            flat = g.reshape(n, -1) if self.granularity == "batch" else g.reshape(n, z.shape[0], -1)
            summary = flat.sum(-1)  # [n] or [n, B]
            _, wsum = pama_closed_form(summary, dim=0)
            w = wsum.reshape(wsum.shape + (1,) * (g.dim() - wsum.dim())).expand_as(g)
            direction = (w * g.to(w.dtype)).sum(0).to(g.dtype)
        keep = None if valid is None else valid.reshape(-1)

        def over_valid(x: Tensor) -> Tensor:  # [..., elements] -> valid elements only
            flat = x.reshape(*x.shape[: x.dim() - z.dim()], -1)
            return flat if keep is None else flat[..., keep]

        def share(x: Tensor) -> float:
            return float(over_valid(x).double().mean())

        mean_w = over_valid(w).double().mean(-1)
        mean_w = mean_w / mean_w.sum()  # exactly on the simplex despite float32 element weights
        surrogate = (z * direction.detach().to(z.dtype)).sum()
        # One dot product, not n scalar operations (fixed costs show on small models).
        detached = torch.stack(losses).detach()
        value = torch.dot(mean_w.to(detached.dtype), detached)
        conflict = (g.amin(0) < 0) & (g.amax(0) > 0)
        # Elements some objective wants to move but the combination leaves still (with Noon
        # losses: tokens reinforced by one objective and not by another).
        vetoed = (direction == 0) & (g != 0).any(0)
        stats = {
            "min_norm": float(direction.double().pow(2).sum()),
            "conflict_rate": share(conflict),
            "veto_rate": share(vetoed),
        }
        for i, w_i in enumerate(mean_w.tolist()):
            stats[f"weight/{i}"] = w_i
        return CombineResult(
            loss=_with_value(surrogate, value), weights=mean_w, stats=stats, element_weights=w
        )


_REGISTRY: dict[str, Any] = {
    "pama": lambda **kw: PAMA(**kw),
    "mgda": lambda **kw: MGDA(**{"mode": "params", **kw}),
    "mgda_ub": lambda **kw: MGDA(**{"mode": "shared", **kw}),
    "linear": lambda **kw: LinearScalarization(**kw),
    "morlhf": lambda **kw: LinearScalarization(**{"weights": [0.5, 0.5], **kw}),
}


def make_combiner(name: str, **kwargs: Any) -> Combiner:
    """Build a combiner by name: ``pama``, ``mgda`` (exact, over params), ``mgda_ub`` (over a
    shared tensor), ``linear`` (uniform unless ``weights=``) or ``morlhf`` (0.5/0.5); or a
    torchjd method by its class name in lower case (``upgrad``, ``cagrad``, ``nashmtl``, ...:
    :data:`paretoopt.zoo.ZOO`), ``mode="shared"`` (default) or ``"params"``."""
    from .zoo import ZOO_NAMES, zoo_combiner

    key = name.lower().replace("-", "_")
    if key in ZOO_NAMES:
        return zoo_combiner(key, **kwargs)
    if key not in _REGISTRY:
        known = sorted(_REGISTRY) + list(ZOO_NAMES)
        raise ValueError(f"unknown combiner {name!r}; choose one of {known}")
    return _REGISTRY[key](**kwargs)


def __getattr__(name: str) -> Any:
    # TorchJD subclasses Combiner, so it lives in .zoo; it is served here too.
    if name == "TorchJD":
        from .zoo import TorchJD

        return TorchJD
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
