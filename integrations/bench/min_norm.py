"""Suite 3 (``min_norm``): min-norm solvers on the same Gram matrices.

:func:`paretoopt.min_norm_weights` (``exact`` = Wolfe's active-set method, ``frank_wolfe``,
``projected_gradient``) against torchjd's ``MGDAWeighting`` (Frank-Wolfe of Sener & Koltun,
defaults ``epsilon=1e-3`` on the step size, ``max_iters=100``), which takes a Gramian.

Gram matrices ``G = J J^T`` from seeded ``J`` of three families:

* ``general``: ``J`` is ``n x 2n`` Gaussian (full rank, 0 outside the hull: interior optimum);
* ``low_rank``: rank ``max(1, n // 4)`` (degenerate, many optimal weightings);
* ``shared_direction``: a common direction plus noise, the typical multi-task case where the
  min-norm point is far from 0 and only a few objectives bind.

Accuracy per solver: the KKT residual (:func:`paretoopt.kkt_residual`, scale-free) and the
gap of the objective :math:`c^T G c` to the exact optimum, relative to :math:`\\max_i G_{ii}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from paretoopt import kkt_residual, min_norm_weights

from .lib import Profile, run_interleaved

FAMILIES = ("general", "low_rank", "shared_direction")


def bench_cases(profile: Profile) -> list[tuple[int, str]]:
    return [(n, fam) for n in profile.mn_n for fam in FAMILIES]


def case_id(case: tuple[int, str]) -> str:
    return f"n{case[0]}-{case[1]}"


def sample_gram(n: int, family: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 7919 + n)
    d = 2 * n
    if family == "general":
        jac = torch.randn(n, d, generator=gen, dtype=torch.float64)
    elif family == "low_rank":
        r = max(1, n // 4)
        jac = torch.randn(n, r, generator=gen, dtype=torch.float64) @ torch.randn(
            r, d, generator=gen, dtype=torch.float64
        )
    elif family == "shared_direction":
        common = torch.randn(1, d, generator=gen, dtype=torch.float64)
        jac = common + 0.5 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    else:
        raise ValueError(family)
    return jac @ jac.T


def solvers() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    from torchjd.aggregation import MGDAWeighting

    torchjd_weighting = MGDAWeighting()
    return {
        "exact": lambda g: min_norm_weights(g, method="exact").weights,
        "frank_wolfe": lambda g: min_norm_weights(g, method="frank_wolfe").weights,
        "projected_gradient": lambda g: min_norm_weights(g, method="projected_gradient").weights,
        "torchjd_mgda": lambda g: torchjd_weighting(g),
    }


def measure(
    case: tuple[int, str], profile: Profile, benchmark: Any | None = None
) -> dict[str, Any]:
    """Accuracy of every solver on the case's Gram matrices, then their times, same rounds."""
    n, family = case
    grams = [sample_gram(n, family, s) for s in range(profile.mn_seeds)]
    fns = solvers()

    # Accuracy, outside the timed rounds: every solver on every Gram matrix of the case.
    kkt: dict[str, float] = {k: 0.0 for k in fns}
    gap: dict[str, float] = {k: 0.0 for k in fns}
    for g in grams:
        scale = float(g.diagonal().max())
        w_exact = fns["exact"](g)
        v_exact = float(w_exact @ g @ w_exact)
        for k, fn in fns.items():
            w = fn(g).double()
            kkt[k] = max(kkt[k], kkt_residual(g, w))
            gap[k] = max(gap[k], (float(w @ g @ w) - v_exact) / scale)

    # Timing: one variant = solving all the case's Gram matrices once.
    variants = {k: (lambda fn=fn: [fn(g) for g in grams]) for k, fn in fns.items()}
    # The exact solver certifies itself: KKT conditions are sufficient for this convex QP.
    if not kkt["exact"] < 1e-9:
        raise RuntimeError(f"min_norm {case_id(case)}: exact solver's KKT residual {kkt}")
    info: dict[str, Any] = {
        "suite": "min_norm",
        "n": n,
        "family": family,
        "grams": len(grams),
        "kkt_residual_max": kkt,
        "gap_max": gap,
    }
    info.update(
        run_interleaved(
            variants,
            profile.rounds,
            baseline="torchjd_mgda",
            target_s=profile.target_s,
            benchmark=benchmark,
        )
    )
    return info
