"""The study's statistics against hand-computed cases (and a few properties)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paretoopt.integrations.study import stats
from paretoopt.integrations.study.analysis import holm
from paretoopt.integrations.study.protocol import front_weights


def test_bootstrap_ci_of_two_values_is_their_range() -> None:
    # Resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5th
    # and 97.5th percentiles are 0 and 1.
    lo, hi = stats.bootstrap_ci([0.0, 1.0])
    assert (lo, hi) == (0.0, 1.0)


def test_bootstrap_ci_of_constant_values_is_the_value() -> None:
    assert stats.bootstrap_ci([0.7] * 5) == (0.7, 0.7)
    assert stats.bootstrap_ci([2.0]) == (2.0, 2.0)


def test_bootstrap_ci_is_reproducible_and_rejects_bad_input() -> None:
    x = [0.1, 0.5, 0.3, 0.9, 0.2, 0.4]
    assert stats.bootstrap_ci(x) == stats.bootstrap_ci(x)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        stats.bootstrap_ci([])
    with pytest.raises(ValueError, match="non-finite"):
        stats.bootstrap_ci([1.0, math.nan])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=3, max_size=30))
def test_bootstrap_ci_lies_within_the_data_and_holds_the_mean(values: list[float]) -> None:
    lo, hi = stats.bootstrap_ci(values, n_resamples=999)
    tol = 1e-9 * (1 + max(abs(v) for v in values))
    assert min(values) - tol <= lo <= hi <= max(values) + tol
    assert lo - tol <= float(np.mean(values)) <= hi + tol


def test_wilcoxon_hand_computed() -> None:
    # All five differences positive: exact two-sided p = 2 / 2^5.
    assert stats.paired_wilcoxon([2, 3, 4, 5, 6], [1, 1, 1, 1, 1]) == pytest.approx(0.0625)
    # Differences 1, -2, 3, -4, 5: T- = 6; 13 of the 32 sign patterns give T <= 6,
    # so p = 2 * 13 / 32.
    a = [1.0, 0.0, 3.0, 0.0, 5.0]
    b = [0.0, 2.0, 0.0, 4.0, 0.0]
    assert stats.paired_wilcoxon(a, b) == pytest.approx(26 / 32)
    assert stats.paired_wilcoxon([1.0, 2.0], [1.0, 2.0]) == 1.0
    with pytest.raises(ValueError, match="equal length"):
        stats.paired_wilcoxon([1.0], [1.0, 2.0])


def test_dominance() -> None:
    assert stats.dominates([1, 1], [1, 0])
    assert not stats.dominates([1, 1], [1, 1])
    assert not stats.dominates([2, 0], [1, 1])
    method = [[1, 1], [0, 0], [2, 0], [1, 1]]
    baseline = [[0, 1], [1, 1], [1, 1], [1, 1]]
    # Seed 0: dominates; seed 1: dominated; seed 2: incomparable; seed 3: equal.
    assert stats.dominance_shares(method, baseline) == (0.25, 0.25)
    with pytest.raises(ValueError, match="equal shapes"):
        stats.dominance_shares(method, baseline[:3])


def test_dominated_by_front() -> None:
    assert not stats.dominated_by_front([0.5, 0.5], [[1.0, 0.0], [0.0, 1.0]])
    assert stats.dominated_by_front([0.5, 0.5], [[1.0, 0.0], [0.6, 0.5]])
    assert not stats.dominated_by_front([0.5, 0.5], [[0.5, 0.5]])


def test_hypervolumes_and_joint_success_score_a_mixture_differently() -> None:
    # Two responses, each good on one objective only: the mean point (1, 1) has volume 1,
    # but no single response encloses any volume and none succeeds on both.
    scores = [[2.0, 0.0], [0.0, 2.0]]
    ref = [0.0, 0.0]
    assert stats.point_hypervolume(np.mean(scores, axis=0), ref) == 1.0
    assert stats.per_response_hypervolume(scores, ref) == 0.0
    assert stats.joint_success(scores, [0.5, 0.5]) == 0.0
    both = [[1.0, 1.0], [3.0, 2.0]]
    assert stats.per_response_hypervolume(both, ref) == pytest.approx((1.0 + 6.0) / 2)
    assert stats.joint_success(both, [1.0, 0.5]) == 0.5  # strictly above: 1.0 fails
    assert stats.point_hypervolume([-1.0, 5.0], ref) == 0.0
    with pytest.raises(ValueError, match="objectives"):
        stats.joint_success(both, [1.0])


def test_reward_at_kl_interpolates_and_never_extrapolates() -> None:
    assert stats.reward_at_kl([0, 1, 2], [0, 1, 4], 1.5) == pytest.approx(2.5)
    assert stats.reward_at_kl([0, 1, 2], [0, 1, 4], 2.0) == 4.0  # the final checkpoint
    assert math.isnan(stats.reward_at_kl([0, 1], [0, 1], 1.5))
    assert math.isnan(stats.reward_at_kl([0, 1], [0, 1], -0.5))


def test_reward_at_kl_follows_the_training_path_in_order() -> None:
    """Non-monotone paths (hand computed). The published study sorted the path by KL, so
    PAMA's 0, 5.08, 5.60, 5.22 was read between steps 200 and 100; the path is walked in
    training order and read on the latest segment that reaches the target."""
    kl = [0.0, 5.082, 5.600, 5.218]
    reward = [-0.251, 1.264, 1.338, 1.389]
    # Its own final KL: its final reward, not a point between steps 100 and 200.
    assert stats.reward_at_kl(kl, reward, 5.218) == 1.389
    # 5.4 is crossed twice (40 -> 100 going up, 100 -> 200 going down): the later crossing,
    # between steps 100 and 200: 1.338 + (5.4 - 5.6) / (5.218 - 5.6) * (1.389 - 1.338).
    assert stats.reward_at_kl(kl, reward, 5.4) == pytest.approx(1.338 + 0.2 / 0.382 * 0.051)
    # Crossed once, on the way up: between SFT and step 40.
    assert stats.reward_at_kl(kl, reward, 2.541) == pytest.approx(-0.251 + 0.5 * 1.515)
    # 5.15 is only reached between steps 40 and 100; sorting the path would have read it
    # between the checkpoints at 5.082 (step 40) and 5.218 (step 200): 1.3265.
    assert stats.reward_at_kl(kl, reward, 5.15) == pytest.approx(1.264 + 0.068 / 0.518 * 0.074)
    # A path that goes up and comes back down below the target: read on the way down.
    assert stats.reward_at_kl([0, 4, 2], [0, 10, 20], 3) == pytest.approx(15.0)
    # A flat segment at the target: its later checkpoint.
    assert stats.reward_at_kl([0, 2, 2, 5], [0, 1, 3, 9], 2) == 3.0
    with pytest.raises(ValueError, match="finite"):
        stats.reward_at_kl([0, float("nan")], [0, 1], 0.5)


def test_final_kl_target_is_the_smallest_final_kl_not_the_largest_kl() -> None:
    paths = [[0.0, 5.082, 5.600, 5.218], [0.0, 3.295, 6.802, 6.483], [0.0, 2.1, 3.4, 5.87]]
    assert stats.final_kl_target(paths) == 5.218  # the old rule took min(max) = 5.6
    # every path reaches the target, so no method is extrapolated
    for p in paths:
        assert math.isfinite(stats.reward_at_kl(p, list(range(len(p))), 5.218))
    with pytest.raises(ValueError, match="no KL path"):
        stats.final_kl_target([])


def test_holm_hand_computed() -> None:
    # Sorted p: 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06).
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_front_weights() -> None:
    two = front_weights(2, 9)
    assert len(two) == 9 and [0.5, 0.5] in two and two[0] == [1.0, 0.0]
    three = front_weights(3, 10)
    assert len(three) == 10
    assert all(abs(sum(w) - 1) < 1e-5 for w in three)
    assert [round(1 / 3, 6)] * 3 in three


def _run(method: str, seed: int, kls: list[float], rewards: list[float]) -> dict:
    steps = (40, 100, 200)
    evals = {
        str(s): {"r": r, "q": 0.0, "kl": k, "joint_success": 0.0, "per_response_hv": 0.0,
                 "point_hv": 0.0, "cut_off_rate": 0.0, "response_words": 1.0}
        for s, k, r in zip(steps, kls, rewards, strict=True)
    }  # fmt: skip
    return {"job": {"seed": seed, "kind": "study", "method": method}, "evals": evals}


def test_matched_kl_comparison_reads_both_paths_in_order_at_the_smaller_final_kl() -> None:
    """Per seed, PAMA (path 0, 5.08, 5.60, 5.22) against a baseline (0, 3.3, 6.8, 6.48): the
    target is the smaller *final* KL, 5.22 (the old rule took min(max) = 5.60); PAMA is read
    at its final checkpoint, the baseline where its path crossed 5.22 between steps 40 and
    100. The old code sorted PAMA's path and interpolated between steps 200 and 100."""
    from paretoopt.integrations.study.analysis import compare

    sft = {"r": 0.0}
    pama = [_run("pama", s, [5.08, 5.60, 5.22], [1.0, 2.0, 3.0]) for s in range(3)]
    base = [_run("morlhf", s, [3.3, 6.8, 6.48], [1.0, 4.0, 5.0]) for s in range(3)]
    out = compare(pama, base, ["r"], sft, [])
    expected_base = 1.0 + (5.22 - 3.3) / (6.8 - 3.3) * (4.0 - 1.0)
    assert out["matched_kl"]["r"]["mean_diff"] == pytest.approx(3.0 - expected_base)
    assert out["matched_kl"]["r"]["seeds"] == 3


def test_sacrifice_is_the_worst_objectives_change_from_the_start() -> None:
    from paretoopt.integrations.study.analysis import method_entry

    sft = {"r": 1.0, "q": 0.0}
    runs = []
    for seed, (r, q) in enumerate([(2.0, 0.5), (0.5, 1.0), (1.0, 0.0)]):
        run = _run("pama", seed, [1.0, 2.0, 3.0], [0.0, 0.0, r])
        for step in run["evals"]:
            run["evals"][step]["q"] = q if step == "200" else 0.0
        run["curves"], run["seconds"] = [], 1.0
        runs.append(run)
    entry = method_entry(runs, ["r", "q"], sft)
    # seed 0: min(+1, +0.5) = 0.5; seed 1: min(-0.5, +1) = -0.5; seed 2: min(0, 0) = 0
    assert entry["worst_change"]["mean"] == pytest.approx(0.0)
    assert entry["no_sacrifice_share"] == pytest.approx(2 / 3)  # a tie with the start is kept


def test_difference_ci_and_dominance_beyond_the_uncertainty() -> None:
    # Constant samples: the interval is the difference itself.
    assert stats.difference_ci([2.0, 2.0], [0.5, 0.5, 0.5]) == (1.5, 1.5)
    lo, hi = stats.difference_ci([1.0, 3.0], [0.0, 0.0, 0.0])  # resampled means of [1, 3]
    assert (lo, hi) == (1.0, 3.0)
    method = [[0.0, 0.0], [0.2, 0.2], [0.1, 0.1]]
    clearly = [[[1.0, 1.0], [1.1, 1.2]]]  # better on both, far beyond the noise
    assert stats.dominated_beyond_ci(method, clearly)
    # Better on both means, so Pareto-dominating the mean point, but by less than the noise
    # of two front seeds on one objective: not dominated under the rule.
    noisy = [[[1.0, -1.0], [1.2, 1.6]]]
    front_mean = np.mean(noisy[0], axis=0)
    assert stats.dominated_by_front(np.mean(method, axis=0), [front_mean])
    assert not stats.dominated_beyond_ci(method, noisy)
    with pytest.raises(ValueError, match="objectives"):
        stats.dominated_beyond_ci(method, [[[1.0, 1.0, 1.0]]])
