r"""Per-reward GRPO advantages and their PAMA combination; plain torch, no TRL import.

GRPO scores each of G completions of a prompt with n reward functions. TRL sums the
weighted rewards and normalises the sum within each prompt's group. The PAMA mode keeps
the objectives apart instead:

1. per reward function i, the group-normalised advantage (as TRL normalises the sum),
   :math:`A'_{ij} = (r_{ij} - \bar r_{i,g(j)}) / (\sigma_{i,g(j)} + 10^{-4})` with the
   mean and standard deviation of reward i over the group g(j) of completion j;
2. Noon clipping :math:`A_{ij} = \max(A'_{ij}, 0)`;
3. the closed form of Theorem 1 per sample, :math:`s^*_j = \min_i A_{ij}`
   (He & Maghsudi 2025, arXiv:2508.07768).

Rewards a function did not give (``None`` in TRL, NaN here) are left out of that
function's group statistics and of the minimum; a completion no function scored gets 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from paretoopt import pama_advantages

ScaleRewards = Literal["group", "batch", "none"]
SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")

# TRL adds this to the standard deviation before dividing; kept identical so that the
# per-reward advantages match what TRL would compute for a single reward function.
STD_EPS = 1e-4


def _nanstd(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Bessel-corrected standard deviation that ignores NaN; NaN when fewer than 2 values."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    sq = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True).to(x.dtype)
    var = torch.where(count > 1, sq * count / (count - 1), torch.full_like(sq, float("nan")))
    std = var.sqrt()
    return std if keepdim else std.squeeze(dim)


def grpo_reward_advantages(
    rewards_per_func: Tensor,
    num_generations: int,
    scale_rewards: ScaleRewards = "group",
    eps: float = STD_EPS,
) -> Tensor:
    r"""Group-normalised advantage of each reward function separately.

    Args:
        rewards_per_func: ``[N, n]`` rewards (N completions, consecutive blocks of
            ``num_generations`` share a prompt; n reward functions), NaN where a function
            gave no reward. This is the layout of TRL's ``rewards_per_func``.
        num_generations: completions per prompt, G; N must be a multiple of G.
        scale_rewards: as TRL's ``GRPOConfig.scale_rewards``: ``"group"`` divides by the
            group's standard deviation, ``"batch"`` by the standard deviation of that reward
            over the whole batch, ``"none"`` only subtracts the group mean.
        eps: added to the standard deviation before dividing.

    Returns:
        ``[n, N]`` advantages (objectives first, the layout ``pama_advantages`` takes), NaN
        where the reward was NaN.
    """
    if rewards_per_func.dim() != 2:
        raise ValueError(
            f"rewards_per_func must have shape [N, n]; got shape {tuple(rewards_per_func.shape)}"
        )
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    n_completions, n_funcs = rewards_per_func.shape
    if n_completions % num_generations:
        raise ValueError(
            f"{n_completions} completions do not split into groups of num_generations="
            f"{num_generations}"
        )
    r = rewards_per_func.t().reshape(n_funcs, -1, num_generations)  # [n, prompts, G]
    mean = torch.nanmean(r, dim=2, keepdim=True)
    adv = r - mean
    if scale_rewards == "group":
        if num_generations > 1:
            std = _nanstd(r, dim=2, keepdim=True)
        else:
            std = torch.zeros_like(mean)
        adv = adv / (std + eps)
    elif scale_rewards == "batch":
        flat = rewards_per_func.t()  # [n, N]
        if n_completions > 1:
            std = _nanstd(flat, dim=1, keepdim=True).unsqueeze(2)
        else:
            std = torch.zeros(n_funcs, 1, 1, dtype=r.dtype, device=r.device)
        adv = adv / (std + eps)
    return adv.reshape(n_funcs, n_completions)


def pama_grpo_advantages(reward_advantages: Tensor, noon: bool = True) -> tuple[Tensor, Tensor]:
    r"""PAMA's per-sample advantage from per-reward advantages, NaN-aware.

    With ``noon=True`` (the paper's setting) :math:`s^*_j = \min_i \max(A'_{ij}, 0)`;
    with ``noon=False`` the unclipped closed form
    :math:`s^*_j = \operatorname{relu}(\min_i A'_{ij}) - \operatorname{relu}(-\max_i A'_{ij})`,
    which also pushes down a completion that every reward ranks below its group mean.

    NaN entries (a reward function gave no reward) do not constrain the sample: they are
    replaced by the sample's largest available advantage, which leaves the minimum and the
    maximum over the available objectives, hence :math:`s^*`, unchanged; their weight is
    then set to 0 and the rest renormalised. A sample with no reward at all gets
    :math:`s^* = 0` and zero weights.

    Args:
        reward_advantages: ``[n, N]`` per-reward advantages (NaN allowed).
        noon: Noon clipping before the closed form.

    Returns:
        ``(s_star [N], weights [n, N])``; weights are the convex weights that attain
        ``s_star`` (one-hot on the binding objective, split on ties).
    """
    if reward_advantages.dim() != 2:
        raise ValueError(
            f"reward_advantages must have shape [n, N]; got {tuple(reward_advantages.shape)}"
        )
    missing = torch.isnan(reward_advantages)
    none_scored = missing.all(dim=0)
    neg_inf = torch.full_like(reward_advantages, -torch.inf)
    fill = torch.where(missing, neg_inf, reward_advantages).amax(dim=0, keepdim=True)
    fill = torch.where(none_scored.unsqueeze(0), torch.zeros_like(fill), fill)
    filled = torch.where(missing, fill.expand_as(reward_advantages), reward_advantages)
    s_star, weights = pama_advantages(filled, granularity="sample", noon=noon, return_weights=True)
    weights = weights.masked_fill(missing, 0)
    total = weights.sum(dim=0, keepdim=True)
    weights = torch.where(total > 0, weights / total.clamp_min(1e-30), weights)
    s_star = s_star.masked_fill(none_scored, 0)
    return s_star, weights


def pama_grpo_stats(
    reward_advantages: Tensor,
    s_star: Tensor,
    weights: Tensor,
    noon: bool = True,
    names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Logging summary over the samples with at least one reward.

    Keys (``{i}`` is the objective's entry of ``names``, its index by default):
    ``binding_rate/{i}`` (mean weight of objective i: the share of samples whose
    ``s*`` it sets, ties split), ``advantage/{i}/mean`` (mean of its advantage after Noon
    clipping when ``noon``), ``positive_rate/{i}``, ``conflict_rate`` (samples whose
    available advantages disagree in sign), ``zero_rate`` (samples with ``s* = 0``, i.e. not
    reinforced), ``advantage/mean``.
    """
    missing = torch.isnan(reward_advantages)
    valid = ~missing.all(dim=0)
    count = max(int(valid.sum()), 1)
    clipped = reward_advantages.clamp_min(0) if noon else reward_advantages
    stats: dict[str, float] = {}
    n_obj = reward_advantages.shape[0]
    labels = [str(i) for i in range(n_obj)] if names is None else list(names)
    if len(labels) != n_obj:
        raise ValueError(f"got {len(labels)} names for {n_obj} objectives")
    for i, label in enumerate(labels):
        avail = ~missing[i]
        n_avail = max(int(avail.sum()), 1)
        stats[f"binding_rate/{label}"] = float(weights[i][valid].double().sum()) / count
        stats[f"advantage/{label}/mean"] = float(clipped[i][avail].double().sum()) / n_avail
        stats[f"positive_rate/{label}"] = float((reward_advantages[i][avail] > 0).sum()) / n_avail
    inf = torch.full_like(reward_advantages, torch.inf)
    lo = torch.where(missing, inf, reward_advantages).amin(dim=0)
    hi = torch.where(missing, -inf, reward_advantages).amax(dim=0)
    stats["conflict_rate"] = float(((lo < 0) & (hi > 0) & valid).sum()) / count
    stats["zero_rate"] = float(((s_star == 0) & valid).sum()) / count
    stats["advantage/mean"] = float(s_star[valid].double().sum()) / count
    return stats
