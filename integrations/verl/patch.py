r"""Registration of the ``pama`` estimator in verl, and the patch that feeds it its rewards.

verl 0.9 dispatches a registered advantage estimator with ``token_level_rewards``,
``response_mask``, ``config``, ``index`` (uid) and ``reward_baselines`` only; the built-in
``gdpo`` alone also receives the batch's ``non_tensor_batch`` (a hard-coded check in
``verl.trainer.ppo.ray_trainer.compute_advantage``). PAMA needs the per-objective rewards,
so two functions of verl are wrapped, and each wrapper does something only when the
estimator is ``pama`` (otherwise it calls verl's function unchanged):

* ``ray_trainer.compute_advantage`` (the legacy trainer's dispatch, also called by the v1
  trainer through ``v1.utils``): exposes ``data.non_tensor_batch`` to the estimator for the
  duration of the call; verl's own dispatch still runs.
* the v1 trainer's ``PPOTrainer._compute_advantage``: it fetches only ``uid``,
  ``response_mask``, ``rm_scores`` and log-prob fields from TransferQueue, so the wrapper
  also fetches the reward entries (``extra_fields['reward_extra_info']``, where verl's agent
  loop stores a reward function's dict, or top-level fields of those names, where a
  colocated reward model writes them) for the same keys and exposes them likewise.

The modules are patched when they are imported (a small import hook), so a process that
never imports verl's trainer (a Ray rollout or actor worker) pays nothing. The versions this
was tested with are in :data:`TESTED_VERL_VERSIONS`; other versions are refused unless
``PARETOOPT_VERL_ALLOW_UNTESTED=1``, and internals that do not have the expected shape are
refused always.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import inspect
import logging
import os
import sys
import threading
import warnings
from collections import ChainMap
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
from packaging.version import Version

from .estimator import (
    _METRICS_SINK,
    _OBJECTIVE_COLUMNS,
    ESTIMATOR_NAME,
    compute_pama_outcome_advantage,
    reward_keys_from_config,
)

logger = logging.getLogger(__name__)

#: verl versions the plug-in was tested with: ``low <= version < high``.
TESTED_VERL_VERSIONS: tuple[str, str] = ("0.9.1", "0.10.0")
ALLOW_UNTESTED_ENV = "PARETOOPT_VERL_ALLOW_UNTESTED"

LEGACY_MODULE = "verl.trainer.ppo.ray_trainer"
V1_UTILS_MODULE = "verl.trainer.ppo.v1.utils"
V1_TRAINER_MODULE = "verl.trainer.ppo.v1.trainer_base"

_COMPUTE_ADVANTAGE_PARAMS = [
    "data",
    "adv_estimator",
    "gamma",
    "lam",
    "num_repeat",
    "norm_adv_by_std_in_grpo",
    "config",
]
_MARK = "__paretoopt_pama_wrapped__"
_lock = threading.RLock()


class UnsupportedVerlVersionError(RuntimeError):
    """The installed verl is outside the tested range or its internals changed."""


def is_pama(adv_estimator: Any) -> bool:
    """Whether verl's ``adv_estimator`` setting (a string or an enum) names PAMA."""
    return getattr(adv_estimator, "value", adv_estimator) == ESTIMATOR_NAME


def check_verl_version(allow_untested: bool | None = None) -> str:
    """Return the installed verl version; raise if it is outside the tested range.

    Args:
        allow_untested: accept an untested version; defaults to the environment variable
            ``PARETOOPT_VERL_ALLOW_UNTESTED`` being ``1``/``true``.
    """
    import verl

    version = getattr(verl, "__version__", "unknown")
    if allow_untested is None:
        allow_untested = os.environ.get(ALLOW_UNTESTED_ENV, "").lower() in ("1", "true", "yes")
    low, high = TESTED_VERL_VERSIONS
    try:
        in_range = Version(low) <= Version(version) < Version(high)
    except Exception:
        in_range = False
    if not in_range and not allow_untested:
        raise UnsupportedVerlVersionError(
            f"the paretoopt 'pama' estimator was tested with verl>={low},<{high}; found verl "
            f"{version}. Install a tested version (pip install 'verl[verl-core]>={low},<{high}') "
            f"or set {ALLOW_UNTESTED_ENV}=1 to try anyway."
        )
    return version


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError) as exc:
        raise UnsupportedVerlVersionError(f"cannot read the source of {obj!r}: {exc}") from exc


def _check_legacy(module: ModuleType) -> None:
    fn = _original(getattr(module, "compute_advantage", None))
    if not callable(fn):
        raise UnsupportedVerlVersionError(f"{module.__name__}.compute_advantage is missing")
    params = list(inspect.signature(fn).parameters)
    if params != _COMPUTE_ADVANTAGE_PARAMS:
        raise UnsupportedVerlVersionError(
            f"{module.__name__}.compute_advantage has parameters {params}, expected "
            f"{_COMPUTE_ADVANTAGE_PARAMS}"
        )
    src = _source(fn)
    for needle in (
        "get_adv_estimator_fn(adv_estimator)",
        '"config": config',
        'non_tensor_batch["uid"]',
    ):
        if needle not in src:
            raise UnsupportedVerlVersionError(
                f"{module.__name__}.compute_advantage no longer contains {needle!r}"
            )


def _check_v1_trainer(module: ModuleType) -> type:
    cls = getattr(module, "PPOTrainer", None)
    method = _original(getattr(cls, "_compute_advantage", None))
    if method is None:
        raise UnsupportedVerlVersionError(
            f"{module.__name__}.PPOTrainer._compute_advantage is missing"
        )
    params = list(inspect.signature(method).parameters)
    if params != ["self", "batch", "metrics"]:
        raise UnsupportedVerlVersionError(
            f"{module.__name__}.PPOTrainer._compute_advantage has parameters {params}"
        )
    src = _source(method)
    for needle in (
        "tq.kv_batch_get(",
        "compute_advantage_for_multi_trajectories(",
        "config=self.config.algorithm",
    ):
        if needle not in src:
            raise UnsupportedVerlVersionError(
                f"{module.__name__}.PPOTrainer._compute_advantage no longer contains {needle!r}"
            )
    if not callable(getattr(getattr(module, "tq", None), "kv_batch_get", None)):
        raise UnsupportedVerlVersionError(f"{module.__name__}.tq.kv_batch_get is missing")
    return cls


def _original(fn: Any) -> Any:
    """The unwrapped verl function (the argument itself when it is not our wrapper)."""
    return getattr(fn, "__wrapped__", fn) if getattr(fn, _MARK, False) else fn


@contextlib.contextmanager
def objective_columns(columns: Mapping[str, Any]) -> Iterator[None]:
    """Expose ``columns`` (reward key -> one value per response) to the ``pama`` estimator.

    Columns already exposed by an enclosing call stay visible behind the new ones.
    """
    outer = _OBJECTIVE_COLUMNS.get()
    token = _OBJECTIVE_COLUMNS.set(ChainMap(dict(columns), outer) if outer else columns)
    try:
        yield
    finally:
        _OBJECTIVE_COLUMNS.reset(token)


@contextlib.contextmanager
def metrics_sink() -> Iterator[dict[str, float]]:
    """Collect the ``pama/...`` metrics of the estimator calls inside the block.

    An enclosing sink, if any, is reused, so the outermost caller sees them all.
    """
    outer = _METRICS_SINK.get()
    if outer is not None:
        yield outer
        return
    sink: dict[str, float] = {}
    token = _METRICS_SINK.set(sink)
    try:
        yield sink
    finally:
        _METRICS_SINK.reset(token)


def _wrap_compute_advantage(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def compute_advantage(data: Any, adv_estimator: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_pama(adv_estimator):
            return fn(data, adv_estimator, *args, **kwargs)
        with objective_columns(data.non_tensor_batch), metrics_sink() as sink:
            out = fn(data, adv_estimator, *args, **kwargs)
        # The legacy trainer logs nothing from here; keep the diagnostics on the batch.
        out.meta_info["pama_metrics"] = dict(sink)
        return out

    setattr(compute_advantage, _MARK, True)
    return compute_advantage


def fetch_v1_reward_columns(tq: Any, batch: Any, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Read the objective rewards of a v1 batch from TransferQueue, in ``batch.keys`` order.

    A key listed among ``batch.fields`` is read as a top-level field (a colocated reward
    model writes its extra keys there); the others from each sample's
    ``extra_fields['reward_extra_info']`` (where the agent loop keeps a reward function's
    dict).
    """
    fields = getattr(batch, "fields", None) or []
    top = [k for k in keys if k in fields]
    nested = [k for k in keys if k not in fields]
    columns: dict[str, np.ndarray] = {}
    if top:
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=top)
        for key in top:
            columns[key] = np.asarray(list(data[key]), dtype=object)
    if nested:
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"]
        )
        infos = []
        for extra in list(data["extra_fields"]):
            info = extra.get("reward_extra_info", {}) if isinstance(extra, Mapping) else {}
            infos.append(info if isinstance(info, Mapping) else {})
        available = sorted(set().union(*infos)) if infos else []
        for key in nested:
            missing = [row for row, info in enumerate(infos) if key not in info]
            if missing:
                raise KeyError(
                    f"PAMA reward key {key!r} is missing from the reward_extra_info of "
                    f"{len(missing)} of {len(infos)} responses (first at row {missing[0]}); "
                    f"keys there: {available}. Make the reward function return a dict with "
                    f"an entry {key!r}."
                )
            column = np.empty(len(infos), dtype=object)
            column[:] = [info[key] for info in infos]
            columns[key] = column
    return columns


def _wrap_v1_compute_advantage(
    method: Callable[..., Any], module: ModuleType
) -> Callable[..., Any]:
    @functools.wraps(method)
    def _compute_advantage(self: Any, batch: Any, metrics: dict) -> Any:
        algorithm = self.config.algorithm
        if not is_pama(algorithm.adv_estimator):
            return method(self, batch, metrics)
        keys = reward_keys_from_config(algorithm)
        columns = fetch_v1_reward_columns(module.tq, batch, keys)
        with objective_columns(columns), metrics_sink() as sink:
            out = method(self, batch, metrics)
        metrics.update(sink)
        return out

    setattr(_compute_advantage, _MARK, True)
    return _compute_advantage


def _patch_legacy(module: ModuleType) -> None:
    _check_legacy(module)
    if not getattr(module.compute_advantage, _MARK, False):
        module.compute_advantage = _wrap_compute_advantage(module.compute_advantage)
    utils = sys.modules.get(V1_UTILS_MODULE)
    if utils is not None:
        _patch_v1_utils(utils)


def _patch_v1_utils(module: ModuleType) -> None:
    legacy = sys.modules[LEGACY_MODULE]
    current = getattr(module, "compute_advantage", None)
    if current is not None and not getattr(current, _MARK, False):
        if current is not _original(legacy.compute_advantage):
            raise UnsupportedVerlVersionError(
                f"{module.__name__}.compute_advantage is not {LEGACY_MODULE}.compute_advantage"
            )
        module.compute_advantage = legacy.compute_advantage


def _patch_v1_trainer(module: ModuleType) -> None:
    cls = _check_v1_trainer(module)
    if not getattr(cls._compute_advantage, _MARK, False):
        cls._compute_advantage = _wrap_v1_compute_advantage(cls._compute_advantage, module)


_PATCHES: dict[str, Callable[[ModuleType], None]] = {
    LEGACY_MODULE: _patch_legacy,
    V1_UTILS_MODULE: _patch_v1_utils,
    V1_TRAINER_MODULE: _patch_v1_trainer,
}


def _apply(name: str, module: ModuleType) -> None:
    """Patch one freshly imported module; a failure is loud, never silent."""
    try:
        _PATCHES[name](module)
    except Exception as exc:
        message = (
            f"paretoopt could not patch {name} for adv_estimator=pama ({exc}); that estimator "
            "will not receive its per-objective rewards"
        )
        logger.error(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)


class _PatchingLoader(importlib.abc.Loader):
    """Runs verl's loader, then the patch for that module."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _apply(self._name, module)

    def __getattr__(self, attr: str) -> Any:  # get_source, get_code, ... for inspect
        return getattr(self._loader, attr)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Import hook: patch verl's trainer modules right after they are executed."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, fullname)
                return spec
        return None


def install_patches() -> None:
    """Patch verl's trainer modules now if imported, otherwise as soon as they are.

    Idempotent: a module is wrapped once, and the import hook is installed once.
    """
    with _lock:
        if not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _PatchOnImport())
        for name in _PATCHES:
            module = sys.modules.get(name)
            if module is not None and getattr(module, "__spec__", None) is not None:
                _apply(name, module)


def register(allow_untested: bool | None = None) -> None:
    """Register the ``pama`` estimator with verl and install the reward patch.

    Idempotent: registering twice is fine. Raises if another function is registered under
    the name ``pama``, or the verl version is untested (see :func:`check_verl_version`).
    """
    check_verl_version(allow_untested)
    from verl.trainer.ppo import core_algos

    for attr in ("register_adv_est", "get_adv_estimator_fn", "ADV_ESTIMATOR_REGISTRY"):
        if not hasattr(core_algos, attr):
            raise UnsupportedVerlVersionError(f"verl.trainer.ppo.core_algos.{attr} is missing")
    with _lock:
        current = core_algos.ADV_ESTIMATOR_REGISTRY.get(ESTIMATOR_NAME)
        if current is not None and current is not compute_pama_outcome_advantage:
            raise RuntimeError(
                f"verl already has an advantage estimator named {ESTIMATOR_NAME!r}: {current!r}"
            )
        core_algos.register_adv_est(ESTIMATOR_NAME)(compute_pama_outcome_advantage)
        install_patches()


def is_registered() -> bool:
    """Whether verl's registry maps ``pama`` to this package's estimator."""
    from verl.trainer.ppo import core_algos

    return core_algos.ADV_ESTIMATOR_REGISTRY.get(ESTIMATOR_NAME) is compute_pama_outcome_advantage
