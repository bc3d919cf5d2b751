"""The CUDA path: device placement and dtypes of every combiner, the fast path, the trainer.

Skipped without a GPU (CI has none). On a GPU machine: ``pytest tests/test_cuda.py``.
Each check compares against the same computation on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from paretoopt import (
    MGDA,
    PAMA,
    LinearScalarization,
    combine_and_backward,
    min_norm_weights,
    pama_advantages,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def test_pama_advantages_on_cuda_matches_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(3, 16, 32, generator=g)
    mask = torch.rand(16, 32, generator=g) > 0.2
    for granularity in ("token", "sample", "batch"):
        want, w_want = pama_advantages(adv, mask, granularity=granularity, return_weights=True)
        got, w_got = pama_advantages(
            adv.to(CUDA), mask.to(CUDA), granularity=granularity, return_weights=True
        )
        assert got.device.type == "cuda" and got.dtype == adv.dtype
        torch.testing.assert_close(got.cpu(), want)
        torch.testing.assert_close(w_got.cpu(), w_want)
    half = pama_advantages(adv.to(CUDA, torch.bfloat16), mask.to(CUDA))
    assert half.dtype == torch.bfloat16 and bool(torch.isfinite(half).all())


def _model(device: torch.device, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh()).to(device, dtype)
    heads = [torch.nn.Linear(16, 1).to(device, dtype) for _ in range(3)]
    return trunk, heads


def _step(device, dtype, combiner):
    trunk, heads = _model(device, dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g).to(device, dtype)
    ys = [torch.randn(64, generator=g).to(device, dtype) for _ in heads]
    z = trunk(x)
    losses = [((h(z)[:, 0] - y) ** 2).mean() for h, y in zip(heads, ys, strict=True)]
    result = combine_and_backward(
        losses,
        combiner,
        shared=z,
        params=trunk.parameters(),
        heads=[list(h.parameters()) for h in heads],
    )
    grads = [p.grad for p in trunk.parameters()] + [p.grad for h in heads for p in h.parameters()]
    return result, grads


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
def test_combiners_on_cuda_match_cpu(combiner) -> None:
    cpu_result, cpu_grads = _step(torch.device("cpu"), torch.float32, combiner)
    result, grads = _step(CUDA, torch.float32, combiner)
    assert result.loss.device.type == "cuda"
    assert result.weights.dtype == torch.float64
    torch.testing.assert_close(result.weights.cpu(), cpu_result.weights, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads, cpu_grads, strict=True):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["shared", "params"])
def test_mgda_half_precision_on_cuda_solves_in_float64(dtype, mode) -> None:
    result, grads = _step(CUDA, dtype, MGDA(mode=mode, normalization="l2"))
    assert result.weights.dtype == torch.float64
    assert bool(torch.isfinite(result.weights).all())
    assert abs(float(result.weights.sum()) - 1.0) < 1e-9
    assert all(g.dtype == dtype and bool(torch.isfinite(g).all()) for g in grads)


def test_min_norm_weights_accepts_a_cuda_gram() -> None:
    j = torch.randn(4, 100, device=CUDA)
    sol = min_norm_weights(j @ j.T)
    assert bool(torch.isfinite(sol.weights).all()) and sol.kkt_residual < 1e-6


@pytest.mark.hf
@pytest.mark.parametrize("combiner", ["pama", "mgda_ub"])
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_moppo_trainer_on_cuda(tmp_path: Path, combiner: str, precision: str) -> None:
    pytest.importorskip("transformers")
    from accelerate.state import AcceleratorState
    from hf_fixtures import PROMPTS, make_tiny_lm
    from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer, make_length_reward

    # accelerate keeps one state per process; each parametrised run sets its own precision.
    AcceleratorState._reset_state(reset_partial_state=True)
    lm = make_tiny_lm(tmp_path / "lm")
    config = MOPPOConfig(
        combiner=combiner,
        steps=2,
        batch_size=8,
        mini_batch_size=4,
        max_new_tokens=8,
        learning_rate=3e-3,
        mixed_precision=precision,
        output_dir=str(tmp_path / "run"),
        progress=False,
        save_final=True,
    )

    def shortness(prompts, responses):
        return [-len(r.split()) / 8 for r in responses]

    trainer = MOPPOTrainer(
        config,
        str(lm),
        prompts=PROMPTS,
        rewards=[make_length_reward(scale=8, unit="words"), shortness],
    )
    assert trainer.device.type == "cuda"
    history = trainer.train()
    assert len(history) == 2
    assert all(v == v and abs(v) != float("inf") for m in history for v in m.values()), (
        "non-finite metric"
    )
    assert all(p.device.type == "cuda" for p in trainer.unwrapped.parameters())
    assert all(bool(torch.isfinite(p).all()) for p in trainer.unwrapped.parameters())
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
