"""PAMA in the trainer: the ``s*`` each granularity trains on, and the routes that allow it.

``pama_granularity="batch"`` means one weight vector for the whole rollout batch, over all
processes: the per-objective sums it is solved on are all-reduced, so W processes take the
weights a single process would take on the global batch. The generic combiner route sees one
mini-batch at a time and cannot honour that, so the combination is refused there.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_pama_route", "pama_targets"]


def check_pama_route(combiner: Any, fast_path: bool) -> None:
    """Refuse ``granularity="batch"`` on the generic route (it would be per mini-batch)."""
    from paretoopt import PAMA

    if isinstance(combiner, PAMA) and combiner.granularity == "batch" and not fast_path:
        raise ValueError(
            "PAMA with granularity='batch' needs pama_fast_path=True: the generic combiner "
            "route sees one mini-batch at a time and would solve one weight vector per "
            "mini-batch, not one for the rollout batch; use the fast path, or granularity "
            "'token' or 'sample'"
        )


def pama_targets(
    advantages: torch.Tensor, mask: torch.Tensor, granularity: str, noon: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``s*[B, T]`` and weights ``[n, B, T]`` of PAMA at ``granularity`` (``noon``: the
    closed form on Noon-clipped advantages, the paper's; False: on the signed ones).

    ``"token"`` and ``"sample"`` are local to each sample, so :func:`paretoopt.pama_advantages`
    gives them on any process. ``"batch"`` solves the closed form on each objective's mean
    advantage over the valid tokens of the *global* batch
    (:func:`paretoopt.integrations.distributed.global_pama_batch_advantages`: the same on
    every process; on one process, exactly ``pama_advantages(..., granularity="batch")``).
    """
    from paretoopt.integrations.distributed import global_pama_batch_advantages

    from paretoopt import pama_advantages

    if granularity == "batch":
        return global_pama_batch_advantages(advantages, mask, noon=noon)
    s_star, weights = pama_advantages(
        advantages, mask, granularity=granularity, noon=noon, return_weights=True
    )
    return s_star, weights
