"""The shared-trunk training loop with each combiner: copy this pattern into your own code.

``python -m paretoopt.integrations.mtl.example`` (needs torch only). One trunk, two heads, two
regression tasks that share some structure and conflict on the rest; every step::

    z = trunk(x)                                          # the shared representation
    losses = [loss_fn(head(z), y) for head, y in zip(heads, targets)]
    optimizer.zero_grad()
    combine_and_backward(losses, combiner, shared=z,      # PAMA / MGDA-UB use z,
                         params=trunk.parameters(),       # exact MGDA the trunk's parameters
                         heads=[h.parameters() for h in heads])
    optimizer.step()

The combiner decides the trunk's gradient; head ``i`` gets the plain gradient of its own loss
(``w_i`` times it for :class:`~paretoopt.LinearScalarization`, the plain weighted sum). What each
combiner does to the trunk:

* ``LinearScalarization()``: ``sum_i L_i / n``; cheapest, one backward.
* ``MGDA(mode="shared")`` (MGDA-UB): the min-norm point of the ``dL_i/dz``; n cheap
  vector-Jacobian products to ``z``, then one backward.
* ``MGDA(mode="params")``: the min-norm point of the full trunk gradients, a common descent
  direction for every task; n backward passes through the trunk and an n x d Gram matrix.
* ``PAMA()``: per element of ``z``, move it only where every task agrees on the direction, by
  the smallest amount any task asks for (zero where they disagree); n cheap VJPs to ``z``, one
  backward. Outside RL this is a heuristic, not MGDA's min-norm point, and it is not guaranteed
  to lower every task (docs/multitask.md measures how often it does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from paretoopt import MGDA, PAMA, Combiner, LinearScalarization, combine_and_backward

__all__ = ["make_combiners", "make_task", "run_example", "train"]


def make_combiners() -> dict[str, Combiner]:
    """One fresh combiner of each kind, by name."""
    return {
        "linear": LinearScalarization(),
        "mgda_ub": MGDA(mode="shared", normalization="l2"),
        "mgda": MGDA(mode="params"),
        "pama": PAMA(),
    }


def make_task(seed: int = 0, n: int = 256, d: int = 6) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Inputs and two targets: a shared non-linear part plus a task-specific one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    shared = torch.tanh(x[:, 0] - x[:, 1])
    y1 = shared + 0.5 * torch.sin(2 * x[:, 2])
    y2 = shared - 0.5 * x[:, 3] * x[:, 4]
    return x, [y1, y2]


def train(
    combiner: Combiner, steps: int = 150, seed: int = 0, lr: float = 0.02
) -> tuple[list[float], list[float]]:
    """Train a fresh two-head model with ``combiner``; return the first and last task losses."""
    x, targets = make_task(seed)
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(x.shape[1], 32), nn.Tanh(), nn.Linear(32, 8), nn.Tanh())
    heads = nn.ModuleList([nn.Linear(8, 1) for _ in targets])
    optimizer = torch.optim.Adam([*trunk.parameters(), *heads.parameters()], lr=lr)
    first: list[float] = []
    last: list[float] = []
    for _ in range(steps):
        z = trunk(x)
        losses = [((head(z)[:, 0] - y) ** 2).mean() for head, y in zip(heads, targets, strict=True)]
        optimizer.zero_grad()
        combine_and_backward(
            losses,
            combiner,
            shared=z,
            params=trunk.parameters(),
            heads=[h.parameters() for h in heads],
        )
        optimizer.step()
        last = [float(v.detach()) for v in losses]
        first = first or last
    return first, last


def run_example(
    steps: int = 150, seed: int = 0, out: Callable[[str], None] = print
) -> dict[str, dict[str, list[float]]]:
    """Train with each combiner; print and return first and last losses per task."""
    results = {}
    out(f"{'combiner':<10}{'task 1: first -> last':>24}{'task 2: first -> last':>24}")
    for name, combiner in make_combiners().items():
        first, last = train(combiner, steps=steps, seed=seed)
        results[name] = {"first": first, "last": last}
        cells = "".join(f"{a:>12.4f} -> {b:<8.4f}" for a, b in zip(first, last, strict=True))
        out(f"{name:<10}{cells}")
    return results


if __name__ == "__main__":
    run_example()
