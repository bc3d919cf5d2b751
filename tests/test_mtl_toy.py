"""The CAGrad / Nash-MTL toy problem and the methods run on it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from paretoopt.integrations.mtl.stats import descent_cosines, is_common_descent
from paretoopt.integrations.mtl.toy import (
    pareto_set,
    run_batched,
    run_toy,
    toy_losses,
)

from paretoopt import PAMA


def test_losses_at_hand_computed_points() -> None:
    t4 = math.tanh(4.0)
    # x = (7, -8): c1 = 0, c2 = tanh(4); g1 = -20, g2 = (14^2)/10 - 20 = -0.4.
    got = toy_losses(torch.tensor([7.0, -8.0], dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor([-20 * t4, -0.4 * t4], dtype=torch.float64))
    # x = (-5, 8): c2 = 0, c1 = tanh(4); |0.5 * (5 - 7) - tanh(-8)| = 1 - tanh(8) < 5e-6, so f1
    # is floored at log(5e-6) + 6; f2 = log|0.5 * 8 + tanh(-8) + 2| + 6 = log(6 - tanh(8)) + 6.
    got = toy_losses(torch.tensor([-5.0, 8.0], dtype=torch.float64))
    want = [t4 * (math.log(5e-6) + 6), t4 * (math.log(6 - math.tanh(8.0)) + 6)]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    # Batched evaluation agrees with the point-wise one.
    pts = torch.tensor([[7.0, -8.0], [-5.0, 8.0]], dtype=torch.float64)
    torch.testing.assert_close(toy_losses(pts)[1], got)


def test_pareto_set_runs_between_the_two_task_minima() -> None:
    xs, fs = pareto_set()
    assert xs[:, 0].min() == pytest.approx(-7, abs=0.15)
    assert xs[:, 0].max() == pytest.approx(7, abs=0.15)
    # A thin band around x2 = -8.3552, where the papers draw it.
    assert np.all((xs[:, 1] >= -8.5) & (xs[:, 1] <= -7.9))
    # Each end is one task's own minimum: L1 is lowest at the right end, L2 at the left.
    assert xs[np.argmin(fs[:, 0]), 0] > 6.5 and xs[np.argmin(fs[:, 1]), 0] < -6.5


def test_linear_scalarization_heads_for_the_middle_of_the_set() -> None:
    # Below the x1 axis the mean loss is c2(x2) * ((x1 - 7)^2 + (x1 + 7)^2) / 20 + ..., smallest
    # at x1 = 0: from the papers' bottom-left start a fixed equal weighting ends in the middle
    # of the set, not at the end nearer to it.
    traj = run_batched("linear", ((-8.5, -5.0),), steps=1500, lr=0.02, record_every=1500)
    np.testing.assert_allclose(traj[-1, 0], [0.0, -8.355], atol=0.05)


@pytest.mark.slow
def test_linear_scalarization_at_the_papers_step_is_caught_in_a_task_valley() -> None:
    # From the CAGrad paper's top-left start, Adam at lr 1e-3 on the mean loss drops into task
    # 1's log valley 0.5 (-x1 - 7) = tanh(-x2), i.e. x1 = -7 + 2 tanh(x2), and stays above the
    # Pareto set; at lr 1e-2 the same start gets out (see docs/multitask.md).
    traj = run_batched("linear", ((-8.5, 7.5),), steps=8000, lr=1e-3, record_every=8000)
    x1, x2 = traj[-1, 0]
    assert x2 > 1.0
    assert abs(x1 - (-7 + 2 * math.tanh(x2))) < 0.1


def test_batched_runs_equal_one_start_at_a_time() -> None:
    starts = ((-8.5, 7.5), (9.0, -1.0))
    for method in ("linear", "pama"):
        batched = run_batched(method, starts, steps=40, lr=0.01, record_every=40)
        single = [run_toy((method,), (s,), steps=40, lr=0.01)[0].final for s in starts]
        np.testing.assert_allclose(batched[-1], np.array(single), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="element-wise"):
        run_batched("mgda", starts, steps=1)


def test_every_method_stays_finite_and_mgda_pama_always_descend() -> None:
    pytest.importorskip("torchjd")
    runs = run_toy(starts=((9.0, -1.0),), steps=60, lr=0.02)
    assert {r.method for r in runs} == {
        "linear",
        "mgda_ub",
        "mgda_ub_rescaled",
        "mgda",
        "pama",
        "torchjd_mgda",
        "torchjd_upgrad",
    }
    for r in runs:
        assert np.isfinite(r.points).all() and np.isfinite(r.losses).all(), r.method
        assert len(r.common_descent) == 60
        # Every method moved down in both losses from this start (60 small steps).
        assert np.all(r.losses[-1] < r.losses[0]), r.method
    by = {r.method: r for r in runs}
    # Exact MGDA's min-norm point is a common descent direction at every step; so is PAMA's
    # closed form when z is the parameters themselves (term by term, s*_e g_ie >= 0).
    assert by["mgda"].descent_rate == 1.0
    assert by["pama"].descent_rate == 1.0
    np.testing.assert_allclose(by["mgda"].points, by["torchjd_mgda"].points, atol=1e-3)


@given(st.lists(st.floats(-1e3, 1e3), min_size=6, max_size=6))
def test_pama_on_the_parameters_is_a_common_descent_direction(values: list[float]) -> None:
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    g = torch.tensor(values, dtype=torch.float64).reshape(2, 3)
    losses = [(g[0] * x).sum(), (g[1] * x).sum()]
    result = PAMA()(losses, shared=x)
    (d,) = torch.autograd.grad(result.loss, x)
    assert is_common_descent(descent_cosines(d, g), tol=1e-12)
