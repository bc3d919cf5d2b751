"""Two CPU processes (gloo, through accelerate's DDP) give the single-process parameters.

A tiny policy is trained for a few steps on a global batch of 8 sequences whose valid
token counts differ between the two halves. Each process takes half of the batch; the
parameters after training must equal those of one process trained on the whole batch,
for PAMA (advantage fast path and generic combiner), for exact MGDA, whose
per-objective gradients are all-reduced before the Gram matrix and the solve, and for
MGDA-UB, whose local Gram matrices are summed. Two
controls show that the comparison has teeth: without the token-count correction, and
with MGDA solved on each process's local gradients, the parameters differ.

The worker also runs under a real launcher:
``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2
tests/test_distributed_ddp.py OUT_DIR`` (the slow test below does exactly that).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from dist_fixtures import free_port, set_worker_env
from paretoopt.integrations.distributed import DistributedMGDA, dp_loss_scale, global_mean_std
from torch import Tensor, nn

from paretoopt import MGDA, PAMA, pama_ppo_loss, ppo_losses, ppo_losses_from_ratio, ratio

WORLD = 2
STEPS = 3
LR = 0.5
SCENARIOS = ("pama", "pama_combiner", "mgda", "mgda_l2", "mgda_ub")
CONTROLS = ("pama_unscaled", "mgda_local")


class TinyPolicy(nn.Module):
    """Per-token log-probabilities of given actions: embedding -> tanh -> linear head."""

    def __init__(self, vocab: int = 11, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, states: Tensor, actions: Tensor, with_hidden: bool = False):
        hidden = torch.tanh(self.emb(states))
        logits = self.head(hidden)
        logprobs = logits.log_softmax(-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return (logprobs, hidden) if with_hidden else logprobs


def make_problem() -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Initial parameters and the global batch (identical in every process)."""
    torch.manual_seed(0)
    model = TinyPolicy().double()
    g = torch.Generator().manual_seed(1)
    b, t, n = 8, 6, 3
    states = torch.randint(0, 11, (b, t), generator=g)
    actions = torch.randint(0, 11, (b, t), generator=g)
    lengths = torch.tensor([6, 5, 2, 6, 1, 3, 4, 6])  # 19 valid tokens on rank 0, 14 on rank 1
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).double()
    # correlated objectives: a shared part per token plus objective-specific noise, so that
    # some tokens are good for all three (PAMA moves) and some conflict (the combiners differ)
    common = torch.randn(1, b, t, generator=g, dtype=torch.float64)
    advantages = 0.8 * common + 0.6 * torch.randn(n, b, t, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref = model(states, actions)
    batch = {"states": states, "actions": actions, "mask": mask, "adv": advantages, "ref": ref}
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return init, batch


def _slice(batch: dict[str, Tensor], rank: int, world: int) -> dict[str, Tensor]:
    per = batch["states"].shape[0] // world
    rows = slice(rank * per, (rank + 1) * per)
    return {k: (v[:, rows] if k == "adv" else v[rows]) for k, v in batch.items()}


def train_single(init: dict[str, Tensor], batch: dict[str, Tensor], scenario: str) -> dict:
    """Reference: one process, the whole batch, the core combiners as they are."""
    model = TinyPolicy().double()
    model.load_state_dict(init)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(STEPS):
        opt.zero_grad()
        lp = model(batch["states"], batch["actions"])
        if scenario == "pama":
            pama_ppo_loss(lp, batch["ref"], batch["adv"], batch["mask"]).backward()
        elif scenario == "pama_combiner":
            u = ratio(lp, batch["ref"])
            losses = ppo_losses_from_ratio(u, batch["adv"], batch["mask"])
            PAMA()(losses, shared=u).loss.backward()
        elif scenario == "mgda_ub":
            lp, hidden = model(batch["states"], batch["actions"], with_hidden=True)
            losses = ppo_losses(lp, batch["ref"], batch["adv"], batch["mask"])
            MGDA(mode="shared")(losses, shared=hidden).loss.backward()
        else:
            norm = "l2" if scenario == "mgda_l2" else "none"
            losses = ppo_losses(lp, batch["ref"], batch["adv"], batch["mask"])
            MGDA(mode="params", normalization=norm)(
                losses, params=list(model.parameters())
            ).loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_distributed(accelerator, init: dict[str, Tensor], batch: dict, scenario: str) -> dict:
    """One process's part: local half of the batch, model wrapped by accelerate (DDP)."""
    model = TinyPolicy().double()
    model.load_state_dict(init)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model, opt = accelerator.prepare(model, opt)
    local = _slice(batch, accelerator.process_index, accelerator.num_processes)
    mask = local["mask"]
    for _ in range(STEPS):
        opt.zero_grad()
        scale = dp_loss_scale(mask)
        if scenario in ("pama", "pama_unscaled"):
            lp = model(local["states"], local["actions"])
            loss = pama_ppo_loss(lp, local["ref"], local["adv"], mask)
            accelerator.backward(loss * scale if scenario == "pama" else loss)
        elif scenario == "pama_combiner":
            u = ratio(model(local["states"], local["actions"]), local["ref"])
            losses = ppo_losses_from_ratio(u, local["adv"], mask) * scale
            accelerator.backward(PAMA()(losses, shared=u).loss)
        elif scenario in ("mgda", "mgda_l2"):
            lp = model(local["states"], local["actions"])
            losses = ppo_losses(lp, local["ref"], local["adv"], mask) * scale
            norm = "l2" if scenario == "mgda_l2" else "none"
            res = DistributedMGDA(normalization=norm)(losses, params=list(model.parameters()))
            accelerator.backward(res.loss)
        elif scenario == "mgda_ub":
            lp, hidden = model(local["states"], local["actions"], with_hidden=True)
            losses = ppo_losses(lp, local["ref"], local["adv"], mask) * scale
            accelerator.backward(DistributedMGDA(mode="shared")(losses, shared=hidden).loss)
        elif scenario == "mgda_local":
            lp = model(local["states"], local["actions"])
            losses = ppo_losses(lp, local["ref"], local["adv"], mask) * scale
            res = MGDA(mode="params")(losses, params=list(model.parameters()))
            accelerator.backward(res.loss)
        opt.step()
    unwrapped = accelerator.unwrap_model(model)
    return {k: v.detach().clone() for k, v in unwrapped.state_dict().items()}


def run_worker(out_dir: str) -> None:
    """Body of each process; expects the launcher's environment (RANK, WORLD_SIZE, ...)."""
    from accelerate import Accelerator

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == WORLD, accelerator.num_processes
    init, batch = make_problem()
    results = {s: train_distributed(accelerator, init, batch, s) for s in SCENARIOS + CONTROLS}
    # global statistics: the whole batch's masked mean/std, seen from one half
    local = _slice(batch, accelerator.process_index, accelerator.num_processes)
    results["global_mean_std"] = torch.stack(global_mean_std(local["adv"][0], local["mask"]))
    torch.save(results, Path(out_dir) / f"rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()


def _spawned(rank: int, world: int, port: int, out_dir: str) -> None:
    set_worker_env(rank, world, port)
    run_worker(out_dir)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _check(results: list[dict], reference: dict[str, dict[str, Tensor]]) -> None:
    for scenario in SCENARIOS:
        for rank, res in enumerate(results):
            got, want = res[scenario], reference[scenario]
            for name in want:
                torch.testing.assert_close(
                    got[name],
                    want[name],
                    rtol=1e-9,
                    atol=1e-10,
                    msg=lambda m, s=scenario, n=name, r=rank: f"{s} rank {r} {n}: {m}",
                )
    init, _ = make_problem()
    for scenario in SCENARIOS:  # training did move the parameters
        assert any(not torch.allclose(reference[scenario][k], init[k]) for k in init)
    # the controls differ from the single-process run by far more than the tolerance
    for control, twin in (("pama_unscaled", "pama"), ("mgda_local", "mgda")):
        gap = max(
            float((results[0][control][k] - reference[twin][k]).abs().max())
            for k in reference[twin]
        )
        assert gap > 1e-4, (control, gap)


@pytest.fixture(scope="module")
def reference() -> dict[str, dict[str, Tensor]]:
    init, batch = make_problem()
    return {s: train_single(init, batch, s) for s in SCENARIOS}


@pytest.fixture(scope="module")
def spawned_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_spawned, args=(WORLD, free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_two_process_ddp_equals_single_process(
    spawned_results: list[dict], reference: dict[str, dict[str, Tensor]]
) -> None:
    _check(spawned_results, reference)


def test_global_mean_std_matches_the_whole_batch(spawned_results: list[dict]) -> None:
    _, batch = make_problem()
    valid = batch["adv"][0][batch["mask"].bool()]
    want = torch.stack([valid.mean(), valid.std()])
    for res in spawned_results:
        torch.testing.assert_close(res["global_mean_std"], want)


def test_helpers_are_identity_on_one_process() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(dp_loss_scale(mask)) == 1.0
    assert float(dp_loss_scale(None, batch_size=5)) == 1.0
    x = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mean, std = global_mean_std(x, mask)
    torch.testing.assert_close(mean, torch.tensor(2.0))
    torch.testing.assert_close(std, torch.tensor(1.0))
    # one process: DistributedMGDA writes exactly the core MGDA gradient
    init, batch = make_problem()
    grads = []
    for use_helper in (False, True):
        model = TinyPolicy().double()
        model.load_state_dict(init)
        losses = ppo_losses(model(batch["states"], batch["actions"]), batch["ref"], batch["adv"])
        combiner = DistributedMGDA() if use_helper else MGDA(mode="params")
        res = combiner(losses, params=list(model.parameters()))
        res.loss.backward()
        grads.append(([p.grad.clone() for p in model.parameters()], res.weights))
    for a, b in zip(grads[0][0], grads[1][0], strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(grads[0][1], grads[1][1])


@pytest.mark.slow
def test_accelerate_launch_cli(tmp_path: Path, reference: dict[str, dict[str, Tensor]]) -> None:
    """The same worker started by ``accelerate launch`` (the command in docs/distributed.md)."""
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("accelerate CLI not installed")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",  # DDP over gloo on a machine without GPUs
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    # `--cpu` would select accelerate's single-process (or mpirun) launcher; `--multi_gpu`
    # starts one torchrun worker per process, and ACCELERATE_USE_CPU keeps them on the CPU.
    cmd = [
        launcher, "launch", "--multi_gpu", "--num_processes", str(WORLD), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
        str(free_port()), __file__, str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    _check(results, reference)


if __name__ == "__main__":
    run_worker(sys.argv[1])
