"""The PPO set-up of the trainer: the literature's MORLHF and its per-loss variants, GDPO,
PAMA-UB, Noon as a switch, MGDA's normalisation, the value warm-up and the per-objective value
error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from hf_fixtures import PROMPTS, good_rate, length_words
from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer
from paretoopt.integrations.hf.advantages import (
    MinNormAdvantages,
    advantage_gram,
    gae,
    kl_penalized_rewards,
    min_norm_advantages,
    scalarize_advantages,
)
from paretoopt.integrations.hf.metrics import value_error_metrics
from paretoopt.integrations.hf.update import policy_loss

pytestmark = pytest.mark.hf


def config(tmp_path: Path, **overrides) -> MOPPOConfig:
    base = dict(
        steps=1,
        batch_size=8,
        mini_batch_size=4,
        ppo_epochs=1,
        max_new_tokens=8,
        learning_rate=3e-3,
        kl_coef=0.05,
        output_dir=str(tmp_path / "run"),
        progress=False,
        save_final=False,
        log_jsonl=False,
    )
    base.update(overrides)
    return MOPPOConfig(**base)


def trainer_for(path: Path, cfg: MOPPOConfig, rewards=None) -> MOPPOTrainer:
    rewards = rewards if rewards is not None else [length_words, good_rate]
    names = ["len", "other", "third"][: len(rewards)]
    return MOPPOTrainer(cfg, str(path), prompts=PROMPTS, rewards=rewards, reward_names=names)


# ----------------------------------------------------------------- the mathematics of MORLHF


@settings(max_examples=30)
@given(st.integers(0, 10_000), st.integers(1, 4), st.floats(0.0, 1.0), st.floats(0.5, 1.0))
def test_weighted_gae_is_gae_on_the_scalarised_reward(
    seed: int, n: int, gamma: float, lam: float
) -> None:
    """sum_i w_i GAE(r_i, V_i) = GAE(sum_i w_i r_i, sum_i w_i V_i): GAE is linear."""
    gen = torch.Generator().manual_seed(seed)
    b, t = 3, 7
    rewards = torch.randn(n, b, t, generator=gen, dtype=torch.float64)
    values = torch.randn(n, b, t, generator=gen, dtype=torch.float64)
    mask = torch.ones(b, t, dtype=torch.bool)
    for row, length in enumerate(torch.randint(1, t + 1, (b,), generator=gen).tolist()):
        mask[row, length:] = False
    w = torch.rand(n, generator=gen, dtype=torch.float64)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    scalar_adv, scalar_ret = gae(
        (w.view(-1, 1, 1) * rewards).sum(0, keepdim=True),
        (w.view(-1, 1, 1) * values).sum(0, keepdim=True),
        mask,
        gamma,
        lam,
    )
    torch.testing.assert_close((w.view(-1, 1, 1) * adv).sum(0), scalar_adv[0])
    torch.testing.assert_close((w.view(-1, 1, 1) * ret).sum(0), scalar_ret[0])


def test_trainer_morlhf_advantage_is_gae_on_the_scalarised_reward(
    tiny_lm: Path, tmp_path: Path
) -> None:
    """The trainer's MORLHF advantage, recomputed from its own rollout the textbook way."""
    cfg = config(tmp_path, combiner="morlhf", combiner_weights=[0.3, 0.7], kl_coef=0.2)
    trainer = trainer_for(tiny_lm, cfg)
    rollout = trainer.rollout(trainer.sample_prompts(1))
    scores = trainer.score(rollout, 1)
    fwd = trainer.forward_rollout(rollout)
    batch = trainer.compute_advantages(rollout, scores)
    # Make the KL term nonzero so that it enters the scalarised reward too.
    logprobs = fwd["logprobs"] + 0.1 * torch.randn_like(fwd["logprobs"])
    rewards, _ = kl_penalized_rewards(scores, logprobs, fwd["ref_logprobs"], rollout.mask, 0.2)
    raw, _ = gae(rewards, fwd["values"], rollout.mask, cfg.gamma, cfg.gae_lambda)
    w = torch.tensor([0.3, 0.7])
    scalar_reward = kl_penalized_rewards(
        (w[:, None] * scores).sum(0, keepdim=True), logprobs, fwd["ref_logprobs"], rollout.mask, 0.2
    )[0]
    scalar_value = (w.view(-1, 1, 1) * fwd["values"]).sum(0, keepdim=True)
    expected, _ = gae(scalar_reward, scalar_value, rollout.mask, cfg.gamma, cfg.gae_lambda)
    got = scalarize_advantages(raw, trainer.combiner.weights, rollout.mask)
    torch.testing.assert_close(got, expected[0], rtol=1e-5, atol=1e-6)
    # And the batch the update reads carries exactly this advantage (KL 0 at step 1).
    raw0, _ = gae(
        kl_penalized_rewards(scores, fwd["logprobs"], fwd["ref_logprobs"], rollout.mask, 0.2)[0],
        fwd["values"],
        rollout.mask,
        cfg.gamma,
        cfg.gae_lambda,
    )
    assert batch.scalar_advantages is not None
    torch.testing.assert_close(
        batch.scalar_advantages, scalarize_advantages(raw0, trainer.combiner.weights, rollout.mask)
    )
    assert bool((batch.scalar_advantages < 0).any())  # signed: no Noon clipping


# ------------------------------------------------------ morlhf vs linear_noon vs linear


CASES = {
    # name: (config overrides, d loss / d logprob per valid token x count, at u = 1 and u = 1.3)
    "morlhf": (dict(combiner="morlhf"), 1.0, 1.3),
    "linear_noon": (dict(combiner="linear_noon"), -0.5, 0.0),
    "linear": (dict(combiner="linear", noon=False), 1.0, 1.95),
    "linear+noon": (dict(combiner="linear", noon=True), -0.5, 0.0),
}


def test_morlhf_linear_noon_and_linear_differ_as_documented(tiny_lm: Path, tmp_path: Path) -> None:
    """A_len = +1, A_other = -3 on every token, weights 0.5/0.5, ratio to pi_old.

    At u = 1: MORLHF's one advantage is -1 (push down); linear_noon sums Noon losses,
    0.5 * 1 + 0.5 * 0 (push up); linear without Noon is linear in A, equal to MORLHF.
    At u = 1.3 (> 1 + eps): MORLHF clips the sum (A = -1 < 0 keeps its gradient, u A);
    linear clips each objective (A_len > 0 clipped away, only 0.5 * (-3) u remains).
    """
    for name, (overrides, at_one, at_high) in CASES.items():
        cfg = config(tmp_path / name, ratio_to="old", **overrides)
        trainer = trainer_for(tiny_lm, cfg)
        torch.manual_seed(0)
        rollout = trainer.rollout(PROMPTS[:4])
        scores = trainer.score(rollout, 1)
        fwd = trainer.forward_rollout(rollout)
        mask = rollout.mask.bool()
        raw = torch.stack([torch.ones_like(fwd["logprobs"]), -3 * torch.ones_like(fwd["logprobs"])])
        raw = raw * mask
        kl = torch.zeros_like(fwd["logprobs"])
        batch = trainer.combine(rollout, scores, fwd, raw, raw, kl)
        idx = torch.arange(mask.shape[0])
        count = float(mask.sum())
        for shift, expected in ((0.0, at_one), (math.log(1.3), at_high)):
            batch.logprobs = fwd["logprobs"] - shift
            out = trainer.model(rollout.input_ids, rollout.attention_mask, rollout.response_start)
            loss, _, _ = policy_loss(trainer.ppo_setup(), out, batch, idx)
            (grad,) = torch.autograd.grad(loss, out["logprobs"])
            # ratio u at the model's own log-probs: exp(shift) (rollout == update forward).
            torch.testing.assert_close(
                grad[mask] * count,
                torch.full_like(grad[mask], expected),
                rtol=1e-4,
                atol=1e-5,
                msg=f"{name} at shift {shift}",
            )


# ----------------------------------------------------------------- weights and config


def test_weights_are_checked_against_the_rewards_in_the_constructor(
    tiny_lm: Path, tmp_path: Path
) -> None:
    for combiner in ("morlhf", "linear_noon", "linear"):
        cfg = config(tmp_path, combiner=combiner, combiner_weights=[0.2, 0.3, 0.5])
        with pytest.raises(ValueError, match="3 weights but the trainer has 2 rewards"):
            trainer_for(tiny_lm, cfg)
    cfg = config(tmp_path, combiner="morlhf", combiner_kwargs={"weights": [1.0]})
    with pytest.raises(ValueError, match=r"combiner_kwargs\['weights'\] has 1 weights"):
        trainer_for(tiny_lm, cfg)
    # Default: uniform over however many rewards there are.
    trainer = trainer_for(
        tiny_lm, config(tmp_path, combiner="morlhf"), [length_words, good_rate, good_rate]
    )
    assert trainer.combiner.weights == pytest.approx((1 / 3, 1 / 3, 1 / 3))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(combiner="pama", combiner_weights=[0.5, 0.5]), "applies to"),
        (dict(combiner="morlhf", combiner_weights=[0.5, -0.1]), r"combiner_weights\[1\]"),
        (dict(combiner="morlhf", combiner_weights=[0.0, 0.0]), "all zero"),
        (dict(combiner="morlhf", combiner_weights=[]), "empty"),
        (
            dict(combiner="linear", combiner_weights=[1, 1], combiner_kwargs={"weights": [1, 1]}),
            "not both",
        ),
        (dict(mgda_normalization="unit"), "mgda_normalization"),
        (dict(value_warmup_steps=-1), "value_warmup_steps"),
        (dict(noon="yes"), "noon"),
        (dict(combiner="morlhf_noon"), "combiner"),
        (
            dict(combiner="pama_ub", combiner_weights=[0.5, 0.5]),
            "combiner_weights does not apply to combiner='pama_ub'",
        ),
        (
            dict(combiner="pama_ub", combiner_kwargs={"weights": [0.5, 0.5]}),
            "combiner_kwargs must be empty for combiner='pama_ub'",
        ),
    ],
)
def test_bad_ppo_setup_fields_are_named(fields: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MOPPOConfig(**fields)


def test_mgda_normalization_reaches_the_combiner(tiny_lm: Path, tmp_path: Path) -> None:
    for combiner in ("mgda_ub", "mgda"):
        default = trainer_for(tiny_lm, config(tmp_path, combiner=combiner)).combiner
        assert default.normalization == "l2"
        ablation = trainer_for(
            tiny_lm, config(tmp_path, combiner=combiner, mgda_normalization="none")
        ).combiner
        assert ablation.normalization == "none"


def test_pama_without_noon_fast_path_equals_generic_route(tiny_lm: Path, tmp_path: Path) -> None:
    results = []
    for fast in (True, False):
        cfg = config(tmp_path / str(fast), ppo_epochs=2, pama_fast_path=fast, noon=False)
        trainer = trainer_for(tiny_lm, cfg)
        initial = {k: v.clone() for k, v in trainer.unwrapped.state_dict().items()}
        history = trainer.train()
        results.append((initial, dict(trainer.unwrapped.state_dict())))
        # Without Noon the closed form can be negative: a token all objectives call bad.
        assert history[0]["zero_rate"] < 1.0
    (initial, fast_params), (_, generic_params) = results
    for key in fast_params:
        torch.testing.assert_close(fast_params[key], generic_params[key], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(fast_params[k], initial[k]) for k in fast_params)


# ----------------------------------------------------------- value warm-up and value error


def test_value_error_metrics_by_hand() -> None:
    values = torch.tensor([[[1.0, 2.0, 9.0]], [[0.0, 0.0, 0.0]]])
    returns = torch.tensor([[[2.0, 2.0, 0.0]], [[1.0, 3.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    out = value_error_metrics(values, returns, mask, ["a", "b"])
    assert out["value/error/a"] == pytest.approx(0.5)  # (1 + 0) / 2; the masked 81 is ignored
    assert out["value/error/b"] == pytest.approx(5.0)  # (1 + 9) / 2
    # a: Var(R) = 0 (returns 2, 2): undefined, left out. b: residual = returns: 1 - 1 = 0.
    assert "value/explained_variance/a" not in out
    assert out["value/explained_variance/b"] == pytest.approx(0.0)


def test_value_warmup_leaves_the_policy_and_lowers_the_value_error(
    tiny_lm: Path, tmp_path: Path
) -> None:
    cfg = config(tmp_path, value_warmup_steps=4, ppo_epochs=2, learning_rate=1e-2)
    trainer = trainer_for(tiny_lm, cfg)
    torch.manual_seed(123)
    held_out = trainer.rollout(PROMPTS)
    scores = trainer.score(held_out, 0)

    def error_on_held_out() -> float:
        fwd = trainer.forward_rollout(held_out)
        rewards, _ = trainer.kl_penalized_rewards(scores, fwd, held_out.mask)
        _, returns = trainer.per_objective_gae(rewards, fwd["values"], held_out.mask)
        return value_error_metrics(fwd["values"], returns, held_out.mask, ["len", "other"])[
            "value/error/len"
        ]

    policy_before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    heads_before = {k: v.clone() for k, v in trainer.unwrapped.value_heads.state_dict().items()}
    error_before = error_on_held_out()
    trainer.run_value_warmup()

    assert trainer.value_warmup_step == 4 and trainer.global_step == 0
    for key, value in trainer.policy.state_dict().items():
        assert torch.equal(value, policy_before[key]), key
    heads = trainer.unwrapped.value_heads.state_dict()
    assert any(not torch.equal(heads[k], heads_before[k]) for k in heads)
    assert error_on_held_out() < error_before
    logged = trainer.value_warmup_history
    assert [m["value_warmup_step"] for m in logged] == [1.0, 2.0, 3.0, 4.0]
    assert all(m["step"] == 0.0 and m["value/error/len"] >= 0 for m in logged)
    assert trainer.history == []  # training steps are counted apart


def test_value_warmup_resumes_and_every_step_logs_value_error(
    tiny_lm: Path, tmp_path: Path
) -> None:
    cfg = config(tmp_path / "a", steps=2, value_warmup_steps=2, save_every=1, log_jsonl=True)
    straight = trainer_for(tiny_lm, cfg)
    history = straight.train()
    for metrics in history:
        for name in ("len", "other"):
            assert math.isfinite(metrics[f"value/error/{name}"])
            assert metrics[f"value/error/{name}"] >= 0
    lines = (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # 2 warm-up lines (step 0), then steps 1 and 2

    # Resume after the warm-up (checkpoint-0): no second warm-up, the same end point.
    ckpt = tmp_path / "a" / "run" / "checkpoint-0"
    resumed = trainer_for(
        tiny_lm, config(tmp_path / "b", steps=2, value_warmup_steps=2, resume_from=str(ckpt))
    )
    assert resumed.value_warmup_step == 2 and len(resumed.value_warmup_history) == 2
    resumed.train()
    assert len(resumed.value_warmup_history) == 2 and len(resumed.history) == 2
    end_a = straight.unwrapped.state_dict()
    for key, value in resumed.unwrapped.state_dict().items():
        torch.testing.assert_close(value, end_a[key], rtol=1e-5, atol=1e-6)


def test_cli_flags_reach_the_config(tmp_path: Path) -> None:
    from paretoopt.integrations.hf.cli import _config_from_args, build_parser

    base = ["--policy", "p", "--prompts", "x.txt", "--reward", "length", "--reward", "length"]
    flags = ["--combiner", "linear", "--weights", "0.25", "0.75", "--no-noon"]
    flags += ["--mgda-normalization", "none", "--value-warmup-steps", "3"]
    args = build_parser().parse_args([*base, *flags])
    cfg = _config_from_args(args)
    assert cfg.combiner == "linear" and cfg.combiner_weights == [0.25, 0.75]
    assert cfg.noon is False and cfg.mgda_normalization == "none"
    assert cfg.value_warmup_steps == 3
    defaults = _config_from_args(build_parser().parse_args(base))
    assert defaults.noon is True and defaults.mgda_normalization == "l2"
    assert defaults.combiner_weights is None and defaults.value_warmup_steps == 0


# ------------------------------------------------------------------------------- GDPO


def _whiten_by_hand(a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One objective's advantages, whitened over its valid tokens (sample std), the slow way."""
    vals = [float(a[b, t]) for b in range(a.shape[0]) for t in range(a.shape[1]) if mask[b, t]]
    mean = sum(vals) / len(vals)
    std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
    return (a - mean) / (std + 1e-8) * mask


def test_gdpo_whitens_each_objective_then_sums_with_the_weights(
    tiny_lm: Path, tmp_path: Path
) -> None:
    """GDPO's advantage: each objective's GAE advantages whitened on their own over the
    batch's valid tokens, then sum_i w_i; signed (no Noon), one standard PPO surrogate."""
    cfg = config(tmp_path, combiner="gdpo", combiner_weights=[0.3, 0.7], kl_coef=0.2)
    trainer = trainer_for(tiny_lm, cfg)
    rollout = trainer.rollout(trainer.sample_prompts(1))
    scores = trainer.score(rollout, 1)
    fwd = trainer.forward_rollout(rollout)
    batch = trainer.compute_advantages(rollout, scores)
    rewards, _ = kl_penalized_rewards(
        scores, fwd["logprobs"], fwd["ref_logprobs"], rollout.mask, 0.2
    )
    raw, _ = gae(rewards, fwd["values"], rollout.mask, cfg.gamma, cfg.gae_lambda)
    mask = rollout.mask.to(raw.dtype)
    expected = 0.3 * _whiten_by_hand(raw[0], mask) + 0.7 * _whiten_by_hand(raw[1], mask)
    assert batch.scalar_advantages is not None
    torch.testing.assert_close(batch.scalar_advantages, expected, rtol=1e-5, atol=1e-6)
    assert bool((batch.scalar_advantages < 0).any())  # signed: no Noon clipping
    # Not MORLHF: whitening each objective first changes the advantage whenever the two
    # objectives' scales or means differ.
    morlhf = scalarize_advantages(raw, [0.3, 0.7], rollout.mask)
    assert not torch.allclose(batch.scalar_advantages, morlhf, atol=1e-4)
    # The update runs on it and moves the policy.
    before = [p.detach().clone() for p in trainer.policy.parameters() if p.requires_grad]
    trainer.update(batch, 1)
    after = [p for p in trainer.policy.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_gdpo_is_a_weighted_combiner_without_noon() -> None:
    from paretoopt.integrations.hf.models import build_combiner, uses_noon

    cfg = MOPPOConfig(combiner="gdpo", combiner_weights=[1.0, 3.0])
    assert uses_noon(cfg) is False
    assert build_combiner(cfg, 1, 2).weights == (1.0, 3.0)
    with pytest.raises(ValueError, match="3 weights but the trainer has 2 rewards"):
        build_combiner(MOPPOConfig(combiner="gdpo", combiner_weights=[1, 1, 1]), 1, 2)


# --------------------------------------------------------------------------- PAMA-UB


def vowel_rate(prompts: list[str], responses: list[str]) -> list[float]:
    return [sum(ch in "aeiou" for ch in r) / max(1, len(r)) for r in responses]


def brevity(prompts: list[str], responses: list[str]) -> list[float]:
    return [1.0 - min(len(r), 40) / 40 for r in responses]


def _min_norm_by_qp(gram: torch.Tensor) -> torch.Tensor:
    """argmin_{c in simplex} c^T G c by SLSQP, independent of the library's solver."""
    import numpy as np
    from scipy.optimize import minimize

    g = gram.numpy() / float(gram.diagonal().max())
    n = g.shape[0]
    res = minimize(
        lambda c: c @ g @ c,
        np.full(n, 1.0 / n),
        jac=lambda c: 2 * g @ c,
        bounds=[(0.0, 1.0)] * n,
        constraints=[{"type": "eq", "fun": lambda c: c.sum() - 1.0, "jac": lambda c: np.ones(n)}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 500},
    )
    assert res.success, res.message
    return torch.from_numpy(res.x)


@pytest.mark.parametrize(
    ("noon", "rewards"),
    [(True, [length_words, vowel_rate]), (False, [length_words, vowel_rate]),
     (False, [length_words, vowel_rate, brevity])],
    ids=["noon", "signed", "three-objectives"],
)  # fmt: skip
def test_pama_ub_trains_on_the_min_norm_point_of_the_advantage_vectors(
    tiny_lm: Path, tmp_path: Path, noon: bool, rewards: list
) -> None:
    """PAMA-UB's advantage recomputed from the trainer's own rollout: GAE by hand, Noon clip,
    the Gram of the advantage vectors over valid tokens, c from an independent QP (and the
    closed form for two objectives), A = sum_i c_i A_i."""
    cfg = config(tmp_path, combiner="pama_ub", noon=noon, kl_coef=0.2)
    trainer = trainer_for(tiny_lm, cfg, rewards)
    assert isinstance(trainer.combiner, MinNormAdvantages) and trainer.noon is noon
    rollout = trainer.rollout(trainer.sample_prompts(1))
    scores = trainer.score(rollout, 1)
    fwd = trainer.forward_rollout(rollout)
    batch = trainer.compute_advantages(rollout, scores)
    rewards_t, _ = kl_penalized_rewards(
        scores, fwd["logprobs"], fwd["ref_logprobs"], rollout.mask, 0.2
    )
    raw, _ = gae(rewards_t, fwd["values"], rollout.mask, cfg.gamma, cfg.gae_lambda)
    mask = rollout.mask.to(torch.float64)
    a = raw.to(torch.float64) * mask
    if noon:
        a = a.clamp_min(0.0)
    n = a.shape[0]
    gram = torch.tensor(
        [[float((a[i] * a[j] * mask).sum()) for j in range(n)] for i in range(n)],
        dtype=torch.float64,
    )
    c = _min_norm_by_qp(gram)
    if n == 2:
        a1, a2 = a[0].flatten(), a[1].flatten()
        closed = float((a2 @ a2 - a1 @ a2) / ((a1 - a2) @ (a1 - a2)))
        c1 = min(max(closed, 0.0), 1.0)
        torch.testing.assert_close(
            c, torch.tensor([c1, 1 - c1], dtype=torch.float64), atol=1e-6, rtol=0
        )
    assert batch.scalar_weights is not None and batch.scalar_advantages is not None
    torch.testing.assert_close(batch.scalar_weights, c, atol=1e-5, rtol=0)
    assert float(c.min()) > 0.01  # an interior point here: a real mix, not one objective
    assert not torch.allclose(c, torch.full_like(c, 1.0 / n), atol=1e-2)  # not uniform
    expected = (c.view(-1, 1, 1) * a).sum(0) * mask
    torch.testing.assert_close(
        batch.scalar_advantages.to(torch.float64), expected, rtol=1e-4, atol=1e-6
    )
    value = float(c @ gram @ c)
    assert batch.combine_stats["pama_ub/min_norm"] == pytest.approx(value, rel=1e-6)
    if noon:
        assert bool((batch.scalar_advantages >= 0).all())
    else:
        assert bool((batch.scalar_advantages < 0).any())  # signed advantages


def test_pama_ub_gram_is_summed_over_processes() -> None:
    """Two halves with a simulated all-gather solve on the Gram of the whole batch: the same
    weights on every process, and each half's slice of the whole batch's advantage."""
    gen = torch.Generator().manual_seed(11)
    mask = torch.ones(8, 5)
    for row, length in enumerate(torch.randint(1, 6, (8,), generator=gen).tolist()):
        mask[row, length:] = 0
    adv = torch.randn(3, 8, 5, generator=gen, dtype=torch.float64)
    adv = adv * torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64).view(-1, 1, 1)
    whole_scalar, whole_c, whole_value = min_norm_advantages(adv, mask)
    halves = [(adv[:, :4], mask[:4]), (adv[:, 4:], mask[4:])]
    local = [advantage_gram(a, m) for a, m in halves]
    torch.testing.assert_close(local[0] + local[1], advantage_gram(adv, mask))
    sent: list[torch.Tensor] = []

    def all_gather(x: torch.Tensor) -> torch.Tensor:
        sent.append(x)
        return torch.stack(local)  # what accelerator.gather returns: [processes, n, n]

    parts = [min_norm_advantages(a, m, gather=all_gather) for a, m in halves]
    for k in range(2):
        torch.testing.assert_close(sent[k], local[k].unsqueeze(0))
    assert torch.equal(parts[0][1], parts[1][1]) and parts[0][2] == parts[1][2]
    torch.testing.assert_close(parts[0][1], whole_c)
    assert parts[0][2] == pytest.approx(whole_value, rel=1e-12)
    torch.testing.assert_close(torch.cat([p[0] for p in parts], dim=0), whole_scalar)


def test_pama_ub_logs_the_weights_it_trained_on_and_moves_the_policy(
    tiny_lm: Path, tmp_path: Path
) -> None:
    cfg = config(tmp_path, combiner="pama_ub", steps=2, kl_coef=0.2)
    trainer = trainer_for(tiny_lm, cfg, [length_words, vowel_rate])
    batches = []
    combine = trainer.combine

    def recording_combine(*args, **kwargs):
        batches.append(combine(*args, **kwargs))
        return batches[-1]

    trainer.combine = recording_combine
    before = [p.detach().clone() for p in trainer.policy.parameters() if p.requires_grad]
    history = trainer.train()
    assert len(history) == 2 and len(batches) == 2
    for metrics, batch in zip(history, batches, strict=True):
        c = batch.scalar_weights
        assert metrics["weights/len"] == float(c[0])
        assert metrics["weights/other"] == float(c[1])
        assert metrics["weights/len"] + metrics["weights/other"] == pytest.approx(1.0, abs=1e-12)
        adv = batch.scalar_advantages.to(torch.float64)
        assert metrics["pama_ub/min_norm"] == pytest.approx(float((adv * adv).sum()), rel=1e-5)
        assert math.isfinite(metrics["loss/policy"])
    after = [p for p in trainer.policy.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_pama_ub_follows_noon_and_the_cli_names_it() -> None:
    from paretoopt.integrations.hf.cli import _config_from_args, build_parser
    from paretoopt.integrations.hf.models import build_combiner, uses_noon

    assert uses_noon(MOPPOConfig(combiner="pama_ub")) is True
    assert uses_noon(MOPPOConfig(combiner="pama_ub", noon=False)) is False
    assert isinstance(build_combiner(MOPPOConfig(combiner="pama_ub"), 2, 2), MinNormAdvantages)
    base = ["--policy", "p", "--prompts", "x.txt", "--reward", "length", "--reward", "length"]
    cfg = _config_from_args(
        build_parser().parse_args([*base, "--combiner", "pama_ub", "--no-noon"])
    )
    assert cfg.combiner == "pama_ub" and cfg.noon is False
    with pytest.raises(ValueError, match="combiner_weights does not apply"):
        _config_from_args(
            build_parser().parse_args([*base, "--combiner", "pama_ub", "--weights", "1", "1"])
        )
