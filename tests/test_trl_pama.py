"""PAMA for TRL's GRPOTrainer: the advantage maths, the version guard, and an offline run."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

import trl
from datasets import Dataset
from dist_fixtures import build_char_gpt2
from paretoopt.integrations.trl import (
    PAMAGRPOConfig,
    PAMAGRPOTrainer,
    UnsupportedTRLVersionError,
    check_trl_compatibility,
    grpo_reward_advantages,
    pama_advantages_from_rewards,
    pama_grpo_advantages,
    pama_grpo_stats,
)
from transformers import (
    AutoTokenizer,
)

from paretoopt import pama_advantages, pama_stats

# ---------------------------------------------------------------------------
# Per-reward group normalisation, against a loop over groups with `statistics`
# ---------------------------------------------------------------------------


def _reference_advantages(
    rewards: list[list[float]], group: int, scale: str, eps: float = 1e-4
) -> list[list[float]]:
    """[n][N] advantages, written the slow obvious way (NaN-free input)."""
    n_completions, n_funcs = len(rewards), len(rewards[0])
    out = [[0.0] * n_completions for _ in range(n_funcs)]
    for i in range(n_funcs):
        column = [row[i] for row in rewards]
        batch_std = statistics.stdev(column) if n_completions > 1 else 0.0
        for start in range(0, n_completions, group):
            block = column[start : start + group]
            mean = statistics.fmean(block)
            std = statistics.stdev(block) if group > 1 else 0.0
            for j, r in enumerate(block):
                a = r - mean
                if scale == "group":
                    a /= std + eps
                elif scale == "batch":
                    a /= batch_std + eps
                out[i][start + j] = a
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_reward_advantages_match_per_group_formula(scale: str) -> None:
    g = torch.Generator().manual_seed(3)
    rewards = (torch.randn(12, 3, generator=g, dtype=torch.float64) * 2 + 1).tolist()
    got = grpo_reward_advantages(torch.tensor(rewards, dtype=torch.float64), 4, scale)
    want = torch.tensor(_reference_advantages(rewards, 4, scale), dtype=torch.float64)
    assert got.shape == (3, 12)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    if scale != "batch":
        # each group is centred for every reward
        assert got.view(3, 3, 4).sum(-1).abs().max() < 1e-9


def test_reward_advantages_ignore_missing_rewards_in_group_stats() -> None:
    rewards = torch.tensor([[1.0, 0.0], [float("nan"), 5.0], [3.0, 1.0], [5.0, 2.0]])
    adv = grpo_reward_advantages(rewards, 4, "group")
    assert math.isnan(adv[0, 1]) and not torch.isnan(adv[1]).any()
    # the reward-0 group statistics come from the three rewards given: mean 3, std 2
    torch.testing.assert_close(adv[0, [0, 2, 3]], torch.tensor([-1.0, 0.0, 1.0]) * 2 / (2 + 1e-4))


def test_reward_advantages_validate_their_input() -> None:
    with pytest.raises(ValueError, match="groups of num_generations"):
        grpo_reward_advantages(torch.zeros(6, 2), 4)
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo_reward_advantages(torch.zeros(4, 2), 4, "sequence")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[N, n\]"):
        grpo_reward_advantages(torch.zeros(4), 4)


# ---------------------------------------------------------------------------
# The PAMA combination
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("noon", [True, False])
def test_pama_grpo_is_the_closed_form_per_sample(noon: bool) -> None:
    adv = torch.randn(3, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s_star, weights = pama_grpo_advantages(adv, noon=noon)
    torch.testing.assert_close(s_star, pama_advantages(adv, granularity="sample", noon=noon))
    lo, hi = adv.amin(0), adv.amax(0)
    if noon:
        want = lo.clamp_min(0)
    else:
        want = lo.clamp_min(0) - (-hi).clamp_min(0)
    torch.testing.assert_close(s_star, want)
    # the weights lie on the simplex and attain s*
    torch.testing.assert_close(weights.sum(0), torch.ones(50, dtype=torch.float64))
    assert (weights >= 0).all()
    clipped = adv.clamp_min(0) if noon else adv
    torch.testing.assert_close((weights * clipped).sum(0), s_star)


def test_pama_grpo_reinforces_only_completions_better_on_every_reward() -> None:
    adv = torch.tensor([[1.0, 2.0, -1.0, -1.0], [0.5, -0.1, 3.0, -2.0]])
    s_star, _ = pama_grpo_advantages(adv)
    torch.testing.assert_close(s_star, torch.tensor([0.5, 0.0, 0.0, 0.0]))
    s_star, _ = pama_grpo_advantages(adv, noon=False)
    torch.testing.assert_close(s_star, torch.tensor([0.5, 0.0, 0.0, -1.0]))


def test_pama_grpo_takes_the_minimum_over_available_rewards() -> None:
    nan = float("nan")
    adv = torch.tensor([[nan, 0.7, nan, -0.2], [0.4, nan, nan, 0.9], [0.9, 1.5, nan, nan]])
    s_star, weights = pama_grpo_advantages(adv)
    torch.testing.assert_close(s_star, torch.tensor([0.4, 0.7, 0.0, 0.0]))
    assert torch.isfinite(weights).all()
    assert weights[0, 0] == 0 and weights[1, 1] == 0  # a missing reward never binds
    torch.testing.assert_close(weights[:, 0], torch.tensor([0.0, 1.0, 0.0]))
    assert (weights[:, 2] == 0).all()  # nothing scored: no weight, no update
    torch.testing.assert_close(weights[:, [0, 1, 3]].sum(0), torch.ones(3))


def test_stats_agree_with_core_pama_stats_without_missing_rewards() -> None:
    adv = torch.randn(3, 200, generator=torch.Generator().manual_seed(1))
    s_star, weights = pama_grpo_advantages(adv)
    ours = pama_grpo_stats(adv, s_star, weights, names=["a", "b", "c"])
    core = pama_stats(adv)
    for i, name in enumerate("abc"):
        assert ours[f"binding_rate/{name}"] == pytest.approx(core[f"binding_rate/{i}"], abs=1e-6)
        assert ours[f"advantage/{name}/mean"] == pytest.approx(
            float(adv[i].clamp_min(0).mean()), abs=1e-6
        )
    assert sum(ours[f"binding_rate/{n}"] for n in "abc") == pytest.approx(1.0, abs=1e-6)
    assert ours["conflict_rate"] == pytest.approx(core["conflict_rate"], abs=1e-6)
    assert ours["advantage/mean"] == pytest.approx(core["mean_s_star"], abs=1e-6)


# ---------------------------------------------------------------------------
# Version guard
# ---------------------------------------------------------------------------


def test_installed_trl_is_accepted() -> None:
    assert check_trl_compatibility() == trl.__version__


def test_untested_trl_version_is_refused_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trl, "__version__", "0.19.0")
    with pytest.raises(UnsupportedTRLVersionError, match=r"tested with trl>=1\.16\.0,<1\.17\.0"):
        check_trl_compatibility()
    assert check_trl_compatibility(allow_untested=True) == "0.19.0"


def test_unrecognised_trl_internals_are_refused_even_when_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def _calculate_rewards(self, inputs, prompts, completions):  # the shape changed
        return None

    monkeypatch.setattr(trl.GRPOTrainer, "_calculate_rewards", _calculate_rewards)
    with pytest.raises(UnsupportedTRLVersionError, match="_calculate_rewards has parameters"):
        check_trl_compatibility(allow_untested=True)


# ---------------------------------------------------------------------------
# Offline end-to-end: a tiny saved model trained by the plug-in
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer GPT-2 and a character tokenizer, saved and later loaded by path."""
    return build_char_gpt2(tmp_path_factory.mktemp("tiny_gpt2"))


class _RecordingTrainer(PAMAGRPOTrainer):
    """Records the advantages the loss actually received (after TRL's shuffling)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.used: list[dict[str, torch.Tensor]] = []

    def _compute_loss(self, model, inputs):
        self.used.append(
            {
                k: inputs[k].detach().clone()
                for k in (
                    "prompt_ids",
                    "prompt_mask",
                    "completion_ids",
                    "completion_mask",
                    "advantages",
                )
            }
        )
        return super()._compute_loss(model, inputs)


def test_grpo_trainer_trains_with_pama_advantages(tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = ["ab", "cd", "ef", "gh"]
    scored: dict[tuple[tuple[int, ...], tuple[int, ...]], list[float]] = {}
    batches: list[list[tuple[tuple[int, ...], tuple[int, ...]]]] = []

    def _key(prompt: str, ids: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(tokenizer(prompt)["input_ids"]), tuple(int(t) for t in ids)

    def count_a(prompts, completions, completion_ids, **kwargs) -> list[float]:
        batches.append([_key(p, c) for p, c in zip(prompts, completion_ids, strict=True)])
        out = [float(text.count("a")) for text in completions]
        for key, r in zip(batches[-1], out, strict=True):
            scored.setdefault(key, [0.0, 0.0])[0] = r
        return out

    def no_h(prompts, completions, completion_ids, **kwargs) -> list[float]:
        out = [-float(text.count("h")) for text in completions]
        for p, c, r in zip(prompts, completion_ids, out, strict=True):
            scored[_key(p, c)][1] = r
        return out

    args = PAMAGRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=3,
        learning_rate=5e-2,
        temperature=1.5,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    trainer = _RecordingTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[count_a, no_h],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
    )
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()

    assert len(batches) == 3 and len(trainer.used) == 3
    n_checked = 0
    any_positive = False
    for keys, used in zip(batches, trainer.used, strict=True):
        # expected: per-reward group advantages -> paretoopt.pama_advantages (sample closed form)
        rewards = torch.tensor([scored[k] for k in keys])
        per_reward = torch.tensor(_reference_advantages(rewards.tolist(), 4, "group"))
        expected = pama_advantages(per_reward, granularity="sample")
        by_key: dict[tuple, set[float]] = {}
        for k, a in zip(keys, expected.tolist(), strict=True):
            by_key.setdefault(k, set()).add(round(a, 5))
        # the loss saw the same completions, shuffled: match them by their token ids
        for row in range(used["advantages"].shape[0]):
            p = used["prompt_ids"][row][used["prompt_mask"][row].bool()].tolist()
            c = used["completion_ids"][row][used["completion_mask"][row].bool()].tolist()
            got = float(used["advantages"][row])
            assert round(got, 5) in by_key[(tuple(p), tuple(c))]
            assert got >= 0.0
            any_positive |= got > 0
            n_checked += 1
        # and the trainer's own record is the same closed form on its per-reward advantages
        torch.testing.assert_close(
            trainer.last_pama["advantages"],
            pama_advantages(trainer.last_pama["reward_advantages"], granularity="sample"),
        )
    assert n_checked == 24 and any_positive
    torch.testing.assert_close(
        pama_advantages_from_rewards(trainer.last_pama["rewards_per_func"], 4),
        trainer.last_pama["advantages"],
    )

    # training moved the parameters
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[k], after[k].detach()) for k in before)

    # TRL's logging is intact and the PAMA metrics sit beside it
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        for key in ("reward", "rewards/count_a/mean", "rewards/no_h/mean", "entropy"):
            assert key in h
        rates = h["pama/binding_rate/count_a"] + h["pama/binding_rate/no_h"]
        assert rates == pytest.approx(1.0, abs=1e-5)
        for key in (
            "pama/zero_rate",
            "pama/conflict_rate",
            "pama/advantage/mean",
            "pama/advantage/count_a/mean",
            "pama/positive_rate/no_h",
        ):
            assert 0.0 <= h[key] <= 10.0
    assert list(trainer._logs["advantages"])[-8:] == pytest.approx(
        trainer.last_pama["advantages"].tolist()
    )
    assert "advantage/count_a" in trainer._logs["extra"]
