r"""Min-norm point of a convex hull from its Gram matrix: the solvers behind MGDA, with their
KKT checks, and the simplex projection they use.

:func:`min_norm_weights` solves :math:`\min_{c \in \Delta} c^T G c` exactly (Wolfe's
active-set method on the bordered system) or iteratively (Frank-Wolfe, projected gradient);
:func:`kkt_residual` measures how far a point is from optimal. Re-exported by
:mod:`paretoopt.functional` and :mod:`paretoopt`.

References
----------
* MGDA: Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
  NeurIPS 2018, https://arxiv.org/abs/1810.04650.
* Wolfe, "Finding the nearest point in a polytope", Math. Programming 11 (1976).
* Duchi et al., "Efficient projections onto the l1-ball", ICML 2008 (simplex projection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ._validation import check_finite

MinNormMethod = Literal["exact", "frank_wolfe", "projected_gradient"]
MIN_NORM_METHODS: tuple[str, ...] = ("exact", "frank_wolfe", "projected_gradient")
# KKT residual (relative to max_i G_ii) below which the exact solver's answer is optimal up to
# float64 rounding.
_EXACT_KKT_TOL = 1e-10

__all__ = [
    "MIN_NORM_METHODS",
    "MinNormMethod",
    "MinNormResult",
    "gram_matrix",
    "kkt_residual",
    "min_norm_weights",
    "project_simplex",
]


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
