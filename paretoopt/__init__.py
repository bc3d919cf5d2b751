"""paretoopt: train one model against several objectives without sacrificing any of them.

PAMA (He & Maghsudi, ECML-PKDD 2025, arXiv 2508.07768) beside MGDA, MGDA-UB and linear
scalarization, behind one interface::

    from paretoopt import PAMA
    result = PAMA()(losses, shared=z)
    result.loss.backward()
"""

from . import functional, losses, min_norm, pareto, zoo
from .combiners import (
    MGDA,
    NORMALIZATIONS,
    PAMA,
    Combiner,
    CombineResult,
    LinearScalarization,
    TorchJD,
    make_combiner,
)
from .functional import GRANULARITIES, noon_clip, pama_advantages, pama_closed_form, pama_stats
from .losses import pama_ppo_loss, ppo_losses, ppo_losses_from_ratio, ppo_surrogate, ratio
from .min_norm import (
    MIN_NORM_METHODS,
    MinNormResult,
    gram_matrix,
    kkt_residual,
    min_norm_weights,
    project_simplex,
)
from .pareto import dominates, hypervolume, pareto_front, pareto_mask, pareto_stationarity
from .training import combine_and_backward

__version__ = "0.1.0"

__all__ = [
    "GRANULARITIES",
    "MGDA",
    "MIN_NORM_METHODS",
    "NORMALIZATIONS",
    "PAMA",
    "CombineResult",
    "Combiner",
    "LinearScalarization",
    "MinNormResult",
    "TorchJD",
    "__version__",
    "combine_and_backward",
    "dominates",
    "functional",
    "gram_matrix",
    "hypervolume",
    "kkt_residual",
    "losses",
    "make_combiner",
    "min_norm",
    "min_norm_weights",
    "noon_clip",
    "pama_advantages",
    "pama_closed_form",
    "pama_ppo_loss",
    "pama_stats",
    "pareto",
    "pareto_front",
    "pareto_mask",
    "pareto_stationarity",
    "ppo_losses",
    "ppo_losses_from_ratio",
    "ppo_surrogate",
    "project_simplex",
    "ratio",
    "zoo",
]
