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
    assert stats.reward_at_kl([2, 0, 1], [4, 0, 1], 0.5) == pytest.approx(0.5)
    assert math.isnan(stats.reward_at_kl([0, 1], [0, 1], 1.5))


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
