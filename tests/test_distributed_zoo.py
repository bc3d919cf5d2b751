"""Two CPU processes (gloo, accelerate's DDP) with a torchjd zoo combiner give the parameters
of one process on the whole batch: :class:`DistributedTorchJD` solves a Gramian weighting on the
global Gram matrix (summed over processes for a shared tensor), hands a matrix weighting or a
Jacobian aggregator the all-reduced Jacobian over the parameters, and broadcasts rank 0's
weights so that a random method (PCGrad) takes one step everywhere. Over a shared tensor a
method that reads the Jacobian itself is refused. The problem is that of test_distributed_ddp.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from dist_fixtures import free_port, set_worker_env
from paretoopt.integrations.distributed import DistributedTorchJD, dp_loss_scale
from test_distributed_ddp import TinyPolicy, _slice, make_problem
from torch import Tensor

from paretoopt import make_combiner, ppo_losses

pytest.importorskip("torchjd")

WORLD, STEPS, LR = 2, 3, 0.5
# name, mode; upgrad: Gram path over z; pcgrad: random; nashmtl: matrix weighting, stateful;
# config: a Jacobian aggregator (a vector, no weights)
SCENARIOS = (("upgrad", "shared"), ("pcgrad", "params"), ("nashmtl", "params"),
             ("config", "params"))  # fmt: skip


def _step(model, batch: dict[str, Tensor], combiner, scale, backward) -> None:
    lp, hidden = model(batch["states"], batch["actions"], with_hidden=True)
    losses = ppo_losses(lp, batch["ref"], batch["adv"], batch["mask"]) * scale
    result = combiner(list(losses.unbind(0)), shared=hidden, params=list(model.parameters()))
    backward(result.loss)


def train(init, batch, name: str, mode: str, accelerator=None) -> dict[str, Tensor]:
    model = TinyPolicy().double()
    model.load_state_dict(init)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    combiner = make_combiner(name, mode=mode)
    if accelerator is not None:
        model, opt = accelerator.prepare(model, opt)
        combiner = DistributedTorchJD(combiner)
        batch = _slice(batch, accelerator.process_index, accelerator.num_processes)
    for step in range(STEPS):
        # each process draws its own permutation: only the broadcast makes them agree
        rank = accelerator.process_index if accelerator is not None else 0
        torch.manual_seed(10 * step + 1000 * rank)
        opt.zero_grad()
        if accelerator is None:
            _step(model, batch, combiner, 1.0, lambda t: t.backward())
        else:
            _step(model, batch, combiner, dp_loss_scale(batch["mask"]), accelerator.backward)
        opt.step()
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _spawned(rank: int, world: int, port: int, out_dir: str) -> None:
    set_worker_env(rank, world, port)
    import torch.distributed as dist
    from accelerate import Accelerator

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    init, batch = make_problem()
    results = {f"{n}-{m}": train(init, batch, n, m, accelerator) for n, m in SCENARIOS}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    accelerator.wait_for_everyone()
    if dist.is_initialized():
        dist.destroy_process_group()


def test_two_process_ddp_equals_single_process(tmp_path: Path) -> None:
    mp.spawn(_spawned, args=(WORLD, free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    init, batch = make_problem()
    for name, mode in SCENARIOS:
        want = train(init, batch, name, mode)
        assert any(not torch.allclose(want[k], init[k]) for k in init), name
        for rank, res in enumerate(results):
            for key in want:
                torch.testing.assert_close(
                    res[f"{name}-{mode}"][key], want[key], rtol=1e-7, atol=1e-9,
                    msg=lambda m, n=name, r=rank, k=key: f"{n} rank {r} {k}: {m}",
                )  # fmt: skip


def test_methods_that_read_the_jacobian_are_refused_over_a_shared_tensor() -> None:
    for name in ("nashmtl", "config", "graddrop", "random"):
        with pytest.raises(ValueError, match="use mode='params', or a Gramian method"):
            DistributedTorchJD(make_combiner(name))
    with pytest.raises(ValueError, match="use mode='params'"):
        DistributedTorchJD(make_combiner("upgrad", route="jacobian"))
    DistributedTorchJD(make_combiner("nashmtl", mode="params"))  # fine over the parameters


def test_on_one_process_it_is_the_combiner_it_wraps() -> None:
    init, batch = make_problem()
    for name, mode in (("gradvac", "shared"), ("config", "params")):
        grads = []
        for wrap in (False, True):
            model = TinyPolicy().double()
            model.load_state_dict(init)
            combiner = make_combiner(name, mode=mode)
            torch.manual_seed(0)
            _step(model, batch, DistributedTorchJD(combiner) if wrap else combiner, 1.0,
                  lambda t: t.backward())  # fmt: skip
            grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        assert torch.equal(grads[0], grads[1])
