"""Value heads before the policy: the optional value warm-up and the per-objective value error.

At the start of a run the n value heads are untrained. Their advantages ``A'_i = GAE(r_i, V_i)``
are then mostly the raw return, whose sign for an always-positive reward (a length bonus) is
always positive; later the value can overshoot and flip it. PAMA's closed form reads the
*signs* of the n advantages (``s* = min_i A_i`` under Noon), so a lagging head decides which
objective vetoes a token. The warm-up fits the heads on rollouts of the starting policy before
the first policy update; ``value/error/<name>`` shows how far each head is from its returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .metrics import PhaseClock, value_error_metrics
from .value_heads import clipped_value_loss, response_forward

if TYPE_CHECKING:
    from .trainer import MOPPOTrainer

__all__ = ["run_value_warmup", "value_warmup_step"]

# Seeds of warm-up step k: apart from the training steps' ``seed * 1_000_003 + step * 1_009``.
_WARMUP_SEED_OFFSET = 500_009


def value_warmup_step(trainer: MOPPOTrainer, k: int) -> dict[str, float]:
    """Warm-up step ``k`` (1-based): a rollout of the current (starting) policy, its n
    returns, then ``ppo_epochs`` passes of value-only updates over mini-batches.

    The policy is never differentiated: its hidden states are computed without gradients and
    only the value heads' parameters receive ``.grad`` (the optimizer skips parameters without
    one, AdamW's weight decay included). Under data parallelism the heads' gradients are
    averaged by hand, since the DDP wrapper's forward is not used.
    """
    from accelerate.utils import set_seed

    cfg = trainer.config
    acc = trainer.accelerator
    set_seed(cfg.seed * 1_000_003 + _WARMUP_SEED_OFFSET + k * 1_009 + acc.process_index)
    clock = PhaseClock(trainer.device)
    with clock.phase("step"):
        rollout = trainer.rollout(trainer.sample_prompts(k))
        scores = trainer.score(rollout, step=0)
        with torch.no_grad():
            fwd = trainer.forward_rollout(rollout)
            rewards, _ = trainer.kl_penalized_rewards(scores, fwd, rollout.mask)
            _, returns = trainer.per_objective_gae(rewards, fwd["values"], rollout.mask)
        metrics: dict[str, float] = {"step": 0.0, "value_warmup_step": float(k)}
        gathered = acc.gather(scores.T.float().contiguous())
        for i, name in enumerate(trainer.reward_names):
            metrics[f"reward/{name}"] = float(gathered[:, i].mean())
        metrics.update(
            value_error_metrics(
                fwd["values"], returns, rollout.mask, trainer.reward_names, acc.gather
            )
        )
        metrics["loss/value"] = _fit_values(trainer, rollout, fwd["values"], returns, k)
    metrics.update(clock.timings)
    return metrics


def _fit_values(
    trainer: MOPPOTrainer,
    rollout: object,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    k: int,
) -> float:
    from .update import dp_loss_scale

    cfg = trainer.config
    acc = trainer.accelerator
    unwrapped = trainer.unwrapped
    heads = unwrapped.value_heads
    size = rollout.input_ids.shape[0]  # type: ignore[attr-defined]
    gen = torch.Generator().manual_seed(cfg.seed * 7_919 + _WARMUP_SEED_OFFSET + k)
    total, count = 0.0, 0
    unwrapped.eval()
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(size, generator=gen).to(trainer.device)
        for lo in range(0, size, cfg.mini_batch_size):
            idx = order[lo : lo + cfg.mini_batch_size]
            mask = rollout.mask[idx]  # type: ignore[attr-defined]
            with torch.no_grad(), acc.autocast():
                hidden = response_forward(
                    unwrapped.policy,
                    rollout.input_ids[idx],  # type: ignore[attr-defined]
                    rollout.attention_mask[idx],  # type: ignore[attr-defined]
                    rollout.response_start,  # type: ignore[attr-defined]
                    temperature=cfg.temperature,
                )["hidden"]
            values = heads(hidden)
            vf_loss = clipped_value_loss(
                values, old_values[:, idx], returns[:, idx], mask, cfg.cliprange_value
            )
            loss = cfg.vf_coef * vf_loss * dp_loss_scale(trainer, mask)
            acc.backward(loss)
            if acc.num_processes > 1:
                for p in heads.parameters():
                    if p.grad is not None:
                        p.grad = acc.reduce(p.grad, reduction="mean")
            if cfg.max_grad_norm is not None:
                acc.clip_grad_norm_(heads.parameters(), cfg.max_grad_norm)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            total += float(vf_loss.detach())
            count += 1
    return total / max(count, 1)


def run_value_warmup(trainer: MOPPOTrainer) -> None:
    """The warm-up steps still due: only before the first policy update, resumable."""
    cfg = trainer.config
    if trainer.global_step > 0:
        return  # a run resumed after its first policy update never warms up again
    while trainer.value_warmup_step < cfg.value_warmup_steps:
        k = trainer.value_warmup_step + 1
        metrics = value_warmup_step(trainer, k)
        trainer.value_warmup_step = k
        trainer.log_value_warmup(metrics)
