"""The per-objective numbers :class:`~.multi_objective.MultiObjectiveTrainer` adds to the
Trainer's logs: each objective's loss and weight, the combiner's statistics, and their means
over the steps since the last log and over every process."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..distributed import all_reduce_sum, is_distributed

__all__ = ["accumulate", "global_means", "objective_values"]


def objective_values(
    names: list[str],
    losses: list[Tensor],
    weights: Tensor | None,
    stats: Mapping[str, Any] | None,
    prefix: str,
) -> dict[str, float]:
    """``loss/<name>``, ``weight/<name>`` (a torchjd aggregator may have no weights) and, when
    ``stats`` are given, the combiner's statistics under ``<prefix>/`` with objective indices
    replaced by names."""
    values: dict[str, float] = {}
    for i, name in enumerate(names):
        values[f"loss/{name}"] = float(losses[i].detach())
        if weights is not None:
            values[f"weight/{name}"] = float(weights[i])
    for key, value in (stats or {}).items():
        head, _, tail = key.partition("/")
        if head == "weight" or isinstance(value, str):
            continue  # logged by name above; a name (the torchjd method) is no metric
        if tail.isdigit():
            key = f"{head}/{names[int(tail)]}"
        values[f"{prefix}/{key}"] = float(value)
    return values


def accumulate(sums: dict[str, float], counts: dict[str, float], values: dict[str, float]) -> None:
    """Add ``values`` to running sums and counts."""
    for key, value in values.items():
        sums[key] = sums.get(key, 0.0) + value
        counts[key] = counts.get(key, 0.0) + 1.0


def global_means(sums: dict[str, float], counts: dict[str, float], device: Any) -> dict[str, float]:
    """``sum / count`` per key, over every process. Each process must call it (it is
    collective), also one that recorded nothing (it adds zero sums and zero counts): the
    keys are first gathered from all processes, so that every one reduces the same list."""
    keys = sorted(sums)
    if is_distributed():
        import torch.distributed as dist

        gathered: list[list[str] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, keys)
        keys = sorted({k for part in gathered for k in part or []})
    if not keys:
        return {}
    vec = torch.tensor(
        [[sums.get(k, 0.0) for k in keys], [counts.get(k, 0.0) for k in keys]],
        dtype=torch.float64,
    )
    if is_distributed():
        vec = all_reduce_sum(vec.to(device)).cpu()
    means = (vec[0] / vec[1]).tolist()  # 0/0 = nan where no process recorded the key
    return {k: float(v) for k, v in zip(keys, means, strict=True) if math.isfinite(v)}
