"""Pure tensor functions: the PAMA closed form, Noon clipping, simplex projection and
min-norm solvers on a Gram matrix.

Everything here is usable without any class. The combiners in
:mod:`paretoopt.combiners` only add autograd plumbing around these functions.

References
----------
* PAMA: He & Maghsudi, "Pareto Multi-Objective Alignment for Language Models",
  ECML-PKDD 2025, https://arxiv.org/abs/2508.07768 (Theorem 1: closed form).
* MGDA: Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
  NeurIPS 2018, https://arxiv.org/abs/1810.04650.
* Wolfe, "Finding the nearest point in a polytope", Math. Programming 11 (1976).
* Duchi et al., "Efficient projections onto the l1-ball", ICML 2008 (simplex projection).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ._validation import check_finite, stack_objectives

Granularity = Literal["token", "sample", "batch"]
MinNormMethod = Literal["exact", "frank_wolfe", "projected_gradient"]

GRANULARITIES: tuple[str, ...] = ("token", "sample", "batch")
# KKT residual (relative to max_i G_ii) below which the exact solver's answer is optimal up to
# float64 rounding.
_EXACT_KKT_TOL = 1e-10
MIN_NORM_METHODS: tuple[str, ...] = ("exact", "frank_wolfe", "projected_gradient")

__all__ = [
    "GRANULARITIES",
    "MIN_NORM_METHODS",
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
_WEIGHTS_BLOCK_ELEMS = 1 << 16


def _flat_objectives(a: Tensor) -> Tensor:
    """``[n, *shape]`` as ``[n, N]`` with contiguous rows (a copy only where no view has them)."""
    flat = a.reshape(a.shape[0], -1)
    return flat if flat.shape[1] <= 1 or flat.stride(1) == 1 else flat.contiguous()


def _block_extrema(block: Tensor, mn: Tensor, mx: Tensor) -> None:
    """Min and max of ``block`` ``[n, cols]`` over dim 0, written into ``mn`` and ``mx``."""
    if block.device.type != "cpu":
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
    out = torch.empty(size, dtype=a.dtype, device=a.device)
    cols = _block_cols(flat, _S_STAR_BLOCK_COLS * flat.shape[0])
    mn_buf = torch.empty(min(cols, size), dtype=a.dtype, device=a.device)
    mx_buf = torch.empty_like(mn_buf)
    probes = []
    for start in range(0, size, cols):
        block = flat[:, start : start + cols]
        width = block.shape[1]
        mn, mx = mn_buf[:width], mx_buf[:width]
        _block_extrema(block, mn, mx)
        probes.append(_probe(mn, mx))
        # relu(min) - relu(-max) = max(min, 0) + min(max, 0).
        s = torch.clamp_min(mn, 0, out=out[start : start + width])
        if not noon:
            s.add_(mx.clamp_max_(0))
    _check_probes(probes, a, name)
    return out.reshape(a.shape[1:])


def _closed_form(a: Tensor, name: str, noon: bool = False) -> tuple[Tensor, Tensor]:
    """s* and the simplex weights attaining it (see :func:`pama_closed_form` for the choice)
    over dim 0 of ``a`` ``[n, *shape]``; with ``noon``, of the clipped input max(a, 0).

    Per block of columns, in cache: the min and max, then one indicator per group (the
    objectives at the min, at the max, at zero) written as 0/1 in the weight dtype, its count,
    and the weights as indicator times the group's share over its count. Per element exactly
    one group's term can be non-zero (the min and max groups are disjoint wherever both have a
    share), so the sum of the three terms is that term exactly.
    """
    flat = _flat_objectives(a)
    n, size = flat.shape
    wd = _weight_dtype(a.dtype)
    tiny = torch.finfo(wd).tiny
    s_out = torch.empty(size, dtype=a.dtype, device=a.device)
    weights = torch.empty(n, size, dtype=wd, device=a.device)
    cols = _block_cols(flat, _WEIGHTS_BLOCK_ELEMS)
    width0 = min(cols, size)
    # Every temporary of the loop lives in these buffers: a fresh block-sized tensor per
    # operation would cost an allocation (and, past malloc's mmap threshold, page faults).
    ext = torch.empty(2, width0, dtype=a.dtype, device=a.device)
    col = torch.empty(9, width0, dtype=wd, device=a.device)
    at_max_buf = torch.empty(n, width0, dtype=wd, device=a.device)
    at_zero_buf = torch.empty_like(at_max_buf)
    clipped_buf = torch.empty(n, width0, dtype=a.dtype, device=a.device) if noon else None
    probes = []
    for start in range(0, size, cols):
        block = flat[:, start : start + cols]
        width = block.shape[1]
        if clipped_buf is not None:
            block = torch.clamp_min(block, 0, out=clipped_buf[:, :width])
        mn, mx = ext[0, :width], ext[1, :width]
        n_min, n_max, n_zero, all_pos, all_neg, has_zero, mixed, lam, c_min = col[:, :width]
        _block_extrema(block, mn, mx)
        probes.append(_probe(mn, mx))

        at_min = torch.eq(block, mn, out=weights[:, start : start + width])
        at_max = torch.eq(block, mx, out=at_max_buf[:, :width])
        at_zero = torch.eq(block, 0, out=at_zero_buf[:, :width])
        torch.sum(at_min, 0, out=n_min)
        torch.sum(at_max, 0, out=n_max)
        torch.sum(at_zero, 0, out=n_zero)
        # Per element, the share of the min group, the max group and the zero group:
        # all > 0: (1, 0, 0); all < 0: (0, 1, 0); some zero: (0, 0, 1); mixed strict signs:
        # (1 - lambda, lambda, 0) with lambda * max + (1 - lambda) * min = 0. The cases are
        # 0/1 in the weight dtype (exactly one of them is 1), so each share is a sum of exact
        # terms; boolean masks and torch.where are several times slower here.
        torch.gt(mn, 0, out=all_pos)
        torch.lt(mx, 0, out=all_neg)
        torch.gt(n_zero, 0, out=has_zero)
        torch.sub(1, all_pos, out=mixed).sub_(all_neg).sub_(has_zero)
        mnf, mxf = mn.to(wd), mx.to(wd)
        # lambda = -min / (max - min), in [0, 1]; (-x) / y and -(x / y) round alike.
        torch.sub(mxf, mnf, out=lam).clamp_min_(tiny)
        torch.div(mnf, lam, out=lam).neg_().clamp_(0, 1)
        torch.sub(1, lam, out=c_min).mul_(mixed).add_(all_pos).div_(n_min)
        c_max = lam.mul_(mixed).add_(all_neg).div_(n_max)
        c_zero = has_zero.div_(n_zero.clamp_min_(1))
        at_min.mul_(c_min)
        at_min.addcmul_(at_max, c_max)
        at_min.addcmul_(at_zero, c_zero)
        # relu(min) - relu(-max) = max(min, 0) + min(max, 0).
        torch.clamp_min(mn, 0, out=s_out[start : start + width]).add_(mx.clamp_max_(0))
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


# ---------------------------------------------------------------------------
# Simplex projection
# ---------------------------------------------------------------------------


def project_simplex(v: Tensor) -> Tensor:
    r"""Euclidean projection onto the probability simplex along the last dimension.

    :math:`\arg\min_{c \ge 0, \sum c = 1} \lVert c - v \rVert_2`, by the sort-based
    algorithm (Held et al. 1974; Duchi et al. 2008): O(n log n) per row.
    """
    if not isinstance(v, Tensor):
        v = torch.as_tensor(v, dtype=torch.float64)
    if v.dim() == 0 or v.shape[-1] == 0:
        raise ValueError(f"project_simplex needs a non-empty last dimension, got {tuple(v.shape)}")
    check_finite(v, "v")
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    k = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    cond = u - css / k > 0
    # rho = the largest k with u_k - (sum_{j<=k} u_j - 1)/k > 0 (always >= 1).
    rho = (cond * k).amax(-1, keepdim=True).to(torch.long)
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp_min(0)


# ---------------------------------------------------------------------------
# Min-norm point of a convex hull, from the Gram matrix
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MinNormResult:
    """Result of :func:`min_norm_weights`.

    Attributes:
        weights: ``[n]`` float64 weights on the simplex.
        value: :math:`c^T G c`, the squared norm of the combined vector (Pareto-stationarity
            measure: 0 iff 0 lies in the convex hull).
        kkt_residual: violation of the KKT conditions, relative to ``max_i G_ii``
            (see :func:`kkt_residual`); 0 at the exact optimum.
        iterations: iterations used by the solver.
        method: the solver.
        converged: whether the solver met its tolerance before ``max_iter``.
    """

    weights: Tensor
    value: float
    kkt_residual: float
    iterations: int
    method: str
    converged: bool = True


def _as_gram(gram: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(gram, Tensor):
        g = gram.detach().to("cpu", torch.float64).numpy()
    else:
        g = np.asarray(gram, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"gram must be a square [n, n] matrix, got shape {g.shape}")
    if g.shape[0] == 0:
        raise ValueError("gram is empty: need at least one objective")
    if not np.all(np.isfinite(g)):
        bad = np.argwhere(~np.isfinite(g))[0]
        raise ValueError(f"gram has a non-finite entry at {tuple(int(i) for i in bad)}")
    # Symmetrise: a Gram matrix computed in floating point is symmetric only to rounding.
    return (g + g.T) / 2


def _gram_rtol(gram: Tensor | np.ndarray) -> float:
    """Relative tolerance of the Gram checks: rounding of the input's precision, >= 1e-9."""
    if isinstance(gram, Tensor):
        eps = torch.finfo(gram.dtype).eps if gram.dtype.is_floating_point else 0.0
    else:
        dtype = np.asarray(gram).dtype
        eps = float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else 0.0
    return max(1e-9, 1e3 * eps)


def _check_gram(gram: Tensor | np.ndarray, sym: np.ndarray) -> None:
    """Refuse a matrix that is not a Gram matrix beyond rounding: asymmetric, or with a
    negative eigenvalue. ``sym`` is the symmetrised float64 copy.

    A Gram matrix :math:`G = J J^T` is symmetric positive semi-definite. Rounding makes a
    computed one asymmetric and indefinite by about ``n * eps * max|G|``; the tolerance,
    ``max(1e-9, 1000 eps)`` of the input's precision relative to ``max|G|`` (times n for
    eigenvalues), stays far above that for rank-deficient matrices of any scale, and far
    below a real error (a sign flip, a transposed block, a covariance with a bad entry).
    """
    scale = float(np.abs(sym).max())
    if scale == 0.0 or scale < np.finfo(np.float64).tiny:
        return
    rtol = _gram_rtol(gram)
    raw = gram.detach().to("cpu", torch.float64).numpy() if isinstance(gram, Tensor) else gram
    raw = np.asarray(raw, dtype=np.float64)
    asym = np.abs(raw - raw.T)
    worst = float(asym.max())
    if worst > rtol * scale:
        i, j = (int(k) for k in np.unravel_index(int(np.argmax(asym)), asym.shape))
        raise ValueError(
            f"gram is not symmetric: entry ({i}, {j}) is {raw[i, j]:.6g} but ({j}, {i}) is "
            f"{raw[j, i]:.6g} (difference {worst:.3g}, tolerance {rtol * scale:.3g})"
        )
    n = sym.shape[0]
    shift = rtol * n * scale
    try:  # a Cholesky factorisation is the cheap test; eigenvalues only to name the culprit
        np.linalg.cholesky(sym + shift * np.eye(n))
        return
    except np.linalg.LinAlgError:
        pass
    eig = np.linalg.eigvalsh(sym)
    if eig[0] < -shift:
        raise ValueError(
            f"gram is not positive semi-definite: its most negative eigenvalue is {eig[0]:.6g} "
            f"(largest {eig[-1]:.6g}, tolerance {-shift:.3g}); a Gram matrix J J^T has none"
        )


def kkt_residual(gram: Tensor | np.ndarray, weights: Tensor | np.ndarray) -> float:
    r"""KKT violation of ``weights`` for :math:`\min_{c \in \Delta} c^T G c`, scale-free.

    At the optimum, with :math:`v = c^T G c`: :math:`(Gc)_i \ge v` for all i
    (dual feasibility) and :math:`c_i ((Gc)_i - v) = 0` (complementarity). Returns
    :math:`\max(v - \min_i (Gc)_i,\ \max_i c_i |(Gc)_i - v|) / \max_i G_{ii}` plus the
    distance of ``weights`` from the simplex (negative entries, sum off 1).
    """
    c = weights.detach().cpu().double().numpy() if isinstance(weights, Tensor) else weights
    return _kkt(_as_gram(gram), np.asarray(c, dtype=np.float64))


def _kkt(g: np.ndarray, c: np.ndarray) -> float:
    scale = float(np.max(np.diag(g)))
    if scale <= 0:
        scale = 1.0
    gc = g @ c
    v = float(c @ gc)
    dual = max(v - float(gc.min()), 0.0)
    comp = float(np.max(np.abs(c) * np.abs(gc - v)))
    feas = float(max(-c.min(), 0.0) + abs(c.sum() - 1.0))
    return max(dual, comp) / scale + feas


def _affine_minimiser(gs: np.ndarray) -> np.ndarray:
    """Minimiser of ||sum y_i p_i||^2 subject to sum y = 1, from the Gram of the points."""
    k = gs.shape[0]
    kkt = np.zeros((k + 1, k + 1))
    kkt[0, 1:] = kkt[1:, 0] = 1.0
    kkt[1:, 1:] = gs
    rhs = np.zeros(k + 1)
    rhs[0] = 1.0
    try:
        sol = np.linalg.solve(kkt, rhs)
        if not np.all(np.isfinite(sol)):
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        # Affinely dependent points (only through rounding in Wolfe's method): least squares.
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    y = sol[1:]
    return y / y.sum()


class _BorderedInverse:
    """Inverse of the bordered matrix [[0, 1^T], [1, G_SS]] of Wolfe's active set S.

    Adding or removing one point is a rank-one (Schur complement) update, O(k^2) instead of a
    fresh O(k^3) solve, done in place in a preallocated buffer; the affine minimiser of S is
    the first column of the inverse. It is rebuilt from scratch every ``refresh`` updates, or
    when a Schur complement is too small to trust (points affinely dependent up to rounding).
    """

    refresh = 128

    def __init__(self, g: np.ndarray, support: list[int]) -> None:
        self.g = g
        self.support = list(support)
        self.buf = np.zeros((g.shape[0] + 2, g.shape[0] + 2))
        self.updates = 0
        self._rebuild()

    @property
    def size(self) -> int:
        return len(self.support) + 1

    def _rebuild(self) -> None:
        s = np.array(self.support)
        k1 = s.size + 1
        m = np.zeros((k1, k1))
        m[0, 1:] = m[1:, 0] = 1.0
        m[1:, 1:] = self.g[np.ix_(s, s)]
        try:
            inv = np.linalg.inv(m)
            if not np.all(np.isfinite(inv)):
                raise np.linalg.LinAlgError
        except np.linalg.LinAlgError:
            inv = np.linalg.pinv(m)
        self.buf[:k1, :k1] = inv
        self.updates = 0

    def add(self, j: int) -> None:
        k1 = self.size
        inv = self.buf[:k1, :k1]
        b = np.empty(k1)
        b[0] = 1.0
        b[1:] = self.g[self.support, j]
        w = inv @ b
        schur = self.g[j, j] - b @ w
        self.support.append(j)
        self.updates += 1
        if abs(schur) <= 1e-12 * max(1.0, abs(self.g[j, j])) or self.updates >= self.refresh:
            self._rebuild()
            return
        inv += np.outer(w, w / schur)
        self.buf[:k1, k1] = self.buf[k1, :k1] = -w / schur
        self.buf[k1, k1] = 1.0 / schur

    def remove(self, positions: np.ndarray) -> None:
        for p in sorted((int(x) for x in positions), reverse=True):
            k1 = self.size
            q, last = p + 1, k1 - 1
            inv = self.buf[:k1, :k1]
            # Move the point to the last row/column (a symmetric permutation), then drop it.
            if q != last:
                inv[[q, last], :] = inv[[last, q], :]
                inv[:, [q, last]] = inv[:, [last, q]]
                self.support[p], self.support[-1] = self.support[-1], self.support[p]
            self.support.pop()
            self.updates += 1
            pivot = inv[last, last]
            if abs(pivot) <= 1e-300:
                self._rebuild()
                continue
            col = inv[:last, last].copy()
            inv[:last, :last] -= np.outer(col, inv[last, :last] / pivot)
        if self.updates >= self.refresh:
            self._rebuild()

    def affine_minimiser(self) -> np.ndarray:
        y = self.buf[1 : self.size, 0]
        total = y.sum()
        if not np.isfinite(total) or abs(total) < 1e-12:
            return _affine_minimiser(self.g[np.ix_(self.support, self.support)])
        return y / total


def _wolfe(g: np.ndarray, tol: float, max_iter: int) -> tuple[np.ndarray, int, bool]:
    """Wolfe's min-norm-point algorithm expressed through the Gram matrix only.

    Exact in exact arithmetic (finite termination); ``g`` is normalised to max diag 1. The
    active set's bordered system is kept as an inverse with rank-one updates, and the final
    point is re-solved directly on its support.
    """
    n = g.shape[0]
    eps_pos = 1e-15
    j = int(np.argmin(np.diag(g)))
    active = _BorderedInverse(g, [j])
    x = np.zeros(n)
    x[j] = 1.0
    it = 0
    converged = False
    while it < max_iter:
        it += 1
        gx = g @ x
        v = float(x @ gx)
        j = int(np.argmin(gx))
        # Wolfe's test: X.X - min_j X.p_j <= tol * max ||p||^2 (= tol after normalisation).
        if v - gx[j] <= tol:
            converged = True
            break
        if j in active.support:  # no progress possible: rounding, not the optimum, stops us
            break
        active.add(j)
        while True:  # minor cycle
            s = np.array(active.support)
            y = active.affine_minimiser()
            if np.all(y > eps_pos):
                x = np.zeros(n)
                x[s] = y
                break
            xs = x[s]
            neg = y <= eps_pos
            theta = float(np.min(xs[neg] / (xs[neg] - y[neg])))
            xs = xs + theta * (y - xs)
            drop = xs <= eps_pos
            if np.all(drop):  # cannot happen in exact arithmetic; guard against rounding
                drop[int(np.argmax(xs))] = False
            active.remove(np.flatnonzero(drop))
            x = np.zeros(n)
            x[s[~drop]] = xs[~drop] / xs[~drop].sum()
            if len(active.support) == 1:
                break
    # Polish: the exact affine minimiser of the final support, if it is feasible.
    s = np.array(active.support)
    y = _affine_minimiser(g[np.ix_(s, s)])
    if np.all(y >= 0):
        polished = np.zeros(n)
        polished[s] = y
        if polished @ g @ polished <= x @ g @ x:
            x = polished
    return x, it, converged


def _two_point(g: np.ndarray) -> np.ndarray:
    """Closed form for n = 2: min over gamma of ||gamma p_1 + (1 - gamma) p_2||^2."""
    denom = g[0, 0] + g[1, 1] - 2 * g[0, 1]
    gamma = 0.5 if denom <= 0 else min(max((g[1, 1] - g[0, 1]) / denom, 0.0), 1.0)
    return np.array([gamma, 1.0 - gamma])


def _frank_wolfe(g: np.ndarray, tol: float, max_iter: int) -> tuple[np.ndarray, int, bool]:
    """Frank-Wolfe with exact line search and away steps (Lacoste-Julien & Jaggi 2015).

    Plain Frank-Wolfe (the solver of Sener & Koltun's MGDA) converges as O(1/t) and never
    removes weight from a vertex; away steps make it linear on this strongly convex-in-the-
    hull problem. Starts at the shortest vector.
    """
    n = g.shape[0]
    x = np.zeros(n)
    x[int(np.argmin(np.diag(g)))] = 1.0
    gx = g @ x
    for it in range(1, max_iter + 1):
        v = float(x @ gx)
        j = int(np.argmin(gx))
        gap = v - gx[j]  # half the Frank-Wolfe duality gap
        if gap <= tol:
            return x, it, True
        support = np.flatnonzero(x > 0)
        a = int(support[np.argmax(gx[support])])
        if gap >= gx[a] - v or x[a] >= 1.0:
            k, sign, gamma_max = j, 1.0, 1.0  # toward vertex j
        else:
            k, sign, gamma_max = a, -1.0, x[a] / (1.0 - x[a])  # away from vertex a
        # Exact line search on ||x + gamma * sign * (e_k - x)||_G^2.
        slope = sign * (gx[k] - v)
        curv = g[k, k] - 2 * gx[k] + v
        gamma = gamma_max if curv <= 0 else min(max(-slope / curv, 0.0), gamma_max)
        x = x * (1 - sign * gamma)
        x[k] += sign * gamma
        x[np.abs(x) < 1e-300] = 0.0
        gx = gx + sign * gamma * (g[:, k] - gx)
    return x, max_iter, False


def _projected_gradient(g: np.ndarray, tol: float, max_iter: int) -> tuple[np.ndarray, int, bool]:
    """Accelerated projected gradient (FISTA) with step 1/L, L = 2 lambda_max(G)."""
    n = g.shape[0]
    lip = 2.0 * float(np.linalg.eigvalsh(g)[-1])
    x = np.full(n, 1.0 / n)
    if lip <= 0:
        return x, 0, True
    y = x.copy()
    t = 1.0
    for it in range(1, max_iter + 1):
        step = y - (2.0 * (g @ y)) / lip
        x_new = project_simplex(torch.from_numpy(step)).numpy()
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        y = x_new + ((t - 1) / t_new) * (x_new - x)
        done = float(np.abs(x_new - x).max()) <= tol
        x, t = x_new, t_new
        if done:
            return x, it, True
    return x, max_iter, False


def min_norm_weights(
    gram: Tensor | np.ndarray,
    method: MinNormMethod = "exact",
    tol: float | None = None,
    max_iter: int | None = None,
) -> MinNormResult:
    r"""Weights of the min-norm point of the convex hull of n vectors, from their Gram matrix.

    Solves :math:`\min_{c \in \Delta_n} c^T G c` (MGDA's sub-problem) in float64 whatever the
    input dtype. The problem is invariant to a positive scaling of ``G``, so it is solved on
    ``G / max_i G_ii``; this keeps Gram matrices of scale 1e-15 or 1e15 well conditioned.
    A zero Gram matrix (every point at the origin) returns uniform weights. A matrix that is
    not a Gram matrix beyond rounding (asymmetric, or with a negative eigenvalue below
    ``-max(1e-9, 1000 eps) * n * max|G|``, eps of the input's precision) is refused with a
    ``ValueError`` naming the largest asymmetric entry or the most negative eigenvalue.

    Methods:

    * ``"exact"`` (default): Wolfe's min-norm-point algorithm (an active-set method), exact to
      float64 rounding; finite termination.
    * ``"frank_wolfe"``: Frank-Wolfe with exact line search, as in Sener & Koltun (2018), plus
      away steps; stops when half the duality gap is below ``tol`` (default 1e-10).
    * ``"projected_gradient"``: accelerated projected gradient on the simplex; stops when an
      iterate moves less than ``tol`` (default 1e-12).

    Returns:
        :class:`MinNormResult` with the weights, the value :math:`c^T G c` (in the input's
        scale), the KKT residual, the iterations and whether the tolerance was met.
    """
    if method not in MIN_NORM_METHODS:
        raise ValueError(f"method must be one of {MIN_NORM_METHODS}, got {method!r}")
    g = _as_gram(gram)
    n = g.shape[0]
    diag = np.diag(g)
    if np.any(diag < 0):
        i = int(np.argmin(diag))
        if diag[i] < -1e-12 * max(float(np.abs(diag).max()), 1e-300):
            raise ValueError(
                f"gram is not a Gram matrix: diagonal entry {i} is negative ({diag[i]:.3g})"
            )
    _check_gram(gram, g)
    scale = float(diag.max())
    if n == 1 or scale <= 0 or not np.isfinite(scale) or scale < np.finfo(np.float64).tiny:
        w = np.full(n, 1.0 / n)
        return MinNormResult(
            weights=torch.from_numpy(w),
            value=float(w @ g @ w),
            kkt_residual=_kkt(g, w),
            iterations=0,
            method=method,
        )
    gn = g / scale
    if method == "exact" and n == 2:
        x, it, ok = _two_point(gn), 1, True
    elif method == "exact":
        x, it, ok = _wolfe(gn, tol if tol is not None else 1e-14, max_iter or 50 * n + 100)
    elif method == "frank_wolfe":
        x, it, ok = _frank_wolfe(gn, tol if tol is not None else 1e-10, max_iter or 10_000)
    else:
        x, it, ok = _projected_gradient(gn, tol if tol is not None else 1e-12, max_iter or 10_000)
    x = np.clip(x, 0.0, None)
    x = x / x.sum()
    residual = _kkt(g, x)
    if method == "exact" and not ok:
        # Wolfe's method stalls (the most violating point is already active) only through
        # rounding; it has then converged if the point meets KKT to rounding level.
        ok = residual <= _EXACT_KKT_TOL
    return MinNormResult(
        weights=torch.from_numpy(x),
        value=float(x @ g @ x),
        kkt_residual=residual,
        iterations=it,
        method=method,
        converged=ok,
    )


def gram_matrix(jacobian: Tensor, chunk_size: int = 1 << 16) -> Tensor:
    r"""Gram matrix :math:`J J^T` of an ``[n, d]`` matrix, accumulated in float64.

    Columns are cast to float64 chunk by chunk so that the extra memory is
    ``n * chunk_size`` doubles rather than a float64 copy of ``J``. Cost O(n^2 d).
    """
    if jacobian.dim() != 2:
        raise ValueError(f"jacobian must be [n, d], got shape {tuple(jacobian.shape)}")
    n, d = jacobian.shape
    out = torch.zeros(n, n, dtype=torch.float64, device=jacobian.device)
    for start in range(0, d, chunk_size):
        block = jacobian[:, start : start + chunk_size].to(torch.float64)
        out += block @ block.T
    return out
