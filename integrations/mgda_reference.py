r"""The plain textbook MGDA step, written for clarity: the O(n^2 d) baseline of the benchmarks.

One step of exact MGDA (Sener & Koltun 2018, Algorithm 2 without the MGDA-UB shortcut) over
the d shared parameters of a model, with n objectives:

1. n backward passes, one per objective: :math:`g_i = \nabla_\theta L_i`      (n backwards)
2. flatten them into the Jacobian :math:`J = [g_1; \dots; g_n] \in R^{n \times d}` (n d floats)
3. the Gram matrix :math:`G = J J^T`                                          (O(n^2 d))
4. the min-norm solve :math:`c^* = \arg\min_{c \in \Delta_n} c^T G c`           (O(n^3), tiny)
5. the combined update :math:`d = \sum_i c^*_i g_i = J^T c^*` written into ``.grad`` (O(n d))

and then the optimiser step. Nothing is fused or clever: each phase is timed separately so that
the benchmarks can fit the cost of every phase (see ``docs/benchmarks.md``). The core's
:class:`paretoopt.MGDA` (``mode="params"``) computes the same direction; a test checks that.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from paretoopt.min_norm import MinNormMethod, gram_matrix, min_norm_weights

__all__ = ["MGDAReferenceResult", "flatten_gradients", "mgda_reference_step"]


@dataclass
class MGDAReferenceResult:
    """What :func:`mgda_reference_step` did.

    Attributes:
        weights: ``[n]`` float64 min-norm weights on the simplex.
        direction: ``[d]`` the combined gradient :math:`J^T c^*` (also written into ``.grad``).
        gram: ``[n, n]`` float64 Gram matrix of the per-objective gradients.
        min_norm: :math:`c^{*T} G c^*`.
        seconds: wall time of each phase: ``backward`` (all n), ``flatten``, ``gram``,
            ``solve``, ``combine``.
        jacobian_bytes: bytes of the ``[n, d]`` Jacobian this step held (MGDA's extra memory).
    """

    weights: Tensor
    direction: Tensor
    gram: Tensor
    min_norm: float
    seconds: dict[str, float] = field(default_factory=dict)
    jacobian_bytes: int = 0


def _grad_or_zeros(p: Tensor) -> Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad


def flatten_gradients(params: Sequence[Tensor]) -> Tensor:
    """Concatenate the ``.grad`` of ``params`` into one ``[d]`` vector (zeros where unused)."""
    return torch.cat([_grad_or_zeros(p).reshape(-1) for p in params])


def mgda_reference_step(
    losses: Sequence[Tensor] | Tensor,
    params: Iterable[Tensor],
    method: MinNormMethod = "exact",
) -> MGDAReferenceResult:
    r"""Compute exact MGDA's update direction and write it into ``p.grad`` for ``p`` in params.

    The caller runs the forward pass before and ``optimizer.step()`` after, exactly as with a
    single loss. Existing ``.grad`` values are overwritten.

    Args:
        losses: n scalar losses (a sequence or a 1-D tensor) that depend on ``params``.
        params: the shared parameters :math:`\theta` (``d`` numbers in all).
        method: the min-norm solver passed to :func:`paretoopt.min_norm_weights`.

    Returns:
        :class:`MGDAReferenceResult`.
    """
    items = list(losses.unbind(0)) if isinstance(losses, Tensor) else list(losses)
    if not items:
        raise ValueError("losses is empty: need at least one objective")
    plist = [p for p in params if p.requires_grad]
    if not plist:
        raise ValueError("params holds no tensor that requires grad")
    n = len(items)
    seconds: dict[str, float] = {"backward": 0.0, "flatten": 0.0}

    # 1-2. n backward passes; after each, flatten the gradients into row i of J.
    d = sum(p.numel() for p in plist)
    jac = torch.empty(n, d, dtype=plist[0].dtype, device=plist[0].device)  # [n, d]
    for i, loss in enumerate(items):
        if loss.dim() != 0:
            raise ValueError(f"loss of objective {i} is not a scalar (shape {tuple(loss.shape)})")
        for p in plist:
            p.grad = None
        t0 = time.perf_counter()
        # The graph is kept for the next objective's backward pass.
        loss.backward(retain_graph=i < n - 1)
        t1 = time.perf_counter()
        torch.cat([_grad_or_zeros(p).reshape(-1) for p in plist], out=jac[i])
        seconds["backward"] += t1 - t0
        seconds["flatten"] += time.perf_counter() - t1
        for p in plist:
            p.grad = None

    # 3. Gram matrix, accumulated in float64 block by block: the O(n^2 d) part.
    t0 = time.perf_counter()
    gram = gram_matrix(jac)
    seconds["gram"] = time.perf_counter() - t0

    # 4. Min-norm point of the convex hull of the n gradients.
    t0 = time.perf_counter()
    sol = min_norm_weights(gram, method=method)
    seconds["solve"] = time.perf_counter() - t0

    # 5. Combined update d = J^T c, written back parameter by parameter.
    t0 = time.perf_counter()
    direction = sol.weights.to(jac.dtype) @ jac
    offset = 0
    for p in plist:
        k = p.numel()
        p.grad = direction[offset : offset + k].view_as(p).clone()
        offset += k
    seconds["combine"] = time.perf_counter() - t0
    return MGDAReferenceResult(
        weights=sol.weights,
        direction=direction,
        gram=gram,
        min_norm=sol.value,
        seconds=seconds,
        jacobian_bytes=jac.numel() * jac.element_size(),
    )
