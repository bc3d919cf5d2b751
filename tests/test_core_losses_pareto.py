"""PPO / Noon PPO losses and the Pareto utilities against direct computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paretoopt import (
    dominates,
    hypervolume,
    pareto_front,
    pareto_mask,
    pareto_stationarity,
    ppo_losses,
    ppo_surrogate,
    ratio,
)


def test_noon_ppo_gradient_is_clip_indicator_times_advantage() -> None:
    """grad_u L_i = -(m_t / N) * A_it * 1[u_t <= 1 + eps] (DESIGN section 2)."""
    gen = torch.Generator().manual_seed(0)
    u = (0.6 + 0.8 * torch.rand(3, 5, generator=gen, dtype=torch.float64)).requires_grad_()
    adv_raw = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    mask = torch.rand(3, 5, generator=gen) > 0.3
    logp = torch.log(u)
    losses = ppo_losses(logp, torch.zeros_like(logp), adv_raw, mask, cliprange=0.2)
    a = adv_raw.clamp_min(0)
    indicator = (u.detach() <= 1.2).to(torch.float64)
    n_valid = mask.sum()
    for i in range(2):
        (g,) = torch.autograd.grad(losses[i], u, retain_graph=True)
        expected = -(mask * a[i] * indicator) / n_valid
        torch.testing.assert_close(g, expected)


def test_ppo_surrogate_values_and_ratio_anchor() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.9, 2.0]], dtype=torch.float64))
    anchor = torch.zeros_like(logp)
    adv = torch.tensor([[1.0, -1.0, 2.0]], dtype=torch.float64)
    u = ratio(logp, anchor)
    torch.testing.assert_close(u, torch.tensor([[0.5, 0.9, 2.0]], dtype=torch.float64))
    # min(u A, clip(u) A): 0.5*1, min(-0.9, -0.9), min(4, 2.4)
    expected = -(0.5 - 0.9 + 2.4) / 3
    assert float(ppo_surrogate(logp, anchor, adv)) == pytest.approx(expected)
    # Noon keeps only the positive advantages; without it the single-objective loss agrees.
    both = ppo_losses(logp, anchor, adv[None], noon=False)
    assert float(both[0]) == pytest.approx(expected)
    assert float(ppo_losses(logp, anchor, adv[None])[0]) == pytest.approx(-(0.5 + 2.4) / 3)


def test_loss_input_errors() -> None:
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="anchor_logprobs has shape"):
        ratio(logp, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="cliprange"):
        ppo_losses(logp, logp, torch.zeros(2, 2, 3), cliprange=1.5)
    with pytest.raises(ValueError, match=r"per-objective shape \(2, 4\)"):
        ppo_losses(logp, logp, torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match="mask has shape"):
        ppo_losses(logp, logp, torch.zeros(2, 2, 3), torch.ones(3, 3))
    bad = torch.zeros(2, 3)
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="logprobs contains non-finite"):
        ppo_losses(bad, logp, torch.zeros(2, 2, 3))


# ---------------------------------------------------------------------------
# Pareto utilities
# ---------------------------------------------------------------------------

point_sets = st.integers(1, 3).flatmap(
    lambda k: st.lists(
        st.lists(st.integers(0, 6).map(float), min_size=k, max_size=k), min_size=1, max_size=9
    )
)


def union_volume_inclusion_exclusion(points: np.ndarray, ref: np.ndarray) -> float:
    """Volume of the union of boxes [ref, p] (maximisation) by inclusion-exclusion."""
    boxes = [p for p in points if np.all(p > ref)]
    total = 0.0
    for r in range(1, len(boxes) + 1):
        for combo in itertools.combinations(boxes, r):
            corner = np.min(np.stack(combo), axis=0)
            total += (-1) ** (r + 1) * float(np.prod(corner - ref))
    return total


@settings(max_examples=80)
@given(point_sets)
def test_hypervolume_equals_inclusion_exclusion(pts: list[list[float]]) -> None:
    p = np.array(pts)
    ref = np.full(p.shape[1], 0.5)
    assert hypervolume(p, ref) == pytest.approx(union_volume_inclusion_exclusion(p, ref))


@settings(max_examples=60)
@given(point_sets, st.randoms(use_true_random=False))
def test_hypervolume_properties(pts: list[list[float]], rnd) -> None:
    p = np.array(pts)
    k = p.shape[1]
    ref = np.zeros(k)
    hv = hypervolume(p, ref)
    order = list(range(len(p)))
    rnd.shuffle(order)
    assert hypervolume(p[order], ref) == pytest.approx(hv)
    # Only the front matters; adding a point never lowers the volume.
    assert hypervolume(pareto_front(p), ref) == pytest.approx(hv)
    extra = np.vstack([p, np.full((1, k), 3.0)])
    assert hypervolume(extra, ref) >= hv - 1e-12
    # Scaling one objective scales the volume.
    scaled = p.copy()
    scaled[:, 0] *= 2.5
    assert hypervolume(scaled, ref) == pytest.approx(2.5 * hv)
    # Minimisation view of the same points.
    assert hypervolume(-p, -ref, maximize=False) == pytest.approx(hv)


@settings(max_examples=60)
@given(point_sets)
def test_pareto_mask_matches_definition(pts: list[list[float]]) -> None:
    p = np.array(pts)
    mask = pareto_mask(p)
    for i in range(len(p)):
        dominated = any(dominates(p[j], p[i]) for j in range(len(p)) if j != i)
        assert mask[i] == (not dominated)


def test_hypervolume_golden_values_and_errors() -> None:
    assert hypervolume([[1.0, 2.0], [2.0, 1.0]], [0.0, 0.0]) == pytest.approx(3.0)
    assert hypervolume([[1.0, 1.0, 1.0], [2.0, 0.5, 0.5]], [0, 0, 0]) == pytest.approx(1.25)
    assert hypervolume([[-1.0, 5.0]], [0.0, 0.0]) == 0.0
    assert dominates([1, 2], [1, 1]) and not dominates([1, 1], [1, 1])
    assert dominates([0, 0], [1, 1], maximize=False)
    with pytest.raises(ValueError, match="reference has 3 objectives"):
        hypervolume([[1.0, 2.0]], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="point 1 has a non-finite"):
        pareto_mask([[1.0, 2.0], [np.nan, 1.0]])


def test_pareto_stationarity() -> None:
    g = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert pareto_stationarity(g) == pytest.approx(0.0)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert pareto_stationarity([g[0], g[1]]) == pytest.approx(0.5)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    cliprange=st.sampled_from([0.1, 0.2, 0.5]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    signs=st.sampled_from(["nonnegative", "mixed"]),
)
def test_multi_objective_clipped_form_is_the_per_objective_one(n, seed, cliprange, dtype, signs):
    # ppo_losses_from_ratio takes min(uA, clip(u)A) as A min(u, clip(u)) (A >= 0) or
    # A max(u, clip(u)) (A < 0), the min and max on u's shape: the same losses to the bit and
    # the same n gradients w.r.t. u as the per-objective formula.
    from paretoopt.losses import _clipped_objective, _clipped_objectives

    gen = torch.Generator().manual_seed(seed)
    u0 = torch.exp(0.4 * torch.randn(3, 7, generator=gen, dtype=dtype))
    u0[0, :3] = torch.tensor([1 - cliprange, 1 + cliprange, 1.0], dtype=dtype)  # at the edges
    adv = torch.randn(n, 3, 7, generator=gen, dtype=dtype)
    adv[..., 0, 3] = 0.0
    if signs == "nonnegative":
        adv = adv.clamp_min(0)
    grads = []
    for form in ("per_objective", "shared"):
        u = u0.clone().requires_grad_(True)
        if form == "per_objective":
            obj = _clipped_objective(u.unsqueeze(0), adv, cliprange)
        else:
            obj = _clipped_objectives(u, adv, cliprange, nonnegative=signs == "nonnegative")
        losses = obj.mean(dim=(-2, -1))
        rows = [torch.autograd.grad(loss, u, retain_graph=True)[0] for loss in losses]
        grads.append((obj.detach(), torch.stack(rows)))
    (obj_a, g_a), (obj_b, g_b) = grads
    assert torch.equal(obj_a, obj_b)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(g_b, g_a, rtol=tol, atol=tol)
