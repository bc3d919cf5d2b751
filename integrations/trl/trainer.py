r"""PAMA for TRL's ``GRPOTrainer``: a subclass that replaces the advantage step.

TRL turns the rewards of its n reward functions into one advantage per completion by a
weighted sum followed by group normalisation. :class:`PAMAGRPOTrainer` keeps every step
of TRL (generation, reward scoring, the loss, logging) and changes only that advantage:
each reward is group-normalised on its own, Noon-clipped, and the closed form of PAMA
picks :math:`s^*_j = \min_i \max(A'_{ij}, 0)` per completion (He & Maghsudi 2025,
arXiv:2508.07768). TRL offers no hook there, so the subclass

* captures the gathered ``rewards_per_func`` in ``_calculate_rewards`` (one tensor over
  all processes, which TRL gathers so that groups split over ranks normalise correctly),
* and, after ``_generate_and_score_completions`` returns, overwrites its ``"advantages"``
  with this process's slice of the PAMA advantages.

Both are private TRL methods, so the versions this was tested with are pinned in
:data:`TESTED_TRL_VERSIONS`; :func:`check_trl_compatibility` refuses other versions unless
asked, and refuses any version whose internals do not have the shape relied on here.
"""

from __future__ import annotations

import inspect
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from packaging.version import Version
from torch import Tensor

try:
    import trl
    from trl import GRPOConfig, GRPOTrainer
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("paretoopt.integrations.trl needs TRL: pip install 'paretoopt[trl]'") from exc

from .advantages import grpo_reward_advantages, pama_grpo_advantages, pama_grpo_stats

#: TRL versions the plug-in was tested with: ``low <= version < high``.
TESTED_TRL_VERSIONS: tuple[str, str] = ("1.16.0", "1.17.0")

_CALCULATE_REWARDS_PARAMS = ["self", "inputs", "prompts", "completions", "completion_ids_list"]


class UnsupportedTRLVersionError(RuntimeError):
    """The installed TRL is outside the tested range or its internals changed."""


def _internals_problem() -> str | None:
    """Why the installed GRPOTrainer does not have the internals the subclass overrides."""
    for name in ("_calculate_rewards", "_generate_and_score_completions"):
        if not callable(getattr(GRPOTrainer, name, None)):
            return f"GRPOTrainer.{name} is missing"
    params = list(inspect.signature(GRPOTrainer._calculate_rewards).parameters)
    if params != _CALCULATE_REWARDS_PARAMS:
        return f"GRPOTrainer._calculate_rewards has parameters {params}"
    try:
        source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    except (OSError, TypeError):
        return "the source of GRPOTrainer._generate_and_score_completions cannot be read"
    for needle in ("self._calculate_rewards(", '"advantages": advantages', "process_slice"):
        if needle not in source:
            return f"GRPOTrainer._generate_and_score_completions no longer contains {needle!r}"
    for attr in ("scale_rewards", "num_generations", "num_generations_eval"):
        if attr not in GRPOConfig.__dataclass_fields__:
            return f"GRPOConfig has no field {attr!r}"
    return None


def check_trl_compatibility(allow_untested: bool = False) -> str:
    """Check that the installed TRL is one the plug-in supports; return its version.

    Args:
        allow_untested: accept a version outside :data:`TESTED_TRL_VERSIONS` as long as its
            internals still have the expected shape (at your own risk).

    Raises:
        UnsupportedTRLVersionError: the version is untested (and ``allow_untested`` is
            false) or the overridden internals are not recognised.
    """
    version = getattr(trl, "__version__", "unknown")
    low, high = TESTED_TRL_VERSIONS
    try:
        in_range = Version(low) <= Version(version) < Version(high)
    except Exception:
        in_range = False
    if not in_range and not allow_untested:
        raise UnsupportedTRLVersionError(
            f"PAMAGRPOTrainer was tested with trl>={low},<{high}; found trl {version}. "
            f"Install a tested version (pip install 'trl>={low},<{high}') or pass "
            "allow_untested_trl=True to try anyway."
        )
    problem = _internals_problem()
    if problem is not None:
        raise UnsupportedTRLVersionError(
            f"PAMAGRPOTrainer does not recognise the internals of trl {version}: {problem}. "
            f"It was written against trl>={low},<{high}."
        )
    return version


@dataclass
class PAMAGRPOConfig(GRPOConfig):
    """:class:`trl.GRPOConfig` plus the PAMA options.

    ``reward_weights`` and ``multi_objective_aggregation`` do not enter the PAMA advantage
    (PAMA needs no weights); TRL still uses the weights for its logged ``reward`` metric.
    ``scale_rewards`` is honoured, per reward function.
    """

    pama_noon: bool = field(
        default=True,
        metadata={
            "help": "Clip every per-reward advantage at 0 before the closed form (Noon PPO, the "
            "paper's setting). Then only completions above their group's mean on every reward "
            "are reinforced and nothing is pushed down. False keeps the unclipped closed form, "
            "which also pushes down completions below the mean on every reward."
        },
    )
    pama_log_completion_advantages: bool = field(
        default=True,
        metadata={
            "help": "Add each reward's advantage as a column 'advantage/<reward name>' of TRL's "
            "completions table (the 'advantage' column holds the PAMA advantage used)."
        },
    )


def _reward_func_name(func: Any) -> str:
    """The name TRL gives a reward function (a model id's last part, a function's name)."""
    if isinstance(func, str):
        return func.rstrip("/").split("/")[-1]
    config = getattr(func, "config", None)
    if config is not None and getattr(config, "_name_or_path", None):
        return str(config._name_or_path).rstrip("/").split("/")[-1]
    return str(getattr(func, "__name__", type(func).__name__))


def check_reward_funcs(*args: Any, **kwargs: Any) -> None:
    """``GRPOTrainer``'s arguments describe a PAMA run: at least two reward functions (the
    objectives) and, if ``reward_weights`` is given, one weight per function. Checked from
    the arguments alone, before any model is loaded."""
    try:
        bound = inspect.signature(GRPOTrainer.__init__).bind_partial(None, *args, **kwargs)
    except TypeError:
        return  # GRPOTrainer itself reports the bad call
    funcs = bound.arguments.get("reward_funcs")
    if funcs is None:
        return
    funcs = list(funcs) if isinstance(funcs, (list, tuple)) else [funcs]
    names = [_reward_func_name(f) for f in funcs]
    if len(funcs) < 2:
        raise ValueError(
            f"PAMAGRPOTrainer needs at least two reward functions; got {len(funcs)} "
            f"({', '.join(repr(n) for n in names) or 'none'}). PAMA combines objectives; with "
            "one reward use trl.GRPOTrainer"
        )
    weights = getattr(bound.arguments.get("args"), "reward_weights", None)
    if weights is not None and len(weights) != len(funcs):
        raise ValueError(
            f"reward_weights has {len(weights)} entries for {len(funcs)} reward functions "
            f"{names}: give one weight per reward function, in their order"
        )


class PAMAGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose advantage is PAMA's closed form over per-reward advantages.

    Takes exactly ``GRPOTrainer``'s arguments; ``args`` may be a :class:`PAMAGRPOConfig`
    or a plain ``GRPOConfig`` (then the PAMA options take their defaults). One extra
    keyword, ``allow_untested_trl``, lets it run on a TRL version outside the tested range.

    Logged metrics, besides TRL's: ``pama/advantage/mean``, ``pama/zero_rate`` (completions
    not reinforced), ``pama/conflict_rate`` and per reward function ``pama/binding_rate/<name>``,
    ``pama/advantage/<name>/mean``, ``pama/positive_rate/<name>``.

    After each generation step, :attr:`last_pama` holds this process's rewards, per-reward
    advantages and PAMA advantages, for inspection and tests.
    """

    def __init__(self, *args: Any, allow_untested_trl: bool = False, **kwargs: Any) -> None:
        check_trl_compatibility(allow_untested=allow_untested_trl)
        check_reward_funcs(*args, **kwargs)  # before TRL loads any model
        super().__init__(*args, **kwargs)
        self._pama_rewards_per_func: Tensor | None = None
        self.last_pama: dict[str, Tensor] = {}
        weights = self.reward_weights.tolist()
        if len(set(weights)) > 1:
            warnings.warn(
                f"reward_weights={weights} are ignored by PAMA's advantage (it needs no "
                "weights); TRL still uses them for the logged 'reward' metric.",
                stacklevel=2,
            )

    @property
    def pama_noon(self) -> bool:
        return bool(getattr(self.args, "pama_noon", True))

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # type: ignore[override]
        rewards_per_func = super()._calculate_rewards(
            inputs, prompts, completions, completion_ids_list
        )
        # Gathered over all processes by TRL: [N_global, n].
        self._pama_rewards_per_func = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):  # type: ignore[override]
        self._pama_rewards_per_func = None
        output = super()._generate_and_score_completions(inputs)
        rewards = self._pama_rewards_per_func
        self._pama_rewards_per_func = None
        if rewards is None:
            raise UnsupportedTRLVersionError(
                "GRPOTrainer._generate_and_score_completions did not call _calculate_rewards; "
                "the PAMA advantage cannot be computed with this TRL version."
            )
        local = output["advantages"]
        n_local = local.shape[0]
        n_proc = self.accelerator.num_processes
        if local.dim() != 1 or rewards.shape[0] != n_local * n_proc:
            raise UnsupportedTRLVersionError(
                f"unexpected shapes from TRL: rewards {tuple(rewards.shape)}, local advantages "
                f"{tuple(local.shape)} on {n_proc} process(es)"
            )
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        scale = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)

        reward_adv = grpo_reward_advantages(rewards.float(), num_generations, scale)  # [n, N]
        s_star, weights = pama_grpo_advantages(reward_adv, noon=self.pama_noon)
        start = self.accelerator.process_index * n_local
        part = slice(start, start + n_local)
        output["advantages"] = s_star[part].to(device=local.device, dtype=local.dtype)
        self.last_pama = {
            "rewards_per_func": rewards[part].detach().clone(),
            "reward_advantages": reward_adv[:, part].detach().clone(),
            "advantages": output["advantages"].detach().clone(),
            "weights": weights[:, part].detach().clone(),
        }
        self._log_pama(mode, reward_adv, s_star, weights)
        return output

    def _log_pama(self, mode: str, reward_adv: Tensor, s_star: Tensor, weights: Tensor) -> None:
        """Metrics over the global batch (identical on every rank, as TRL's own)."""
        names = list(self.reward_func_names)
        stats = pama_grpo_stats(reward_adv, s_star, weights, noon=self.pama_noon, names=names)
        for key, value in stats.items():
            self._metrics[mode][f"pama/{key}"].append(value)
        # TRL's completions table shows the advantage it trained on; make it PAMA's.
        logged: deque = self._logs["advantages"]
        k = min(len(logged), s_star.numel())
        for _ in range(k):
            logged.pop()
        logged.extend(s_star[s_star.numel() - k :].tolist())
        if getattr(self.args, "pama_log_completion_advantages", True):
            for i, name in enumerate(names):
                self._logs["extra"][f"advantage/{name}"].extend(reward_adv[i].tolist())


def pama_advantages_from_rewards(
    rewards_per_func: Tensor | list[list[float]],
    num_generations: int,
    scale_rewards: str = "group",
    noon: bool = True,
) -> Tensor:
    """The advantages :class:`PAMAGRPOTrainer` uses for a batch of rewards ``[N, n]``."""
    rewards = torch.as_tensor(rewards_per_func, dtype=torch.float32)
    reward_adv = grpo_reward_advantages(rewards, num_generations, scale_rewards)  # type: ignore[arg-type]
    return pama_grpo_advantages(reward_adv, noon=noon)[0]
