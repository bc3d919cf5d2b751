r"""The ``pama`` advantage estimator for verl; plain torch and numpy, no verl import.

verl's outcome-reward estimators see one scalar score per response. PAMA keeps n
objectives apart (He & Maghsudi 2025, arXiv:2508.07768), GRPO-style:

1. per objective i, the reward normalised within the response's prompt group g(j) (verl's
   ``uid`` index), exactly as verl's GRPO normalises its single score:
   :math:`A'_{ij} = (r_{ij} - \bar r_{i,g(j)}) / (\sigma_{i,g(j)} + \epsilon)`, or only the
   mean subtracted when ``norm_adv_by_std_in_grpo`` is false (Dr. GRPO);
2. Noon clipping :math:`A_{ij} = \max(A'_{ij}, 0)`;
3. the closed form of Theorem 1 per response, :math:`s^*_j = \min_i A_{ij}`
   (``paretoopt.pama_advantages(..., granularity="sample")``);
4. :math:`s^*_j` broadcast over the response's tokens (times ``response_mask``).

The per-objective rewards come from the batch's ``non_tensor_batch`` columns named by
``algorithm.pama_reward_keys`` (what a reward function that returns a dict puts there).
verl's dispatch does not hand those columns to a registered estimator, so
:mod:`paretoopt.integrations.verl.patch` makes them reachable through
:data:`_OBJECTIVE_COLUMNS` for the duration of one advantage computation.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from paretoopt import pama_advantages, pama_stats

ESTIMATOR_NAME = "pama"
#: verl's GRPO adds this to the group standard deviation; kept identical.
GRPO_EPSILON = 1e-6

#: Per-objective reward columns of the batch being processed (set by the patches).
_OBJECTIVE_COLUMNS: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "paretoopt_verl_objective_columns", default=None
)

#: Where the estimator leaves its diagnostics (set by the patches; see :func:`pama_metrics`).
_METRICS_SINK: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "paretoopt_verl_metrics_sink", default=None
)


class PAMAConfigError(ValueError):
    """The verl algorithm config does not describe a usable PAMA run."""


def _config_get(config: Any, key: str, default: Any = None) -> Any:
    """Read a key from a DictConfig, a verl dataclass config or a plain dict."""
    if config is None:
        return default
    getter = getattr(config, "get", None)
    if callable(getter):
        return getter(key, default)
    return getattr(config, key, default)


def reward_keys_from_config(config: Any) -> list[str]:
    """The objective keys of ``algorithm.pama_reward_keys``; at least two distinct names."""
    keys = _config_get(config, "pama_reward_keys")
    if keys is None:
        raise PAMAConfigError(
            "adv_estimator=pama needs the objective keys: add "
            "'+algorithm.pama_reward_keys=[key_a,key_b]' naming the entries of the dict your "
            "reward function returns"
        )
    if isinstance(keys, str) or not hasattr(keys, "__iter__"):
        raise PAMAConfigError(f"algorithm.pama_reward_keys must be a list of names, got {keys!r}")
    keys = [str(k) for k in keys]
    if len(keys) < 2:
        raise PAMAConfigError(
            f"algorithm.pama_reward_keys names {len(keys)} objective(s) ({keys}); PAMA combines "
            "at least two. With one reward use adv_estimator=grpo."
        )
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise PAMAConfigError(f"algorithm.pama_reward_keys repeats {dupes}")
    return keys


def objective_rewards(
    columns: Mapping[str, Any], keys: Sequence[str], batch_size: int, device: torch.device
) -> Tensor:
    """Stack the reward columns named by ``keys`` into ``[n, B]`` float32, checked.

    Raises:
        KeyError: a key is not among the columns (the message lists the available ones).
        ValueError: a column has the wrong length, is not numeric or holds a non-finite value
            (the message names the key and the first bad response).
    """
    rows = []
    for key in keys:
        if key not in columns:
            raise KeyError(
                f"PAMA reward key {key!r} is not in the batch; available: {sorted(columns)}. "
                f"Make the reward function return a dict with an entry {key!r}."
            )
        try:
            values = np.asarray(columns[key], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"PAMA reward {key!r} is not numeric: {exc}") from exc
        if values.shape != (batch_size,):
            raise ValueError(
                f"PAMA reward {key!r} has shape {values.shape}; expected ({batch_size},), one "
                "value per response"
            )
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(
                f"PAMA reward {key!r} is not finite for {bad.size} response(s), first at row "
                f"{int(bad[0])} (value {values[bad[0]]})"
            )
        rows.append(torch.as_tensor(values, dtype=torch.float32))
    return torch.stack(rows).to(device)


def group_normalized_rewards(
    rewards: Tensor, index: Any, norm_by_std: bool = True, epsilon: float = GRPO_EPSILON
) -> Tensor:
    r"""Each objective's reward normalised within its prompt group, as verl's GRPO does.

    Args:
        rewards: ``[n, B]`` rewards, objectives first.
        index: ``B`` group ids (verl's ``uid`` array); any hashable values.
        norm_by_std: divide by the group's (Bessel-corrected) standard deviation plus
            ``epsilon``; false only subtracts the group mean.
        epsilon: added to the standard deviation.

    Returns:
        ``[n, B]`` advantages. A group of one response gets mean 0 and standard deviation 1,
        i.e. its raw reward, which is verl's GRPO convention.
    """
    n, batch = rewards.shape
    ids = np.asarray(index, dtype=object).reshape(-1)
    if ids.shape[0] != batch:
        raise ValueError(f"index has {ids.shape[0]} entries for {batch} responses")
    _, inverse = np.unique(ids.astype(str), return_inverse=True)
    group = torch.as_tensor(inverse.reshape(-1), device=rewards.device)
    n_groups = int(group.max()) + 1 if batch else 0
    count = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device)
    count.index_add_(0, group, torch.ones_like(rewards[0]))
    total = torch.zeros(n, n_groups, dtype=rewards.dtype, device=rewards.device)
    total.index_add_(1, group, rewards)
    mean = total / count
    centred = rewards - mean[:, group]
    sq = torch.zeros_like(total).index_add_(1, group, centred**2)
    std = (sq / (count - 1).clamp_min(1)).sqrt()
    single = (count == 1)[group]
    mean_b = torch.where(single, torch.zeros_like(centred), mean[:, group])
    std_b = torch.where(single, torch.ones_like(centred), std[:, group])
    adv = rewards - mean_b
    if norm_by_std:
        adv = adv / (std_b + epsilon)
    return adv


def pama_metrics(normalized: Tensor, keys: Sequence[str], noon: bool = True) -> dict[str, float]:
    """Per-batch diagnostics, named as verl logs metrics.

    ``pama/binding_rate/<key>`` (share of responses whose ``s*`` that objective sets, ties
    split), ``pama/conflict_rate`` (responses whose objectives disagree in sign),
    ``pama/zero_rate`` (responses not reinforced: watch it, with Noon clipping it is often
    high early in training) and ``pama/mean_advantage``.
    """
    stats = pama_stats(normalized, noon=noon)
    out = {f"pama/binding_rate/{key}": stats[f"binding_rate/{i}"] for i, key in enumerate(keys)}
    out["pama/conflict_rate"] = stats["conflict_rate"]
    out["pama/zero_rate"] = stats["zero_rate"]
    out["pama/mean_advantage"] = stats["mean_s_star"]
    return out


def compute_pama_outcome_advantage(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: Any = None,
    epsilon: float = GRPO_EPSILON,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
    non_tensor_batch: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    r"""verl advantage estimator ``pama``: per-objective GRPO, Noon clip, closed form.

    Called by verl's ``compute_advantage`` dispatch. The objective rewards are read from
    ``non_tensor_batch`` when the dispatch passes it, otherwise from the columns the
    installed patches expose for this call. ``algorithm.norm_adv_by_std_in_grpo`` and
    ``algorithm.pama_noon`` (default true) are read from ``config``, because verl's dispatch
    forwards neither to a registered estimator. ``token_level_rewards`` (verl's summed score,
    possibly with an in-reward KL penalty) does not enter the advantage.

    Returns:
        ``(advantages, returns)``, both ``[B, T]``: :math:`s^*_j` on every response token.
    """
    # verl hands the algorithm config to an estimator only here, at the first advantage
    # computation: one reward key or a missing key is refused then, after the first rollout
    # and before any update (verl's trainers offer no earlier hook for a registered estimator).
    keys = reward_keys_from_config(config)
    if index is None:
        raise ValueError(
            "adv_estimator=pama groups responses by prompt and needs the batch's 'uid' column"
        )
    columns = non_tensor_batch if non_tensor_batch is not None else _OBJECTIVE_COLUMNS.get()
    if columns is None:
        raise RuntimeError(
            "adv_estimator=pama got no per-objective rewards: verl's compute_advantage does not "
            "pass them to registered estimators. Call paretoopt.integrations.verl.register() "
            "(done automatically through the 'verl.plugins' entry point when paretoopt is "
            "installed) before verl's trainer module is imported."
        )
    norm_by_std = bool(_config_get(config, "norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo))
    noon = bool(_config_get(config, "pama_noon", True))
    batch = token_level_rewards.shape[0]
    rewards = objective_rewards(columns, keys, batch, token_level_rewards.device)
    with torch.no_grad():
        normalized = group_normalized_rewards(rewards, index, norm_by_std, epsilon)
        s_star = pama_advantages(normalized, granularity="sample", noon=noon)
        advantages = s_star.unsqueeze(-1) * response_mask.to(s_star.dtype)
        sink = _METRICS_SINK.get()
        if sink is not None:
            sink.update(pama_metrics(normalized, keys, noon))
    return advantages, advantages
