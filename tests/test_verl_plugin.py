"""verl plug-in: entry-point registration, the version guard, and the v1 trainer's path.

Runs in the verl environment (`make test-verl`); skipped where verl is not installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from types import SimpleNamespace

import numpy as np
import pytest
import torch

verl = pytest.importorskip("verl")

import verl.trainer.ppo.v1.trainer_base as trainer_base  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from paretoopt.integrations.verl import (  # noqa: E402
    UnsupportedVerlVersionError,
    check_verl_version,
    compute_pama_outcome_advantage,
    is_registered,
    plugin,
    register,
)
from paretoopt.integrations.verl.patch import ALLOW_UNTESTED_ENV  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from transfer_queue import KVBatchMeta  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402

from paretoopt import pama_advantages  # noqa: E402

KEYS = ["accuracy", "format"]


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------


def test_entry_point_registers_in_a_fresh_process() -> None:
    """`import verl` alone registers pama (as in a Ray worker) without importing the trainer;
    importing the trainers afterwards patches both dispatch paths."""
    code = textwrap.dedent(
        """
        import sys, warnings
        warnings.simplefilter("error", RuntimeWarning)
        import verl
        from verl.trainer.ppo import core_algos
        from paretoopt.integrations.verl import compute_pama_outcome_advantage as fn
        assert core_algos.get_adv_estimator_fn("pama") is fn
        assert "verl.trainer.ppo.ray_trainer" not in sys.modules
        import verl.trainer.ppo.v1.trainer_base as tb
        import verl.trainer.ppo.ray_trainer as rt
        import verl.trainer.ppo.v1.utils as u
        mark = "__paretoopt_pama_wrapped__"
        assert getattr(rt.compute_advantage, mark, False)
        assert u.compute_advantage is rt.compute_advantage
        assert getattr(tb.PPOTrainer._compute_advantage, mark, False)
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_entry_point_is_declared() -> None:
    names = {ep.value for ep in entry_points(group="verl.plugins")}
    assert "paretoopt.integrations.verl.plugin" in names


def test_register_is_idempotent() -> None:
    register()
    register()
    assert is_registered()
    assert core_algos.get_adv_estimator_fn("pama") is compute_pama_outcome_advantage
    # The wrappers are applied once, not stacked.
    wrapped = trainer_base.PPOTrainer._compute_advantage
    assert not getattr(wrapped.__wrapped__, "__paretoopt_pama_wrapped__", False)


def test_register_refuses_a_foreign_pama(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(core_algos.ADV_ESTIMATOR_REGISTRY, "pama", lambda **kw: None)
    with pytest.raises(RuntimeError, match="already has an advantage estimator named 'pama'"):
        register()


def test_plugin_failure_is_loud(monkeypatch: pytest.MonkeyPatch) -> None:
    """verl logs entry-point failures at debug level only; the plug-in warns itself."""

    def broken() -> None:
        raise UnsupportedVerlVersionError("verl 9.9 is untested")

    monkeypatch.setattr(plugin, "register", broken)
    with pytest.warns(RuntimeWarning, match="could not register verl advantage estimator 'pama'"):
        assert plugin.load() is False


def test_untested_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    monkeypatch.setattr(verl, "__version__", "0.11.0")
    with pytest.raises(UnsupportedVerlVersionError, match=r"verl>=0.9.1,<0.10.0; found verl 0.11"):
        check_verl_version()
    assert check_verl_version(allow_untested=True) == "0.11.0"
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, "1")
    assert check_verl_version() == "0.11.0"


def test_changed_internals_are_refused_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from paretoopt.integrations.verl import patch

    def compute_advantage(data, adv_estimator, config=None):  # a different signature
        return data

    fake = SimpleNamespace(
        __name__="verl.trainer.ppo.ray_trainer", compute_advantage=compute_advantage
    )
    with pytest.warns(RuntimeWarning, match="could not patch .*has parameters"):
        patch._apply(patch.LEGACY_MODULE, fake)
    assert fake.compute_advantage is compute_advantage


# --------------------------------------------------------------------------------------------
# v1 trainer: PPOTrainer._compute_advantage with its TransferQueue reads
# --------------------------------------------------------------------------------------------


class InMemoryKV:
    """TransferQueue's kv_batch_get / kv_batch_put over a dict, for one process.

    The real client needs a Ray cluster with its controller and storage actors; the v1
    trainer uses only these two calls here. Tensors are stored per sample and returned as
    jagged nested tensors, the layout the trainer reads.
    """

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, object]] = {}
        self.selects: list[list[str]] = []

    def kv_batch_put(self, keys, partition_id, fields: TensorDict, tags=None):
        for name in fields.keys():
            value = fields[name]
            items = value.unbind() if isinstance(value, torch.Tensor) else list(value)
            for key, item in zip(keys, items, strict=True):
                self.rows.setdefault(key, {})[name] = item
        return None

    def kv_batch_get(self, keys, partition_id, select_fields=None) -> TensorDict:
        self.selects.append(list(select_fields))
        out = {}
        for name in select_fields:
            present = [name in self.rows[k] for k in keys]
            if not any(present):
                continue  # e.g. values without a critic
            assert all(present), f"field {name} missing for some keys"
            values = [self.rows[k][name] for k in keys]
            if isinstance(values[0], torch.Tensor) and values[0].dim() == 1:
                values = torch.nested.as_nested_tensor(values, layout=torch.jagged)
            out[name] = values
        return tu.get_tensordict(out)


def v1_store(rewards, uids, lengths, top_level: bool = False):
    """A TransferQueue holding what the v1 trainer has written before the advantage step."""
    kv = InMemoryKV()
    keys = [f"{uid}_{j}_0" for j, uid in enumerate(uids)]
    total = sum(np.asarray(v, dtype=np.float64) for v in rewards.values())
    for j, key in enumerate(keys):
        rm = torch.zeros(lengths[j])
        rm[-1] = float(total[j])
        info = {k: float(v[j]) for k, v in rewards.items()}
        row = {
            "uid": uids[j],
            "response_mask": torch.ones(lengths[j], dtype=torch.int64),
            "rm_scores": rm,
            "extra_fields": {"reward_extra_info": info, "turns": 1},
        }
        if top_level:  # a colocated reward model writes its extra keys as fields
            row.update(info)
            row["extra_fields"] = {}
        kv.rows[key] = row
    fields = ["uid", "response_mask", "rm_scores", "extra_fields"]
    if top_level:
        fields += list(rewards)
    meta = KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id="train", fields=fields)
    return kv, meta


def v1_trainer(norm: bool = True, keys=KEYS, estimator: str = "pama") -> SimpleNamespace:
    """The attributes of a v1 PPOTrainer that its _compute_advantage reads."""
    config = OmegaConf.create(
        {
            "algorithm": {
                "adv_estimator": estimator,
                "gamma": 1.0,
                "lam": 1.0,
                "norm_adv_by_std_in_grpo": norm,
                "use_kl_in_reward": False,
                "rollout_correction": None,
                "pama_reward_keys": list(keys),
            },
            "actor_rollout_ref": {"rollout": {"n": 4}},
        }
    )
    return SimpleNamespace(config=config)


def run_v1(kv, meta, trainer, metrics: dict | None = None) -> list[torch.Tensor]:
    register()
    original = trainer_base.tq
    trainer_base.tq = kv
    try:
        trainer_base.PPOTrainer._compute_advantage(
            trainer, meta, {} if metrics is None else metrics
        )
    finally:
        trainer_base.tq = original
    return [kv.rows[k]["advantages"] for k in meta.keys]


def expected(rewards, uids, norm=True) -> torch.Tensor:
    per_objective = []
    for key in KEYS:
        adv, _ = core_algos.compute_grpo_outcome_advantage(
            token_level_rewards=torch.as_tensor(rewards[key], dtype=torch.float32)[:, None],
            response_mask=torch.ones(len(uids), 1, dtype=torch.long),
            index=np.array(uids, dtype=object),
            norm_adv_by_std_in_grpo=norm,
        )
        per_objective.append(adv[:, 0])
    return pama_advantages(torch.stack(per_objective), granularity="sample")


REWARDS = {
    "accuracy": np.array([1.0, 0.0, 1.0, 0.5, 2.0, 0.0, 1.0, 1.0]),
    "format": np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5]),
}
UIDS = ["a", "b", "a", "b", "a", "b", "a", "b"]  # interleaved groups, as after a shuffle
LENGTHS = [3, 1, 4, 2, 2, 5, 1, 3]


@pytest.mark.parametrize("top_level", [False, True], ids=["agent_loop_reward", "colocated_rm"])
@pytest.mark.parametrize("norm", [True, False])
def test_v1_trainer_path_equals_pama_advantages(top_level: bool, norm: bool) -> None:
    kv, meta = v1_store(REWARDS, UIDS, LENGTHS, top_level=top_level)
    metrics: dict = {}
    got = run_v1(kv, meta, v1_trainer(norm), metrics)
    want = expected(REWARDS, UIDS, norm)
    assert want.gt(0).any() and want.eq(0).any()
    for j, adv in enumerate(got):
        assert adv.shape == (LENGTHS[j],)
        torch.testing.assert_close(adv, want[j].expand(LENGTHS[j]), rtol=1e-5, atol=1e-6)
    # The diagnostics reach the trainer's metrics dict.
    assert metrics["pama/zero_rate"] == pytest.approx(float(want.eq(0).float().mean()))
    assert metrics["pama/mean_advantage"] == pytest.approx(float(want.mean()), abs=1e-6)
    binding = metrics["pama/binding_rate/accuracy"] + metrics["pama/binding_rate/format"]
    assert binding == pytest.approx(1.0)


def test_v1_other_estimators_read_nothing_more() -> None:
    kv, meta = v1_store(REWARDS, UIDS, LENGTHS)
    run_v1(kv, meta, v1_trainer(estimator="grpo"))
    assert all("extra_fields" not in s for s in kv.selects)


def test_v1_missing_reward_key_names_it() -> None:
    kv, meta = v1_store(REWARDS, UIDS, LENGTHS)
    with pytest.raises(KeyError, match=r"'length' is missing .* 8 of 8 .*\['accuracy', 'format'\]"):
        run_v1(kv, meta, v1_trainer(keys=[*KEYS, "length"]))


def test_v1_non_finite_reward_names_it() -> None:
    rewards = {**REWARDS, "accuracy": np.where(np.arange(8) == 5, np.nan, REWARDS["accuracy"])}
    kv, meta = v1_store(rewards, UIDS, LENGTHS)
    with pytest.raises(ValueError, match=r"'accuracy' is not finite .* row 5"):
        run_v1(kv, meta, v1_trainer())


def test_v1_gdpo_gets_no_rewards_there() -> None:
    """Why the v1 patch exists: verl's own gdpo cannot run in the v1 trainer (verl 0.9.1)."""
    kv, meta = v1_store(REWARDS, UIDS, LENGTHS)
    trainer = v1_trainer(estimator="gdpo")
    trainer.config.algorithm.gdpo_reward_keys = KEYS
    with pytest.raises(KeyError, match="prompts"):
        run_v1(kv, meta, trainer)
