"""The study's statistics: numpy and scipy only, no torch, no model.

Every function takes plain arrays of rewards (higher is better on every objective) so it can
be checked by hand. The conventions, fixed before any reported run:

* a point ``p`` *dominates* ``q`` when ``p >= q`` on every objective and ``p > q`` on one;
* confidence intervals are 95% percentile bootstrap intervals of the mean over seeds
  (:func:`scipy.stats.bootstrap`, a fixed seed), so a table is reproducible;
* paired tests are two-sided Wilcoxon signed-rank tests on per-seed differences
  (:func:`scipy.stats.wilcoxon`); with every difference zero the p-value is 1;
* hypervolumes are those of a box above a fixed reference point: for one point
  ``prod_i max(p_i - ref_i, 0)``. The *per-response* hypervolume averages that over
  responses, so a mixture of responses each good on one objective only scores low, while
  the hypervolume of the *mean point* can score it high.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

__all__ = [
    "bootstrap_ci",
    "difference_ci",
    "dominance_shares",
    "dominated_beyond_ci",
    "dominated_by_front",
    "dominates",
    "final_kl_target",
    "joint_success",
    "paired_wilcoxon",
    "per_response_hypervolume",
    "point_hypervolume",
    "reward_at_kl",
]


def _as_points(points: Sequence[Sequence[float]] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array [points, objectives], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} holds non-finite values")
    return arr


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 4999,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per seed).

    Percentile rather than BCa: BCa is undefined when every value is equal (a collapsed
    policy gives exactly that) and the interval should then be the value itself.
    """
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("values hold non-finite entries")
    if arr.size == 1 or np.all(arr == arr[0]):
        return float(arr[0]), float(arr[0])
    res = sps.bootstrap(
        (arr,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the paired differences ``a - b``.

    ``a[k]`` and ``b[k]`` come from the same seed (same SFT start, same prompt order, same
    evaluation samples' seed). Exact for small samples without ties (scipy's choice).
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples must be 1-D of equal length, got {x.shape} and {y.shape}")
    diff = x - y
    if diff.size == 0 or np.all(diff == 0):
        return 1.0
    return float(sps.wilcoxon(diff, alternative="two-sided").pvalue)


def dominates(p: Sequence[float], q: Sequence[float]) -> bool:
    """``p >= q`` everywhere and ``p > q`` somewhere (rewards: higher is better)."""
    pa, qa = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if pa.shape != qa.shape:
        raise ValueError(f"points of different shapes {pa.shape} and {qa.shape}")
    return bool(np.all(pa >= qa) and np.any(pa > qa))


def dominance_shares(
    method: Sequence[Sequence[float]], baseline: Sequence[Sequence[float]]
) -> tuple[float, float]:
    """Shares of paired seeds where ``method``'s point dominates / is dominated by ``baseline``'s.

    Row ``k`` of each array is seed ``k``'s point (one column per objective).
    """
    a, b = _as_points(method, "method"), _as_points(baseline, "baseline")
    if a.shape != b.shape:
        raise ValueError(f"paired points must have equal shapes, got {a.shape} and {b.shape}")
    wins = sum(dominates(p, q) for p, q in zip(a, b, strict=True))
    losses = sum(dominates(q, p) for p, q in zip(a, b, strict=True))
    return wins / len(a), losses / len(a)


def dominated_by_front(point: Sequence[float], front: Sequence[Sequence[float]]) -> bool:
    """Whether some point of ``front`` (e.g. MORLHF at each weight) dominates ``point``."""
    f = _as_points(front, "front")
    return any(dominates(q, point) for q in f)


def difference_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 4999,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(a) - mean(b)`` for two *independent* samples
    (each resampled on its own; e.g. a front weight's seeds against a method's seeds)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or y.ndim != 1 or x.size == 0 or y.size == 0:
        raise ValueError(f"two non-empty 1-D samples needed, got shapes {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("samples hold non-finite entries")
    if np.all(x == x[0]) and np.all(y == y[0]):
        d = float(x[0] - y[0])
        return d, d
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, x.size, size=(n_resamples, x.size))
    ib = rng.integers(0, y.size, size=(n_resamples, y.size))
    diffs = x[ia].mean(axis=1) - y[ib].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    return float(lo), float(hi)


def dominated_beyond_ci(
    method: Sequence[Sequence[float]] | np.ndarray,
    front: Sequence[Sequence[Sequence[float]]],
    seed: int = 0,
) -> bool:
    """Whether some front point dominates the method *beyond the uncertainty of both*.

    ``method`` is ``[seeds, objectives]`` (one point per seed), ``front`` a list of such
    arrays, one per front weight. The rule, fixed in advance: a front weight dominates when
    on *every* objective the 95% bootstrap interval of ``mean(front) - mean(method)``
    (:func:`difference_ci`, the two sets of seeds resampled independently) lies above 0, i.e.
    the front point is better on every objective by more than the noise of either. Stricter
    than Pareto dominance of the means (which :func:`dominated_by_front` checks, and which
    leans toward "dominated" when the front points rest on few seeds)."""
    m = _as_points(method, "method")
    for q in front:
        f = _as_points(q, "front point")
        if f.shape[1] != m.shape[1]:
            raise ValueError(f"front point has {f.shape[1]} objectives, method {m.shape[1]}")
        if all(difference_ci(f[:, k], m[:, k], seed=seed)[0] > 0 for k in range(m.shape[1])):
            return True
    return False


def point_hypervolume(point: Sequence[float], reference: Sequence[float]) -> float:
    """Volume of the box between ``reference`` and ``point`` (0 if not above it everywhere)."""
    p, r = np.asarray(point, dtype=float), np.asarray(reference, dtype=float)
    if p.shape != r.shape:
        raise ValueError(f"point has {p.size} objectives, reference {r.size}")
    return float(np.prod(np.clip(p - r, 0.0, None)))


def per_response_hypervolume(
    scores: Sequence[Sequence[float]], reference: Sequence[float]
) -> float:
    """Mean over responses of each response's own box volume above ``reference``."""
    s = _as_points(scores, "scores")
    r = np.asarray(reference, dtype=float)
    if s.shape[1] != r.size:
        raise ValueError(f"scores have {s.shape[1]} objectives, reference {r.size}")
    return float(np.mean(np.prod(np.clip(s - r, 0.0, None), axis=1)))


def joint_success(scores: Sequence[Sequence[float]], thresholds: Sequence[float]) -> float:
    """Share of responses strictly above the threshold on *every* objective."""
    s = _as_points(scores, "scores")
    t = np.asarray(thresholds, dtype=float)
    if s.shape[1] != t.size:
        raise ValueError(f"scores have {s.shape[1]} objectives, thresholds {t.size}")
    return float(np.mean(np.all(s > t, axis=1)))


def reward_at_kl(kl: Sequence[float], reward: Sequence[float], target: float) -> float:
    """A method's reward at KL ``target``, read along its training path in order.

    ``kl`` and ``reward`` are the method's checkpoints in training order (KL 0 at the SFT
    start). The path is never sorted: it is walked from the last checkpoint back, and the
    answer is taken on the *latest* segment (two consecutive checkpoints) whose KLs bracket
    ``target``, linearly interpolated between them (linear in training steps where the KL is
    linear between the two checkpoints). So a method whose final KL is ``target`` is read at
    its final checkpoint, and a method that passed ``target`` on its way to a larger final KL
    is read where it crossed it last: the most-trained policy of that run at that KL. A
    target the path never reaches is answered with NaN rather than extrapolated.
    """
    k, r = np.asarray(kl, dtype=float), np.asarray(reward, dtype=float)
    if k.shape != r.shape or k.ndim != 1 or k.size == 0:
        raise ValueError(f"kl and reward must be 1-D of equal length, got {k.shape}, {r.shape}")
    if not (np.all(np.isfinite(k)) and np.isfinite(target)):
        raise ValueError("kl path and target must be finite")
    if k[-1] == target:
        return float(r[-1])
    for j in range(k.size - 1, 0, -1):
        lo, hi = k[j - 1], k[j]
        if min(lo, hi) <= target <= max(lo, hi):
            if hi == lo:  # a flat segment at the target: its later checkpoint
                return float(r[j])
            frac = (target - lo) / (hi - lo)
            return float(r[j - 1] + frac * (r[j] - r[j - 1]))
    return float("nan")


def final_kl_target(paths: Sequence[Sequence[float]]) -> float:
    """The matched KL of a comparison: the smallest *final* KL of the paths compared.

    Every path reaches it (a path that starts at KL 0 and ends at or above it crosses it),
    so no method is extrapolated; a method's largest KL along the way plays no part."""
    if not paths:
        raise ValueError("no KL path given")
    return float(min(p[-1] for p in paths))
