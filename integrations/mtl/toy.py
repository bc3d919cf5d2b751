r"""The two-objective toy problem of CAGrad (Liu et al. 2021) and Nash-MTL (Navon et al. 2022).

Two losses of a point :math:`x = (x_1, x_2) \in \mathbb{R}^2`, as the papers define them:

.. math::

    L_1(x) = c_1(x) f_1(x) + c_2(x) g_1(x), \qquad L_2(x) = c_1(x) f_2(x) + c_2(x) g_2(x)

    f_1 = \log\max(|0.5(-x_1 - 7) - \tanh(-x_2)|, 5\cdot10^{-6}) + 6

    f_2 = \log\max(|0.5(-x_1 + 3) + \tanh(-x_2) + 2|, 5\cdot10^{-6}) + 6

    g_1 = ((-x_1 + 7)^2 + 0.1 (-x_2 - 8)^2) / 10 - 20, \quad
    g_2 = ((-x_1 - 7)^2 + 0.1 (-x_2 - 8)^2) / 10 - 20

    c_1 = \max(\tanh(x_2 / 2), 0), \qquad c_2 = \max(\tanh(-x_2 / 2), 0)

The Pareto set is (nearly) the segment :math:`x_1 \in [-7, 7]` at :math:`x_2 \approx -8.36`;
its ends are each task's own minimum and the front in loss space is non-convex, so a fixed
weighting tends to slide to one end. Starting points: the three of the CAGrad paper,
(-8.5, 7.5), (-8.5, -5), (9, 9), and two added here, (0, 0) and (9, -1). The CAGrad paper runs
Adam with lr 1e-3 for 1e5 steps; the comparison of all methods here runs Adam with lr 1e-2
(:data:`TOY_LR`) for fewer steps, which is affordable on 2 cores but is *not* the same dynamics:
the log terms carve narrow valleys that Adam's small steps follow and its larger steps jump
out of. :func:`run_batched` runs linear scalarization and PAMA at the paper's step for many
steps cheaply (see there), so the study shows both.

The "shared tensor" of PAMA and MGDA-UB is the point ``x`` itself, so on this problem MGDA-UB
with normalisation ``none`` would equal exact MGDA; MGDA-UB is run with l2 normalisation, as in
the rest of the study.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from paretoopt.pareto import pareto_mask

from .methods import METHODS, apply_method, make_method
from .stats import descent_cosines, is_common_descent

__all__ = [
    "PAPER_STARTS",
    "STARTS",
    "TOY_LR",
    "ToyRun",
    "pareto_set",
    "run_batched",
    "run_toy",
    "toy_losses",
]

_FLOOR = 5e-6
PAPER_STARTS: tuple[tuple[float, float], ...] = ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0))
STARTS: tuple[tuple[float, float], ...] = (*PAPER_STARTS, (0.0, 0.0), (9.0, -1.0))
TOY_LR = 0.01
PARETO_X2 = -8.3552  # where the papers draw the Pareto set; pareto_set() recomputes it


def toy_losses(x: Tensor) -> Tensor:
    """``[..., 2]`` losses of points ``x[..., 2]`` (differentiable)."""
    x1, x2 = x[..., 0], x[..., 1]
    f1 = torch.log(torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), min=_FLOOR)) + 6
    f2 = torch.log(torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), min=_FLOOR)) + 6
    g1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    g2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c1 = torch.clamp(torch.tanh(x2 / 2), min=0)
    c2 = torch.clamp(torch.tanh(-x2 / 2), min=0)
    return torch.stack([c1 * f1 + c2 * g1, c1 * f2 + c2 * g2], dim=-1)


def pareto_set(n1: int = 151, n2: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """Non-dominated points of a grid over the region holding the Pareto set.

    Returns ``(x [m, 2], losses [m, 2])`` sorted by ``x_1``: a numerical trace of the Pareto
    set (grid step 0.1 in both coordinates over [-7.5, 7.5] x [-9, -7]) and of the front. At a
    given ``x_1`` a few neighbouring ``x_2`` can all be non-dominated (the set is a thin band
    at this resolution).
    """
    a = torch.linspace(-7.5, 7.5, n1, dtype=torch.float64)
    b = torch.linspace(-9.0, -7.0, n2, dtype=torch.float64)
    grid = torch.cartesian_prod(a, b)
    vals = toy_losses(grid).numpy()
    keep = pareto_mask(vals, maximize=False)
    xs, fs = grid.numpy()[keep], vals[keep]
    order = np.lexsort((xs[:, 1], xs[:, 0]))
    return xs[order], fs[order]


@dataclass
class ToyRun:
    """One trajectory: points ``[steps + 1, 2]``, losses ``[steps + 1, 2]``, descent record."""

    method: str
    start: tuple[float, float]
    points: np.ndarray
    losses: np.ndarray
    common_descent: list[bool] = field(default_factory=list)

    @property
    def final(self) -> np.ndarray:
        return self.points[-1]

    @property
    def descent_rate(self) -> float:
        return float(np.mean(self.common_descent)) if self.common_descent else float("nan")


def _trajectory(method: str, start: tuple[float, float], steps: int, lr: float) -> ToyRun:
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr)
    rule = make_method(method)
    points = [x.detach().numpy().copy()]
    values = []
    descent = []
    for _ in range(steps):
        losses = toy_losses(x)
        values.append(losses.detach().numpy().copy())
        task_grads = torch.stack(
            [torch.autograd.grad(losses[i], x, retain_graph=True)[0] for i in range(2)]
        )
        opt.zero_grad()
        apply_method(rule, [losses[0], losses[1]], shared=x, trunk=[x])
        assert x.grad is not None
        # The direction the combiner hands to the optimiser: does it lower both losses?
        descent.append(is_common_descent(descent_cosines(x.grad, task_grads)))
        opt.step()
        points.append(x.detach().numpy().copy())
    values.append(toy_losses(x).detach().numpy().copy())
    return ToyRun(method, start, np.array(points), np.array(values), descent)


def run_toy(
    methods: tuple[str, ...] = METHODS,
    starts: tuple[tuple[float, float], ...] = STARTS,
    steps: int = 3000,
    lr: float = TOY_LR,
) -> list[ToyRun]:
    """Adam trajectories of every method from every start (float64 throughout)."""
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {METHODS}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [_trajectory(m, s, steps, lr) for m in methods for s in starts]


BATCHABLE: tuple[str, ...] = ("linear", "pama")


def run_batched(
    method: str,
    starts: tuple[tuple[float, float], ...] = STARTS,
    steps: int = 30000,
    lr: float = 1e-3,
    record_every: int = 100,
) -> np.ndarray:
    """All starts in one ``[K, 2]`` tensor: trajectories ``[steps // record_every + 1, K, 2]``.

    Exact, not an approximation, for the two methods that act element by element: with the
    summed losses ``L_i = sum_k L_i(x_k)``, element ``x_k`` only sees the gradients of its own
    start (``dL_i/dx_k = grad L_i(x_k)``); linear scalarization and PAMA's closed form combine
    them per element, and Adam scales each element on its own. MGDA's Gram matrix would couple
    the starts, so MGDA and the torchjd aggregators run one start at a time (:func:`run_toy`).
    """
    if method not in BATCHABLE:
        raise ValueError(f"run_batched supports {BATCHABLE} (element-wise rules), got {method!r}")
    x = torch.tensor(starts, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr)
    rule = make_method(method)
    out = [x.detach().numpy().copy()]
    for t in range(steps):
        losses = toy_losses(x).sum(0)
        opt.zero_grad()
        apply_method(rule, [losses[0], losses[1]], shared=x, trunk=[x])
        opt.step()
        if (t + 1) % record_every == 0 or t + 1 == steps:
            out.append(x.detach().numpy().copy())
    return np.array(out)
