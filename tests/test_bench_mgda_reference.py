"""The textbook MGDA step of the benchmarks computes the same update as paretoopt.MGDA."""

from __future__ import annotations

import pytest
import torch
from paretoopt.integrations.mgda_reference import mgda_reference_step
from torch import nn

from paretoopt import MGDA


def _model_and_losses(seed: int, n: int) -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x = torch.randn(16, 5)
    targets = torch.randn(n, 16, 3)
    out = model(x)
    # Objectives pull the same outputs towards different targets, so their gradients conflict.
    losses = [((out - targets[i]) ** 2).mean() for i in range(n)]
    return model, losses


def _grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize(("seed", "n"), [(0, 2), (1, 3), (2, 5)])
def test_reference_direction_equals_core_mgda_params(seed: int, n: int) -> None:
    model, losses = _model_and_losses(seed, n)
    params = list(model.parameters())
    jac = torch.stack(
        [
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
            for loss in losses
        ]
    )
    core = MGDA(mode="params")(losses, params=params)
    core.loss.backward(retain_graph=True)
    core_grad = _grads(model).clone()

    ref = mgda_reference_step(losses, params)
    ref_grad = _grads(model)

    assert torch.allclose(ref.weights, core.weights, atol=1e-9)
    assert torch.allclose(ref_grad, core_grad, rtol=1e-5, atol=1e-7)
    assert torch.allclose(ref.direction, ref_grad)
    assert torch.allclose(ref.gram, jac.double() @ jac.double().T)
    # Min-norm optimality: every objective's directional derivative is >= ||d||^2 (no conflict).
    assert ref.weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert bool((ref.weights >= 0).all())
    d = ref.direction.double()
    assert float((jac.double() @ d).min()) >= float(d @ d) * (1 - 1e-4) - 1e-9
    assert ref.jacobian_bytes == n * sum(p.numel() for p in model.parameters()) * 4
    assert set(ref.seconds) == {"backward", "flatten", "gram", "solve", "combine"}


def test_reference_with_one_objective_is_its_gradient() -> None:
    model, losses = _model_and_losses(3, 1)
    expected = torch.autograd.grad(losses[0], list(model.parameters()), retain_graph=True)
    ref = mgda_reference_step(losses, model.parameters())
    assert torch.allclose(ref.direction, torch.cat([g.reshape(-1) for g in expected]))
    assert ref.weights.tolist() == [1.0]


def test_reference_rejects_empty_and_non_scalar_losses() -> None:
    model, losses = _model_and_losses(4, 2)
    with pytest.raises(ValueError, match="empty"):
        mgda_reference_step([], model.parameters())
    with pytest.raises(ValueError, match="objective 1"):
        mgda_reference_step([losses[0], torch.stack(losses)], model.parameters())
