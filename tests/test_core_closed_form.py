"""PAMA's closed form (Theorem 1) and the advantage fast path, against brute force."""

from __future__ import annotations

import contextlib
import itertools
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

import paretoopt._closed_form as cf_impl
import paretoopt._native as native
from paretoopt import noon_clip, pama_advantages, pama_closed_form, pama_stats

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
# Include exact zeros and ties often: they are the interesting cases of the weight choice.
coef = st.one_of(finite, st.sampled_from([0.0, 1.0, -1.0, 2.5, -2.5]))


def coefs_strategy(max_n: int = 64):
    return st.lists(coef, min_size=1, max_size=max_n).map(
        lambda xs: torch.tensor(xs, dtype=torch.float64)
    )


def brute_force_min(a: np.ndarray) -> float:
    """min over the simplex of (c . a)^2 by an independent QP (SLSQP from every vertex)."""
    n = a.size
    if n == 1:
        return float(a[0] ** 2)
    scale = max(float(np.abs(a).max()), 1e-300)
    b = a / scale
    best = np.inf
    cons = ({"type": "eq", "fun": lambda c: c.sum() - 1.0, "jac": lambda c: np.ones_like(c)},)
    starts = [np.full(n, 1.0 / n), np.eye(n)[int(np.argmin(np.abs(b)))]]
    for x0 in starts:
        res = minimize(
            lambda c: float(c @ b) ** 2,
            x0,
            jac=lambda c: 2 * float(c @ b) * b,
            bounds=[(0, 1)] * n,
            constraints=cons,
            method="SLSQP",
            options={"ftol": 1e-16, "maxiter": 500},
        )
        c = np.clip(res.x, 0, None)
        c /= c.sum()
        best = min(best, float(c @ b) ** 2)
    return best * scale**2


@settings(max_examples=150)
@given(coefs_strategy())
def test_closed_form_matches_independent_qp(a: torch.Tensor) -> None:
    s_star, _ = pama_closed_form(a)
    qp = brute_force_min(a.numpy())
    scale = float(a.abs().max()) ** 2 + 1e-300
    # The QP can only be as good as the exact optimum, never better.
    assert float(s_star) ** 2 <= qp + 1e-9 * scale
    assert qp <= float(s_star) ** 2 + 1e-6 * scale


@pytest.mark.parametrize("n", [1, 2, 3])
def test_closed_form_matches_dense_grid(n: int) -> None:
    rng = np.random.default_rng(n)
    grid = np.linspace(0, 1, 101)
    for _ in range(50):
        a = rng.normal(size=n) * rng.choice([1e-3, 1, 1e3])
        if rng.random() < 0.3:
            a[rng.integers(n)] = 0.0
        s_star, _ = pama_closed_form(torch.tensor(a))
        best = np.inf
        for c in itertools.product(grid, repeat=n - 1):
            if sum(c) <= 1:
                full = np.array([*c, 1 - sum(c)])
                best = min(best, float(full @ a) ** 2)
        assert float(s_star) ** 2 <= best + 1e-12
        # Grid resolution 0.01: the grid optimum is within 0.01 * spread of s*.
        assert abs(np.sqrt(best) - abs(float(s_star))) <= 0.011 * (np.ptp(a) + 1e-12) + 1e-12


@given(coefs_strategy())
def test_weights_on_simplex_and_reproduce_s_star(a: torch.Tensor) -> None:
    s_star, w = pama_closed_form(a)
    assert w.dtype == torch.float64
    assert bool((w >= 0).all())
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    scale = float(a.abs().max()) + 1e-300
    assert float((w * a).sum()) == pytest.approx(float(s_star), abs=1e-12 * scale)


@given(coefs_strategy())
def test_three_cases_of_theorem_1(a: torch.Tensor) -> None:
    s_star, _ = pama_closed_form(a)
    if bool((a > 0).all()):
        assert float(s_star) == float(a.min())
    elif bool((a < 0).all()):
        assert float(s_star) == float(a.max())
    else:
        assert float(s_star) == 0.0


@given(coefs_strategy(), st.randoms(use_true_random=False))
def test_permutation_invariance(a: torch.Tensor, rnd) -> None:
    perm = list(range(a.numel()))
    rnd.shuffle(perm)
    p = torch.tensor(perm)
    s1, w1 = pama_closed_form(a)
    s2, w2 = pama_closed_form(a[p])
    assert float(s1) == float(s2)
    torch.testing.assert_close(w2, w1[p], rtol=0, atol=1e-12)


@given(coefs_strategy(), st.floats(min_value=1e-6, max_value=1e6))
def test_positive_scale_equivariance(a: torch.Tensor, k: float) -> None:
    scaled = a * k
    # The property is of exact arithmetic: skip inputs whose scaling underflows (a subnormal
    # times k can round to 0) or rounds two different entries to one (a new tie).
    tiny = torch.finfo(torch.float64).tiny
    assume(bool(((scaled.abs() >= tiny) | (a == 0)).all()))
    assume(torch.unique(scaled).numel() == torch.unique(a).numel())
    s1, w1 = pama_closed_form(a)
    s2, w2 = pama_closed_form(scaled)
    assert float(s2) == pytest.approx(k * float(s1), rel=1e-12, abs=1e-300)
    torch.testing.assert_close(w2, w1, rtol=0, atol=1e-9)


def test_vectorised_equals_elementwise_and_dim_argument() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5, 4, 7, generator=gen, dtype=torch.float64)
    a[:, 0, 0] = a[:, 0, 0].abs() + 0.1  # all positive
    a[:, 1, 1] = -a[:, 1, 1].abs() - 0.1  # all negative
    a[2, 2, 2] = 0.0
    s, w = pama_closed_form(a)
    assert s.shape == (4, 7) and w.shape == a.shape
    for b in range(4):
        for t in range(7):
            s1, w1 = pama_closed_form(a[:, b, t])
            assert float(s[b, t]) == float(s1)
            torch.testing.assert_close(w[:, b, t], w1)
    s_last, w_last = pama_closed_form(a.movedim(0, -1), dim=-1)
    torch.testing.assert_close(s_last, s)
    torch.testing.assert_close(w_last.movedim(-1, 0), w)


def test_documented_weight_choices() -> None:
    s, w = pama_closed_form(torch.tensor([3.0, 1.0, 1.0, 2.0]))
    assert float(s) == 1.0
    torch.testing.assert_close(w, torch.tensor([0.0, 0.5, 0.5, 0.0]))
    s, w = pama_closed_form(torch.tensor([-3.0, 0.0, 2.0, 0.0]))
    assert float(s) == 0.0
    torch.testing.assert_close(w, torch.tensor([0.0, 0.5, 0.0, 0.5]))
    s, w = pama_closed_form(torch.tensor([-1.0, 3.0]))
    assert float(s) == 0.0
    torch.testing.assert_close(w, torch.tensor([0.75, 0.25]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_finite_correct_weights(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    a64 = (torch.randn(8, 64, generator=gen, dtype=torch.float64) * 100).to(dtype).double()
    a = a64.to(dtype)
    s, w = pama_closed_form(a)
    s_ref, w_ref = pama_closed_form(a64)
    assert s.dtype == dtype
    assert w.dtype == torch.float32
    assert bool(torch.isfinite(w).all())
    torch.testing.assert_close(s.double(), s_ref)
    torch.testing.assert_close(w.double(), w_ref, rtol=0, atol=1e-6)
    # Weights that would overflow float16 arithmetic (spread beyond 65504) stay finite.
    big = torch.tensor([-60000.0, 60000.0], dtype=torch.float16)
    _, wb = pama_closed_form(big)
    torch.testing.assert_close(wb, torch.tensor([0.5, 0.5]))


# ---------------------------------------------------------------------------
# pama_advantages
# ---------------------------------------------------------------------------


@settings(max_examples=60)
@given(
    st.integers(1, 6),
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(0, 2**31 - 1),
)
def test_token_granularity_is_min_of_noon_advantages(n: int, b: int, t: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    adv = torch.randn(n, b, t, generator=gen, dtype=torch.float64)
    mask = torch.rand(b, t, generator=gen) > 0.3
    s = pama_advantages(adv, mask)
    expected = noon_clip(adv).amin(0) * mask
    torch.testing.assert_close(s, expected)
    # Without Noon the closed form keeps negative agreement too.
    s_raw = pama_advantages(adv, mask, noon=False)
    exp_raw = (torch.relu(adv.amin(0)) - torch.relu(-adv.amax(0))) * mask
    torch.testing.assert_close(s_raw, exp_raw)


def test_sample_and_batch_granularity() -> None:
    gen = torch.Generator().manual_seed(3)
    adv = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:] = False
    s, w = pama_advantages(adv, mask, granularity="sample", return_weights=True)
    clipped = noon_clip(adv)
    for b in range(4):
        m = mask[b]
        means = clipped[:, b][:, m].mean(1)
        _, wb = pama_closed_form(means)
        torch.testing.assert_close(w[:, b, 0], wb)
        torch.testing.assert_close(s[b], (wb[:, None] * clipped[:, b]).sum(0) * m)
    s, w = pama_advantages(adv, mask, granularity="batch", return_weights=True)
    means = torch.stack([clipped[i][mask].mean() for i in range(3)])
    _, wb = pama_closed_form(means)
    torch.testing.assert_close(w[:, 0, 0], wb)
    torch.testing.assert_close(s, (wb[:, None, None] * clipped).sum(0) * mask)
    # Sequence-level advantages [n, B] (GRPO): the closed form per sample.
    seq = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(pama_advantages(seq, granularity="sample"), noon_clip(seq).amin(0))


def test_list_input_and_stats() -> None:
    a = [torch.tensor([[1.0, -1.0]]), torch.tensor([[2.0, 3.0]])]
    s = pama_advantages(a)
    torch.testing.assert_close(s, torch.tensor([[1.0, 0.0]]))
    stats = pama_stats(a)
    assert stats["binding_rate/0"] == pytest.approx(0.5 + 0.5 * 1.0)  # token 2: only obj 0 is 0
    assert stats["binding_rate/1"] == pytest.approx(0.0)
    assert stats["conflict_rate"] == pytest.approx(0.5)
    assert stats["zero_rate"] == pytest.approx(0.5)


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="empty"):
        pama_advantages([])
    with pytest.raises(ValueError, match="objective 1 has shape"):
        pama_advantages([torch.zeros(2, 3), torch.zeros(2, 4)])
    bad = torch.zeros(3, 2, 2)
    bad[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="objective 2 contains non-finite"):
        pama_advantages(bad)
    with pytest.raises(ValueError, match="mask has shape"):
        pama_advantages(torch.zeros(2, 3, 4), torch.ones(3, 5))
    with pytest.raises(ValueError, match="granularity"):
        pama_advantages(torch.zeros(2, 3, 4), granularity="word")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[n, B\]"):
        pama_advantages(torch.zeros(3))
    with pytest.raises(TypeError, match="not a Tensor"):
        pama_advantages([torch.zeros(2), [1.0, 2.0]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="objective 0 contains non-finite"):
        pama_closed_form(torch.tensor([float("inf"), 1.0]))


def test_single_objective_is_its_own_noon_advantage() -> None:
    adv = torch.tensor([[[0.5, -2.0, 3.0]]])
    torch.testing.assert_close(pama_advantages(adv), torch.tensor([[0.5, 0.0, 3.0]]))
    s, w = pama_closed_form(torch.tensor([-4.0]))
    assert float(s) == -4.0 and float(w) == 1.0


@pytest.mark.parametrize("granularity", ["token", "sample", "batch"])
@pytest.mark.parametrize("noon", [True, False])
@pytest.mark.parametrize("return_weights", [True, False])
def test_pama_advantages_never_mutates_its_input(
    granularity: str, noon: bool, return_weights: bool
) -> None:
    gen = torch.Generator().manual_seed(4)
    for adv in (torch.randn(3, 2, 5, generator=gen), torch.randn(1, 4, generator=gen)):
        mask = torch.rand(adv.shape[1:], generator=gen) > 0.3
        before, mask_before = adv.clone(), mask.clone()
        out = pama_advantages(
            adv, mask, granularity=granularity, noon=noon, return_weights=return_weights
        )
        torch.testing.assert_close(adv, before)
        torch.testing.assert_close(mask, mask_before)
        s_star = out[0] if return_weights else out
        assert s_star.data_ptr() != adv.data_ptr()


@pytest.mark.parametrize("granularity", ["token", "sample", "batch"])
def test_pama_stats_describe_the_granularity_trained_on(granularity: str) -> None:
    g = torch.Generator().manual_seed(4)
    adv = torch.randn(3, 5, 7, generator=g, dtype=torch.float64) + 0.3
    mask = (torch.arange(7) < torch.tensor([7, 3, 5, 1, 6]).unsqueeze(1)).long()
    s_star, weights = pama_advantages(adv, mask, granularity=granularity, return_weights=True)
    stats = pama_stats(adv, mask, granularity=granularity)
    valid = mask.bool()
    assert stats["mean_s_star"] == pytest.approx(float(s_star[valid].mean()))
    assert stats["zero_rate"] == pytest.approx(float((s_star[valid] == 0).double().mean()))
    for i in range(3):
        assert stats[f"binding_rate/{i}"] == pytest.approx(float(weights[i][valid].mean()))
    assert stats == pama_stats(adv, mask, weights=weights)
    if granularity != "token":  # coarser weights reinforce more than the per-token minimum
        assert stats["mean_s_star"] > pama_stats(adv, mask)["mean_s_star"]


# ---------------------------------------------------------------------------
# The blocked one-pass closed form against the formulas it replaces, to the bit
# ---------------------------------------------------------------------------


def reference_closed_form(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """s* and the weights over dim 0 as whole-tensor formulas: amin/amax and three tie masks."""
    wd = torch.float64 if a.dtype == torch.float64 else torch.float32
    mn, mx = a.amin(0), a.amax(0)
    s_star = mn.clamp_min(0).add_(mx.clamp_max(0))
    mnf, mxf = mn.to(wd), mx.to(wd)
    is_min, is_max, is_zero = (a == mn).to(wd), (a == mx).to(wd), (a == 0).to(wd)
    n_min, n_max, n_zero = is_min.sum(0), is_max.sum(0), is_zero.sum(0)
    all_pos, all_neg, has_zero = mn > 0, mx < 0, n_zero > 0
    d = (mxf - mnf).clamp_min(torch.finfo(wd).tiny)
    # max - min overflows near the dtype's max: the halves give the same lambda there.
    halves = -(mnf * 0.5) / (mxf * 0.5 - mnf * 0.5)
    lam = torch.where(torch.isinf(d), halves, -mnf / d).clamp(0, 1)
    mixed = ~(all_pos | all_neg | has_zero)
    share_min = torch.where(all_pos, 1.0, torch.where(mixed, 1 - lam, 0.0)).to(wd)
    share_max = torch.where(all_neg, 1.0, torch.where(mixed, lam, 0.0)).to(wd)
    share_zero = (has_zero & ~all_pos & ~all_neg).to(wd)
    weights = is_min * (share_min / n_min)
    weights += is_max * (share_max / n_max)
    weights += is_zero * (share_zero / n_zero.clamp_min(1))
    return s_star, weights


_INT_OF = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def assert_same_bits(x: torch.Tensor, y: torch.Tensor) -> None:
    """Bit-identical, except that +0.0 and -0.0 count as one value: ``amin`` itself returns
    either zero of a tie between them, depending on the element's place in its vector loop."""
    assert x.dtype == y.dtype and x.shape == y.shape
    x = torch.where(x == 0, torch.zeros_like(x), x)
    y = torch.where(y == 0, torch.zeros_like(y), y)
    assert torch.equal(x.view(_INT_OF[x.dtype]), y.view(_INT_OF[y.dtype]))


# Values that make ties, zeros of both signs, all-positive and all-negative columns common.
tie_values = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 1e-300, -1e300, 3e38, -3e38])


@st.composite
def objective_matrices(draw):
    n = draw(st.integers(1, 70))
    size = draw(st.integers(1, 300))
    dtype = draw(st.sampled_from(list(_INT_OF)))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, size, generator=gen, dtype=torch.float64) * 10 ** draw(st.integers(-3, 3))
    specials = torch.tensor(draw(st.lists(tie_values, min_size=1, max_size=6)), dtype=torch.float64)
    where = torch.rand(n, size, generator=gen) < draw(st.sampled_from([0.0, 0.3, 0.9]))
    a[where] = specials[torch.randint(0, specials.numel(), (int(where.sum()),), generator=gen)]
    a = a.to(dtype)
    assume(bool(torch.isfinite(a).all()))  # 3e38 overflows the half types
    return a


# Both CPU paths: the torch formulas and the compiled kernel (paretoopt/_closed_form.c).
PATHS = ["torch", "kernel"]


@pytest.fixture(params=PATHS, scope="module")
def path(request: pytest.FixtureRequest) -> str:
    if request.param == "kernel" and native.kernels() is None:
        if native._compiler() is not None:
            pytest.fail(f"a C compiler is present but the kernel did not load: {native.status()}")
        pytest.skip(f"no compiled kernel here: {native.status()}")
    return request.param


@contextlib.contextmanager
def small_blocks(path: str):
    # Blocks of a few columns, so that the examples span many blocks and a ragged last one;
    # the kernel's calls split over two threads.
    patches = [
        mock.patch.object(cf_impl, "_S_STAR_BLOCK_COLS", 7),
        mock.patch.object(cf_impl, "_WEIGHTS_BLOCK_ELEMS", 40),
        mock.patch.object(cf_impl, "_S_STAR_WHOLE_BELOW", 0),  # the blocked path always
        mock.patch.object(cf_impl, "_FOLD_MIN_COLS", 0),  # the fold, not amin/amax
    ]
    if path == "torch":
        patches.append(mock.patch.object(native, "kernels", lambda: None))
    else:
        patches += [
            mock.patch.object(cf_impl, "_NATIVE_S_STAR_BYTES_FEW", 28),  # 7 or 3 columns
            mock.patch.object(cf_impl, "_NATIVE_S_STAR_BYTES_MANY", 44),
            mock.patch.object(cf_impl, "_NATIVE_WEIGHTS_ROW_BYTES", 20),  # 5 or 2
            mock.patch.object(native, "PARALLEL_MIN_ELEMS", 0),
        ]
    threads = torch.get_num_threads()
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        torch.set_num_threads(2)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


@settings(max_examples=200, deadline=None)
@given(a=objective_matrices())
def test_blocked_closed_form_is_the_formula_to_the_bit(path: str, a: torch.Tensor) -> None:
    s_ref, w_ref = reference_closed_form(a)
    with small_blocks(path):
        s_star, weights = pama_closed_form(a)
        blocked = [
            (
                pama_advantages(a.unsqueeze(-1), noon=noon),
                pama_advantages(a.unsqueeze(-1), noon=noon, return_weights=True),
            )
            for noon in (False, True)
        ]
    assert_same_bits(s_star, s_ref)
    assert_same_bits(weights, w_ref)
    for noon, (s_only, (s_w, w)) in zip((False, True), blocked, strict=True):
        clipped = a.clamp_min(0) if noon else a
        s_clip, w_clip = reference_closed_form(clipped)
        expected = a.amin(0).clamp_min(0) if noon else s_clip
        assert_same_bits(s_only, expected.unsqueeze(-1))
        assert_same_bits(s_w, s_clip.unsqueeze(-1))
        assert_same_bits(w, w_clip.unsqueeze(-1))


@settings(max_examples=100, deadline=None)
@given(a=objective_matrices())
def test_blocked_two_objectives_to_the_bit(path: str, a: torch.Tensor) -> None:
    # n = 2 has its own s* path (the median of a, b and 0): the same checks on the first two
    # objectives of each example (duplicated where there is one).
    test_blocked_closed_form_is_the_formula_to_the_bit.hypothesis.inner_test(
        path, a[:2] if a.shape[0] >= 2 else a.expand(2, -1).clone()
    )


@settings(max_examples=40, deadline=None)
@given(a=objective_matrices(), dim=st.integers(0, 2))
def test_blocked_closed_form_any_layout(path: str, a: torch.Tensor, dim: int) -> None:
    # Objectives along any dimension of a 3-d tensor (rows that are not contiguous).
    n, size = a.shape
    x = a.reshape(n, size, 1).expand(n, size, 2).movedim(0, dim)
    with small_blocks(path):
        s_star, weights = pama_closed_form(x, dim=dim)
    s_ref, w_ref = reference_closed_form(a)
    assert_same_bits(s_star, s_ref.unsqueeze(-1).expand(size, 2))
    assert_same_bits(weights.movedim(dim, 0), w_ref.unsqueeze(-1).expand(n, size, 2))


@pytest.mark.parametrize("noon", [False, True])
@pytest.mark.parametrize("return_weights", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_in_any_block_names_the_objective(
    path: str, noon: bool, return_weights: bool, bad: float
) -> None:
    with small_blocks(path):
        _check_non_finite_blocks(noon, return_weights, bad)


def _check_non_finite_blocks(noon: bool, return_weights: bool, bad: float) -> None:
    for col in (0, 13, 29):  # first, a middle and the last (ragged) block
        adv = torch.randn(3, 30, dtype=torch.float64)
        adv[1, col] = bad
        if noon and return_weights and bad < 0:
            # The weights are those of the clipped advantages, where -inf is 0 (as ever).
            s_star, weights = pama_advantages(adv, noon=True, return_weights=True)
            s_ref, w_ref = reference_closed_form(adv.clamp_min(0))
            assert_same_bits(s_star, s_ref)
            assert_same_bits(weights, w_ref)
        else:
            with pytest.raises(ValueError, match="advantages for objective 1 contains non-fini"):
                pama_advantages(adv, noon=noon, return_weights=return_weights)
        with pytest.raises(ValueError, match="coefs for objective 1 contains non-finite"):
            pama_closed_form(adv)


# ---------------------------------------------------------------------------
# pama_advantages(..., out=): the caller's tensor receives s*
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("granularity", ["token", "sample", "batch"])
@pytest.mark.parametrize("return_weights", [False, True])
def test_out_receives_exactly_the_fresh_result(
    path: str, granularity: str, return_weights: bool
) -> None:
    gen = torch.Generator().manual_seed(3)
    adv = torch.randn(3, 4, 50, generator=gen)
    mask = torch.rand(4, 50, generator=gen) > 0.2
    for layout in ("contiguous", "transposed"):
        with small_blocks(path):
            fresh = pama_advantages(adv, mask, granularity, return_weights=return_weights)
            out = torch.full((4, 50), 7.0) if layout == "contiguous" else torch.full((50, 4), 7.0).T
            got = pama_advantages(adv, mask, granularity, return_weights=return_weights, out=out)
        s_fresh, s_got = (fresh[0], got[0]) if return_weights else (fresh, got)
        assert s_got is out
        assert_same_bits(out, s_fresh)
        if return_weights:
            assert torch.equal(got[1], fresh[1])


def test_out_of_the_wrong_kind_is_named() -> None:
    adv = torch.randn(2, 5, 6)
    cases = [
        (torch.empty(5, 7), r"out has shape \(5, 7\) \(expected \(5, 6\)\)"),
        (torch.empty(5, 6, dtype=torch.float64), r"dtype torch.float64 \(expected torch.float32"),
        (torch.empty(5, 6, device="meta"), r"device meta \(expected cpu\)"),
        (torch.empty(5, 6, requires_grad=True), "requires_grad=True"),
    ]
    for out, message in cases:
        with pytest.raises(ValueError, match=message):
            pama_advantages(adv, out=out)
    with pytest.raises(TypeError, match=r"out must be a torch\.Tensor"):
        pama_advantages(adv, out=[0.0] * 30)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_closed_form_out_receives_exactly_the_fresh_result(
    path: str, dim: int, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(4, 3, 40, generator=gen).to(dtype).movedim(0, dim)
    a[(slice(None),) * (dim % 3) + (0,)] = 0.0  # zeros: a zero group in some columns
    with small_blocks(path):
        s_fresh, w_fresh = pama_closed_form(a, dim=dim)
        s_out = torch.full_like(s_fresh, 7.0)
        w_out = torch.full_like(w_fresh, 7.0)
        s_got, w_got = pama_closed_form(a, dim=dim, out=(s_out, w_out))
    assert s_got is s_out and w_got is w_out
    assert_same_bits(s_out, s_fresh)
    assert_same_bits(w_out, w_fresh)


def test_closed_form_out_of_the_wrong_kind_is_named() -> None:
    a = torch.randn(3, 8)
    s, w = torch.empty(8), torch.empty(3, 8)
    cases = [
        ((torch.empty(9), w), r"out's s_star has shape \(9,\) \(expected \(8,\)\)"),
        ((s, torch.empty(3, 8, dtype=torch.float64)), r"out's weights has dtype torch\.float64"),
        ((s, torch.empty(3, 8, requires_grad=True)), "requires_grad=True"),
    ]
    for out, message in cases:
        with pytest.raises(ValueError, match=message):
            pama_closed_form(a, out=out)
    with pytest.raises(TypeError, match="pair of tensors"):
        pama_closed_form(a, out=s)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", PATHS)
def test_out_may_be_the_input_itself(path: str) -> None:
    # out= over the input's own memory (in place): the same values as into fresh tensors.
    gen = torch.Generator().manual_seed(11)
    for n in (2, 3, 9):
        a = torch.randn(n, 300, generator=gen)
        a[:, :40] = 0.0
        s_ref = pama_advantages(a, noon=False)
        sw_ref = pama_closed_form(a)
        with small_blocks(path):
            x = a.clone()
            got = pama_advantages(x, noon=False, out=x[n - 1])
            assert got is not None
            assert_same_bits(x[n - 1], s_ref)
            y = torch.cat([a, a.new_zeros(1, 300)])
            s_out, w_out = pama_closed_form(y[:n], out=(y[n], y[:n]))
            assert_same_bits(s_out, sw_ref[0])
            assert_same_bits(w_out, sw_ref[1])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [2, 3, 9])
def test_weights_attain_s_star_near_the_dtype_max(path: str, dtype: torch.dtype, n: int) -> None:
    # Mixed signs whose max - min overflows: the weights must still cancel to s* = 0.
    big = torch.finfo(dtype).max
    cols = torch.tensor(
        [[1.0, -1.0], [0.9, -0.5], [-1.0, 0.3], [1.0, -0.99], [0.6, -0.7]], dtype=torch.float64
    ).T  # [2, 5], in units of the dtype's max
    rows = [cols[i % 2] * (1 - 0.01 * (i // 2)) for i in range(n)]
    a = (torch.stack(rows) * big).to(dtype)
    with small_blocks(path):
        s_star, weights = pama_closed_form(a)
    assert torch.all(s_star == 0)
    assert torch.allclose(weights.double().sum(0), torch.ones(5, dtype=torch.float64))
    residual = (weights.double() * (a.double() / big)).sum(0)  # sum_i w_i a_i / max
    assert residual.abs().max() <= 1e-6, residual
