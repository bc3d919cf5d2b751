"""Multi-objective PPO on transformers + peft + accelerate (needs the ``hf`` extra).

PAMA's Algorithm 1 (He & Maghsudi 2025, arXiv 2508.07768) with MGDA-UB, exact
MGDA and linear scalarization as drop-in combiners.  See docs/trainer.md.
"""

from __future__ import annotations

try:
    import accelerate  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "paretoopt.integrations.hf needs the hf extra: pip install 'paretoopt[hf]'"
    ) from exc

from .advantages import AdaptiveKLController, discounted_cumsum, gae, kl_penalized_rewards
from .batch import RolloutBatch
from .checkpoint import find_latest_checkpoint
from .config import MOPPOConfig
from .data import load_prompt_dataset, render_prompt
from .evaluation import BestCheckpoint, EvalResult, evaluate
from .export import export_model
from .reward_model_specs import parse_reward_model_spec
from .reward_models import RewardHead, RewardModel
from .rewards import (
    RewardError,
    RewardModelFunction,
    length_reward,
    make_length_reward,
    parse_reward_spec,
)
from .rollout import Rollout, generate_rollout, response_mask
from .trainer import MOPPOTrainer
from .value_heads import PolicyWithValueHeads, ValueHeads, clipped_value_loss

__all__ = [
    "AdaptiveKLController",
    "BestCheckpoint",
    "EvalResult",
    "MOPPOConfig",
    "MOPPOTrainer",
    "PolicyWithValueHeads",
    "RewardError",
    "RewardHead",
    "RewardModel",
    "RewardModelFunction",
    "Rollout",
    "RolloutBatch",
    "ValueHeads",
    "clipped_value_loss",
    "discounted_cumsum",
    "evaluate",
    "export_model",
    "find_latest_checkpoint",
    "gae",
    "generate_rollout",
    "kl_penalized_rewards",
    "length_reward",
    "load_prompt_dataset",
    "make_length_reward",
    "parse_reward_model_spec",
    "parse_reward_spec",
    "render_prompt",
    "response_mask",
]

from .multi_objective import MultiObjectiveTrainer, MultiObjectiveTrainingArguments

__all__ += ["MultiObjectiveTrainer", "MultiObjectiveTrainingArguments"]
