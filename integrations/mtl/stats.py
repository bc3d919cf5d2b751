"""Statistics of the multi-task study: confidence intervals, descent checks, hypervolume.

A step's update ``d`` (the change of the trunk's parameters, or the gradient handed to the
optimiser) is a *common descent direction* when it lowers no task to first order in the wrong
direction: ``-d . g_i >= 0`` for every task gradient ``g_i`` over the same parameters (for a
gradient handed to the optimiser, ``d . g_i >= 0``). MGDA's min-norm point and UPGrad satisfy
this by construction over the parameters they solve on; MGDA-UB and PAMA work on ``dL_i/dz``
and carry no such guarantee in parameter space, which is what :func:`descent_cosines` lets the
study count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as sps
from torch import Tensor

from paretoopt.pareto import hypervolume

__all__ = [
    "DESCENT_TOL",
    "MeanCI",
    "bootstrap_mean_ci",
    "descent_cosines",
    "flat_grads",
    "hypervolume_per_point",
    "is_common_descent",
]

# Cosines above -DESCENT_TOL count as non-negative: float32 rounding of an exact zero.
DESCENT_TOL = 1e-6


@dataclass(frozen=True)
class MeanCI:
    """A mean with its bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n: int

    def fmt(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95, seed: int = 0
) -> MeanCI:
    """Mean and percentile-bootstrap CI of the mean (``scipy.stats.bootstrap``, 10,000 resamples).

    With one value, or values all equal, the interval collapses to the mean (there is no spread
    to resample).
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"bootstrap_mean_ci: value {int(np.argmin(np.isfinite(x)))} is not finite")
    mean = float(x.mean())
    if x.size == 1 or np.all(x == x[0]):
        return MeanCI(mean, mean, mean, int(x.size))
    res = sps.bootstrap(
        (x,),
        np.mean,
        confidence_level=confidence,
        n_resamples=10_000,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return MeanCI(mean, float(ci.low), float(ci.high), int(x.size))


def flat_grads(loss: Tensor, params: Sequence[Tensor], retain_graph: bool = True) -> Tensor:
    """The gradient of ``loss`` over ``params`` as one flat vector (zeros where unused)."""
    grads = torch.autograd.grad(loss, list(params), retain_graph=retain_graph, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def descent_cosines(direction: Tensor, task_grads: Tensor) -> Tensor:
    """Cosine of the angle between a descent step and each task's gradient ``[n]``.

    ``direction`` is the gradient-like vector the step follows *against* (the combined gradient
    handed to the optimiser, or minus the parameter change); ``task_grads`` is ``[n, d]``. A
    positive cosine means the step lowers that task's loss to first order. A zero vector on
    either side gives 0.
    """
    d = direction.reshape(-1).double()
    g = task_grads.reshape(task_grads.shape[0], -1).double()
    if g.shape[1] != d.shape[0]:
        raise ValueError(f"direction has {d.shape[0]} entries but task_grads are {tuple(g.shape)}")
    norms = g.norm(dim=1) * d.norm()
    dots = g @ d
    return torch.where(norms > 0, dots / norms.clamp_min(1e-300), torch.zeros_like(dots))


def is_common_descent(cosines: Tensor, tol: float = DESCENT_TOL) -> bool:
    """Every task's cosine with the step is non-negative (up to ``tol``)."""
    return bool((cosines >= -tol).all())


def hypervolume_per_point(
    points: np.ndarray, reference: Sequence[float], maximize: bool = True
) -> np.ndarray:
    """Hypervolume of each row alone (one run's final metrics against ``reference``)."""
    p = np.asarray(points, dtype=np.float64)
    return np.array([hypervolume(row[None, :], reference, maximize=maximize) for row in p])
