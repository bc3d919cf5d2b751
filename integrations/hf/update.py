"""The PPO update of Algorithm 1: the combiner's policy loss and the value losses, in epochs
over shuffled mini-batches.

:class:`~.batch.RolloutBatch` holds everything the update reads, computed once per step
without gradients. :func:`policy_loss` is the one place where the combiner meets the n per-objective
PPO losses; :func:`ppo_update` is the loop around it.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from .advantages import masked_mean
from .batch import RolloutBatch
from .metrics import PhaseClock
from .models import is_pama
from .value_heads import clipped_value_loss

__all__ = [
    "PPOSetup",
    "RolloutBatch",
    "check_accumulation",
    "dp_loss_scale",
    "micro_batches",
    "policy_loss",
    "ppo_update",
]


@dataclass
class PPOSetup:
    """What the update works with: the config's PPO settings, the model (the policy with its
    value heads, as ``accelerator.prepare`` wrapped it), the trainable policy (for
    ``params=``), the optimizer, the accelerator, the combiner, the objectives' names, whether
    the per-objective losses use Noon and whether PAMA takes its fast path (``s*``)."""

    config: Any
    model: Any
    policy: Any
    optimizer: Any
    accelerator: Any
    combiner: Any
    reward_names: list[str]
    noon: bool
    pama_fast_path: bool

    @property
    def n_objectives(self) -> int:
        return len(self.reward_names)


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _named_key(names: list[str], key: str) -> str:
    """``"loss_weight/1"`` -> ``"loss_weight/<name of objective 1>"``."""
    head, sep, tail = key.rpartition("/")
    if sep and tail.isdigit() and int(tail) < len(names):
        return f"{head}/{names[int(tail)]}"
    return key


def dp_loss_scale(accelerator: Any, mask: torch.Tensor) -> float | torch.Tensor:
    """Under data parallelism, ``W c_r / sum_q c_q`` (c = valid tokens per process).

    Each loss is a mean over this process's tokens and DDP averages gradients
    over processes; the factor makes that average the global token mean, so W
    processes take the single-process step.  Collective: every process runs
    the same number of mini-batches.  1 on one process.
    """
    if accelerator.num_processes == 1:
        return 1.0
    from paretoopt.integrations.distributed import dp_loss_scale as global_scale

    return global_scale(mask).to(torch.float32)


def policy_loss(
    setup: PPOSetup,
    out: dict[str, torch.Tensor],
    batch: RolloutBatch,
    idx: torch.Tensor,
    loss_scale: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
    """The combined policy loss of one mini-batch; its weights [n] and stats.

    PAMA fast path: the PPO surrogate with advantage ``s*`` (one backward).
    MORLHF, GDPO, "pama_ub": the PPO surrogate with the scalarised advantage. Otherwise the n
    per-objective (Noon, per ``setup.noon``) PPO losses go to the combiner,
    with ``shared=`` the last hidden states (MGDA-UB), the per-token ratio
    (generic PAMA), or ``params=`` the trainable policy parameters (exact MGDA).

    ``loss_scale`` replaces the data-parallel factor :func:`dp_loss_scale` (the update passes
    it already multiplied by a micro-batch's share of the mini-batch's tokens).
    """
    from paretoopt.losses import ppo_losses, ppo_losses_from_ratio, ppo_surrogate, ratio

    cfg = setup.config
    combiner = setup.combiner
    mask = batch.mask[idx]
    anchor = (batch.ref_logprobs if cfg.ratio_to == "ref" else batch.logprobs)[idx]
    scale = dp_loss_scale(setup.accelerator, mask) if loss_scale is None else loss_scale
    if setup.pama_fast_path:
        assert batch.s_star is not None
        loss = ppo_surrogate(
            out["logprobs"], anchor, batch.s_star[idx], mask, cliprange=cfg.cliprange
        )
        return loss * scale, None, {}
    if batch.scalar_advantages is not None:
        # MORLHF, GDPO, "pama_ub": the ordinary PPO surrogate on the one scalarised advantage.
        loss = ppo_surrogate(
            out["logprobs"], anchor, batch.scalar_advantages[idx], mask, cliprange=cfg.cliprange
        )
        if batch.scalar_weights is not None:
            weights = batch.scalar_weights.to(torch.float64)
        else:
            weights = torch.tensor(combiner.weights, dtype=torch.float64)
        return loss * scale, weights, {}
    advantages = batch.advantages[:, idx]
    requires = getattr(combiner, "requires", None)
    kwargs: dict[str, Any] = {}
    if is_pama(combiner):
        # Generic PAMA: the per-token ratio u is the shared tensor (DESIGN section 2).
        u = ratio(out["logprobs"], anchor)
        losses = ppo_losses_from_ratio(
            u, advantages, mask, cliprange=cfg.cliprange, noon=setup.noon
        )
        kwargs["shared"] = u
        kwargs["mask"] = mask  # weights and rates over valid tokens, not padding
    else:
        losses = ppo_losses(
            out["logprobs"], anchor, advantages, mask, cliprange=cfg.cliprange, noon=setup.noon
        )
    losses = losses * scale
    if requires == "shared" and "shared" not in kwargs:
        # MGDA-UB: the last hidden states; only response positions get nonzero gradients.
        kwargs["shared"] = out["hidden_full"]
    elif requires == "params":
        kwargs["params"] = [p for p in setup.policy.parameters() if p.requires_grad]
    result = combiner(losses, **kwargs)  # one [n] tensor: the batched backward starts from it
    stats = {
        _named_key(setup.reward_names, k): float(v)
        for k, v in (result.stats or {}).items()
        if _is_number(v) and not k.startswith("weight/")  # weights are logged by name
    }
    stats.update(
        {f"loss/objective/{setup.reward_names[i]}": float(v) for i, v in enumerate(losses.detach())}
    )
    return result.loss, result.weights, stats


def check_accumulation(config: Any, combiner: Any, pama_fast_path: bool) -> None:
    """Refuse micro-batches where they would change the update.

    Accumulation is exact when the policy loss is a token mean whose per-token terms do not
    depend on the rest of the mini-batch: PAMA's fast path (``s*`` fixed before the update),
    fixed weights, PAMA's generic route per token. MGDA's weights (and PAMA's per sample or
    per batch on the generic route) come from the whole mini-batch's gradients.
    """
    mb = config.micro_batch_size
    if mb is None or mb >= config.mini_batch_size or pama_fast_path:
        return
    if getattr(combiner, "requires", None) is None:
        return
    if is_pama(combiner) and getattr(combiner, "granularity", "token") == "token":
        return
    raise ValueError(
        f"micro_batch_size={mb} with {type(combiner).__name__}: its weights depend on the "
        "whole mini-batch's gradients, so accumulating micro-batches would change the update; "
        "lower mini_batch_size instead"
    )


def micro_batches(idx: torch.Tensor, mask: torch.Tensor, size: int | None) -> list[Any]:
    """Split a mini-batch into micro-batches of ``size`` sequences, each with its share of
    the mini-batch's valid tokens, ``c_m / c`` (so that token means add up exactly)."""
    if size is None or size >= idx.numel():
        return [(idx, 1.0)]
    total = float(mask[idx].sum().clamp_min(1))
    return [(part, float(mask[part].sum()) / total) for part in torch.split(idx, size)]


def ppo_update(
    setup: PPOSetup, batch: RolloutBatch, step: int, clock: PhaseClock
) -> dict[str, float]:
    """PPO epochs over shuffled mini-batches; returns averaged loss statistics.

    With ``micro_batch_size``, each mini-batch runs in micro-batches whose losses (token
    means over the micro-batch) are weighted by their share of the mini-batch's tokens, and
    their gradients accumulate before the one optimizer step: the same update as the whole
    mini-batch at once, up to float rounding (tested), with the activations of one
    micro-batch in memory. Under data parallelism only the last micro-batch synchronises.
    """
    cfg = setup.config
    model = setup.model
    acc = setup.accelerator
    model.train()
    size = batch.mask.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
    sums: dict[str, float] = {}
    weight_sum = torch.zeros(setup.n_objectives, dtype=torch.float64)
    n_weighted = n_updates = 0
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(size, generator=gen).to(acc.device)
        for lo in range(0, size, cfg.mini_batch_size):
            mini = order[lo : lo + cfg.mini_batch_size]
            # The data-parallel factor of the whole mini-batch (one collective per mini-batch).
            mini_scale = dp_loss_scale(acc, batch.mask[mini])
            parts = micro_batches(mini, batch.mask, cfg.micro_batch_size)
            stats: dict[str, float] = {}
            weights: torch.Tensor | None = None
            for k, (idx, share) in enumerate(parts):
                last = k == len(parts) - 1
                with nullcontext() if last else acc.no_sync(model):
                    part_stats, part_weights = _micro_step(
                        setup, batch, idx, mini_scale, share, step, clock
                    )
                for key, value in part_stats.items():
                    # Losses carry their share already; means over tokens are weighted by it.
                    w = 1.0 if key.startswith("loss/") else share
                    stats[key] = stats.get(key, 0.0) + w * value
                if part_weights is not None:
                    w_part = part_weights.detach().to("cpu", torch.float64).reshape(-1) * share
                    weights = w_part if weights is None else weights + w_part
            if cfg.max_grad_norm is not None:
                norm = acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                stats["grad_norm"] = float(norm)
            setup.optimizer.step()
            setup.optimizer.zero_grad(set_to_none=True)
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
            if weights is not None:
                weight_sum += weights
                n_weighted += 1
            n_updates += 1
    out_stats = {k: v / n_updates for k, v in sums.items()}
    if not setup.pama_fast_path and batch.scalar_weights is None and n_weighted:
        # Per-batch weights ("pama_ub") are logged exactly by step_metrics instead; a torchjd
        # aggregator without weights (GradDrop, ConFIG, TrimmedMean) logs none.
        mean_w = weight_sum / n_weighted
        for i, name in enumerate(setup.reward_names):
            out_stats[f"weights/{name}"] = float(mean_w[i])
    return out_stats


def _micro_step(
    setup: PPOSetup,
    batch: RolloutBatch,
    idx: torch.Tensor,
    dp_scale: float | torch.Tensor,
    share: float,
    step: int,
    clock: PhaseClock,
) -> tuple[dict[str, float], torch.Tensor | None]:
    """Forward and backward of the sequences ``idx``: their losses times their share of the
    mini-batch's tokens and the data-parallel factor."""
    cfg = setup.config
    scale = dp_scale * share if share != 1.0 else dp_scale
    out = setup.model(
        batch.rollout.input_ids[idx],
        batch.rollout.attention_mask[idx],
        batch.rollout.response_start,
        temperature=cfg.temperature,
        detach_value_input=cfg.detach_value_input,
    )
    with clock.add("combine"):
        pg_loss, weights, stats = policy_loss(setup, out, batch, idx, loss_scale=scale)
    mask = batch.mask[idx]
    vf_loss = clipped_value_loss(
        out["values"],
        batch.values[:, idx],
        batch.returns[:, idx],
        mask,
        cfg.cliprange_value,
    )
    loss = pg_loss + cfg.vf_coef * vf_loss * scale
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite loss at step {step} (policy {float(pg_loss)}, value {float(vf_loss)})"
        )
    setup.accelerator.backward(loss)
    with torch.no_grad():
        anchor = (batch.ref_logprobs if cfg.ratio_to == "ref" else batch.logprobs)[idx]
        ratio = torch.exp(out["logprobs"].detach() - anchor)
        clipped = ((ratio - 1.0).abs() > cfg.cliprange).to(ratio.dtype)
        stats["policy/ratio_mean"] = float(masked_mean(ratio, mask))
        stats["policy/clipfrac"] = float(masked_mean(clipped, mask))
    stats["loss/policy"] = float(pg_loss.detach())
    stats["loss/value"] = float(vf_loss.detach()) * share
    stats["loss/total"] = float(loss.detach())
    return stats, weights
