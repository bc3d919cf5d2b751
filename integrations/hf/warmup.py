"""Value heads before the policy: the optional value warm-up and the per-objective value error.

At the start of a run the n value heads are untrained. Their advantages ``A'_i = GAE(r_i, V_i)``
are then mostly the raw return, whose sign for an always-positive reward (a length bonus) is
always positive; later the value can overshoot and flip it. PAMA's closed form reads the
*signs* of the n advantages (``s* = min_i A_i`` under Noon), so a lagging head decides which
objective vetoes a token. The warm-up fits the heads on rollouts of the starting policy before
the first policy update; ``value/error/<name>`` shows how far each head is from its returns.
"""

from __future__ import annotations

from typing import Any

import torch

from .metrics import value_error_metrics
from .update import PPOSetup, dp_loss_scale
from .value_heads import clipped_value_loss, response_forward

__all__ = ["fit_value_heads", "warmup_metrics", "warmup_seed"]

# Seeds of warm-up step k: apart from the training steps' ``seed * 1_000_003 + step * 1_009``.
_WARMUP_SEED_OFFSET = 500_009


def warmup_seed(seed: int, k: int, process_index: int) -> int:
    """The seed of warm-up step ``k`` (1-based) on a process."""
    return seed * 1_000_003 + _WARMUP_SEED_OFFSET + k * 1_009 + process_index


def warmup_metrics(
    k: int,
    scores: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    names: list[str],
    accelerator: Any,
) -> dict[str, float]:
    """Warm-up step ``k``'s metrics (``step`` 0): the mean rewards of its rollout and the
    value heads' errors against its returns, before the fit."""
    metrics: dict[str, float] = {"step": 0.0, "value_warmup_step": float(k)}
    gathered = accelerator.gather(scores.T.float().contiguous())
    for i, name in enumerate(names):
        metrics[f"reward/{name}"] = float(gathered[:, i].mean())
    metrics.update(value_error_metrics(values, returns, mask, names, accelerator.gather))
    return metrics


def fit_value_heads(
    setup: PPOSetup,
    rollout: Any,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    k: int,
) -> float:
    """Warm-up step ``k`` (1-based): ``ppo_epochs`` passes of value-only updates over
    mini-batches of ``rollout`` toward its n ``returns``; the mean value loss.

    The policy is never differentiated: its hidden states are computed without gradients and
    only the value heads' parameters receive ``.grad`` (the optimizer skips parameters without
    one, AdamW's weight decay included). Under data parallelism the heads' gradients are
    averaged by hand, since the DDP wrapper's forward is not used.
    """
    cfg = setup.config
    acc = setup.accelerator
    unwrapped = acc.unwrap_model(setup.model)
    heads = unwrapped.value_heads
    size = rollout.input_ids.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed * 7_919 + _WARMUP_SEED_OFFSET + k)
    total, count = 0.0, 0
    unwrapped.eval()
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(size, generator=gen).to(acc.device)
        for lo in range(0, size, cfg.mini_batch_size):
            idx = order[lo : lo + cfg.mini_batch_size]
            mask = rollout.mask[idx]
            with torch.no_grad(), acc.autocast():
                hidden = response_forward(
                    unwrapped.policy,
                    rollout.input_ids[idx],
                    rollout.attention_mask[idx],
                    rollout.response_start,
                    temperature=cfg.temperature,
                )["hidden"]
            values = heads(hidden)
            vf_loss = clipped_value_loss(
                values, old_values[:, idx], returns[:, idx], mask, cfg.cliprange_value
            )
            loss = cfg.vf_coef * vf_loss * dp_loss_scale(acc, mask)
            acc.backward(loss)
            if acc.num_processes > 1:
                for p in heads.parameters():
                    if p.grad is not None:
                        p.grad = acc.reduce(p.grad, reduction="mean")
            if cfg.max_grad_norm is not None:
                acc.clip_grad_norm_(heads.parameters(), cfg.max_grad_norm)
            setup.optimizer.step()
            setup.optimizer.zero_grad(set_to_none=True)
            total += float(vf_loss.detach())
            count += 1
    return total / max(count, 1)
