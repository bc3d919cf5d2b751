"""Combiners: turn n scalar losses into one loss to backpropagate, behind one interface.

>>> combiner = PAMA()                       # or MGDA(mode="params"), MGDA(mode="shared"),
>>> result = combiner(losses, shared=z)     #    LinearScalarization([0.5, 0.5])
>>> result.loss.backward()                  # one backward, whatever the combiner
>>> result.weights, result.stats            # for logging

Each combiner declares the extra input it needs in ``requires`` (``"shared"``: a tensor all
losses depend on; ``"params"``: the shared parameters; ``None``). A combiner never mutates
its inputs.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

from ._validation import check_finite, check_losses
from .functional import GRANULARITIES, Granularity, pama_closed_form
from .min_norm import MIN_NORM_METHODS, MinNormMethod, gram_matrix, min_norm_weights

if TYPE_CHECKING:
    from .zoo import TorchJD

Normalization = Literal["none", "l2", "loss", "loss+"]
NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "loss", "loss+")

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


@dataclass
class CombineResult:
    """What every combiner returns.

    Attributes:
        loss: scalar tensor; call ``.backward()`` on it once. Its value is
            :math:`\\sum_i w_i L_i` with the (mean) weights below.
        weights: ``[n]`` float64, the weight given to each objective (for PAMA the mean of
            the per-element weights). On the simplex for PAMA and MGDA. ``None`` for a torchjd
            aggregator that has no weights (GradDrop, ConFIG, TrimmedMean: :mod:`.zoo`).
        stats: scalar diagnostics for logging (min-norm value, conflict rate, ...); a zoo
            combiner adds the torchjd method's name under ``"torchjd"`` (a string).
        element_weights: PAMA only: the per-element weights ``[n, *shared.shape]``.
    """

    loss: Tensor
    weights: Tensor | None
    stats: dict[str, Any] = field(default_factory=dict)
    element_weights: Tensor | None = None


def _with_value(surrogate: Tensor, value: Tensor) -> Tensor:
    # The surrogate carries the gradient, ``value`` the number a user expects to log.
    return surrogate - surrogate.detach() + value.detach().to(surrogate.dtype)


def _check_shared(shared: Any, name: str) -> Tensor:
    if shared is None:
        raise TypeError(
            f"{name} needs shared=<tensor>: a tensor that every loss depends on "
            "(e.g. the per-token ratio u[B, T] or the last hidden states)"
        )
    if not isinstance(shared, Tensor):
        raise TypeError(f"{name}: shared must be a torch.Tensor, got {type(shared).__name__}")
    if not shared.requires_grad:
        raise ValueError(
            f"{name}: the shared tensor (shape {tuple(shared.shape)}) does not require grad, so "
            "no gradient can flow through it"
        )
    if shared.numel() == 0:
        raise ValueError(f"{name}: the shared tensor is empty (shape {tuple(shared.shape)})")
    return shared


def _grads_wrt(
    losses: list[Tensor], target: Tensor, what: str, batched: list[bool] | None = None
) -> Tensor:
    """n vector-Jacobian products that stop at ``target``: ``[n, *target.shape]``.

    With ``batched`` (a one-element flag the caller keeps), the n products are one batched
    backward (``is_grads_batched``: the stacked losses against the rows of the identity), a
    single walk of the graph; where vmap cannot run the graph the error is caught once, the
    flag cleared, and the products computed one backward each from then on. A non-finite
    batched result is recomputed one backward each, so that the error names the objective.
    """
    stacked = None
    if batched is not None and batched[0] and len(losses) > 1:
        try:
            stacked = _batched_grads(losses, target)
        except (RuntimeError, NotImplementedError):
            batched[0] = False
        # An infinite local derivative on one loss's path times another's zero cotangent is
        # NaN in the batch; one backward per loss tells which gradient is really non-finite.
        if stacked is not None and not bool(torch.isfinite(stacked.sum(dtype=torch.float64))):
            stacked = None
    if stacked is None:
        grads = []
        for i, loss in enumerate(losses):
            (g,) = torch.autograd.grad(loss, target, retain_graph=True, allow_unused=True)
            if g is None:
                raise ValueError(f"loss of objective {i} does not depend on the {what}")
            grads.append(g)
        stacked = torch.stack(grads)
    else:
        # A loss that does not reach the target has a zero row: tell it from a zero gradient.
        for i in (~stacked.reshape(len(losses), -1).any(1)).nonzero()[:, 0].tolist():
            (g,) = torch.autograd.grad(losses[i], target, retain_graph=True, allow_unused=True)
            if g is None:
                raise ValueError(f"loss of objective {i} does not depend on the {what}")
    check_finite(stacked, f"gradient w.r.t. the {what}", objective_dim=0)
    return stacked


def _batched_grads(losses: list[Tensor], target: Tensor) -> Tensor | None:
    stacked_losses = torch.stack(losses)
    eye = torch.eye(len(losses), dtype=stacked_losses.dtype, device=stacked_losses.device)
    (g,) = torch.autograd.grad(
        stacked_losses,
        target,
        grad_outputs=eye,
        is_grads_batched=True,
        retain_graph=True,
        allow_unused=True,
    )
    if g is None:  # no loss reaches the target: the loop names the first
        return None
    return g


class Combiner(ABC):
    """Base class: validates the losses and the declared extra input, then combines."""

    requires: ClassVar[str | None] = None
    name: ClassVar[str] = "combiner"
    #: ``h`` with ``combine(s * losses).loss == s**h * combine(losses).loss`` for ``s > 0``.
    loss_scale_degree: int = 1

    def __call__(
        self,
        losses: Sequence[Tensor] | Tensor,
        *,
        shared: Tensor | None = None,
        params: Iterable[Tensor] | None = None,
    ) -> CombineResult:
        items = check_losses(losses)
        return self._combine(items, shared=shared, params=params)

    @abstractmethod
    def _combine(
        self, losses: list[Tensor], *, shared: Tensor | None, params: Iterable[Tensor] | None
    ) -> CombineResult: ...

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._hparams().items())
        return f"{type(self).__name__}({args})"

    def _hparams(self) -> dict[str, Any]:
        return {}


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
        value = sum(float(mean_w[i]) * losses[i].detach() for i in range(n))
        assert isinstance(value, Tensor)
        conflict = (g.amin(0) < 0) & (g.amax(0) > 0)
        # Elements some objective wants to move but the combination leaves still (with Noon
        # losses: tokens reinforced by one objective and not by another).
        vetoed = (direction == 0) & (g != 0).any(0)
        stats = {
            "min_norm": float(direction.double().pow(2).sum()),
            "conflict_rate": share(conflict),
            "veto_rate": share(vetoed),
        }
        for i in range(n):
            stats[f"weight/{i}"] = float(mean_w[i])
        return CombineResult(
            loss=_with_value(surrogate, value), weights=mean_w, stats=stats, element_weights=w
        )


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
