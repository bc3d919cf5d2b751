"""The update rules compared in the multi-task study, behind one call.

Every method fills ``.grad`` of a shared trunk and of the task heads from n task losses, the
way a multi-task training loop needs it:

* ours, through :func:`paretoopt.combine_and_backward`: ``linear`` (uniform weights,
  ``sum_i L_i / n``), ``mgda_ub`` (MGDA-UB, min-norm over ``dL_i/dz`` with l2 normalisation,
  its simplex weights on the raw losses as in Sener & Koltun's code), ``mgda_ub_rescaled``
  (the same with ``rescale=True``: ``sum_i (c_i / ||g_i||) L_i``, the min-norm point of the
  unit-norm gradients), ``mgda`` (exact MGDA over the trunk's parameters, no normalisation)
  and ``pama`` (the coordinate-wise closed form on ``dL_i/dz``);
* peers, through torchjd's own multi-task entry point (``autojac.mtl_backward`` then
  ``autojac.jac_to_grad`` with an aggregator): ``torchjd_mgda`` and ``torchjd_upgrad``
  (UPGrad, Quinton & Rey 2024).

In both families head ``i`` receives the plain gradient of ``L_i`` (times ``1/n`` for
``linear``, which is the weighted sum everywhere) and the method decides only the trunk's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from paretoopt import MGDA, PAMA, Combiner, LinearScalarization, combine_and_backward

__all__ = ["LABELS", "METHODS", "OURS", "PEERS", "apply_method", "make_method"]

OURS: tuple[str, ...] = ("linear", "mgda_ub", "mgda_ub_rescaled", "mgda", "pama")
PEERS: tuple[str, ...] = ("torchjd_mgda", "torchjd_upgrad")
METHODS: tuple[str, ...] = OURS + PEERS

LABELS: dict[str, str] = {
    "linear": "linear (mean)",
    "mgda_ub": "MGDA-UB (l2)",
    "mgda_ub_rescaled": "MGDA-UB (l2, rescaled)",
    "mgda": "MGDA (exact)",
    "pama": "PAMA (generic)",
    "torchjd_mgda": "torchjd MGDA",
    "torchjd_upgrad": "torchjd UPGrad",
}


def make_method(name: str) -> Combiner | torch.nn.Module:
    """A paretoopt combiner or a torchjd aggregator for ``name`` (one of :data:`METHODS`)."""
    if name == "linear":
        return LinearScalarization()
    if name == "mgda_ub":
        return MGDA(mode="shared", normalization="l2")
    if name == "mgda_ub_rescaled":
        return MGDA(mode="shared", normalization="l2", rescale=True)
    if name == "mgda":
        return MGDA(mode="params")
    if name == "pama":
        return PAMA()
    if name in PEERS:
        from torchjd.aggregation import MGDA as JDMGDA
        from torchjd.aggregation import UPGrad

        return JDMGDA() if name == "torchjd_mgda" else UPGrad()
    raise ValueError(f"unknown method {name!r}; choose one of {METHODS}")


def apply_method(
    method: Combiner | torch.nn.Module,
    losses: Sequence[Tensor],
    *,
    shared: Tensor,
    trunk: Sequence[Tensor],
    heads: Sequence[Sequence[Tensor]] | None = None,
) -> Tensor | None:
    """Accumulate the method's gradients into ``.grad``; return the task weights it chose.

    Args:
        method: from :func:`make_method`.
        losses: n scalar task losses.
        shared: the trunk's output ``z`` every loss depends on.
        trunk: the shared parameters.
        heads: ``heads[i]``, the parameters of task ``i`` alone (``None``: no heads, the losses
            are functions of the trunk only, as in the two-parameter toy problem).
    """
    if isinstance(method, Combiner):
        result = combine_and_backward(
            list(losses),
            method,
            shared=shared,
            params=trunk,
            heads=[list(h) for h in heads] if heads is not None else None,
        )
        return result.weights
    from torchjd.autojac import backward, jac_to_grad, mtl_backward

    if heads is None:
        backward(list(losses), inputs=list(trunk))
    else:
        mtl_backward(
            list(losses),
            features=shared,
            tasks_params=[list(h) for h in heads],
            shared_params=list(trunk),
        )
    weights = jac_to_grad(list(trunk), method)
    return weights.detach().double() if weights is not None else None
