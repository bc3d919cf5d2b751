"""Statistics helpers of the multi-task study, on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from paretoopt.integrations.mtl.stats import (
    bootstrap_mean_ci,
    descent_cosines,
    flat_grads,
    hypervolume_per_point,
    is_common_descent,
)


def test_descent_cosines_hand_computed() -> None:
    d = torch.tensor([1.0, 0.0])
    g = torch.tensor([[1.0, 1.0], [-1.0, 2.0], [0.0, 3.0]])
    cos = descent_cosines(d, g)
    torch.testing.assert_close(
        cos, torch.tensor([1 / math.sqrt(2), -1 / math.sqrt(5), 0.0], dtype=torch.float64)
    )
    assert not is_common_descent(cos)  # lowers task 1, raises task 2
    assert is_common_descent(cos[[0, 2]])  # orthogonal counts as non-negative


def test_min_norm_point_of_two_gradients_is_a_common_descent_direction() -> None:
    # g1 = (1, 0), g2 = (-1, 1): min over c of |c g1 + (1-c) g2|^2 at c = 3/5 -> d = (0.2, 0.4).
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    d = torch.tensor([0.2, 0.4])
    cos = descent_cosines(d, g)
    assert is_common_descent(cos)
    # g_i . d = |d|^2 for both (equal directional derivatives at an interior min-norm point).
    dots = cos * g.double().norm(dim=1) * d.double().norm()
    torch.testing.assert_close(dots, torch.tensor([0.2, 0.2], dtype=torch.float64))
    # The mean gradient (0, 0.5) is orthogonal to g1: still (weakly) descent; (0.5, -0.5) is not.
    assert is_common_descent(descent_cosines(torch.tensor([0.0, 0.5]), g))
    assert not is_common_descent(descent_cosines(torch.tensor([0.5, -0.5]), g))


def test_descent_cosines_zero_vector_and_shape_error() -> None:
    g = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    torch.testing.assert_close(
        descent_cosines(torch.zeros(2), g), torch.zeros(2, dtype=torch.float64)
    )
    torch.testing.assert_close(
        descent_cosines(torch.tensor([1.0, 0.0]), g)[1], torch.tensor(0.0, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="direction has 3 entries"):
        descent_cosines(torch.zeros(3), g)


def test_flat_grads_concatenates_in_parameter_order_with_zeros_for_unused() -> None:
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([3.0], requires_grad=True)
    unused = torch.zeros(2, requires_grad=True)
    loss = (a**2).sum() + 5 * b.sum()
    torch.testing.assert_close(flat_grads(loss, [a, unused, b]), torch.tensor([2.0, 4, 0, 0, 5]))


def test_bootstrap_ci_two_values_covers_the_three_resample_means() -> None:
    # Resampling {0, 1} twice gives means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5%
    # and 97.5% percentiles of the bootstrap distribution are 0 and 1.
    ci = bootstrap_mean_ci([0.0, 1.0])
    assert ci.mean == 0.5
    assert ci.low == pytest.approx(0.0)
    assert ci.high == pytest.approx(1.0)


def test_bootstrap_ci_constant_collapses_and_narrows_with_more_data() -> None:
    ci = bootstrap_mean_ci([0.3] * 5)
    assert (ci.low, ci.mean, ci.high) == (0.3, 0.3, 0.3)
    rng = np.random.default_rng(0)
    small = bootstrap_mean_ci(rng.normal(size=10))
    large = bootstrap_mean_ci(rng.normal(size=1000))
    assert small.low <= small.mean <= small.high
    assert large.high - large.low < small.high - small.low
    # For 1000 standard normals the 95% interval is about 2 * 1.96 / sqrt(1000) wide.
    assert large.high - large.low == pytest.approx(2 * 1.96 / math.sqrt(1000), rel=0.15)
    assert small.fmt(2).count("[") == 1


def test_bootstrap_ci_rejects_empty_and_non_finite() -> None:
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_mean_ci([])
    with pytest.raises(ValueError, match="value 1 is not finite"):
        bootstrap_mean_ci([1.0, float("nan")])


def test_hypervolume_per_point_is_the_box_volume() -> None:
    pts = np.array([[0.6, 0.9, -0.02], [0.05, 0.9, -0.02]])
    hv = hypervolume_per_point(pts, (0.1, 0.5, -0.06))
    np.testing.assert_allclose(hv, [0.5 * 0.4 * 0.04, 0.0])
