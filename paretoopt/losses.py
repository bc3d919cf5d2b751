r"""PPO and Noon PPO surrogate losses, one per objective.

Notation (PAMA, section 3): for response token t the ratio is
:math:`u_t = \pi_\theta(a_t|s_t) / \pi_{anchor}(a_t|s_t)`, where the anchor is the reference
policy :math:`\pi_{ref}` as the paper writes it, or the rollout policy :math:`\pi_{old}` as in
ordinary PPO: pass the matching log-probabilities as ``anchor_logprobs``. The per-objective
loss is

.. math:: L_i = -\mathrm{mean}_t \min(u_t A_{it}, \mathrm{clip}(u_t, 1-\epsilon, 1+\epsilon) A_{it})

with Noon clipping :math:`A_{it} = \max(A'_{it}, 0)`. The mean runs over the valid (masked-in)
tokens of the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._validation import check_finite, stack_objectives
from .functional import Granularity, noon_clip, pama_advantages

__all__ = ["pama_ppo_loss", "ppo_losses", "ppo_losses_from_ratio", "ppo_surrogate", "ratio"]


def ratio(logprobs: Tensor, anchor_logprobs: Tensor) -> Tensor:
    r""":math:`u = \exp(\log\pi_\theta - \log\pi_{anchor})`; the anchor gets no gradient."""
    if logprobs.shape != anchor_logprobs.shape:
        raise ValueError(
            f"logprobs has shape {tuple(logprobs.shape)} but anchor_logprobs has shape "
            f"{tuple(anchor_logprobs.shape)}"
        )
    return torch.exp(logprobs - anchor_logprobs.detach())


def _check_cliprange(cliprange: float) -> None:
    if not (0 < cliprange < 1):
        raise ValueError(f"cliprange must be in (0, 1), got {cliprange}")


def _clipped_objective(u: Tensor, adv: Tensor, cliprange: float) -> Tensor:
    return torch.minimum(u * adv, torch.clamp(u, 1 - cliprange, 1 + cliprange) * adv)


def _clipped_objectives(u: Tensor, adv: Tensor, cliprange: float, nonnegative: bool) -> Tensor:
    """``_clipped_objective`` of one ratio ``u [B, T]`` and n advantages ``[n, B, T]``.

    min(u A, c A) with c = clip(u) is A min(u, c) where A >= 0 and A max(u, c) where A < 0,
    to the bit: rounding is monotone, so multiplying by A keeps (A >= 0) or swaps (A < 0) the
    order. The min and max then run, forward and backward, on u's shape rather than n times
    over, and a batched backward of the n losses (the n gradients that PAMA, MGDA-UB and the
    zoo take w.r.t. u) walks [B, T] where/clamp nodes instead of [n, B, T] ones.
    """
    c = torch.clamp(u, 1 - cliprange, 1 + cliprange)
    low = torch.minimum(u, c)
    if nonnegative:  # Noon-clipped advantages
        return adv * low
    return adv.clamp_min(0) * low + adv.clamp_max(0) * torch.maximum(u, c)


def _masked_token_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the trailing (token) dimensions, counting only valid tokens."""
    if mask is None:
        return x.mean(dim=(-2, -1))
    m = mask.to(x.dtype)
    count = m.sum().clamp_min(1)
    return (x * m).sum(dim=(-2, -1)) / count


def _check_inputs(logprobs: Tensor, anchor_logprobs: Tensor, mask: Tensor | None) -> Tensor:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    check_finite(logprobs.detach(), "logprobs")
    check_finite(anchor_logprobs.detach(), "anchor_logprobs")
    if mask is not None and tuple(mask.shape) != tuple(logprobs.shape):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but logprobs has shape {tuple(logprobs.shape)}"
        )
    return ratio(logprobs, anchor_logprobs)


def ppo_surrogate(
    logprobs: Tensor,
    anchor_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    cliprange: float = 0.2,
) -> Tensor:
    """Single-objective clipped PPO loss (to minimise) with advantages ``[B, T]``."""
    _check_cliprange(cliprange)
    u = _check_inputs(logprobs, anchor_logprobs, mask)
    if advantages.shape != logprobs.shape:
        raise ValueError(
            f"advantages has shape {tuple(advantages.shape)} but logprobs has shape "
            f"{tuple(logprobs.shape)}"
        )
    check_finite(advantages, "advantages")
    return -_masked_token_mean(_clipped_objective(u, advantages.detach(), cliprange), mask)


def ppo_losses(
    logprobs: Tensor,
    anchor_logprobs: Tensor,
    advantages: Tensor | Sequence[Tensor],
    mask: Tensor | None = None,
    cliprange: float = 0.2,
    noon: bool = True,
) -> Tensor:
    """The n per-objective (Noon) PPO losses ``[n]`` for advantages ``[n, B, T]``.

    Pass the result (or its rows) to any combiner; with PAMA pass the ratio
    ``ratio(logprobs, anchor_logprobs)`` computed *before* this call as ``shared``, or use
    :func:`ppo_losses_from_ratio`.
    """
    _check_cliprange(cliprange)
    u = _check_inputs(logprobs, anchor_logprobs, mask)
    return ppo_losses_from_ratio(u, advantages, mask, cliprange, noon)


def ppo_losses_from_ratio(
    u: Tensor,
    advantages: Tensor | Sequence[Tensor],
    mask: Tensor | None = None,
    cliprange: float = 0.2,
    noon: bool = True,
) -> Tensor:
    """Per-objective (Noon) PPO losses ``[n]`` from a ratio tensor ``u [B, T]``.

    Use this form with :class:`paretoopt.PAMA` and ``shared=u``.
    """
    _check_cliprange(cliprange)
    adv = stack_objectives(advantages, "advantages")
    if tuple(adv.shape[1:]) != tuple(u.shape):
        raise ValueError(
            f"advantages have per-objective shape {tuple(adv.shape[1:])} but the ratio has "
            f"shape {tuple(u.shape)}"
        )
    if mask is not None and tuple(mask.shape) != tuple(u.shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)} but the ratio has {tuple(u.shape)}")
    adv = adv.detach().to(u.dtype)
    if noon:
        adv = noon_clip(adv)
    return -_masked_token_mean(_clipped_objectives(u, adv, cliprange, nonnegative=noon), mask)


def pama_ppo_loss(
    logprobs: Tensor,
    anchor_logprobs: Tensor,
    advantages: Tensor | Sequence[Tensor],
    mask: Tensor | None = None,
    cliprange: float = 0.2,
    granularity: Granularity = "token",
    noon: bool = True,
) -> Tensor:
    r"""PAMA's update as one loss: the (Noon) PPO surrogate with advantage :math:`s^*`.

    :math:`s^* = ` :func:`paretoopt.pama_advantages` of the n advantages (the fast path: O(n)
    per token, one backward pass).
    """
    s_star = pama_advantages(advantages, mask, granularity=granularity, noon=noon)
    assert isinstance(s_star, Tensor)
    return ppo_surrogate(logprobs, anchor_logprobs, s_star.to(logprobs.dtype), mask, cliprange)
