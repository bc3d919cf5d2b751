"""What every combiner shares: the :class:`Combiner` interface, its :class:`CombineResult` and
the gradient helpers the gradient-based combiners use (:mod:`.combiners`, :mod:`.mgda`,
:mod:`.zoo`).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._validation import check_finite, check_losses

__all__ = ["CombineResult", "Combiner"]


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
    finite = False
    if batched is not None and batched[0] and len(losses) > 1:
        try:
            stacked = _batched_grads(losses, target)
        except (RuntimeError, NotImplementedError):
            batched[0] = False
        # An infinite local derivative on one loss's path times another's zero cotangent is
        # NaN in the batch; one backward per loss tells which gradient is really non-finite.
        if stacked is not None and not bool(torch.isfinite(stacked.sum(dtype=torch.float64))):
            stacked = None
        finite = stacked is not None  # a finite sum: every entry is finite
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
    if not finite:
        check_finite(stacked, f"gradient w.r.t. the {what}", objective_dim=0)
    return stacked


def _batched_grads(losses: list[Tensor], target: Tensor) -> Tensor | None:
    # Losses given as one tensor (ppo_losses_from_ratio's [n]) are differentiated from it:
    # stacking its unbound elements would add two nodes to every one of the n walks (17%
    # of the n gradients' time at n = 32 on the bench's small model).
    stacked_losses = getattr(losses, "stacked", None)
    if stacked_losses is None:
        stacked_losses = torch.stack(losses)
    eye = torch.eye(len(losses), dtype=stacked_losses.dtype, device=stacked_losses.device)

    def vjp(v: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(stacked_losses, target, v, retain_graph=True, allow_unused=True)
        if g is None:
            raise ValueError("no loss reaches the target")
        return g

    # torch.func.vmap batches the backward formulas that the legacy vmap behind
    # is_grads_batched runs one example at a time (where, masked_fill_: minimum's and clamp's
    # backward, i.e. every PPO loss): 25% less time for the n gradients at n = 32.
    # Where torch.func cannot run the graph, the legacy batched backward below still can.
    with contextlib.suppress(RuntimeError, NotImplementedError, ValueError, TypeError):
        return torch.func.vmap(vjp)(eye)
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
