"""What one training step of each method costs on the digits model, as ratios to linear.

One step is the whole update a user pays for: forward, the method's backward(s) into ``.grad``,
Adam's step. Steps of all methods are interleaved in a random order per round, so load on a
shared machine hits all of them alike; the ratio reported is the median over rounds of
``time(method) / time(linear)`` within the round. Peak memory is the allocator's peak above what
was live before the step (parameters, Adam state, the batch), read from ``torch.profiler``'s
allocation events on the CPU (:func:`paretoopt.integrations.bench.lib.peak_allocated_bytes`;
the study runs on the CPU even where a GPU is present).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ..bench.lib import peak_allocated_bytes
from .digits import SharedTrunk, load_data, task_losses
from .methods import METHODS, apply_method, make_method

__all__ = ["measure_costs"]


def _stepper(method: str, hidden: int, width: int, batch: int, seed: int) -> Callable[[], None]:
    data = load_data(seed)
    torch.manual_seed(seed)
    model = SharedTrunk(hidden, width)
    trunk = list(model.trunk.parameters())
    heads = [list(h.parameters()) for h in model.heads]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rule = make_method(method)
    x, y = data.x_train[:batch], data.y_train[:batch]

    def step() -> None:
        opt.zero_grad()
        z, losses = task_losses(model, x, y)
        apply_method(rule, losses, shared=z, trunk=trunk, heads=heads)
        opt.step()

    return step


def measure_costs(
    sizes: tuple[tuple[int, int], ...] = ((32, 8), (512, 64)),
    methods: tuple[str, ...] = METHODS,
    rounds: int = 30,
    batch: int = 64,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per trunk size ``(hidden, width)``: median seconds per step, ratio to linear, peak bytes."""
    if "linear" not in methods:
        raise ValueError("the cost table is relative to 'linear': include it in methods")
    rng = random.Random(seed)
    out = []
    for hidden, width in sizes:
        steppers = {m: _stepper(m, hidden, width, batch, seed) for m in methods}
        for fn in steppers.values():  # warm-up: allocation, first kernel choices
            fn()
        samples: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(rounds):
            order = list(methods)
            rng.shuffle(order)
            for m in order:
                t0 = time.perf_counter()
                steppers[m]()
                samples[m].append(time.perf_counter() - t0)
        peaks = {m: peak_allocated_bytes(steppers[m]) for m in methods}
        base = samples["linear"]
        n_trunk = 64 * hidden + hidden + hidden * width + width
        out.append(
            {
                "hidden": hidden,
                "width": width,
                "trunk_params": n_trunk,
                "batch": batch,
                "rounds": rounds,
                "median_s": {m: statistics.median(v) for m, v in samples.items()},
                "time_ratio": {
                    m: statistics.median(a / b for a, b in zip(v, base, strict=True))
                    for m, v in samples.items()
                },
                "peak_bytes": peaks,
                "memory_ratio": {m: peaks[m] / max(peaks["linear"], 1) for m in methods},
            }
        )
    return out
