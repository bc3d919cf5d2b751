"""The verl 'pama' advantage estimator through verl's own dispatch (legacy and v1 trainers).

Runs in the verl environment (`make test-verl`); skipped where verl is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

verl = pytest.importorskip("verl")

import verl.trainer.ppo.ray_trainer as ray_trainer  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from paretoopt.integrations.verl import (  # noqa: E402
    PAMAConfigError,
    compute_pama_outcome_advantage,
    group_normalized_rewards,
    register,
)
from verl import DataProto  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.utils import torch_functional as verl_F  # noqa: E402

from paretoopt import pama_advantages  # noqa: E402

KEYS = ["accuracy", "format"]
PROMPT_LEN = 3


@pytest.fixture(autouse=True, scope="module")
def _registered() -> None:
    register()


def algo_config(keys=KEYS, norm=True, **extra) -> object:
    """The `algorithm` section as verl's trainers pass it (an OmegaConf DictConfig)."""
    cfg = {
        "adv_estimator": "pama",
        "gamma": 1.0,
        "lam": 1.0,
        "norm_adv_by_std_in_grpo": norm,
        "use_kl_in_reward": False,
        "pama_reward_keys": list(keys) if keys is not None else None,
        **extra,
    }
    if keys is None:
        del cfg["pama_reward_keys"]
    return OmegaConf.create(cfg)


def response_mask_for(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def last_token_scores(values: np.ndarray, mask: torch.Tensor) -> torch.Tensor:
    """A sequence-level reward at each response's last token, as verl's reward managers place it."""
    out = torch.zeros(mask.shape, dtype=torch.float32)
    out[torch.arange(mask.shape[0]), mask.sum(1) - 1] = torch.as_tensor(values, dtype=torch.float32)
    return out


def legacy_batch(
    rewards: dict[str, np.ndarray], uids: list[str], lengths: list[int], width: int = 5
) -> DataProto:
    """A batch shaped like the legacy trainer's just before `compute_advantage`.

    A reward function returning a dict lands its entries in `non_tensor_batch`
    (`reward_extra_info`); the summed score is `token_level_rewards`.
    """
    batch_size = len(uids)
    gen = torch.Generator().manual_seed(0)
    mask = response_mask_for(lengths, width)
    total = sum(np.asarray(v, dtype=np.float64) for v in rewards.values())
    scores = last_token_scores(total, mask)
    return DataProto.from_dict(
        tensors={
            "prompts": torch.randint(0, 50, (batch_size, PROMPT_LEN), generator=gen),
            "responses": torch.randint(0, 50, (batch_size, width), generator=gen) * mask,
            "attention_mask": torch.cat([torch.ones(batch_size, PROMPT_LEN).long(), mask], 1),
            "response_mask": mask,
            "token_level_scores": scores,
            "token_level_rewards": scores.clone(),
        },
        non_tensors={
            "uid": np.array(uids, dtype=object),
            **{k: np.asarray(v, dtype=np.float64) for k, v in rewards.items()},
        },
    )


def expected_pama(
    rewards: dict[str, np.ndarray], keys, uids, mask: torch.Tensor, norm: bool, noon: bool = True
) -> torch.Tensor:
    """Per-objective advantages from verl's own GRPO, then paretoopt.pama_advantages."""
    per_objective = []
    first = torch.zeros(mask.shape[0], dtype=torch.long)  # every response has >= 1 token
    for key in keys:
        adv, _ = core_algos.compute_grpo_outcome_advantage(
            token_level_rewards=last_token_scores(rewards[key], mask),
            response_mask=mask,
            index=np.array(uids, dtype=object),
            norm_adv_by_std_in_grpo=norm,
        )
        per_objective.append(adv[torch.arange(mask.shape[0]), first])
    s_star = pama_advantages(torch.stack(per_objective), granularity="sample", noon=noon)
    return s_star[:, None] * mask


# --------------------------------------------------------------------------------------------
# Legacy trainer: verl's compute_advantage dispatch on a DataProto
# --------------------------------------------------------------------------------------------

groups_strategy = st.lists(st.integers(1, 4), min_size=1, max_size=4)  # responses per prompt
half_steps = st.integers(-6, 6).map(lambda k: k / 2)  # a grid: no near-tied float groups


@given(sizes=groups_strategy, data=st.data(), norm=st.booleans(), noon=st.booleans())
def test_legacy_dispatch_equals_pama_advantages(sizes, data, norm, noon) -> None:
    uids = [f"p{g}" for g, size in enumerate(sizes) for _ in range(size)]
    order = data.draw(st.permutations(range(len(uids))))  # groups need not be contiguous
    uids = [uids[i] for i in order]
    n = len(uids)
    rewards = {
        k: np.array(data.draw(st.lists(half_steps, min_size=n, max_size=n)))
        for k in [*KEYS, "length"]
    }
    lengths = data.draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
    batch = legacy_batch(rewards, uids, lengths)
    keys = [*KEYS, "length"]
    # The trainer passes the std switch too, but the dispatch does not forward it: the
    # estimator must take it from the config (pass the opposite here to prove that).
    out = ray_trainer.compute_advantage(
        batch,
        adv_estimator="pama",
        norm_adv_by_std_in_grpo=not norm,
        config=algo_config(keys, norm=norm, pama_noon=noon),
    )
    mask = batch.batch["response_mask"]
    want = expected_pama(rewards, keys, uids, mask, norm, noon)
    torch.testing.assert_close(out.batch["advantages"], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.batch["returns"], out.batch["advantages"])
    assert (out.batch["advantages"][mask == 0] == 0).all()
    stats = out.meta_info["pama_metrics"]
    assert set(stats) >= {f"pama/binding_rate/{k}" for k in keys} | {"pama/zero_rate"}
    assert stats["pama/zero_rate"] == pytest.approx(float(want[:, 0].eq(0).float().mean()))
    if noon:
        assert (out.batch["advantages"] >= 0).all()


def test_group_normalisation_is_verls_grpo() -> None:
    """The vectorised per-objective normalisation equals verl's loop, singleton groups too."""
    rng = np.random.default_rng(1)
    uids = ["a", "b", "a", "c", "b", "a", "d", "d"]
    rewards = rng.normal(size=(2, len(uids)))
    mask = torch.ones(len(uids), 1, dtype=torch.long)
    for norm in (True, False):
        got = group_normalized_rewards(torch.as_tensor(rewards, dtype=torch.float32), uids, norm)
        for i in range(2):
            want, _ = core_algos.compute_grpo_outcome_advantage(
                token_level_rewards=torch.as_tensor(rewards[i], dtype=torch.float32)[:, None],
                response_mask=mask,
                index=np.array(uids, dtype=object),
                norm_adv_by_std_in_grpo=norm,
            )
            torch.testing.assert_close(got[i], want[:, 0], rtol=1e-5, atol=1e-6)


def test_other_estimators_are_untouched() -> None:
    """The patch is inert unless the estimator is pama: grpo gives verl's own result."""
    rewards = {"accuracy": np.array([1.0, 0.0, 2.0, 1.0]), "format": np.array([0, 1, 1, 0.0])}
    uids = ["a", "a", "b", "b"]
    original = ray_trainer.compute_advantage.__wrapped__
    for estimator in ("grpo", "rloo", "gdpo"):
        cfg = algo_config(gdpo_reward_keys=KEYS)
        got = ray_trainer.compute_advantage(
            legacy_batch(rewards, uids, [2, 3, 1, 4]), estimator, config=cfg
        )
        want = original(legacy_batch(rewards, uids, [2, 3, 1, 4]), estimator, config=cfg)
        torch.testing.assert_close(got.batch["advantages"], want.batch["advantages"])


# --------------------------------------------------------------------------------------------
# Comparison with verl's gdpo on the same batch
# --------------------------------------------------------------------------------------------


def test_shares_gdpo_per_reward_normalisation() -> None:
    """gdpo with one-hot weights is the whitened per-reward advantage pama starts from."""
    rng = np.random.default_rng(2)
    uids = [f"p{j // 4}" for j in range(12)]
    rewards = {k: rng.integers(0, 4, size=12).astype(float) for k in KEYS}
    lengths = list(rng.integers(1, 6, size=12))
    mask = response_mask_for(lengths, 5)
    normalized = group_normalized_rewards(
        torch.as_tensor(np.stack([rewards[k] for k in KEYS]), dtype=torch.float32), uids
    )
    for i in range(len(KEYS)):
        weights = [float(j == i) for j in range(len(KEYS))]
        cfg = algo_config(gdpo_reward_keys=KEYS, gdpo_reward_weights=weights)
        gdpo = ray_trainer.compute_advantage(
            legacy_batch(rewards, uids, lengths), "gdpo", config=cfg
        )
        want = verl_F.masked_whiten(normalized[i][:, None] * mask, mask) * mask
        torch.testing.assert_close(gdpo.batch["advantages"], want, rtol=1e-4, atol=1e-5)


def test_differs_from_gdpo_on_a_trade_off() -> None:
    """gdpo reinforces a response that trades one reward for another; pama does not.

    Group of 4: response 0 is best on accuracy and below the mean on format. gdpo's
    weighted sum of the normalised rewards is positive there; no response is above its
    group's mean on both rewards, so pama reinforces none.
    """
    rewards = {"accuracy": np.array([1.0, 0, 0, 0]), "format": np.array([0.0, 0, 1, 1])}
    uids, lengths = ["a"] * 4, [3, 3, 3, 3]
    cfg = algo_config(gdpo_reward_keys=KEYS)
    gdpo = ray_trainer.compute_advantage(legacy_batch(rewards, uids, lengths), "gdpo", config=cfg)
    pama = ray_trainer.compute_advantage(legacy_batch(rewards, uids, lengths), "pama", config=cfg)
    assert gdpo.batch["advantages"][0, 0] > 0.5
    assert (pama.batch["advantages"] == 0).all()
    # Adding a response that beats the mean on both rewards: only it gets a pama advantage.
    rewards = {k: np.append(v, 1.0) for k, v in rewards.items()}
    pama = ray_trainer.compute_advantage(
        legacy_batch(rewards, ["a"] * 5, [3] * 5), "pama", config=cfg
    )
    adv = pama.batch["advantages"][:, 0]
    assert adv[4] > 0 and (adv[:4] == 0).all()


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def _dispatch(rewards, config, uids=("a", "a", "b", "b")):
    batch = legacy_batch(rewards, list(uids), [2] * len(uids))
    return ray_trainer.compute_advantage(batch, "pama", config=config)


GOOD = {"accuracy": np.array([1.0, 0, 1, 0]), "format": np.array([0.0, 1, 1, 0])}


def test_missing_reward_key_names_it() -> None:
    with pytest.raises(KeyError, match=r"'length'.*available: \['accuracy', 'format', 'uid'\]"):
        _dispatch(GOOD, algo_config([*KEYS, "length"]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_reward_names_key_and_row(bad) -> None:
    rewards = {**GOOD, "format": np.array([0.0, 1, bad, 0])}
    with pytest.raises(ValueError, match=r"'format' is not finite .* row 2"):
        _dispatch(rewards, algo_config())


def test_non_numeric_reward_is_refused() -> None:
    batch = legacy_batch(GOOD, ["a", "a", "b", "b"], [2] * 4)
    batch.non_tensor_batch["format"] = np.array(["x", "y", "z", "w"], dtype=object)
    with pytest.raises(ValueError, match=r"'format' is not numeric"):
        ray_trainer.compute_advantage(batch, "pama", config=algo_config())


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        (["accuracy"], r"1 objective\(s\).*use adv_estimator=grpo"),
        ([], r"0 objective\(s\)"),
        (None, r"pama_reward_keys=\[key_a,key_b\]"),
        (["format", "format"], r"repeats \['format'\]"),
    ],
)
def test_config_errors(keys, match) -> None:
    with pytest.raises(PAMAConfigError, match=match):
        _dispatch(GOOD, algo_config(keys))


def test_estimator_without_patch_explains_why() -> None:
    """Called the way verl calls a registered estimator, without the patch: a clear error."""
    fn = core_algos.get_adv_estimator_fn("pama")
    assert fn is compute_pama_outcome_advantage
    mask = torch.ones(4, 2, dtype=torch.long)
    with pytest.raises(RuntimeError, match="does not pass them to registered estimators"):
        fn(
            token_level_rewards=torch.zeros(4, 2),
            response_mask=mask,
            config=algo_config(),
            index=np.array(["a", "a", "b", "b"], dtype=object),
        )


def test_missing_uid_is_refused() -> None:
    batch = legacy_batch(GOOD, ["a", "a", "b", "b"], [2] * 4)
    del batch.non_tensor_batch["uid"]
    with pytest.raises(ValueError, match="needs the batch's 'uid'"):
        ray_trainer.compute_advantage(batch, "pama", config=algo_config())
