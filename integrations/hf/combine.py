"""Step 7 of the algorithm: the n advantages into what the update trains on.

Normalisation, the Noon clip ``A = max(A', 0)`` and, per combiner, PAMA's closed form ``s*``,
the scalarised advantage of MORLHF and GDPO, or "pama_ub"'s min-norm combination; the result
is the step's :class:`~.batch.RolloutBatch`.
"""

from __future__ import annotations

from typing import Any

import torch

from .advantages import MinNormAdvantages, normalize_advantages, scalarize_advantages
from .batch import RolloutBatch
from .metrics import PhaseClock
from .models import is_pama
from .pama import pama_targets
from .rollout import Rollout

__all__ = ["combine_advantages"]


def combine_advantages(
    rollout: Rollout,
    scores: torch.Tensor,
    fwd: dict[str, torch.Tensor],
    raw: torch.Tensor,
    returns: torch.Tensor,
    kl: torch.Tensor,
    *,
    config: Any,
    combiner: Any,
    accelerator: Any,
    noon: bool,
    scalarized: bool,
    pama_fast_path: bool,
    clock: PhaseClock | None = None,
) -> RolloutBatch:
    """Normalisation, Noon clip and, for PAMA's fast path, the closed form ``s*``; for
    MORLHF and GDPO (``scalarized``) the scalarised advantage, for "pama_ub" the min-norm
    combination. ``fwd``: the rollout's log-probs and values; ``raw``, ``returns``: GAE's."""
    from paretoopt import noon_clip, pama_stats

    cfg = config
    mask = rollout.mask
    gather = accelerator.gather
    normalized = normalize_advantages(raw, mask, cfg.advantage_normalization, gather=gather)
    advantages = (noon_clip(normalized) if noon else normalized) * mask.unsqueeze(0)
    extra: dict[str, Any] = {}
    if scalarized:
        # GDPO: each objective whitened on its own first (decoupled normalisation).
        per_objective = (
            normalize_advantages(raw, mask, "whiten", gather=gather)
            if cfg.combiner == "gdpo"
            else raw
        )
        extra["scalar_advantages"] = scalarize_advantages(
            per_objective,
            combiner.weights,
            mask,
            cfg.advantage_normalization,
            gather=gather,
        )
    if isinstance(combiner, MinNormAdvantages):
        # MGDA-UB at the ratio: the min-norm point of the (normalised, Noon-clipped)
        # advantage vectors of the global batch, then one standard PPO surrogate.
        with (clock or PhaseClock(accelerator.device)).add("combine"):
            scalar, weights, value = combiner(advantages, mask, gather=gather)
        extra.update(
            scalar_advantages=scalar,
            scalar_weights=weights,
            combine_stats={"pama_ub/min_norm": value},
        )
    if is_pama(combiner):
        with (clock or PhaseClock(accelerator.device)).add("combine"):
            granularity = getattr(combiner, "granularity", cfg.pama_granularity)
            s_star, weights = pama_targets(advantages, mask, granularity, noon=noon)
        # Diagnostics of the s* trained on; conflict from the normalised, unclipped signs.
        extra["pama_stats"] = pama_stats(normalized, mask, noon=noon, weights=weights)
        if pama_fast_path:
            extra.update(s_star=s_star, pama_weights=weights)
    return RolloutBatch(
        rollout,
        scores,
        logprobs=fwd["logprobs"],
        ref_logprobs=fwd["ref_logprobs"],
        values=fwd["values"],
        returns=returns,
        advantages=advantages,
        raw_advantages=raw,
        kl=kl,
        **extra,
    )
