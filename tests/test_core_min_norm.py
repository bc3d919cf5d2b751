"""Min-norm solvers and simplex projection against independent solvers and KKT conditions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from paretoopt import kkt_residual, min_norm_weights, project_simplex
from paretoopt.functional import gram_matrix


def sample_jacobian(n: int, rank: int, dim: int, scale: float, seed: int, dup: bool) -> np.ndarray:
    """Seeded [n, dim] matrix of controlled rank and scale, optionally with duplicated rows."""
    rng = np.random.default_rng(seed)
    rank = max(1, min(rank, n, dim))
    jac = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, dim))
    jac += rng.normal(size=(1, dim)) * rng.uniform(0, 2)  # a shared component: common direction
    if dup and n > 1:
        idx = rng.integers(0, n, size=n // 2)
        jac[rng.integers(0, n, size=idx.size)] = jac[idx]
    return jac * np.sqrt(scale)


grams = st.builds(
    lambda n, rank, dim, log_scale, seed, dup: sample_jacobian(
        n, rank, dim, 10.0**log_scale, seed, dup
    ),
    n=st.integers(1, 64),
    rank=st.integers(1, 64),
    dim=st.integers(1, 80),
    log_scale=st.integers(-12, 12),
    seed=st.integers(0, 2**31 - 1),
    dup=st.booleans(),
)


def independent_qp(gram: np.ndarray) -> float:
    """min over the simplex of c^T G c with scipy's SLSQP (a different algorithm)."""
    n = gram.shape[0]
    scale = max(float(np.diag(gram).max()), 1e-300)
    g = gram / scale
    res = minimize(
        lambda c: float(c @ g @ c),
        np.full(n, 1.0 / n),
        jac=lambda c: 2 * g @ c,
        bounds=[(0, None)] * n,
        constraints=({"type": "eq", "fun": lambda c: c.sum() - 1, "jac": lambda c: np.ones(n)},),
        method="SLSQP",
        options={"ftol": 1e-16, "maxiter": 1000},
    )
    c = np.clip(res.x, 0, None)
    c /= c.sum()
    return float(c @ g @ c) * scale


def enumerate_supports(gram: np.ndarray) -> float:
    """Exact optimum by trying every support set (independent brute force, small n)."""
    n = gram.shape[0]
    scale = max(float(np.diag(gram).max()), 1e-300)
    gram = gram / scale
    best = np.inf
    for k in range(1, n + 1):
        for s in itertools.combinations(range(n), k):
            idx = np.array(s)
            kkt = np.zeros((k + 1, k + 1))
            kkt[:k, :k] = gram[np.ix_(idx, idx)]
            kkt[:k, k] = kkt[k, :k] = 1
            rhs = np.zeros(k + 1)
            rhs[k] = 1
            y = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:k]
            if np.all(y >= -1e-12) and abs(y.sum() - 1) < 1e-9:
                c = np.zeros(n)
                c[idx] = np.clip(y, 0, None)
                best = min(best, float(c @ gram @ c))
    return best * scale


@settings(max_examples=120)
@given(grams)
def test_exact_matches_independent_qp_and_kkt(jac: np.ndarray) -> None:
    gram = jac @ jac.T
    res = min_norm_weights(torch.from_numpy(gram))
    scale = float(np.diag(gram).max())
    w = res.weights.numpy()
    assert res.weights.dtype == torch.float64
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-12
    assert res.value == pytest.approx(float(w @ gram @ w), rel=1e-12, abs=1e-300)
    assert res.kkt_residual <= 1e-9
    assert res.converged
    # Never worse than an independent QP solver (which can only reach the optimum from above).
    assert res.value <= independent_qp(gram) + 1e-8 * scale
    # Non-conflicting direction d = J^T c: every g_i . d >= 0 (indeed >= ||d||^2).
    d = jac.T @ w
    assert np.all(jac @ d >= res.value - 1e-8 * scale)


@settings(max_examples=60)
@given(st.integers(1, 7), st.integers(1, 7), st.integers(0, 2**31 - 1), st.integers(-12, 12))
def test_exact_equals_support_enumeration(n: int, rank: int, seed: int, log_scale: int) -> None:
    jac = sample_jacobian(n, rank, 6, 10.0**log_scale, seed, dup=seed % 3 == 0)
    gram = jac @ jac.T
    res = min_norm_weights(gram)
    scale = float(np.diag(gram).max())
    assert res.value == pytest.approx(enumerate_supports(gram), abs=1e-10 * scale)


@pytest.mark.parametrize("scale", [1e-15, 1e-12, 1.0, 1e12, 1e15])
def test_degenerate_grams_give_finite_weights(scale: float) -> None:
    rng = np.random.default_rng(0)
    cases = {
        "zero": np.zeros((5, 5)),
        "rank1": np.outer(*(2 * [rng.normal(size=5)])),
        "duplicated": np.ones((4, 4)),
        "opposite": np.array([[1.0, -1.0], [-1.0, 1.0]]),
        "one_zero_gradient": np.diag([1.0, 0.0, 2.0]),
    }
    for name, g in cases.items():
        for method in ("exact", "frank_wolfe", "projected_gradient"):
            res = min_norm_weights(g * scale, method=method)
            w = res.weights.numpy()
            assert np.all(np.isfinite(w)), (name, method)
            assert abs(w.sum() - 1) < 1e-9 and np.all(w >= 0), (name, method)
            assert np.isfinite(res.value) and np.isfinite(res.kkt_residual)
    assert min_norm_weights(cases["opposite"] * scale).value == pytest.approx(0, abs=1e-20)
    z = min_norm_weights(cases["zero"])
    torch.testing.assert_close(z.weights, torch.full((5,), 0.2, dtype=torch.float64))
    zg = min_norm_weights(cases["one_zero_gradient"] * scale)
    torch.testing.assert_close(zg.weights, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))


@settings(max_examples=40)
@given(grams, st.randoms(use_true_random=False))
def test_permutation_invariance(jac: np.ndarray, rnd) -> None:
    gram = jac @ jac.T
    perm = list(range(gram.shape[0]))
    rnd.shuffle(perm)
    p = np.array(perm)
    a = min_norm_weights(gram)
    b = min_norm_weights(gram[np.ix_(p, p)])
    scale = float(np.diag(gram).max())
    assert b.value == pytest.approx(a.value, abs=1e-10 * scale)


@settings(max_examples=40)
@given(grams, st.integers(-12, 12))
def test_scale_invariance(jac: np.ndarray, log_k: int) -> None:
    gram = jac @ jac.T
    k = 10.0**log_k
    a = min_norm_weights(gram)
    b = min_norm_weights(gram * k)
    assert b.value == pytest.approx(a.value * k, rel=1e-8, abs=1e-10 * k * np.diag(gram).max())
    assert b.kkt_residual <= 1e-9


@pytest.mark.parametrize("method", ["frank_wolfe", "projected_gradient"])
def test_iterative_solvers_approach_the_exact_optimum(method: str) -> None:
    for seed in range(20):
        jac = sample_jacobian(8, 8, 20, 1.0, seed, dup=False)
        gram = jac @ jac.T
        exact = min_norm_weights(gram)
        approx = min_norm_weights(gram, method=method, max_iter=50_000)
        scale = float(np.diag(gram).max())
        assert approx.value >= exact.value - 1e-10 * scale
        assert approx.value <= exact.value + 1e-6 * scale
        assert approx.kkt_residual < 1e-3


def test_half_precision_gram_is_solved_in_float64() -> None:
    jac = torch.from_numpy(sample_jacobian(6, 3, 40, 1.0, 7, dup=False))
    for dtype in (torch.float16, torch.bfloat16):
        low = jac.to(dtype)
        res = min_norm_weights(gram_matrix(low))
        ref = min_norm_weights(gram_matrix(low.double()))
        assert res.weights.dtype == torch.float64
        assert bool(torch.isfinite(res.weights).all())
        torch.testing.assert_close(res.weights, ref.weights)


def test_gram_matrix_chunks_agree() -> None:
    jac = torch.randn(5, 1000, dtype=torch.float32)
    full = jac.double() @ jac.double().T
    torch.testing.assert_close(gram_matrix(jac, chunk_size=77), full)


def test_kkt_residual_detects_suboptimal_weights() -> None:
    gram = np.array([[1.0, 0.0], [0.0, 4.0]])
    assert kkt_residual(gram, np.array([0.8, 0.2])) < 1e-15
    assert kkt_residual(gram, np.array([0.5, 0.5])) > 0.1
    assert kkt_residual(gram, np.array([1.2, -0.2])) > 0.1


def test_bad_gram_inputs() -> None:
    with pytest.raises(ValueError, match="square"):
        min_norm_weights(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="empty"):
        min_norm_weights(np.zeros((0, 0)))
    with pytest.raises(ValueError, match=r"non-finite entry at \(1, 0\)"):
        min_norm_weights(np.array([[1.0, 0.0], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="diagonal entry 1 is negative"):
        min_norm_weights(np.array([[1.0, 0.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="method"):
        min_norm_weights(np.eye(2), method="newton")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Simplex projection
# ---------------------------------------------------------------------------

vectors = st.lists(
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=64
).map(lambda xs: torch.tensor(xs, dtype=torch.float64))


@given(vectors)
def test_projection_is_on_simplex_idempotent_and_optimal(v: torch.Tensor) -> None:
    p = project_simplex(v)
    assert bool((p >= 0).all()) and float(p.sum()) == pytest.approx(1.0, abs=1e-9)
    torch.testing.assert_close(project_simplex(p), p, rtol=0, atol=1e-9)
    # Variational inequality of a projection onto a convex set: (v - p) . (q - p) <= 0.
    torch.manual_seed(0)
    q = torch.distributions.Dirichlet(torch.ones(v.numel(), dtype=torch.float64)).sample((32,))
    scale = 1 + float(v.abs().max())
    assert bool((((q - p) @ (v - p)) <= 1e-9 * scale).all())


def test_projection_batched_and_against_qp() -> None:
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(10, 7, generator=gen, dtype=torch.float64) * 3
    p = project_simplex(v)
    for row, prow in zip(v.numpy(), p.numpy(), strict=True):
        res = minimize(
            lambda c, r=row: float(((c - r) ** 2).sum()),
            np.full(7, 1 / 7),
            bounds=[(0, None)] * 7,
            constraints=({"type": "eq", "fun": lambda c: c.sum() - 1},),
            method="SLSQP",
            options={"ftol": 1e-14},
        )
        np.testing.assert_allclose(prow, res.x, atol=1e-6)


def test_non_gram_matrices_are_refused_with_the_culprit() -> None:
    with pytest.raises(ValueError, match=r"not symmetric: entry \(0, 2\) is 0.5 but \(2, 0\)"):
        min_norm_weights(np.array([[1.0, 0.1, 0.5], [0.1, 1.0, 0.0], [0.2, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="most negative eigenvalue is -1 "):
        min_norm_weights(np.array([[1.0, 2.0], [2.0, 1.0]]))  # eigenvalues 3 and -1
    # Rounding is not an error: a rank-one float32 Gram and tiny asymmetry pass.
    jac = torch.from_numpy(sample_jacobian(6, 1, 30, 1e6, 3, dup=True)).float()
    gram32 = jac @ jac.T
    assert min_norm_weights(gram32).converged
    g = np.array([[1.0, 0.3], [0.3 + 1e-13, 2.0]])
    assert min_norm_weights(g).kkt_residual < 1e-12
