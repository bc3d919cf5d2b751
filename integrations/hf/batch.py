"""The rollout batch: a step's rollout with everything computed from it before the update."""

from __future__ import annotations

from typing import Any

import torch

from .rollout import Rollout

__all__ = ["RolloutBatch"]


class RolloutBatch:
    """Everything the update needs, computed once per step without gradients.

    Tensors ``[B, T]`` (``logprobs``, ``ref_logprobs``, ``mask``, ``kl``) and
    ``[n, B, T]`` (``values``, ``returns``, ``advantages`` = normalised, Noon-clipped when
    the combiner uses Noon); ``s_star[B, T]`` and ``pama_weights[n, B, T]`` only with the
    PAMA fast path; ``scalar_advantages[B, T]`` only with MORLHF, GDPO and "pama_ub", whose
    per-batch weights ``[n]`` are ``scalar_weights`` ("pama_ub" only; MORLHF's and GDPO's are
    the combiner's). ``combine_stats``: statistics of the combination, the same on every
    process (logged as they are).
    """

    def __init__(self, rollout: Rollout, scores: torch.Tensor, **tensors: Any):
        self.rollout = rollout
        self.scores = scores
        self.logprobs: torch.Tensor = tensors["logprobs"]  # type: ignore[assignment]
        self.ref_logprobs: torch.Tensor = tensors["ref_logprobs"]  # type: ignore[assignment]
        self.values: torch.Tensor = tensors["values"]  # type: ignore[assignment]
        self.returns: torch.Tensor = tensors["returns"]  # type: ignore[assignment]
        self.advantages: torch.Tensor = tensors["advantages"]  # type: ignore[assignment]
        self.raw_advantages: torch.Tensor = tensors["raw_advantages"]  # type: ignore[assignment]
        self.kl: torch.Tensor = tensors["kl"]  # type: ignore[assignment]
        self.s_star = tensors.get("s_star")
        self.scalar_advantages = tensors.get("scalar_advantages")
        self.scalar_weights = tensors.get("scalar_weights")
        self.combine_stats: dict[str, float] = tensors.get("combine_stats") or {}
        self.pama_weights = tensors.get("pama_weights")
        self.pama_stats: dict[str, float] = tensors.get("pama_stats") or {}

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.mask
