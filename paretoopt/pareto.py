"""Pareto utilities: dominance, non-dominated filtering, exact hypervolume, stationarity.

Points are rows of an ``[m, k]`` array (m points, k objectives). ``maximize=True`` (the
default, as for rewards) means larger is better in every objective.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .min_norm import gram_matrix, min_norm_weights

__all__ = ["dominates", "hypervolume", "pareto_front", "pareto_mask", "pareto_stationarity"]

ArrayLike = np.ndarray | Tensor | Sequence[Sequence[float]]


def _as_points(points: ArrayLike, name: str = "points") -> np.ndarray:
    if isinstance(points, Tensor):
        p = points.detach().cpu().double().numpy()
    else:
        p = np.asarray(points, dtype=np.float64)
    if p.ndim == 1:
        p = p[None, :] if p.size else p.reshape(0, 0)
    if p.ndim != 2:
        raise ValueError(f"{name} must be [m, k] (m points, k objectives), got shape {p.shape}")
    if p.size and not np.all(np.isfinite(p)):
        row = int(np.argwhere(~np.isfinite(p))[0, 0])
        raise ValueError(f"{name}: point {row} has a non-finite coordinate")
    return p


def dominates(a: ArrayLike, b: ArrayLike, maximize: bool = True) -> bool:
    """Whether ``a`` Pareto-dominates ``b``: at least as good everywhere, better somewhere."""
    pa, pb = _as_points(a, "a")[0], _as_points(b, "b")[0]
    if pa.shape != pb.shape:
        raise ValueError(f"a has {pa.shape[0]} objectives but b has {pb.shape[0]}")
    if not maximize:
        pa, pb = -pa, -pb
    return bool(np.all(pa >= pb) and np.any(pa > pb))


def pareto_mask(points: ArrayLike, maximize: bool = True) -> np.ndarray:
    """Boolean mask of the non-dominated points (duplicates are all kept). O(m^2 k)."""
    p = _as_points(points)
    if not maximize:
        p = -p
    m = p.shape[0]
    keep = np.ones(m, dtype=bool)
    for i in range(m):
        ge = np.all(p >= p[i], axis=1)
        gt = np.any(p > p[i], axis=1)
        keep[i] = not np.any(ge & gt)
    return keep


def pareto_front(points: ArrayLike, maximize: bool = True) -> np.ndarray:
    """The non-dominated points, in their original order."""
    p = _as_points(points)
    return p[pareto_mask(p, maximize=maximize)]


def _hv_min(p: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume dominated by ``p`` (minimisation, every point strictly better than ref)."""
    m, k = p.shape
    if m == 0:
        return 0.0
    if k == 1:
        return float(ref[0] - p[:, 0].min())
    if k == 2:
        order = np.lexsort((p[:, 1], p[:, 0]))
        total, best_y = 0.0, ref[1]
        for x, y in p[order]:
            if y < best_y:
                total += (ref[0] - x) * (best_y - y)
                best_y = y
        return float(total)
    # Slice along the last objective: between consecutive levels the dominated region is a
    # prism over the (k-1)-dimensional hypervolume of the points already reached.
    order = np.argsort(p[:, -1], kind="stable")
    p = p[order]
    total = 0.0
    for i in range(m):
        upper = p[i + 1, -1] if i + 1 < m else ref[-1]
        depth = upper - p[i, -1]
        if depth <= 0:
            continue
        prefix = p[: i + 1, :-1]
        prefix = prefix[pareto_mask(prefix, maximize=False)]
        total += depth * _hv_min(prefix, ref[:-1])
    return float(total)


def hypervolume(points: ArrayLike, reference: ArrayLike, maximize: bool = True) -> float:
    """Exact hypervolume of the region dominated by ``points`` and bounded by ``reference``.

    Exact for any number of objectives (recursive slicing; fast for k <= 3 and a few hundred
    points). Points that do not strictly improve on the reference in every objective add
    nothing.
    """
    p = _as_points(points)
    ref = np.asarray(
        reference.detach().cpu().double().numpy() if isinstance(reference, Tensor) else reference,
        dtype=np.float64,
    ).reshape(-1)
    if p.size == 0:
        return 0.0
    if ref.shape[0] != p.shape[1]:
        raise ValueError(f"reference has {ref.shape[0]} objectives but points have {p.shape[1]}")
    if not np.all(np.isfinite(ref)):
        raise ValueError("reference has a non-finite coordinate")
    if maximize:
        p, ref = -p, -ref
    p = p[np.all(p < ref, axis=1)]
    if p.shape[0] == 0:
        return 0.0
    p = p[pareto_mask(p, maximize=False)]
    return _hv_min(p, ref)


def pareto_stationarity(jacobian: Tensor | Sequence[Tensor]) -> float:
    r"""Pareto-stationarity measure :math:`\min_{c \in \Delta} \lVert \sum_i c_i g_i \rVert^2`.

    0 exactly when some convex combination of the objectives' gradients vanishes (a Pareto
    stationary point). ``jacobian`` is ``[n, d]`` or a sequence of n gradient tensors.
    """
    if isinstance(jacobian, Tensor):
        jac = jacobian
    else:
        jac = torch.stack([g.reshape(-1) for g in jacobian])
    if jac.dim() != 2:
        jac = jac.reshape(jac.shape[0], -1)
    return min_norm_weights(gram_matrix(jac)).value
