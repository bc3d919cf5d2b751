"""Pure tensor functions: the PAMA closed form, Noon clipping and PAMA's statistics.

The min-norm solvers (and the simplex projection) live in :mod:`paretoopt.min_norm`; they are
re-exported here, where they were first published.

Everything here is usable without any class. The combiners in
:mod:`paretoopt.combiners` only add autograd plumbing around these functions.

References
----------
* PAMA: He & Maghsudi, "Pareto Multi-Objective Alignment for Language Models",
  ECML-PKDD 2025, https://arxiv.org/abs/2508.07768 (Theorem 1: closed form).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from . import _native
from ._closed_form import _closed_form, _s_star, _weight_dtype
from ._validation import stack_objectives
from .min_norm import (
    MIN_NORM_METHODS,
    MinNormMethod,
    MinNormResult,
    gram_matrix,
    kkt_residual,
    min_norm_weights,
    project_simplex,
)

Granularity = Literal["token", "sample", "batch"]

GRANULARITIES: tuple[str, ...] = ("token", "sample", "batch")

__all__ = [
    "GRANULARITIES",
    "MIN_NORM_METHODS",
    "MinNormMethod",
    "MinNormResult",
    "closed_form_backend",
    "gram_matrix",
    "kkt_residual",
    "min_norm_weights",
    "noon_clip",
    "pama_advantages",
    "pama_closed_form",
    "pama_stats",
    "project_simplex",
]


# ---------------------------------------------------------------------------
# PAMA closed form (Theorem 1)
# ---------------------------------------------------------------------------


def pama_closed_form(
    coefs: Tensor, dim: int = 0, out: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    r"""Closed-form minimiser of :math:`(\sum_i c_i a_i)^2` over the simplex, element-wise.

    For scalars :math:`a_1..a_n` (one set per element, stacked along ``dim``), Theorem 1 of
    PAMA gives the minimum value as the projection of 0 onto :math:`[\min_i a_i, \max_i a_i]`:

    .. math:: s^* = \mathrm{relu}(\min_i a_i) - \mathrm{relu}(-\max_i a_i)

    i.e. :math:`\min_i a_i` if all are positive, :math:`\max_i a_i` if all are negative and
    0 otherwise. Cost: O(n) per element, no Gram matrix.

    The returned weights lie on the simplex and reproduce ``s*`` exactly
    (:math:`\sum_i c_i a_i = s^*`). Choice of weights (the minimiser is not unique when
    ``s* = 0`` or when objectives tie):

    * all :math:`a_i > 0` (or all :math:`< 0`): uniform over the binding objectives, those
      equal to the min (max);
    * some :math:`a_i = 0`: uniform over the zero entries;
    * mixed strict signs: the convex combination of the most negative and the most positive
      objective (each group uniform over its ties) that cancels exactly,
      :math:`\lambda a_{max} + (1-\lambda) a_{min} = 0`.

    Args:
        coefs: tensor ``[n, *shape]`` (objectives along ``dim``).
        dim: the objective dimension.
        out: optional ``(s_star, weights)`` tensors of the shapes and dtypes below, on
            ``coefs``' device, to hold the results (returned). For tens of millions of
            elements fresh results cost about as much as the closed form itself.

    Returns:
        ``(s_star, weights)``: ``s_star`` has the shape of ``coefs`` without ``dim`` and the
        dtype of ``coefs``; ``weights`` has the shape of ``coefs`` (objectives along ``dim``)
        and dtype float32 (float64 for float64 input).
    """
    if not isinstance(coefs, Tensor):
        raise TypeError(f"coefs must be a torch.Tensor, got {type(coefs).__name__}")
    if coefs.dim() == 0:
        raise ValueError("coefs must have an objective dimension; got a 0-d tensor")
    if not coefs.is_floating_point():
        coefs = coefs.to(torch.get_default_dtype())
    a = coefs.movedim(dim, 0)
    if a.shape[0] == 0:
        raise ValueError("coefs has no objectives (size 0 along the objective dimension)")
    if out is None:
        s_star, weights = _closed_form(a, "coefs")
        return s_star, weights.movedim(0, dim)
    s_dest, w_dest = _check_closed_form_out(out, coefs, dim)
    w_first = w_dest.movedim(dim, 0)
    s_star, weights = _closed_form(a, "coefs", dest=(s_dest, w_first))
    if s_star.data_ptr() != s_dest.data_ptr():  # the kernel wrote into contiguous outs
        s_dest.copy_(s_star)
    if weights.data_ptr() != w_first.data_ptr():
        w_first.copy_(weights)
    return s_dest, w_dest


def _check_closed_form_out(
    out: tuple[Tensor, Tensor], coefs: Tensor, dim: int
) -> tuple[Tensor, Tensor]:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError("out must be a pair of tensors (s_star, weights) or None")
    expected = (
        ("s_star", tuple(coefs.movedim(dim, 0).shape[1:]), coefs.dtype),
        ("weights", tuple(coefs.shape), _weight_dtype(coefs.dtype)),
    )
    for tensor, (what, shape, dtype) in zip(out, expected, strict=True):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"out's {what} must be a torch.Tensor, got {type(tensor).__name__}")
        _check_dest(tensor, f"out's {what}", shape, dtype, coefs.device)
    return out[0], out[1]


def _check_dest(
    t: Tensor, what: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> None:
    problems = []
    if tuple(t.shape) != shape:
        problems.append(f"shape {tuple(t.shape)} (expected {shape})")
    if t.dtype != dtype:
        problems.append(f"dtype {t.dtype} (expected {dtype})")
    if t.device != device:
        problems.append(f"device {t.device} (expected {device})")
    if t.requires_grad:
        problems.append("requires_grad=True")
    if problems:
        raise ValueError(f"{what} has " + ", ".join(problems))


def closed_form_backend() -> str:
    """Which path computes the closed form on the CPU, and why.

    ``"compiled kernel: PATH"`` when ``paretoopt/_closed_form.c`` was compiled (once, at first
    use, with the system's C compiler, into ``~/.cache/paretoopt`` or
    ``$PARETOOPT_CACHE_DIR``) and passed its check against the formulas; otherwise
    ``"off: REASON"`` (no compiler, a failed build, ``PARETOOPT_NATIVE=0``) and torch
    operations compute the same values, more slowly. GPU tensors always take torch
    operations.
    """
    return _native.status()


def noon_clip(advantages: Tensor) -> Tensor:
    r"""Noon PPO ("no negative") clipping: :math:`A = \max(A', 0)`."""
    return advantages.clamp_min(0)


def _objective_ndim(values: Tensor | Sequence[Tensor]) -> int:
    """Number of dimensions of the stacked ``[n, ...]`` tensor, without stacking."""
    if isinstance(values, Tensor):
        return values.dim()
    if isinstance(values, Sequence) and values and isinstance(values[0], Tensor):
        return values[0].dim() + 1
    return -1


def _masked_mean(x: Tensor, mask: Tensor | None, dims: tuple[int, ...]) -> Tensor:
    if mask is None:
        return x.mean(dim=dims)
    m = mask.to(x.dtype).expand_as(x)
    return (x * m).sum(dim=dims) / m.sum(dim=dims).clamp_min(1)


def _check_mask(mask: Tensor | None, shape: torch.Size) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but the advantages of each objective have "
            f"shape {tuple(shape)}"
        )
    return mask.to(torch.bool)


def _check_out(out: Tensor | None, adv: Tensor) -> None:
    if out is None:
        return
    if not isinstance(out, Tensor):
        raise TypeError(f"out must be a torch.Tensor or None, got {type(out).__name__}")
    try:
        _check_dest(out, "out", tuple(adv.shape[1:]), adv.dtype, adv.device)
    except ValueError as err:
        raise ValueError(
            f"{err}: it receives s*, one value per element of one objective's advantages"
        ) from None


def pama_advantages(
    advantages: Tensor | Sequence[Tensor],
    mask: Tensor | None = None,
    granularity: Granularity = "token",
    noon: bool = True,
    return_weights: bool = False,
    out: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""The PAMA advantage :math:`s^*` for RL code that already has per-objective advantages.

    With Noon clipping (the default) every objective's policy gradient at a token is a
    non-negative multiple of the same direction :math:`\nabla u_t`, so the min-norm
    combination of the objectives reduces to Theorem 1 on the scalars and
    :math:`s^*_t = \min_i \max(A'_{it}, 0)`: a token is reinforced only by the amount on
    which every objective agrees. Use the result as the single advantage of an ordinary
    (Noon) PPO surrogate.

    Granularity:

    * ``"token"`` (default): the closed form per element (sample, token).
    * ``"sample"``: one weight vector per sequence, from the closed form on the masked
      per-sequence mean advantage of each objective; ``s*`` is that weighting of the
      per-token advantages. For ``[n, B]`` sequence-level advantages (GRPO) this is the
      closed form per sample.
    * ``"batch"``: one weight vector for the whole batch from the batch-mean (clipped)
      advantages; loses per-token credit assignment.

    Args:
        advantages: ``[n, B, T]``, ``[n, B]`` or a sequence of n equally shaped tensors.
        mask: optional boolean/0-1 tensor of the per-objective shape; masked elements get
            ``s* = 0`` and do not enter sample/batch means.
        granularity: ``"token"``, ``"sample"`` or ``"batch"``.
        noon: apply Noon clipping first (the paper's setting).
        return_weights: also return the weights ``[n, *shape]`` that produce ``s*``.
        out: a tensor of the per-objective shape, the advantages' dtype and device, to hold
            ``s*`` (returned). For tens of millions of elements a fresh result costs about
            as much as the closed form itself (the operating system zeroes its pages).

    Returns:
        ``s*`` with the per-objective shape (and the weights if ``return_weights``).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    per_element = granularity == "token" or (
        granularity == "sample" and _objective_ndim(advantages) == 2
    )
    # The per-element path checks finiteness on its min/max reductions (one pass, not two).
    adv = stack_objectives(advantages, "advantages", check=not per_element)
    if adv.dim() < 2:
        raise ValueError(
            "advantages must have shape [n, B] or [n, B, T] (objectives first); got shape "
            f"{tuple(adv.shape)}"
        )
    m = _check_mask(mask, adv.shape[1:])
    _check_out(out, adv)

    if per_element and not return_weights:
        # min_i max(A_i, 0) = max(min_i A_i, 0): Noon needs no clipped copy.
        s_star = _s_star(adv, "advantages", noon=noon, dest=out)
    elif per_element:
        # Noon clipping happens block by block, in cache: no clipped copy of the input.
        s_star, weights = _closed_form(adv, "advantages", noon=noon)
    else:
        if noon:
            adv = noon_clip(adv)
        wd = _weight_dtype(adv.dtype)
        advf = adv.to(wd)
        dims = tuple(range(2 if granularity == "sample" else 1, adv.dim()))
        summary = _masked_mean(advf, m, dims)  # [n, B] per sample, [n] per batch
        _, w = pama_closed_form(summary, dim=0)
        w = w.reshape(w.shape + (1,) * (adv.dim() - w.dim()))
        weights = w.expand_as(advf)
        s_star = (weights * advf).sum(0).to(adv.dtype)
    if out is not None:
        if s_star.data_ptr() != out.data_ptr():  # the kernel wrote into a contiguous out
            out.copy_(s_star.reshape(out.shape))
        s_star = out
    if m is not None:
        s_star = s_star.masked_fill_(~m, 0)  # fresh, or the caller's out
    if return_weights:
        return s_star, weights
    return s_star


def pama_stats(
    advantages: Tensor | Sequence[Tensor],
    mask: Tensor | None = None,
    noon: bool = True,
    granularity: Granularity = "token",
    weights: Tensor | None = None,
) -> dict[str, float]:
    r"""Diagnostics of the combination actually trained on, for logging.

    ``s*`` and its weights are those of :func:`pama_advantages` at ``granularity`` (or, if
    ``weights`` ``[n, *shape]`` are given, e.g. batch weights reduced over processes,
    ``s* = sum_i w_i A_i`` with those weights), so the rates describe the update.

    Keys: ``binding_rate/{i}`` (mean weight of objective i over valid elements: the share
    whose ``s*`` is set by objective i, ties split evenly), ``conflict_rate`` (share of
    elements where the objectives' raw advantages disagree in sign), ``zero_rate`` (share
    with ``s* = 0``), ``mean_s_star``.
    """
    adv = stack_objectives(advantages, "advantages")
    m = _check_mask(mask, adv.shape[1:])
    raw = adv
    if weights is not None:
        if tuple(weights.shape) != tuple(adv.shape):
            raise ValueError(
                f"weights have shape {tuple(weights.shape)}, expected {tuple(adv.shape)}"
            )
        clipped = noon_clip(raw) if noon else raw
        s_star = (weights * clipped.to(weights.dtype)).sum(0)
    else:
        s_star, weights = pama_advantages(
            raw, m, granularity=granularity, noon=noon, return_weights=True
        )
    valid = torch.ones_like(s_star, dtype=torch.bool) if m is None else m
    count = valid.sum().clamp_min(1).to(torch.float64)
    stats: dict[str, float] = {}
    for i in range(adv.shape[0]):
        stats[f"binding_rate/{i}"] = float((weights[i].double() * valid).sum() / count)
    conflict = (raw.amin(0) < 0) & (raw.amax(0) > 0) & valid
    stats["conflict_rate"] = float(conflict.sum() / count)
    stats["zero_rate"] = float(((s_star == 0) & valid).sum() / count)
    stats["mean_s_star"] = float((s_star.double() * valid).sum() / count)
    return stats
