"""PAMA as a verl advantage estimator (optional extra: ``pip install 'paretoopt[verl]'``).

Installing paretoopt next to verl registers the estimator ``pama`` through verl's
``verl.plugins`` entry point; a run selects it with ``algorithm.adv_estimator=pama`` and
names its objectives with ``+algorithm.pama_reward_keys=[...]``. See docs/verl.md.
"""

from .estimator import (
    ESTIMATOR_NAME,
    PAMAConfigError,
    compute_pama_outcome_advantage,
    group_normalized_rewards,
    objective_rewards,
    pama_metrics,
    reward_keys_from_config,
)
from .patch import (
    TESTED_VERL_VERSIONS,
    UnsupportedVerlVersionError,
    check_verl_version,
    fetch_v1_reward_columns,
    install_patches,
    is_registered,
    metrics_sink,
    objective_columns,
    register,
)

__all__ = [
    "ESTIMATOR_NAME",
    "TESTED_VERL_VERSIONS",
    "PAMAConfigError",
    "UnsupportedVerlVersionError",
    "check_verl_version",
    "compute_pama_outcome_advantage",
    "fetch_v1_reward_columns",
    "group_normalized_rewards",
    "install_patches",
    "is_registered",
    "metrics_sink",
    "objective_columns",
    "objective_rewards",
    "pama_metrics",
    "register",
    "reward_keys_from_config",
]
