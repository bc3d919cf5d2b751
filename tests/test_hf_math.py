"""The trainer's arithmetic, checked against plain loops and by its properties (no model)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from paretoopt.integrations.hf import (
    AdaptiveKLController,
    MOPPOConfig,
    RewardError,
    RewardModelFunction,
    clipped_value_loss,
    discounted_cumsum,
    gae,
    kl_penalized_rewards,
    length_reward,
    make_length_reward,
    parse_reward_spec,
    response_mask,
)
from paretoopt.integrations.hf.advantages import normalize_advantages
from paretoopt.integrations.hf.rewards import score_batch

pytestmark = pytest.mark.hf


def _random_mask(batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    return (torch.arange(length)[None, :] < lengths[:, None]).long()


def _gae_loop(rewards, values, mask, gamma, lam):
    """Textbook backward recursion, one sequence at a time."""
    n, batch, _ = rewards.shape
    adv = torch.zeros_like(rewards, dtype=torch.float64)
    for i in range(n):
        for b in range(batch):
            length = int(mask[b].sum())
            running = 0.0
            for t in reversed(range(length)):
                next_v = float(values[i, b, t + 1]) if t + 1 < length else 0.0
                delta = float(rewards[i, b, t]) + gamma * next_v - float(values[i, b, t])
                running = delta + gamma * lam * running
                adv[i, b, t] = running
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_backward_recursion(gamma: float, lam: float) -> None:
    gen = torch.Generator().manual_seed(1)
    n, batch, length = 3, 5, 9
    mask = _random_mask(batch, length, gen)
    rewards = torch.randn(n, batch, length, generator=gen, dtype=torch.float64) * mask
    values = torch.randn(n, batch, length, generator=gen, dtype=torch.float64)
    adv, returns = gae(rewards, values, mask, gamma, lam)
    expected = _gae_loop(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(returns, (expected + values) * mask, rtol=1e-10, atol=1e-10)
    assert torch.all(adv[:, mask == 0] == 0)


def test_gae_lambda_one_gamma_one_gives_reward_to_go_minus_value() -> None:
    # With gamma = lambda = 1 the advantage telescopes to sum_{s>=t} r_s - V_t.
    gen = torch.Generator().manual_seed(2)
    mask = _random_mask(4, 6, gen)
    rewards = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64) * mask
    values = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64)
    adv, _ = gae(rewards, values, mask, 1.0, 1.0)
    to_go = rewards.flip(-1).cumsum(-1).flip(-1)
    torch.testing.assert_close(adv, (to_go - values) * mask)


def test_discounted_cumsum_matches_loop() -> None:
    x = torch.randn(2, 3, 7, dtype=torch.float64)
    out = discounted_cumsum(x, 0.7)
    expected = torch.zeros_like(x)
    running = torch.zeros_like(x[..., 0])
    for t in reversed(range(7)):
        running = x[..., t] + 0.7 * running
        expected[..., t] = running
    torch.testing.assert_close(out, expected)


def test_kl_penalty_on_every_token_and_score_on_the_last() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -9.0], [-1.0, -3.0, -3.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-2.0, 0.0, 0.0, 0.0]])
    scores = torch.tensor([[2.0, -1.0], [10.0, 20.0]])  # [n=2, B=2]
    rewards, kl = kl_penalized_rewards(scores, logprobs, ref, mask, kl_coef=0.2)
    expected_kl = torch.tensor([[0.5, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(kl, expected_kl)
    for i in range(2):
        expected = -0.2 * expected_kl
        expected[0, 2] += scores[i, 0]
        expected[1, 0] += scores[i, 1]
        torch.testing.assert_close(rewards[i], expected)


def test_response_mask_keeps_first_eos_and_handles_pad_equal_eos() -> None:
    eos = 1
    ids = torch.tensor([[5, 6, 1, 1, 1], [5, 1, 7, 1, 8], [5, 6, 7, 8, 9], [1, 1, 1, 1, 1]])
    mask = response_mask(ids, [eos])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert torch.equal(mask, expected)
    assert torch.equal(response_mask(ids, [eos, 9])[2], torch.tensor([1, 1, 1, 1, 1]))
    assert torch.equal(response_mask(ids, [9, 8])[1], torch.tensor([1, 1, 1, 1, 1]))


def test_normalisation_is_global_across_processes() -> None:
    """Two halves with a simulated all-gather give the statistics of the whole batch."""
    gen = torch.Generator().manual_seed(3)
    mask = _random_mask(8, 5, gen)
    adv = torch.randn(2, 8, 5, generator=gen, dtype=torch.float64) * 3 + 1
    for mode in ("scale", "whiten"):
        whole = normalize_advantages(adv, mask, mode)
        halves = [(adv[:, :4], mask[:4]), (adv[:, 4:], mask[4:])]
        # What each process contributes to the all-gather (its local sums and counts).
        local_stats = []
        for a, m in halves:
            seen: list[torch.Tensor] = []
            normalize_advantages(a, m, mode, gather=lambda x, seen=seen: seen.append(x) or x)
            local_stats.append(seen[0])

        def all_gather(local: torch.Tensor, stats=tuple(local_stats)) -> torch.Tensor:
            return torch.cat(stats, dim=0)  # what accelerator.gather returns

        parts = [normalize_advantages(a, m, mode, gather=all_gather) for a, m in halves]
        torch.testing.assert_close(torch.cat(parts, dim=1), whole)
    valid = mask.bool()
    whitened = normalize_advantages(adv, mask, "whiten")
    for i in range(2):
        assert abs(float(whitened[i][valid].mean())) < 1e-10
        assert math.isclose(float(whitened[i][valid].std()), 1.0, rel_tol=1e-6)
    scaled = normalize_advantages(adv, mask, "scale")
    assert torch.equal(scaled[:, valid] > 0, adv[:, valid] > 0)  # signs kept: same Noon tokens
    assert normalize_advantages(adv, mask, "none") is adv


def test_clipped_value_loss() -> None:
    gen = torch.Generator().manual_seed(4)
    mask = _random_mask(3, 4, gen).float()
    old = torch.randn(2, 3, 4, generator=gen)
    returns = torch.randn(2, 3, 4, generator=gen)
    # Within the clip range the loss is 0.5 * masked MSE, summed over objectives.
    values = old + 0.05
    loss = clipped_value_loss(values, old, returns, mask, cliprange_value=0.2)
    mse = (((values - returns) ** 2) * mask).sum(dim=(1, 2)) / mask.sum()
    torch.testing.assert_close(loss, 0.5 * mse.sum())
    # A value moved far past the clip range cannot lower the loss below the clipped one.
    far = old + 10.0
    clipped = old + 0.2
    loss_far = clipped_value_loss(far, old, returns, mask, 0.2)
    per_tok = torch.maximum((far - returns) ** 2, (clipped - returns) ** 2)
    torch.testing.assert_close(
        loss_far, 0.5 * ((per_tok * mask).sum(dim=(1, 2)) / mask.sum()).sum()
    )


def test_adaptive_kl_controller() -> None:
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=100)
    ctl.update(12.0, n_steps=10)  # KL twice the target: error clipped to +0.2
    assert math.isclose(ctl.value, 0.2 * (1 + 0.2 * 10 / 100))
    before = ctl.value
    ctl.update(3.0, n_steps=10)  # half the target: error clipped to -0.2
    assert math.isclose(ctl.value, before * (1 - 0.2 * 10 / 100))
    fixed = AdaptiveKLController(0.2, 6.0, 100, adaptive=False)
    fixed.update(100.0, 10)
    assert fixed.value == 0.2


def test_length_reward(tmp_path) -> None:
    responses = ["", "x" * 70, "y" * 500]
    assert length_reward(["p"] * 3, responses) == [0.0, 0.5, 1.0]
    words = make_length_reward(scale=4, lo=0.25, hi=0.75, unit="words")
    assert words(["p"] * 3, ["", "a b", "a b c d e"]) == [0.25, 0.5, 0.75]
    assert parse_reward_spec("length") is length_reward
    spec = parse_reward_spec("length:4:0.25:0.75:words")
    assert spec(["p"], ["a b"]) == [0.5]
    rm = parse_reward_spec(f"helpful={tmp_path}:1")  # a local path must exist
    assert isinstance(rm, RewardModelFunction)
    assert (rm.name, rm.name_or_path, rm.label_index) == ("helpful", str(tmp_path), 1)
    plain = parse_reward_spec("org/model")
    assert (plain.name, plain.label_index) == ("model", 0)
    with pytest.raises(ValueError):
        make_length_reward(unit="tokens")


def test_score_batch_names_the_function_and_step() -> None:
    def fine(prompts, responses):
        return [1.0] * len(responses)

    def boom(prompts, responses):
        raise KeyError("missing field")

    def nan(prompts, responses):
        return [0.0, float("nan")]

    def short(prompts, responses):
        return [0.0]

    prompts, responses = ["a", "b"], ["x", "y"]
    out = score_batch([fine, fine], ["f", "g"], prompts, responses, step=1)
    assert out.shape == (2, 2)
    for fn, fragment in ((boom, "raised KeyError"), (nan, "non-finite"), (short, "1 values")):
        with pytest.raises(RewardError) as info:
            score_batch([fine, fn], ["fine", "bad_one"], prompts, responses, step=7)
        message = str(info.value)
        assert "'bad_one'" in message and "step 7" in message and fragment in message
        assert (info.value.name, info.value.index, info.value.step) == ("bad_one", 1, 7)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="mini_batch_size"):
        MOPPOConfig(batch_size=2, mini_batch_size=4)
    with pytest.raises(ValueError, match="combiner"):
        MOPPOConfig(combiner="best")
    with pytest.raises(ValueError, match="ratio_to"):
        MOPPOConfig(ratio_to="new")
    with pytest.raises(ValueError, match="gae_lambda"):
        MOPPOConfig(gae_lambda=1.5)
    cfg = MOPPOConfig(combiner="linear", combiner_kwargs={"weights": [0.3, 0.7]})
    assert MOPPOConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        MOPPOConfig.from_dict({"stepz": 3})
