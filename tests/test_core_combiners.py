"""Combiners behind one interface: gradients against hand-built references, and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paretoopt import (
    MGDA,
    PAMA,
    LinearScalarization,
    gram_matrix,
    make_combiner,
    min_norm_weights,
    pama_closed_form,
    pama_ppo_loss,
    ppo_losses,
    ppo_losses_from_ratio,
    ratio,
)
from paretoopt.combiners import _grads_wrt

VOCAB, HIDDEN = 11, 8


class TinyPolicy(torch.nn.Module):
    """Embedding -> tanh -> linear head, float64 for tight comparisons."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(VOCAB, HIDDEN, dtype=torch.float64)
        self.head = torch.nn.Linear(HIDDEN, VOCAB, dtype=torch.float64)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.emb(tokens))

    def logprobs_from_hidden(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(self.head(h), -1)
        return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.logprobs_from_hidden(self.hidden(tokens), tokens)


def rl_batch(seed: int, n: int = 3, b: int = 4, t: int = 6):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (b, t), generator=gen)
    adv = torch.randn(n, b, t, generator=gen, dtype=torch.float64)
    mask = torch.rand(b, t, generator=gen) > 0.25
    mask[:, 0] = True
    return tokens, adv, mask


def param_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def perturbed_reference(model: TinyPolicy, tokens: torch.Tensor, seed: int) -> torch.Tensor:
    """Reference log-probs of a nearby policy, so that some ratios leave the clip range."""
    ref_model = TinyPolicy(seed)
    with torch.no_grad():
        for p, q in zip(ref_model.parameters(), model.parameters(), strict=True):
            p.copy_(q + 0.4 * torch.randn_like(q))
        return ref_model(tokens)


@settings(max_examples=25)
@given(st.integers(0, 10_000), st.integers(1, 5), st.booleans())
def test_generic_pama_equals_advantage_fast_path(seed: int, n: int, use_mask: bool) -> None:
    tokens, adv, mask = rl_batch(seed, n=n)
    m = mask if use_mask else None
    model = TinyPolicy(0)
    ref = perturbed_reference(model, tokens, seed)

    # Route 1: n Noon PPO losses + the shared ratio tensor, through the generic combiner.
    u = ratio(model(tokens), ref)
    losses = ppo_losses_from_ratio(u, adv, m)
    result = PAMA()(list(losses), shared=u)
    result.loss.backward()
    generic = param_grads(model)

    # Route 2: the advantage fast path, s* = min_i max(A_i, 0), in one surrogate.
    model.zero_grad()
    pama_ppo_loss(model(tokens), ref, adv, m).backward()
    fast = param_grads(model)

    torch.testing.assert_close(generic, fast, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("granularity", ["sample", "batch"])
def test_generic_pama_granularities_match_fast_path_at_unit_ratio(granularity: str) -> None:
    # At u = 1 no token is clipped, so the gradient sums are proportional to advantage means.
    tokens, adv, mask = rl_batch(5)
    model = TinyPolicy(0)
    logp = model(tokens)
    u = ratio(logp, logp.detach())
    losses = ppo_losses_from_ratio(u, adv, mask)
    PAMA(granularity=granularity)(list(losses), shared=u).loss.backward()
    generic = param_grads(model)
    model.zero_grad()
    logp = model(tokens)
    pama_ppo_loss(logp, logp.detach(), adv, mask, granularity=granularity).backward()
    torch.testing.assert_close(generic, param_grads(model), rtol=1e-10, atol=1e-12)


def test_pama_result_fields_and_value() -> None:
    tokens, adv, mask = rl_batch(1)
    model = TinyPolicy(0)
    u = ratio(model(tokens), perturbed_reference(model, tokens, 1))
    losses = ppo_losses_from_ratio(u, adv, mask)
    res = PAMA()(list(losses), shared=u)
    assert res.weights.shape == (3,) and res.weights.dtype == torch.float64
    assert float(res.weights.sum()) == pytest.approx(1.0)
    assert res.element_weights is not None and res.element_weights.shape == (3, *u.shape)
    expected_value = float((res.weights * losses.detach()).sum())
    assert float(res.loss.detach()) == pytest.approx(expected_value)
    assert 0.0 <= res.stats["conflict_rate"] <= 1.0
    assert res.stats["min_norm"] >= 0


def test_mgda_exact_matches_hand_built_min_norm_and_is_non_conflicting() -> None:
    tokens, adv, mask = rl_batch(2, n=4)
    model = TinyPolicy(0)
    params = list(model.parameters())
    losses = ppo_losses(model(tokens), perturbed_reference(model, tokens, 2), adv, mask)

    jac = torch.stack(
        [
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
            for loss in losses
        ]
    )
    expected = min_norm_weights(jac @ jac.T)

    res = MGDA(mode="params")(list(losses), params=params)
    assert all(p.grad is None for p in params)  # the call itself writes no gradients
    torch.testing.assert_close(res.weights, expected.weights)
    res.loss.backward()
    d = param_grads(model)
    torch.testing.assert_close(d, jac.T @ expected.weights)
    # Non-conflicting: the update direction -d decreases no objective's... g_i . d >= ||d||^2.
    assert bool((jac @ d >= d @ d - 1e-12).all())
    assert res.stats["kkt_residual"] < 1e-9
    assert res.stats["min_directional_derivative"] >= -1e-12


def test_mgda_ub_uses_gradients_at_the_shared_tensor() -> None:
    tokens, adv, mask = rl_batch(3)
    model = TinyPolicy(0)
    h = model.hidden(tokens)
    ref = perturbed_reference(model, tokens, 3)
    losses = ppo_losses(model.logprobs_from_hidden(h, tokens), ref, adv, mask)
    gz = torch.stack(
        [torch.autograd.grad(loss, h, retain_graph=True)[0].reshape(-1) for loss in losses]
    )
    expected = min_norm_weights(gz @ gz.T).weights
    res = MGDA(mode="shared")(list(losses), shared=h)
    torch.testing.assert_close(res.weights, expected)
    res.loss.backward(retain_graph=True)
    total = param_grads(model)
    model.zero_grad()
    sum(float(expected[i]) * losses[i] for i in range(3)).backward()
    torch.testing.assert_close(total, param_grads(model))


@pytest.mark.parametrize("rescale", [False, True], ids=["simplex", "rescaled"])
@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_mgda_normalizations(normalization: str, rescale: bool) -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64))
    targets = [torch.tensor(t, dtype=torch.float64) for t in ([3, 0, 0], [0, -2, 1], [1, 1, 5])]
    losses = [((w - t) ** 2).sum() for t in targets]
    grads = torch.stack([2 * (w.detach() - t) for t in targets])
    lv = torch.stack([loss.detach() for loss in losses])
    nu = {
        "l2": grads.norm(dim=1),
        "loss": lv,
        "loss+": lv * grads.norm(dim=1),
    }[normalization]
    gn = grads / nu[:, None]
    expected = min_norm_weights(gn @ gn.T).weights  # c: solved on the normalised gradients
    res = MGDA(normalization=normalization, rescale=rescale)(losses, params=[w])
    torch.testing.assert_close(res.weights, expected)
    res.loss.backward()
    if rescale:
        # The update is the min-norm point of the normalised gradients: sum_i c_i g_i / nu_i.
        torch.testing.assert_close(w.grad, gn.T @ expected)
        applied = expected / nu
    else:
        # The authors' code: the raw losses with the simplex weights, sum_i c_i L_i.
        torch.testing.assert_close(w.grad, grads.T @ expected)
        applied = expected
        assert float(res.loss.detach()) == pytest.approx(float(expected @ lv))
    for i in range(3):
        assert res.stats[f"loss_weight/{i}"] == pytest.approx(float(applied[i]))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.05, 20.0), min_size=2, max_size=5),
    st.sampled_from(["none", "l2", "loss", "loss+"]),
    st.sampled_from(["params", "shared"]),
    st.integers(0, 2**16),
)
def test_mgda_default_loss_is_a_convex_combination_of_the_losses(
    scales: list[float], normalization: str, mode: str, seed: int
) -> None:
    """Whatever the normalisation, the default trains on sum_i c_i L_i with c on the simplex:
    the combined loss lies between the smallest and the largest loss, and the applied loss
    weights are the simplex weights (the study's MGDA-UB once applied weights of 14-22)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(6, dtype=torch.float64, generator=gen))
    z = w * 1.0
    targets = torch.randn(len(scales), 6, dtype=torch.float64, generator=gen)
    losses = [s * ((z - t) ** 2).sum() + 0.1 for s, t in zip(scales, targets, strict=True)]
    res = MGDA(mode=mode, normalization=normalization)(losses, shared=z, params=[w])
    values = [float(loss.detach()) for loss in losses]
    assert min(values) - 1e-9 <= float(res.loss.detach()) <= max(values) + 1e-9
    applied = torch.tensor([res.stats[f"loss_weight/{i}"] for i in range(len(scales))])
    torch.testing.assert_close(applied, res.weights.to(applied.dtype))
    assert float(res.weights.sum()) == pytest.approx(1.0) and bool((res.weights >= 0).all())


@pytest.mark.parametrize(
    ("kwargs", "degree"),
    [
        ({}, 1),
        ({"normalization": "l2"}, 1),
        ({"normalization": "loss+"}, 1),
        ({"normalization": "none", "rescale": True}, 1),
        ({"normalization": "l2", "rescale": True}, 0),
        ({"normalization": "loss", "rescale": True}, 0),
        ({"normalization": "loss+", "rescale": True}, -1),
    ],
)
def test_mgda_loss_scale_degree(kwargs: dict, degree: int) -> None:
    """combine(s L).loss == s**h combine(L).loss, h as the combiner declares it."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64))
    targets = [torch.tensor(t, dtype=torch.float64) for t in ([3, 0, 0], [0, -2, 1])]
    combiner = MGDA(**kwargs)
    assert combiner.loss_scale_degree == degree
    base = float(combiner([((w - t) ** 2).sum() for t in targets], params=[w]).loss.detach())
    for s in (0.25, 3.0):
        scaled = combiner([s * ((w - t) ** 2).sum() for t in targets], params=[w])
        assert float(scaled.loss.detach()) == pytest.approx(s**degree * base, rel=1e-10)


def test_mgda_loss_normalization_rejects_non_positive_loss() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="objective 1 is -1"):
        MGDA(normalization="loss")([(w**2).sum(), -w.sum()], params=[w])


def test_linear_scalarization_gradient_and_uniform_default() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    losses = [(w**2).sum(), (w * 3).sum()]
    res = LinearScalarization([0.25, 0.75])(losses, params=[w])
    res.loss.backward()
    torch.testing.assert_close(w.grad, 0.25 * 2 * w.detach() + 0.75 * 3 * torch.ones(2))
    assert float(res.loss.detach()) == pytest.approx(0.25 * 5 + 0.75 * -3)
    uni = LinearScalarization()([(w**2).sum(), w.sum(), -w.sum()])
    torch.testing.assert_close(uni.weights, torch.full((3,), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_losses_give_float64_weights(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4).to(dtype)
    x = torch.randn(5, 6).to(dtype)
    out = layer(x)
    losses = [out[:, i].pow(2).mean() for i in range(3)]
    res = MGDA(mode="params")(losses, params=layer.parameters())
    assert res.weights.dtype == torch.float64 and bool(torch.isfinite(res.weights).all())
    jac = torch.stack(
        [
            torch.cat(
                [
                    g.reshape(-1)
                    for g in torch.autograd.grad(loss, list(layer.parameters()), retain_graph=True)
                ]
            )
            for loss in losses
        ]
    )
    expected = min_norm_weights(gram_matrix(jac)).weights
    torch.testing.assert_close(res.weights, expected)
    res.loss.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in layer.parameters())
    # PAMA over a half-precision shared tensor.
    z = layer(x)
    res_p = PAMA()([z[:, i].float().sum() for i in range(3)], shared=z)
    assert bool(torch.isfinite(res_p.weights).all())
    assert float(res_p.weights.sum()) == pytest.approx(1.0)


def test_zero_gradients_give_finite_weights() -> None:
    w = torch.nn.Parameter(torch.zeros(3))
    losses = [(w**2).sum(), (w**2).sum() * 2]  # both gradients are exactly zero at w = 0
    res = MGDA()(losses, params=[w])
    assert bool(torch.isfinite(res.weights).all())
    res = MGDA(normalization="l2")(losses, params=[w])
    assert bool(torch.isfinite(res.weights).all())


def test_combiners_do_not_mutate_inputs() -> None:
    tokens, adv, mask = rl_batch(4)
    model = TinyPolicy(0)
    u = ratio(model(tokens), perturbed_reference(model, tokens, 4))
    u_before = u.detach().clone()
    adv_before = adv.clone()
    losses = ppo_losses_from_ratio(u, adv, mask)
    loss_values = losses.detach().clone()
    for combiner in (PAMA(), MGDA(mode="shared"), MGDA(), LinearScalarization()):
        combiner(list(losses), shared=u, params=model.parameters())
        torch.testing.assert_close(u.detach(), u_before)
        torch.testing.assert_close(adv, adv_before)
        torch.testing.assert_close(losses.detach(), loss_values)
        assert all(p.grad is None for p in model.parameters())


def test_single_objective_is_accepted() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    for combiner in (PAMA(), MGDA(mode="shared"), MGDA(), LinearScalarization()):
        w.grad = None
        z = w * 3
        res = combiner([z.pow(2).sum()], shared=z, params=[w])
        res.loss.backward()
        torch.testing.assert_close(res.weights, torch.ones(1, dtype=torch.float64))
        torch.testing.assert_close(w.grad, 18 * w.detach())


def test_bad_input_errors_name_the_problem() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    z = w * 2
    good = [z.sum(), (z**2).sum()]
    with pytest.raises(ValueError, match="empty"):
        PAMA()([], shared=z)
    with pytest.raises(ValueError, match="objective 1 must be a scalar"):
        LinearScalarization()([z.sum(), z])
    with pytest.raises(ValueError, match="objective 1 is not finite"):
        MGDA()([z.sum(), z.sum() * float("nan")], params=[w])
    with pytest.raises(ValueError, match="objective 0 is not finite"):
        LinearScalarization()([z.sum() + float("inf"), z.sum()])
    with pytest.raises(TypeError, match="needs shared="):
        PAMA()(good)
    with pytest.raises(TypeError, match="needs shared="):
        MGDA(mode="shared")(good)
    with pytest.raises(TypeError, match="needs params="):
        MGDA()(good)
    with pytest.raises(ValueError, match="does not require grad"):
        PAMA()(good, shared=z.detach())
    with pytest.raises(ValueError, match="objective 1 does not depend on the shared"):
        other = torch.nn.Parameter(torch.ones(1))
        PAMA()([z.sum(), (other * 2).sum()], shared=z)
    with pytest.raises(ValueError, match="objective 0 does not require grad"):
        PAMA()([torch.tensor(1.0), z.sum()], shared=z)
    with pytest.raises(TypeError, match="objective 1 is list"):
        PAMA()([z.sum(), [1.0]], shared=z)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="2 weights but got 3 losses"):
        LinearScalarization([0.5, 0.5])([z.sum(), z.sum(), z.sum()])
    with pytest.raises(ValueError, match="weight of objective 1"):
        LinearScalarization([0.5, -0.5])
    with pytest.raises(ValueError, match="granularity"):
        PAMA(granularity="word")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalization"):
        MGDA(normalization="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown combiner"):
        make_combiner("nash")


def test_nan_gradient_at_shared_tensor_is_reported() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
    z = w * 1
    # sqrt at 0 has an infinite derivative: the loss is finite, its gradient is not.
    losses = [z.sum(), z.abs().sqrt().sum()]
    with pytest.raises(ValueError, match="objective 1 contains non-finite"):
        PAMA()(losses, shared=z)


def test_make_combiner_and_repr() -> None:
    assert isinstance(make_combiner("pama"), PAMA)
    assert make_combiner("mgda_ub").requires == "shared"
    assert make_combiner("MGDA").requires == "params"
    morlhf = make_combiner("morlhf")
    assert isinstance(morlhf, LinearScalarization) and morlhf.weights == (0.5, 0.5)
    assert repr(MGDA(normalization="l2")) == (
        "MGDA(mode='params', normalization='l2', rescale=False, solver='exact')"
    )
    assert repr(PAMA()) == "PAMA(granularity='token')"


def test_nan_gradient_over_params_is_reported_by_mgda() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
    losses = [w.sum(), w.abs().sqrt().sum()]  # finite loss, infinite derivative at 0
    with pytest.raises(ValueError, match="params for objective 1 contains non-finite"):
        MGDA()(losses, params=[w])
    with pytest.raises(ValueError, match="shared tensor for objective 1 contains non-finite"):
        z = w * 1
        MGDA(mode="shared")([z.sum(), z.abs().sqrt().sum()], shared=z)


def test_pama_mask_averages_weights_and_stats_over_valid_elements() -> None:
    """Objective 0 binds on both valid tokens; 4 of 6 are padding (zero gradients)."""
    u = torch.ones(1, 6, dtype=torch.float64, requires_grad=True)
    adv = torch.zeros(2, 1, 6, dtype=torch.float64)
    adv[0, 0, :2] = torch.tensor([0.2, 0.3])
    adv[1, 0, :2] = torch.tensor([0.9, 0.8])
    mask = torch.tensor([[1, 1, 0, 0, 0, 0]])
    losses = list(ppo_losses_from_ratio(u, adv, mask, cliprange=0.2, noon=True).unbind(0))
    unmasked = PAMA()(losses, shared=u)
    masked = PAMA()(losses, shared=u, mask=mask)
    # Padding gets uniform weights and would dilute the mean: 2/3, 1/3.
    torch.testing.assert_close(unmasked.weights, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(masked.weights, torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert masked.stats["weight/0"] == 1.0
    # The logged loss is objective 0's; the update itself is unchanged.
    assert float(masked.loss.detach()) == pytest.approx(float(losses[0].detach()))
    (g_masked,) = torch.autograd.grad(masked.loss, u, retain_graph=True)
    (g_plain,) = torch.autograd.grad(unmasked.loss, u, retain_graph=True)
    torch.testing.assert_close(g_masked, g_plain)
    # Stats over valid elements: objective 1 is vetoed on no valid token.
    assert masked.stats["veto_rate"] == 0.0 and masked.stats["conflict_rate"] == 0.0
    with pytest.raises(ValueError, match=r"mask has shape \(6,\).*\(1, 6\)"):
        PAMA()(losses, shared=u, mask=mask[0])
    with pytest.raises(ValueError, match="no valid element"):
        PAMA()(losses, shared=u, mask=torch.zeros_like(mask))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**16), st.floats(0.01, 100.0), st.floats(0.01, 100.0))
def test_mgda_l2_on_two_objectives_is_the_uniform_average(seed: int, s1: float, s2: float):
    """The min-norm point of two unit vectors is their midpoint: with l2 normalisation and two
    objectives the simplex weights are exactly 1/2 each, whatever the gradients (non-zero, not
    opposite), so MGDA's default trains on (L_1 + L_2) / 2, uniform linear scalarization."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64, generator=gen))
    t = torch.randn(2, 5, dtype=torch.float64, generator=gen)
    losses = [s1 * ((w - t[0]) ** 2).sum(), s2 * ((w - t[1]) ** 3).abs().sum()]
    res = MGDA(normalization="l2")(losses, params=[w])
    torch.testing.assert_close(res.weights, torch.tensor([0.5, 0.5], dtype=torch.float64))


class _NoVmapSquare(torch.autograd.Function):
    """x**2 whose backward reads a Python number from the gradient: vmap cannot batch it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        scale = float(grad.reshape(-1)[0]) if grad.numel() else 0.0
        return 2 * x * grad * (1.0 if scale == scale else 0.0)


def _shared_losses(seed: int, n: int, no_vmap: bool = False):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    z = torch.tanh(x @ w)
    h = _NoVmapSquare.apply(z) if no_vmap else z * z
    heads = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    losses = [(torch.sin(h) * heads[i]).sum() + (z[0, i % 5] ** 3) for i in range(n)]
    return losses, z


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 12))
def test_batched_gradients_equal_one_backward_each(seed: int, n: int) -> None:
    losses, z = _shared_losses(seed, n)
    batched = _grads_wrt(losses, z, "shared tensor", [True])
    looped = _grads_wrt(losses, z, "shared tensor", None)
    torch.testing.assert_close(batched, looped, rtol=0, atol=1e-12)
    pama_b, pama_l = PAMA(), PAMA()
    pama_l._batched[0] = False
    rb, rl = pama_b(losses, shared=z), pama_l(losses, shared=z)
    torch.testing.assert_close(rb.element_weights, rl.element_weights, rtol=0, atol=1e-12)
    torch.testing.assert_close(rb.weights, rl.weights, rtol=0, atol=1e-12)


def test_batched_gradients_fall_back_once_where_vmap_fails() -> None:
    losses, z = _shared_losses(0, 3, no_vmap=True)
    expected = _grads_wrt(losses, z, "shared tensor", None)
    pama = PAMA()
    result = pama(losses, shared=z)
    assert pama._batched == [False]  # remembered: the next call goes straight to the loop
    torch.testing.assert_close(result.element_weights, pama_closed_form(expected)[1])
    torch.testing.assert_close(pama(losses, shared=z).element_weights, result.element_weights)


def test_batched_gradients_keep_the_named_errors() -> None:
    losses, z = _shared_losses(1, 3)
    other = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="objective 1 does not depend on the shared tensor"):
        _grads_wrt([losses[0], other.sum(), losses[2]], z, "shared tensor", [True])
    # A loss that reaches z with a zero gradient is accepted (its row is zero).
    zero = (z * 0).sum()
    g = _grads_wrt([losses[0], zero], z, "shared tensor", [True])
    assert not bool(g[1].any())
    bad = losses[2] + (z[0, 0] * torch.tensor(float("nan"), dtype=torch.float64)).detach() * z[0, 0]
    with pytest.raises(ValueError, match="shared tensor for objective 2 contains non-finite"):
        _grads_wrt([losses[0], losses[1], bad], z, "shared tensor", [True])
