"""combine_and_backward: the combiner decides the trunk's gradient, each head gets its own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paretoopt import MGDA, PAMA, LinearScalarization, combine_and_backward


def _model(seed: int = 0) -> tuple[nn.Module, list[nn.Module]]:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
    heads = [nn.Linear(8, 1), nn.Linear(8, 1)]
    return trunk, heads


def _losses(trunk, heads, x, ys):
    z = trunk(x)
    return z, [((h(z)[:, 0] - y) ** 2).mean() for h, y in zip(heads, ys, strict=True)]


def _data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 4, generator=g)
    return x, [x[:, 0] + x[:, 1], x[:, 0] - 2 * x[:, 2]]


def _grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else None for p in module.parameters()]


def _heads_arg(heads):
    return [list(h.parameters()) for h in heads]


def test_linear_equals_plain_weighted_sum():
    x, ys = _data()
    trunk, heads = _model()
    _, losses = _losses(trunk, heads, x, ys)
    combine_and_backward(
        losses, LinearScalarization([0.3, 0.7]), params=trunk.parameters(), heads=_heads_arg(heads)
    )
    got = [_grads(trunk), *[_grads(h) for h in heads]]
    trunk2, heads2 = _model()
    _, losses2 = _losses(trunk2, heads2, x, ys)
    (0.3 * losses2[0] + 0.7 * losses2[1]).backward()
    want = [_grads(trunk2), *[_grads(h) for h in heads2]]
    for a_list, b_list in zip(got, want, strict=True):
        for a, b in zip(a_list, b_list, strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "combiner", [PAMA(), MGDA(mode="shared", normalization="l2"), MGDA(mode="params")]
)
def test_heads_get_their_own_gradient_trunk_gets_the_combined_one(combiner):
    x, ys = _data()
    trunk, heads = _model()
    z, losses = _losses(trunk, heads, x, ys)
    result = combine_and_backward(
        losses, combiner, shared=z, params=trunk.parameters(), heads=_heads_arg(heads)
    )
    # Heads: the plain gradient of their own loss, weight 1.
    trunk2, heads2 = _model()
    z2, losses2 = _losses(trunk2, heads2, x, ys)
    for i, (h, h2) in enumerate(zip(heads, heads2, strict=True)):
        want = torch.autograd.grad(losses2[i], list(h2.parameters()), retain_graph=True)
        for p, g in zip(h.parameters(), want, strict=True):
            torch.testing.assert_close(p.grad, g)
    # Trunk: the combiner's loss backpropagated into the trunk alone.
    res2 = combiner(losses2, shared=z2, params=list(trunk2.parameters()))
    want = torch.autograd.grad(res2.loss, list(trunk2.parameters()))
    for p, g in zip(trunk.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, g)
    torch.testing.assert_close(result.weights, res2.weights)


def test_without_heads_is_plain_backward_of_the_combined_loss():
    x, ys = _data()
    trunk, heads = _model()
    z, losses = _losses(trunk, heads, x, ys)
    combine_and_backward(losses, MGDA(mode="shared"), shared=z)
    assert all(p.grad is not None for h in heads for p in h.parameters())
    assert all(p.grad is not None for p in trunk.parameters())


@pytest.mark.parametrize(
    "combiner",
    [
        LinearScalarization(),
        PAMA(),
        MGDA(mode="shared", normalization="l2"),
        MGDA(mode="params", normalization="l2"),
    ],
    ids=["linear", "pama", "mgda_ub", "mgda"],
)
def test_trains_a_two_head_model_and_lowers_both_losses(combiner):
    x, ys = _data()
    trunk, heads = _model()
    opt = torch.optim.SGD([*trunk.parameters(), *[p for h in heads for p in h.parameters()]], 0.05)
    with torch.no_grad():
        start = [float(v) for v in _losses(trunk, heads, x, ys)[1]]
    for _ in range(60):
        opt.zero_grad()
        z, losses = _losses(trunk, heads, x, ys)
        combine_and_backward(
            losses, combiner, shared=z, params=trunk.parameters(), heads=_heads_arg(heads)
        )
        opt.step()
    with torch.no_grad():
        end = [float(v) for v in _losses(trunk, heads, x, ys)[1]]
    assert end[0] < 0.8 * start[0] and end[1] < 0.8 * start[1], (start, end)


def test_bad_input_is_named():
    x, ys = _data()
    trunk, heads = _model()
    z, losses = _losses(trunk, heads, x, ys)
    with pytest.raises(ValueError, match="one iterable of parameters per loss"):
        combine_and_backward(losses, PAMA(), shared=z, params=trunk.parameters(), heads=[[]])
    with pytest.raises(TypeError, match="needs params="):
        combine_and_backward(losses, PAMA(), shared=z, heads=_heads_arg(heads))
    with pytest.raises(ValueError, match="both params and heads"):
        combine_and_backward(
            losses,
            PAMA(),
            shared=z,
            params=trunk.parameters(),
            heads=[list(trunk.parameters()), list(heads[1].parameters())],
        )
    with pytest.raises(ValueError, match=r"heads\[0\] and heads\[1\]"):
        both = list(heads[0].parameters())
        combine_and_backward(
            losses, PAMA(), shared=z, params=trunk.parameters(), heads=[both, both]
        )
    with pytest.raises(TypeError, match="needs shared="):
        combine_and_backward(losses, PAMA(), params=trunk.parameters(), heads=_heads_arg(heads))


@pytest.mark.parametrize(
    "combiner",
    [LinearScalarization([0.3, 0.7]), PAMA(), MGDA(mode="shared"), MGDA(mode="params")],
    ids=["linear", "pama", "mgda_ub", "mgda"],
)
@pytest.mark.parametrize("with_heads", [True, False])
def test_backward_callable_is_called_once_and_writes_the_same_gradients(combiner, with_heads):
    """``backward=`` (e.g. ``accelerator.backward``) sees one call and writes what the default
    route writes; a wrapper that scales the loss (a grad scaler) scales every gradient."""
    x, ys = _data()
    got = []
    for scale in (None, 1.0, 8.0):
        trunk, heads = _model()
        z, losses = _losses(trunk, heads, x, ys)
        calls = []

        def backward(t, s=scale, calls=calls):
            calls.append(t)
            (t * s).backward()

        combine_and_backward(
            losses,
            combiner,
            shared=z,
            params=trunk.parameters(),
            heads=_heads_arg(heads) if with_heads else None,
            backward=None if scale is None else backward,
        )
        assert len(calls) == (0 if scale is None else 1)
        got.append([g for m in [trunk, *heads] for g in _grads(m)])
    for ref, same, scaled in zip(*got, strict=True):
        if ref is None:  # PAMA without heads: nothing reaches parameters after the shared tensor
            assert same is None and scaled is None
            continue
        torch.testing.assert_close(same, ref, rtol=0, atol=0)
        torch.testing.assert_close(scaled, 8.0 * ref, rtol=0, atol=0)


@pytest.mark.parametrize(
    "combiner",
    [LinearScalarization([0.3, 0.7]), PAMA(), MGDA(mode="shared", normalization="l2"),
     MGDA(mode="params", normalization="loss")],
    ids=["linear", "pama", "mgda_ub_l2", "mgda_loss"],
)  # fmt: skip
def test_grad_scale_multiplies_the_gradients_not_the_choice(combiner):
    """A grad scaler's factor: the same weights, every gradient times the scale (a power of 2,
    so exactly), also for normalised MGDA, whose combination does not grow with the losses."""
    x, ys = _data()
    got = []
    for scale in (1.0, 1024.0):
        trunk, heads = _model()
        z, losses = _losses(trunk, heads, x, ys)
        res = combine_and_backward(
            losses, combiner, shared=z, params=trunk.parameters(), heads=_heads_arg(heads),
            grad_scale=scale,
        )  # fmt: skip
        got.append((res.weights, [g for m in [trunk, *heads] for g in _grads(m)]))
    torch.testing.assert_close(got[1][0], got[0][0], rtol=0, atol=0)
    for ref, scaled in zip(got[0][1], got[1][1], strict=True):
        torch.testing.assert_close(scaled, 1024.0 * ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="grad_scale must be finite and > 0"):
        combine_and_backward(losses, combiner, shared=z, params=trunk.parameters(), grad_scale=0)
