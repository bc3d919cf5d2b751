"""MOPPOTrainer's update on 2 CPU processes (accelerate, gloo) against 1 process.

Generation is sampled per process (each rank draws its own responses), so a whole
``train()`` cannot be compared with a single-process run. What must agree is the rest of
the step: on the *same* global batch of rollouts and scores, split over two processes,
``compute_advantages`` (GAE, advantage whitening with statistics gathered over processes,
PAMA's closed form) followed by one ``update`` must give the parameters a single process
gets on the whole batch. The rollouts are built by hand, so the valid-token count of
each half is chosen.

This is checked for PAMA (fast path), exact MGDA, MGDA-UB (the trainer uses
:class:`paretoopt.integrations.distributed.DistributedMGDA` on several processes) and PAMA-UB
(the Gram of the advantage vectors gathered over processes), with equal valid-token counts per
process, and for PAMA, MGDA and PAMA-UB with unequal counts (the trainer scales its token-mean
losses with :func:`paretoopt.integrations.distributed.dp_loss_scale`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from dist_fixtures import free_port, set_worker_env
from hf_fixtures import PROMPTS, build_policy, build_tokenizer
from paretoopt.integrations.distributed import DistributedMGDA
from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer
from paretoopt.integrations.hf.rollout import Rollout, decode_responses, tokenize_prompts

pytestmark = pytest.mark.hf

WORLD = 2
T = 6
EQUAL = [6, 3, 4, 2, 5, 5, 1, 4]  # 15 valid response tokens on each half
UNEQUAL = [6, 6, 5, 4, 1, 2, 3, 4]  # 21 against 10
SCENARIOS = ("pama", "mgda", "mgda_ub", "pama_ub")
UNEQUAL_SCENARIOS = ("pama", "mgda", "pama_ub")


def _constant(prompts: list[str], responses: list[str]) -> list[float]:
    return [0.0] * len(responses)


def make_rollout(tokenizer, lengths: list[int]) -> tuple[Rollout, torch.Tensor]:
    """Global batch: the 8 prompts, fixed responses of the given lengths (EOS included)."""
    g = torch.Generator().manual_seed(5)
    enc = tokenize_prompts(tokenizer, list(PROMPTS), torch.device("cpu"))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    response = torch.randint(3, len(tokenizer), (len(PROMPTS), T), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    for row, n in enumerate(lengths):
        if n < T:
            response[row, n - 1] = eos
    response = response.masked_fill(mask == 0, pad)
    rollout = Rollout(
        prompts=list(PROMPTS),
        responses=decode_responses(tokenizer, response, mask),
        input_ids=torch.cat([enc["input_ids"], response], dim=1),
        attention_mask=torch.cat([enc["attention_mask"], mask], dim=1),
        mask=mask,
        response_start=enc["input_ids"].shape[1],
    )
    scores = torch.randn(2, len(PROMPTS), generator=g)
    return rollout, scores


def _part(rollout: Rollout, scores: torch.Tensor, rank: int, world: int):
    per = len(rollout.prompts) // world
    rows = slice(rank * per, (rank + 1) * per)
    local = Rollout(
        prompts=rollout.prompts[rows],
        responses=rollout.responses[rows],
        input_ids=rollout.input_ids[rows],
        attention_mask=rollout.attention_mask[rows],
        mask=rollout.mask[rows],
        response_start=rollout.response_start,
    )
    return local, scores[:, rows]


def train_once(model_dir: Path, out: Path, scenario: str, lengths: list[int], world: int):
    """One compute_advantages + update; the whole batch when world == 1."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "tok"))
    # combiner="mgda"/"mgda_ub": on several processes the trainer itself builds
    # DistributedMGDA; on one process the core MGDA.
    combiner = scenario
    local_batch = len(PROMPTS) // world
    config = MOPPOConfig(
        combiner=combiner,
        batch_size=local_batch,
        mini_batch_size=local_batch,
        ppo_epochs=1,
        learning_rate=1e-2,
        max_grad_norm=None,
        advantage_normalization="whiten",
        # Pinned: each normalisation's data-parallel equality is tested in test_distributed_ddp.
        # With "l2" (losses scaled by 1/||g_i||) the gradients still agree, but AdamW's first
        # step (about lr * sign(g)) moves 3 near-zero bias entries ~1.3e-4 apart: float noise.
        mgda_normalization="none",
        output_dir=str(out / "run"),
        progress=False,
        save_final=False,
        log_jsonl=False,
        cpu=True,
        seed=0,
    )
    trainer = MOPPOTrainer(
        config,
        str(model_dir / "policy"),
        tokenizer=tokenizer,
        prompts=list(PROMPTS),
        rewards=[_constant, _constant],
        reward_names=["a", "b"],
    )
    mgda = scenario in ("mgda", "mgda_ub")
    expected = DistributedMGDA if world > 1 and mgda else type(trainer.combiner)
    assert isinstance(trainer.combiner, expected)
    rollout, scores = make_rollout(tokenizer, lengths)
    rank = trainer.accelerator.process_index
    rollout, scores = _part(rollout, scores, rank, world)
    # Record the gradient the optimizer receives (after DDP's all-reduce): a sharper check
    # than the parameters, which AdamW's first step moves by about +-lr whatever |g| is.
    grads: dict[str, torch.Tensor] = {}
    named = [(k, p) for k, p in trainer.unwrapped.named_parameters() if p.requires_grad]
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads.update({k: p.grad.detach().clone() for k, p in named if p.grad is not None})
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    batch = trainer.compute_advantages(rollout, scores)
    trainer.update(batch, 1, {})
    params = {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()}
    result = {"grads": grads, "params": params}
    if batch.scalar_weights is not None:  # PAMA-UB: the weights solved on the global Gram
        result["weights"] = batch.scalar_weights
    return result


def _worker(rank: int, port: int, model_dir: str, out_dir: str) -> None:
    set_worker_env(rank, WORLD, port)
    out = Path(out_dir)
    results = {}
    for name, lengths in (("equal", EQUAL), ("unequal", UNEQUAL)):
        scenarios = SCENARIOS if name == "equal" else UNEQUAL_SCENARIOS
        for scenario in scenarios:
            results[f"{name}/{scenario}"] = train_once(
                Path(model_dir), out, scenario, lengths, WORLD
            )
    torch.save(results, out / f"rank{rank}.pt")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("moppo_ddp")
    tok = build_tokenizer(path / "tok")
    build_policy(path / "policy", len(tok), tok.eos_token_id)
    return path


@pytest.fixture(scope="module")
def spawned(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("moppo_ddp_out")
    mp.spawn(_worker, args=(free_port(), str(model_dir), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _assert_same(got: dict, want: dict, label: str) -> None:
    assert ("weights" in got) == ("weights" in want)
    if "weights" in want:
        torch.testing.assert_close(got["weights"], want["weights"], rtol=1e-6, atol=1e-9)
        assert float(want["weights"].min()) > 0.01, want["weights"]  # a real mix
    assert set(got["grads"]) == set(want["grads"]) and want["grads"]
    scale = max(float(g.abs().max()) for g in want["grads"].values())
    assert scale > 0
    for name, g in want["grads"].items():
        torch.testing.assert_close(
            got["grads"][name],
            g,
            rtol=1e-4,
            atol=1e-5 * scale,
            msg=lambda m, n=name: f"{label} grad {n}: {m}",
        )
    for name, p in want["params"].items():
        torch.testing.assert_close(
            got["params"][name], p, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{label} {n}: {m}"
        )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_update_on_two_processes_equals_one_process(
    scenario: str, spawned: list[dict], model_dir: Path, tmp_path: Path
) -> None:
    want = train_once(model_dir, tmp_path, scenario, EQUAL, 1)
    for rank, res in enumerate(spawned):
        _assert_same(res[f"equal/{scenario}"], want, f"{scenario} rank {rank}")


@pytest.mark.parametrize("scenario", UNEQUAL_SCENARIOS)
def test_unequal_token_counts_equal_one_process(
    scenario: str, spawned: list[dict], model_dir: Path, tmp_path: Path
) -> None:
    want = train_once(model_dir, tmp_path, scenario, UNEQUAL, 1)
    for rank, res in enumerate(spawned):
        _assert_same(res[f"unequal/{scenario}"], want, f"unequal {scenario} rank {rank}")


@pytest.mark.slow
def test_cli_training_under_accelerate_launch(model_dir: Path, tmp_path: Path) -> None:
    """`paretoopt train` started by `accelerate launch` on 2 CPU processes (docs command)."""
    import json
    import shutil
    import subprocess
    import sys

    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("accelerate CLI not installed")
    (model_dir / "policy_with_tok").mkdir(exist_ok=True)
    for folder in ("policy", "tok"):
        for f in (model_dir / folder).iterdir():
            shutil.copy(f, model_dir / "policy_with_tok" / f.name)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "run"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    cmd = [
        launcher, "launch", "--multi_gpu", "--num_processes", str(WORLD), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
        str(free_port()), "-m", "paretoopt.cli", "train",
        "--policy", str(model_dir / "policy_with_tok"), "--prompts", str(prompts),
        "--reward", "length:8:0:1:words", "--reward", "length", "--steps", "2",
        "--batch-size", "4", "--mini-batch-size", "2", "--max-new-tokens", "6",
        "--output-dir", str(out), "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in lines] == [1.0, 2.0]  # written once, by the main process
    assert all("reward/length" in row and "binding_rate/length" in row for row in lines)
    assert (out / "checkpoint-2").is_dir()
