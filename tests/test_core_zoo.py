"""The torchjd zoo (paretoopt.zoo) against torchjd's own path.

Every registered method, over a shared tensor and over parameters: the gradient our combiner
produces equals what torchjd's own ``autojac.backward`` + ``jac_to_grad`` (or ``mtl_backward``)
writes with a freshly built aggregator on the same losses. Random methods see the same seed on
both paths. Then: the weights route equals the Jacobian route, homogeneity, exact resume of the
stateful methods through ``state_dict``, and the refusals.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paretoopt import TorchJD, combine_and_backward, make_combiner
from paretoopt.zoo import ZOO, ZOO_NAMES

tja = pytest.importorskip("torchjd.aggregation")
from torchjd.autojac import backward as jd_backward  # noqa: E402
from torchjd.autojac import jac_to_grad, mtl_backward  # noqa: E402

FEW = settings(max_examples=4, deadline=None, derandomize=True)
SHARED_NAMES = [n for n in ZOO_NAMES if "shared" in ZOO[n].modes]


def own_aggregator(name: str, n: int):
    """torchjd's aggregator for ``name``, built directly from torchjd (not through paretoopt)."""
    spec = ZOO[name]
    kwargs = dict(spec.defaults)
    if name == "nashmtl":
        kwargs["n_tasks"] = n
    return getattr(tja, spec.torchjd_class)(**kwargs)


def problem(seed: int, n: int, d: int = 3):
    """n objectives' fixed maps and weights: L_i(z) = sum(c_i * tanh(z @ M_i))."""
    g = torch.Generator().manual_seed(seed)
    mats = torch.randn(n, d, d, generator=g, dtype=torch.float64)
    coefs = torch.randn(n, 4, d, generator=g, dtype=torch.float64)
    z0 = torch.randn(4, d, generator=g, dtype=torch.float64)

    def losses(z: torch.Tensor) -> list[torch.Tensor]:
        return [(coefs[i] * torch.tanh(z @ mats[i])).sum() for i in range(n)]

    return z0, losses


def n_for(name: str, extra: int) -> int:
    return max(ZOO[name].min_objectives, 2) + extra


def ours_shared(combiner, z0, losses, seed: int) -> torch.Tensor:
    z = z0.clone().requires_grad_(True)
    torch.manual_seed(seed)
    result = combiner(losses(z), shared=z)
    result.loss.backward()
    assert z.grad is not None
    return z.grad


def theirs_shared(aggregator, z0, losses, seed: int) -> torch.Tensor:
    z = z0.clone().requires_grad_(True)
    torch.manual_seed(seed)
    jd_backward(losses(z), inputs=[z])
    jac_to_grad([z], aggregator)
    assert z.grad is not None
    return z.grad


@pytest.mark.parametrize("name", SHARED_NAMES)
@FEW
@given(seed=st.integers(0, 10_000), extra=st.integers(0, 2))
def test_shared_mode_matches_torchjd(name: str, seed: int, extra: int) -> None:
    n = n_for(name, extra)
    z0, losses = problem(seed, n)
    ours = ours_shared(make_combiner(name, mode="shared"), z0, losses, seed)
    theirs = theirs_shared(own_aggregator(name, n), z0, losses, seed)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


class Trunk(torch.nn.Module):
    def __init__(self, seed: int, d: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = torch.nn.Linear(d, 5).double()
        self.b = torch.nn.Linear(5, d).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def grads(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()])  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ZOO_NAMES)
@FEW
@given(seed=st.integers(0, 10_000), extra=st.integers(0, 1))
def test_params_mode_matches_torchjd(name: str, seed: int, extra: int) -> None:
    n = n_for(name, extra)
    x, losses = problem(seed, n)
    ours_net, theirs_net = Trunk(seed), Trunk(seed)
    torch.manual_seed(seed)
    combiner = make_combiner(name, mode="params")
    result = combiner(losses(ours_net(x)), params=ours_net.parameters())
    result.loss.backward()
    torch.manual_seed(seed)
    jd_backward(losses(theirs_net(x)), inputs=list(theirs_net.parameters()))
    jac_to_grad(list(theirs_net.parameters()), own_aggregator(name, n))
    torch.testing.assert_close(grads(ours_net), grads(theirs_net), rtol=1e-6, atol=1e-6)
    assert result.stats["torchjd"] == ZOO[name].torchjd_class
    assert (result.weights is None) == (ZOO[name].kind == "jacobian")


@pytest.mark.parametrize("name", ["upgrad", "nashmtl", "config", "excessmtl"])
def test_trunk_and_heads_match_mtl_backward(name: str) -> None:
    """combine_and_backward(params=trunk, heads=...) is torchjd's mtl_backward: the trunk gets
    the aggregation, each head the plain gradient of its own loss."""
    n, seed = 3, 7
    x, _ = problem(seed, n)
    nets = []
    for _ in range(2):
        torch.manual_seed(seed)
        trunk = Trunk(seed)
        heads = [torch.nn.Linear(3, 1).double() for _ in range(n)]
        nets.append((trunk, heads))

    def task_losses(trunk, heads):
        z = trunk(x)
        return z, [
            torch.tanh(h(z)).pow(2).mean() * (i + 1) - h(z).mean() for i, h in enumerate(heads)
        ]

    (t1, h1), (t2, h2) = nets
    _, losses1 = task_losses(t1, h1)
    combine_and_backward(
        losses1,
        make_combiner(name, mode="params"),
        params=t1.parameters(),
        heads=[h.parameters() for h in h1],
    )
    z2, losses2 = task_losses(t2, h2)
    mtl_backward(losses2, features=z2, tasks_params=[list(h.parameters()) for h in h2],
                 shared_params=list(t2.parameters()))  # fmt: skip
    jac_to_grad(list(t2.parameters()), own_aggregator(name, n))
    torch.testing.assert_close(grads(t1), grads(t2), rtol=1e-6, atol=1e-6)
    for a, b in zip(h1, h2, strict=True):
        torch.testing.assert_close(grads(a), grads(b), rtol=1e-9, atol=1e-12)


WEIGHTED = [n for n in ZOO_NAMES if ZOO[n].kind != "jacobian"]


@pytest.mark.parametrize("name", WEIGHTED)
@pytest.mark.parametrize("mode", ["shared", "params"])
def test_weights_route_equals_jacobian_route(name: str, mode: str) -> None:
    """One backward of sum_i w_i L_i gives the gradient that aggregating the Jacobian and
    backpropagating the vector gives."""
    if mode not in ZOO[name].modes:
        pytest.skip(f"{name} refuses mode {mode}")
    n, seed = n_for(name, 1), 3
    x, losses = problem(seed, n)
    out = []
    for route in ("auto", "jacobian"):
        net = Trunk(seed)
        combiner = make_combiner(name, mode=mode, route=route)
        torch.manual_seed(seed)
        z = net(x)
        result = combiner(losses(z), shared=z, params=net.parameters())
        result.loss.backward()
        out.append(grads(net))
        assert (result.weights is None) == (route == "jacobian")
    torch.testing.assert_close(out[0], out[1], rtol=1e-6, atol=1e-6)


HOMOGENEOUS = [n for n in ZOO_NAMES if ZOO[n].homogeneous]


@pytest.mark.parametrize("name", HOMOGENEOUS)
@FEW
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([1e-3, 0.5, 7.0, 1e3]))
def test_scaling_the_losses_scales_the_update(name: str, seed: int, scale: float) -> None:
    n = n_for(name, 0)
    z0, losses = problem(seed, n)
    combiner = make_combiner(name)
    assert combiner.loss_scale_degree == 1
    base = ours_shared(make_combiner(name), z0, losses, seed)
    scaled = ours_shared(make_combiner(name), z0, lambda z: [scale * v for v in losses(z)], seed)
    torch.testing.assert_close(scaled, scale * base, rtol=1e-6, atol=1e-9 * scale)


def test_scale_dependent_methods_are_combined_per_micro_batch() -> None:
    for name in ZOO_NAMES:
        combiner = make_combiner(name, mode=ZOO[name].modes[-1])
        assert combiner.loss_scale_degree == (1 if ZOO[name].homogeneous else 0)


def stateful_combiners():
    yield "gradvac", lambda: make_combiner("gradvac")
    yield "pcd", lambda: make_combiner("pcd")
    yield "nashmtl", lambda: make_combiner("nashmtl")
    yield "excessmtl", lambda: make_combiner("excessmtl", mode="params")
    yield "crmogm", lambda: TorchJD(tja.CRMOGMWeighting(tja.UPGradWeighting(), alpha=0.9))


@pytest.mark.parametrize("label,build", list(stateful_combiners()))
def test_stateful_method_resumes_bit_for_bit(label: str, build) -> None:
    """k steps in one go equal j steps, a checkpoint (torch.save, weights_only load) into a new
    combiner, and k - j steps: the same weights and gradients, bit for bit."""
    n, steps, cut = 3, 5, 2
    data = [problem(100 + t, n) for t in range(steps)]
    net = Trunk(0)

    def step(combiner, t):
        x, losses = data[t]
        net.zero_grad()
        z = net(x)
        result = combiner(losses(z), shared=z, params=net.parameters())
        result.loss.backward()
        return result.weights.clone(), grads(net).clone()

    torch.manual_seed(0)
    first = build()
    straight = [step(first, t) for t in range(steps)]
    torch.manual_seed(0)
    second = build()
    resumed = [step(second, t) for t in range(cut)]
    buffer = io.BytesIO()
    torch.save({"combiner": second.state_dict(), "rng": torch.get_rng_state()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["combiner"], f"{label} saved no state"
    torch.manual_seed(12345)  # the resumed process starts elsewhere; the checkpoint restores it
    third = build()
    third.load_state_dict(saved["combiner"])
    torch.set_rng_state(saved["rng"])
    resumed += [step(third, t) for t in range(cut, steps)]
    for (w1, g1), (w2, g2) in zip(straight, resumed, strict=True):
        assert torch.equal(w1, w2) and torch.equal(g1, g2)
    # and the state matters: a fresh combiner from step `cut` on takes other steps
    torch.set_rng_state(saved["rng"])
    fresh = build()
    other = [step(fresh, t) for t in range(cut, steps)]
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(other, straight[cut:], strict=True))


def test_stateless_methods_have_an_empty_state() -> None:
    combiner = make_combiner("upgrad")
    assert combiner.state_dict() == {} and not combiner.stateful
    combiner.load_state_dict({})
    assert make_combiner("gradvac").stateful


def test_state_of_another_method_is_refused() -> None:
    z0, losses = problem(0, 2)
    gradvac = make_combiner("gradvac")
    ours_shared(gradvac, z0, losses, 0)
    pcd = make_combiner("pcd")
    ours_shared(pcd, z0, losses, 0)
    with pytest.raises(ValueError, match="saved by another combiner"):
        pcd.load_state_dict(gradvac.state_dict())


def test_refusals_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"excessmtl.*mode='shared'.*use mode='params'"):
        make_combiner("excessmtl")
    with pytest.raises(ValueError, match="two independent mini-batches"):
        TorchJD(tja.MoDoWeighting())
    with pytest.raises(ValueError, match="two independent mini-batches"):
        TorchJD(tja.WeightedAggregator(tja.SDMGradWeighting()))
    with pytest.raises(ValueError, match="mode must be 'shared' or 'params'"):
        make_combiner("upgrad", mode="both")
    with pytest.raises(ValueError, match="route must be"):
        TorchJD(tja.UPGrad(), route="gramian")
    with pytest.raises(TypeError, match="torchjd Aggregator or Weighting"):
        TorchJD(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="bad arguments"):
        ours_shared(make_combiner("cagrad", gamma=1.0), *problem(0, 2), 0)
    z0, losses = problem(0, 2)
    for name in ("krum", "trimmedmean"):
        with pytest.raises(ValueError, match=f"{name} .*needs at least 3 objectives.*got 2"):
            ours_shared(make_combiner(name), z0, losses, 0)
    with pytest.raises(ValueError, match="built for n_tasks=3 but got 2 losses"):
        ours_shared(TorchJD(tja.NashMTL(n_tasks=3)), z0, losses, 0)
    z = z0.clone().requires_grad_(True)
    with pytest.raises(TypeError, match=r"upgrad \(mode='shared'\) needs shared="):
        make_combiner("upgrad")(losses(z))
    with pytest.raises(TypeError, match=r"upgrad \(mode='params'\) needs params="):
        make_combiner("upgrad", mode="params")(losses(z))
    with pytest.raises(ValueError, match="objective 1 does not depend"):
        make_combiner("upgrad")([losses(z)[0], torch.tensor(1.0, requires_grad=True)], shared=z)
    with pytest.raises(ValueError, match=r"unknown combiner.*upgrad"):
        make_combiner("upgradd")


def test_non_finite_weights_are_refused() -> None:
    class Broken(tja.Weighting):
        def forward(self, matrix: torch.Tensor) -> torch.Tensor:
            return torch.full((matrix.shape[0],), float("nan"), dtype=matrix.dtype)

    z0, losses = problem(0, 2)
    with pytest.raises(ValueError, match=r"broken \(Broken\) returned weights \[nan, nan\]"):
        ours_shared(TorchJD(Broken()), z0, losses, 0)


def test_missing_torchjd_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchjd.aggregation", None)
    with pytest.raises(ImportError, match=r'pip install "paretoopt\[zoo\]"'):
        make_combiner("upgrad")


def test_importing_the_core_does_not_import_torchjd() -> None:
    code = (
        "import sys, paretoopt, paretoopt.zoo\n"
        "from paretoopt.combiners import TorchJD\n"
        "assert 'torchjd' not in sys.modules, 'torchjd imported'\n"
        "paretoopt.make_combiner('upgrad')\n"
        "assert 'torchjd' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_weightings_and_aggregators_are_the_same_combiner() -> None:
    """UPGradWeighting and UPGrad (and a lower-case name) give one gradient; names for logs."""
    z0, losses = problem(5, 3)
    a = ours_shared(TorchJD(tja.UPGradWeighting()), z0, losses, 0)
    b = ours_shared(TorchJD(tja.UPGrad()), z0, losses, 0)
    c = ours_shared(make_combiner("UPGrad"), z0, losses, 0)
    assert torch.equal(a, b) and torch.equal(b, c)
    assert TorchJD(tja.UPGradWeighting()).name == "upgrad"
    assert make_combiner("nashmtl").name == "nashmtl"
    assert "mode='params'" in repr(make_combiner("upgrad", mode="params"))
