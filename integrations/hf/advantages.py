"""Rewards with the KL penalty, per-objective GAE, normalisation, adaptive KL.

Shapes: ``n`` objectives, ``B`` responses, ``T`` response tokens;
``mask[B, T]`` is 1 on response tokens up to and including the first EOS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = [
    "AdaptiveKLController",
    "MinNormAdvantages",
    "advantage_gram",
    "discounted_cumsum",
    "gae",
    "kl_penalized_rewards",
    "masked_mean",
    "min_norm_advantages",
    "normalize_advantages",
    "scalarize_advantages",
]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    maskf = mask.to(x.dtype)
    return (x * maskf).sum() / maskf.sum().clamp_min(1.0)


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``r_it = -kl_coef * (logp_t - logp_ref_t) + 1[t = last] * score_i``.

    The same per-token KL penalty is added to every objective's reward (so each
    value head learns a KL-regularised return).  Returns ``rewards[n, B, T]``
    and the per-token KL estimate ``kl[B, T]`` (zero outside the mask).
    """
    maskf = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * maskf
    rewards = (-kl_coef * kl).unsqueeze(0).repeat(scores.shape[0], 1, 1)
    last = (mask.long().sum(dim=1) - 1).clamp_min(0)  # index of each response's last token
    batch = torch.arange(mask.shape[0], device=mask.device)
    rewards[:, batch, last] += scores.to(rewards.dtype)
    return rewards, kl


def discounted_cumsum(x: torch.Tensor, discount: float) -> torch.Tensor:
    """``y_t = sum_{s >= t} discount^(s-t) x_s`` along the last dim, as one matmul.

    An upper-triangular ``[T, T]`` matrix of powers replaces the backward Python
    loop over tokens; T is the response length, so T^2 stays small.
    """
    length = x.shape[-1]
    idx = torch.arange(length, device=x.device)
    gap = (idx.unsqueeze(0) - idx.unsqueeze(1)).to(torch.float64)  # gap[t, s] = s - t
    weights = torch.where(
        gap >= 0, torch.tensor(discount, dtype=torch.float64) ** gap.clamp_min(0), 0
    )
    return (x.to(torch.float64) @ weights.T).to(x.dtype)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation per objective (Schulman et al. 2016).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (``V_{t+1} = 0`` after the last
    token), ``A'_t = sum_l (gamma * lam)^l delta_{t+l}``, ``R_t = A'_t + V_t``.
    Inputs and outputs ``[n, B, T]``; zero outside the mask.
    """
    maskf = mask.to(values.dtype)
    values = values * maskf
    next_values = torch.zeros_like(values)
    next_values[..., :-1] = values[..., 1:]
    deltas = (rewards + gamma * next_values - values) * maskf
    advantages = discounted_cumsum(deltas, gamma * lam) * maskf
    returns = (advantages + values) * maskf
    return advantages, returns


def normalize_advantages(
    advantages: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Per-objective normalisation over valid tokens of *all* processes.

    ``gather`` is ``accelerator.gather`` (concatenates along dim 0 across
    processes); the sums, sums of squares and counts are gathered so every
    process uses the same statistics.  ``mode``: "none" | "scale" (divide by
    the std; keeps each sign, so Noon clipping selects the same tokens) |
    "whiten" (subtract the mean, divide by the std).
    """
    if mode == "none":
        return advantages
    maskf = mask.to(torch.float64).unsqueeze(0)
    a = advantages.to(torch.float64)
    local = torch.stack(
        [
            (a * maskf).sum(dim=(1, 2)),
            (a * a * maskf).sum(dim=(1, 2)),
            maskf.sum(dim=(1, 2)).expand(a.shape[0]),
        ],
        dim=1,
    )  # [n, 3]
    total = gather(local.unsqueeze(0)).sum(dim=0) if gather is not None else local
    count = total[:, 2].clamp_min(1.0)
    mean = total[:, 0] / count
    var = (total[:, 1] / count - mean**2).clamp_min(0.0)
    # Bessel's correction, as a sample std over the tokens.
    std = (var * count / (count - 1).clamp_min(1.0)).sqrt()
    mean = mean.view(-1, 1, 1)
    std = std.view(-1, 1, 1)
    if mode == "scale":
        out = a / (std + eps)
    elif mode == "whiten":
        out = (a - mean) / (std + eps)
    else:
        raise ValueError(f"unknown advantage normalisation {mode!r}")
    return (out * maskf).to(advantages.dtype)


def scalarize_advantages(
    advantages: torch.Tensor,
    weights: Sequence[float],
    mask: torch.Tensor,
    mode: str = "none",
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """MORLHF's one advantage per token: ``A = sum_i w_i A'_i``, then the normalisation.

    GAE is linear in the rewards and the values, so ``sum_i w_i GAE(r_i, V_i)`` is GAE on
    the scalarised reward ``sum_i w_i r_i`` with the value ``sum_i w_i V_i``: the n value
    heads stay, and their weighted sum is the scalarised reward's critic. No Noon: the
    standard PPO surrogate takes the signed advantage. ``[n, B, T] -> [B, T]``.
    """
    w = torch.tensor(list(weights), dtype=advantages.dtype, device=advantages.device)
    if w.shape[0] != advantages.shape[0]:
        raise ValueError(f"{w.shape[0]} weights for {advantages.shape[0]} objectives' advantages")
    scalar = (w.view(-1, 1, 1) * advantages).sum(0, keepdim=True)
    scalar = normalize_advantages(scalar, mask, mode, gather=gather)
    return scalar[0] * mask.to(scalar.dtype)


def advantage_gram(
    advantages: torch.Tensor,
    mask: torch.Tensor,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The n x n Gram ``G_ij = sum_t A_it A_jt`` over valid tokens, in float64.

    ``gather`` is ``accelerator.gather``: the local Grams of all processes are gathered and
    summed, so every process gets the Gram of the global batch. ``[n, B, T] -> [n, n]``.
    """
    n = advantages.shape[0]
    maskf = mask.to(torch.float64).reshape(1, -1)
    a = advantages.to(torch.float64).reshape(n, -1) * maskf
    local = a @ a.T
    return gather(local.unsqueeze(0).contiguous()).sum(dim=0) if gather is not None else local


def min_norm_advantages(
    advantages: torch.Tensor,
    mask: torch.Tensor,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The min-norm point of the n advantage vectors over the batch: MGDA-UB at the ratio.

    Each objective's PPO loss (Noon or standard) at ratio ``u = 1`` has gradient ``-A_i / N``
    with respect to the per-token ratio, so the min-norm point of those gradients is the
    min-norm point of the vectors ``A_i``: ``c = argmin_{c in simplex} c^T G c`` with ``G``
    from :func:`advantage_gram` (all processes), solved by :func:`paretoopt.min_norm_weights`
    in float64. No normalisation of the vectors: the objective with the smaller advantages
    weighs more. Returns ``A = sum_i c_i A_i`` ``[B, T]`` (zero outside the mask), ``c``
    ``[n]`` (float64, on the CPU) and the min-norm value ``c^T G c`` (``|A|^2`` over the
    global batch's valid tokens); the same ``c`` on every process.
    """
    from paretoopt import min_norm_weights

    result = min_norm_weights(advantage_gram(advantages, mask, gather))
    weights = result.weights.to(torch.float64)
    c = weights.to(advantages.device).view(-1, 1, 1)
    scalar = (c * advantages.to(torch.float64)).sum(0) * mask.to(torch.float64)
    return scalar.to(advantages.dtype), weights, float(result.value)


class MinNormAdvantages:
    """The ``"pama_ub"`` combiner of :class:`~.trainer.MOPPOTrainer`: one standard PPO
    surrogate on ``sum_i c_i A_i`` with ``c`` the min-norm point of the batch's advantage
    vectors (:func:`min_norm_advantages`), chosen anew for every batch."""

    name = "pama_ub"
    requires = None
    """Nothing beyond the batch's advantages (so micro-batches accumulate exactly)."""

    def __call__(
        self,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        return min_norm_advantages(advantages, mask, gather)

    def __repr__(self) -> str:
        return "MinNormAdvantages()"


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019), the paper's "adaptive KL".

    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta <- beta * (1 + e * n_steps / horizon)``
    with KL the mean per-sequence KL of the batch.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int, adaptive: bool = True):
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)
        self.adaptive = adaptive

    def update(self, current_kl: float, n_steps: int) -> None:
        if not self.adaptive:
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
