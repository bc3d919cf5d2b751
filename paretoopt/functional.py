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

import ctypes
import functools
import sys
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ._validation import check_finite, stack_objectives
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
    "gram_matrix",
    "kkt_residual",
    "min_norm_weights",
    "noon_clip",
    "pama_advantages",
    "pama_closed_form",
    "pama_stats",
    "project_simplex",
]


def _weight_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision weights lose the simplex (sum to 1) to rounding: use at least float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------
# PAMA closed form (Theorem 1)
# ---------------------------------------------------------------------------


def pama_closed_form(coefs: Tensor, dim: int = 0) -> tuple[Tensor, Tensor]:
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
    s_star, weights = _closed_form(a, "coefs")
    return s_star, weights.movedim(0, dim)


# On the CPU the extrema are folded over the objectives one block of columns at a time: the
# running min and max and the row being folded in stay in cache while the input streams from
# memory once, and no N-sized temporary is allocated (a fresh N-sized tensor costs page faults
# comparable to the reduction itself). ``amin(0)``/``amax(0)`` over a short leading dimension
# are far from bandwidth-bound there, and ``aminmax``/``argmin`` over dim 0 slower still. The
# weights of a block are computed from the block while it is in cache.
_S_STAR_BLOCK_COLS = 1 << 17
# Below this many columns (elements per objective) s* takes the whole-tensor reductions: on
# the CPU the blocked fold's fixed cost made it 1.1-1.2x slower at N = 4096 and 32768 (n = 2
# to 8), while at n = 2 the whole-tensor reductions reach 20x the copy from N = 262144.
_S_STAR_WHOLE_BELOW = 1 << 16
# The weights: blocks of at most 2^16 columns and 2^19 elements (fastest at n = 2 and 8; the
# per-operation cost of smaller blocks and the cache misses of larger ones both showed).
_WEIGHTS_BLOCK_ELEMS = 1 << 19
_WEIGHTS_BLOCK_COLS = 1 << 16
_FOLD_MIN_COLS = 1 << 10
# Fresh results at least this large are asked to be backed by transparent huge pages (Linux):
# past glibc's mmap threshold every fresh tensor is new memory, and faulting it in 4 KiB pages
# cost 5x the copy of the input (n = 2, N = 1e7), more than the closed form itself.
_HUGE_PAGE_MIN_BYTES = 1 << 23
_HUGE_PAGE = 1 << 21
_MADV_HUGEPAGE = 14


@functools.lru_cache(maxsize=1)
def _madvise() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _fresh(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.empty``; on the CPU a large one advised to use huge pages before its first touch
    (as torch's own ``THP_MEM_ALLOC_ENABLE=1`` does): 512x fewer page faults. Advice only: the
    values are the same, and where the kernel has no huge pages nothing changes."""
    out = torch.empty(shape, dtype=dtype, device=device)
    nbytes = out.numel() * out.element_size()
    if out.device.type != "cpu" or nbytes < _HUGE_PAGE_MIN_BYTES:
        return out
    madvise = _madvise()
    if madvise is not None:
        # Only the whole huge pages inside the tensor's own allocation.
        first = (out.data_ptr() + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        last = (out.data_ptr() + nbytes) & ~(_HUGE_PAGE - 1)
        if last > first:
            madvise(first, last - first, _MADV_HUGEPAGE)
    return out


def _flat_objectives(a: Tensor) -> Tensor:
    """``[n, *shape]`` as ``[n, N]`` with contiguous rows (a copy only where no view has them)."""
    flat = a.reshape(a.shape[0], -1)
    return flat if flat.shape[1] <= 1 or flat.stride(1) == 1 else flat.contiguous()


def _block_extrema(block: Tensor, mn: Tensor, mx: Tensor) -> None:
    """Min and max of ``block`` ``[n, cols]`` over dim 0, written into ``mn`` and ``mx``."""
    if block.device.type != "cpu" or block.shape[1] < _FOLD_MIN_COLS:
        # Narrow blocks (the generic combiner on a small model): two reductions, not 2(n - 1)
        # operations whose fixed cost dominates.
        torch.amin(block, 0, out=mn)
        torch.amax(block, 0, out=mx)
        return
    rows = block.unbind(0)
    if len(rows) == 1:
        mn.copy_(rows[0])
        mx.copy_(rows[0])
        return
    torch.minimum(rows[0], rows[1], out=mn)
    torch.maximum(rows[0], rows[1], out=mx)
    for row in rows[2:]:
        torch.minimum(mn, row, out=mn)
        torch.maximum(mx, row, out=mx)


def _block_cols(a: Tensor, elems: int) -> int:
    n, size = a.shape
    return max(1, size if a.device.type != "cpu" else min(size, max(1, elems // n)))


def _probe(mn: Tensor, mx: Tensor) -> Tensor:
    # One dot product stands for both finiteness checks: NaN and inf survive it (inf * 0 and
    # inf - inf are NaN) and it costs a fraction of torch.isfinite(...).all(). NaN propagates
    # through the min and max and +-inf shows up in one of them, so a non-finite input always
    # gives a non-finite probe. An overflow only sends us to the exact element-wise scan.
    if mn.dtype in (torch.float32, torch.float64):
        return torch.dot(mn, mx)
    return torch.dot(mn.float(), mx.float())


def _check_probes(probes: list[Tensor], a: Tensor, name: str) -> None:
    if probes and not bool(torch.isfinite(torch.stack(probes).sum())):
        check_finite(a, name, objective_dim=0)


def _s_star(a: Tensor, name: str, noon: bool = False) -> Tensor:
    """s* over dim 0 of ``a`` ``[n, *shape]`` (with ``noon``: that of the clipped input,
    max(min_i a_i, 0)); checks finiteness. One pass over ``a``, one fresh ``shape`` tensor."""
    if a[0].numel() < _S_STAR_WHOLE_BELOW:
        # Small inputs (a batch of RLHF tokens): two whole-tensor reductions are fastest,
        # the blocked fold below costs more in per-call overhead than it saves.
        mn, mx = a.amin(dim=0), a.amax(dim=0)
        if not bool(torch.isfinite(_probe(mn.reshape(-1), mx.reshape(-1)))):
            check_finite(a, name, objective_dim=0)
        return mn.clamp_min_(0) if noon else mn.clamp_min_(0).add_(mx.clamp_max_(0))
    flat = _flat_objectives(a)
    size = flat.shape[1]
    out = _fresh((size,), a.dtype, a.device)
    cols = _block_cols(flat, _S_STAR_BLOCK_COLS * flat.shape[0])
    mn_buf = torch.empty(min(cols, size), dtype=a.dtype, device=a.device)
    mx_buf = torch.empty_like(mn_buf)
    two_rows = flat.shape[0] == 2 and a.device.type == "cpu"
    probes = []
    for start in range(0, size, cols):
        block = flat[:, start : start + cols]
        width = block.shape[1]
        mn, mx = mn_buf[:width], mx_buf[:width]
        s = out[start : start + width]
        if two_rows:
            # n = 2: s* = median(a, b, 0) = clamp(a, min(b, 0), max(b, 0)), three passes over
            # a column instead of five; the rows' dot product is the finiteness probe.
            a0, a1 = block
            probes.append(_probe(a0, a1))
            if noon:
                torch.minimum(a0, a1, out=s).clamp_min_(0)
            else:
                lo, hi = torch.clamp_max(a1, 0, out=mn), torch.clamp_min(a1, 0, out=mx)
                torch.clamp(a0, lo, hi, out=s)
            continue
        _block_extrema(block, mn, mx)
        probes.append(_probe(mn, mx))
        # relu(min) - relu(-max) = max(min, 0) + min(max, 0).
        torch.clamp_min(mn, 0, out=s)
        if not noon:
            s.add_(mx.clamp_max_(0))
    _check_probes(probes, a, name)
    return out.reshape(a.shape[1:])


def _closed_form(a: Tensor, name: str, noon: bool = False) -> tuple[Tensor, Tensor]:
    """s* and the simplex weights attaining it (see :func:`pama_closed_form` for the choice)
    over dim 0 of ``a`` ``[n, *shape]``; with ``noon``, of the clipped input max(a, 0).

    Per block of columns, in cache: the min and max, s*, then the group that s* names: the
    objectives equal to s* (all > 0: those at the min; all < 0: at the max; some zero: the
    zeros), written as 0/1 in the weight dtype, counted and scaled by one over the count. Only
    where no objective equals s* (mixed strict signs, s* = 0 with no zero; never with
    ``noon``) are the min and max groups needed: their indicators, counts and shares
    (1 - lambda, lambda) are added for those columns alone, in blocks that have any. Every
    weight is one exact term (a group's share over its count) plus exact zeros.
    """
    flat = _flat_objectives(a)
    n, size = flat.shape
    wd = _weight_dtype(a.dtype)
    tiny = torch.finfo(wd).tiny
    s_out = _fresh((size,), a.dtype, a.device)
    weights = _fresh((n, size), wd, a.device)
    cols = min(_block_cols(flat, _WEIGHTS_BLOCK_ELEMS), _WEIGHTS_BLOCK_COLS)
    width0 = min(cols, size)
    # Every temporary of the loop lives in these buffers: a fresh block-sized tensor per
    # operation would cost an allocation (and, past malloc's mmap threshold, page faults).
    ext = torch.empty(3, width0, dtype=a.dtype, device=a.device)
    col = torch.empty(6, width0, dtype=wd, device=a.device)
    at_buf = torch.empty(n, width0, dtype=wd, device=a.device)
    probes = []
    for start in range(0, size, cols):
        block = flat[:, start : start + cols]
        width = block.shape[1]
        mn, mx, mx_neg = ext[:, :width]
        count, mixed, lam, c_min, c_max, n_ext = col[:, :width]
        _block_extrema(block, mn, mx)
        s = s_out[start : start + width]
        w = weights[:, start : start + width]
        if noon:
            # The clipped block's min is max(min, 0), its max max(max, 0) (-inf clips to 0).
            torch.clamp_min(mn, 0, out=s)
            probes.append(_probe(s, mx.clamp_min_(0)))
            # Clipped entries are >= s*, so "clipped == s*" is "raw <= s*" (all <= 0 clip to 0).
            torch.le(block, s, out=w)
        else:
            probes.append(_probe(mn, mx))
            # relu(min) - relu(-max) = max(min, 0) + min(max, 0).
            torch.clamp_min(mn, 0, out=s).add_(torch.clamp_max(mx, 0, out=mx_neg))
            torch.eq(block, s, out=w)
        torch.sum(w, 0, out=count)
        torch.eq(count, 0, out=mixed)
        # One over the count of the group s* names; 0 / 1 where there is none (mixed).
        w.div_(count.clamp_min_(1))
        if noon or not bool(mixed.any()):
            continue
        # Mixed strict signs: lambda * max + (1 - lambda) * min = 0, lambda = -min / (max - min)
        # in [0, 1]; (-x) / y and -(x / y) round alike. Each group uniform over its ties.
        mnf, mxf = mn.to(wd), mx.to(wd)
        torch.sub(mxf, mnf, out=lam).clamp_min_(tiny)
        torch.div(mnf, lam, out=lam).neg_().clamp_(0, 1)
        at = at_buf[:, :width]
        torch.eq(block, mn, out=at)
        torch.sub(1, lam, out=c_min).div_(torch.sum(at, 0, out=n_ext)).mul_(mixed)
        w.addcmul_(at, c_min)
        torch.eq(block, mx, out=at)
        torch.div(lam, torch.sum(at, 0, out=n_ext), out=c_max).mul_(mixed)
        w.addcmul_(at, c_max)
    _check_probes(probes, a, name)
    return s_out.reshape(a.shape[1:]), weights.reshape(a.shape)


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


def pama_advantages(
    advantages: Tensor | Sequence[Tensor],
    mask: Tensor | None = None,
    granularity: Granularity = "token",
    noon: bool = True,
    return_weights: bool = False,
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

    if per_element and not return_weights:
        # min_i max(A_i, 0) = max(min_i A_i, 0): Noon needs no clipped copy.
        s_star = _s_star(adv, "advantages", noon=noon)
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
    if m is not None:
        s_star = s_star.masked_fill_(~m, 0)  # s_star is a fresh tensor on every path
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
