"""PAMA for TRL's GRPOTrainer (optional extra: ``pip install 'paretoopt[trl]'``).

Switch an existing GRPO script by replacing ``GRPOTrainer`` with :class:`PAMAGRPOTrainer`
(and optionally ``GRPOConfig`` with :class:`PAMAGRPOConfig`); see docs/trl.md.
"""

from .advantages import grpo_reward_advantages, pama_grpo_advantages, pama_grpo_stats
from .trainer import (
    TESTED_TRL_VERSIONS,
    PAMAGRPOConfig,
    PAMAGRPOTrainer,
    UnsupportedTRLVersionError,
    check_trl_compatibility,
    pama_advantages_from_rewards,
)

__all__ = [
    "TESTED_TRL_VERSIONS",
    "PAMAGRPOConfig",
    "PAMAGRPOTrainer",
    "UnsupportedTRLVersionError",
    "check_trl_compatibility",
    "grpo_reward_advantages",
    "pama_advantages_from_rewards",
    "pama_grpo_advantages",
    "pama_grpo_stats",
]
