"""MGDA as a combiner: the min-norm point of the objectives' gradients, exact (over the shared
parameters) or MGDA-UB (over a shared representation); the solvers are :mod:`.min_norm`'s.

References
----------
* Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018,
  https://arxiv.org/abs/1810.04650.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ._validation import check_finite
from .combiner_base import (
    Combiner,
    CombineResult,
    _check_shared,
    _grads_wrt,
)
from .min_norm import MIN_NORM_METHODS, MinNormMethod, gram_matrix, min_norm_weights

Normalization = Literal["none", "l2", "loss", "loss+"]
NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "loss", "loss+")

__all__ = ["MGDA", "NORMALIZATIONS", "Normalization"]


class MGDA(Combiner):
    r"""Multiple-gradient descent (Sener & Koltun 2018): the min-norm point of the convex hull
    of the objectives' gradients.

    Modes:

    * ``"params"`` (exact MGDA): gradients over the shared parameters, n backward passes,
      an O(n^2 d) Gram matrix and a min-norm solve. Needs ``params=``.
    * ``"shared"`` (MGDA-UB): gradients w.r.t. a shared representation ``z`` (cheap VJPs),
      which minimises an upper bound of the exact problem. Needs ``shared=``.

    The Gram matrix is built and solved in float64 whatever the input dtype. The
    normalisations are those of the authors' code (``gradient_normalizers`` in
    ``min_norm_solvers.py`` of github.com/intel-isl/MultiObjectiveOptimization): gradient i is
    divided by :math:`\nu_i`, ``"none"`` (1), ``"l2"`` (:math:`\lVert g_i \rVert`),
    ``"loss"`` (:math:`L_i`) or ``"loss+"`` (:math:`L_i \lVert g_i \rVert`), and ``c`` is
    the min-norm point of the normalised gradients.

    What is trained on, as in that code (``train_multi_task.py``): the raw losses with the
    simplex weights, :math:`\sum_i c_i L_i`, a convex combination of the losses whatever the
    normalisation, so its scale is the losses' scale (a learning rate or a gradient clip tuned
    for one loss still fits). Under ``"l2"`` with two objectives c is always (1/2, 1/2) (the
    min-norm point of two unit vectors is their midpoint): the default is then the uniform
    average of the two losses. ``rescale=True`` trains instead on
    :math:`\sum_i (c_i / \nu_i) L_i`, whose gradient is the min-norm point of the
    *normalised* gradients (unit-norm gradients under ``"l2"``): its scale is no longer the
    losses' (an effective loss weight of 20 is common), which a clip or a value loss sharing
    the trunk then feels. ``result.weights`` holds ``c`` (on the simplex) and
    ``result.stats["loss_weight/i"]`` the weight actually applied to :math:`L_i`.

    Args:
        mode: ``"params"`` or ``"shared"``.
        normalization: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"``.
        rescale: train on :math:`\sum_i (c_i/\nu_i) L_i` instead of :math:`\sum_i c_i L_i`
            (default False; no effect with ``"none"``).
        solver: ``"exact"`` (Wolfe's method), ``"frank_wolfe"`` or ``"projected_gradient"``.
        tol, max_iter: passed to :func:`paretoopt.min_norm_weights`.
    """

    name = "mgda"

    def __init__(
        self,
        mode: Literal["params", "shared"] = "params",
        normalization: Normalization = "none",
        solver: MinNormMethod = "exact",
        tol: float | None = None,
        max_iter: int | None = None,
        rescale: bool = False,
    ) -> None:
        if mode not in ("params", "shared"):
            raise ValueError(f"mode must be 'params' or 'shared', got {mode!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
            )
        if solver not in MIN_NORM_METHODS:
            raise ValueError(f"solver must be one of {MIN_NORM_METHODS}, got {solver!r}")
        if tol is not None and not (tol > 0):
            raise ValueError(f"tol must be > 0, got {tol}")
        if max_iter is not None and max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        if not isinstance(rescale, bool):
            raise TypeError(f"rescale must be True or False, got {rescale!r}")
        self.mode = mode
        self.normalization = normalization
        self.rescale = rescale
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self._batched = [True]

    @property
    def requires(self) -> str:  # type: ignore[override]
        return self.mode

    def _hparams(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "normalization": self.normalization,
            "rescale": self.rescale,
            "solver": self.solver,
        }

    @property
    def divides_by_loss(self) -> bool:
        """Whether the normalisation divides by the losses (they must then be > 0)."""
        return self.normalization in ("loss", "loss+")

    @property
    def loss_scale_degree(self) -> int:
        """``h`` with ``combine(s * losses).loss == s**h * combine(losses).loss`` for s > 0.

        1 (the combination scales with the losses) except for ``rescale=True`` with a
        normalisation: 0 under ``"l2"`` and ``"loss"``, -1 under ``"loss+"``. A training loop
        that divides the losses (gradient accumulation) needs it to keep the average."""
        if not self.rescale or self.normalization == "none":
            return 1
        return -1 if self.normalization == "loss+" else 0

    def jacobian(self, losses: list[Tensor], shared: Tensor | None, params: Any) -> Tensor:
        """The ``[n, d]`` matrix of per-objective gradients this combiner works on."""
        if self.mode == "shared":
            z = _check_shared(shared, "MGDA(mode='shared')")
            return _grads_wrt(losses, z, "shared tensor", self._batched).reshape(len(losses), -1)
        if params is None:
            raise TypeError("MGDA(mode='params') needs params=<iterable of shared parameters>")
        plist = [p for p in params]
        if not plist:
            raise ValueError("MGDA(mode='params'): params is empty")
        for j, p in enumerate(plist):
            if not isinstance(p, Tensor):
                raise TypeError(f"params[{j}] is {type(p).__name__}, not a Tensor")
        plist = [p for p in plist if p.requires_grad]
        if not plist:
            raise ValueError("MGDA(mode='params'): no parameter in params requires grad")
        # Each objective's gradient is written straight into its row: one n x d buffer.
        sizes = [p.numel() for p in plist]
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in plist))
        jac = torch.empty(len(losses), sum(sizes), dtype=dtype, device=plist[0].device)
        for i, loss in enumerate(losses):
            grads = torch.autograd.grad(loss, plist, retain_graph=True, allow_unused=True)
            if all(g is None for g in grads):
                raise ValueError(f"loss of objective {i} does not depend on any of the params")
            for g, chunk in zip(grads, jac[i].split(sizes), strict=True):
                if g is None:
                    chunk.zero_()
                else:
                    chunk.copy_(g.reshape(-1))
        return jac

    def normalizers(self, losses: list[Tensor], gram: Tensor) -> Tensor:
        """:math:`\\nu_i` of the chosen normalisation, float64 ``[n]``."""
        n = len(losses)
        norms = gram.diagonal().clamp_min(0).sqrt()
        if self.normalization == "none":
            return torch.ones(n, dtype=torch.float64)
        if self.normalization == "l2":
            nu = norms
        else:
            lv = torch.stack([loss.detach().double().cpu() for loss in losses])
            for i in range(n):
                if lv[i] <= 0:
                    raise ValueError(
                        f"normalization={self.normalization!r} divides by the loss, but the loss "
                        f"of objective {i} is {float(lv[i]):g} (must be > 0)"
                    )
            nu = lv if self.normalization == "loss" else lv * norms.cpu()
        # A zero gradient stays zero whatever its normaliser; avoid 0/0.
        return torch.where(nu > 0, nu.cpu(), torch.ones_like(nu.cpu()))

    def _combine(self, losses, *, shared, params):  # type: ignore[override]
        jac = self.jacobian(losses, shared, params)
        gram = gram_matrix(jac).cpu()
        if not bool(torch.isfinite(gram).all()):
            # A non-finite gradient entry always reaches the Gram diagonal; name it.
            where = "shared tensor" if self.mode == "shared" else "params"
            check_finite(jac, f"gradient w.r.t. the {where}", objective_dim=0)
            raise ValueError("the Gram matrix of the gradients overflowed float64")
        return self.from_gram(losses, gram)

    def from_gram(
        self, losses: list[Tensor], gram: Tensor, loss_values: Sequence[Tensor] | None = None
    ) -> CombineResult:
        """The combination given the Gram matrix of the gradients (float64 ``[n, n]``).

        ``loss_values`` (default ``losses``) are what the ``"loss"`` normalisations divide by:
        a data-parallel caller passes the losses averaged over processes.
        """
        n = len(losses)
        nu = self.normalizers(list(losses if loss_values is None else loss_values), gram)
        gram_n = gram / torch.outer(nu, nu)
        sol = min_norm_weights(gram_n, method=self.solver, tol=self.tol, max_iter=self.max_iter)
        # The weight applied to each raw loss: c (the authors' code) or c / nu (rescale).
        alpha = sol.weights / nu if self.rescale else sol.weights.clone()
        loss = sum(float(alpha[i]) * losses[i] for i in range(n))
        assert isinstance(loss, Tensor)
        # Directional derivatives g_i . d of the update d = sum_j alpha_j g_j. All >= 0 when d
        # is the min-norm point itself (normalization "none", or rescale=True): the update
        # conflicts with no objective. With a normalisation and simplex weights on the raw
        # losses (the default) d is c applied to the raw gradients, which can conflict.
        dirderiv = gram @ alpha
        stats = {
            "min_norm": sol.value,
            "kkt_residual": sol.kkt_residual,
            "solver_iterations": float(sol.iterations),
            "min_directional_derivative": float(dirderiv.min()),
        }
        for i in range(n):
            stats[f"weight/{i}"] = float(sol.weights[i])
            stats[f"loss_weight/{i}"] = float(alpha[i])
        return CombineResult(loss=loss, weights=sol.weights, stats=stats)
