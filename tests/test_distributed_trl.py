"""PAMAGRPOTrainer on 2 CPU processes (gloo): groups split across processes.

With ``per_device_train_batch_size=2`` and ``num_generations=4`` on two processes, each
prompt's four completions are spread over both processes, so the group statistics need
the rewards of the other process. The test records, on every process, the rewards its
reward functions returned and the advantages its loss received, and checks that the
advantages equal ``paretoopt.pama_advantages`` on per-reward advantages computed from
the rewards of *both* processes, and that each process trained on its own slice.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("trl")
pytest.importorskip("datasets")

from dist_fixtures import build_char_gpt2, free_port, set_worker_env

from paretoopt import pama_advantages

# Two processes that each import TRL and train: about 30 s on 2 cores.
pytestmark = pytest.mark.slow

WORLD = 2
GROUP = 4
STEPS = 2


def _worker(rank: int, port: int, model_dir: str, out_dir: str) -> None:
    set_worker_env(rank, WORLD, port)
    from datasets import Dataset
    from paretoopt.integrations.trl import PAMAGRPOConfig, PAMAGRPOTrainer
    from transformers import AutoTokenizer

    returned: list[list[list[float]]] = []  # per step: [local completions][reward]

    def count_a(prompts, completions, **kwargs) -> list[float]:
        out = [float(text.count("a")) for text in completions]
        returned.append([[r] for r in out])
        return out

    def count_ab(prompts, completions, **kwargs) -> list[float]:
        # correlated with count_a, so that some completions beat their group on both
        out = [float(text.count("a") + text.count("b")) for text in completions]
        for row, r in zip(returned[-1], out, strict=True):
            row.append(r)
        return out

    class Recording(PAMAGRPOTrainer):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.used: list[torch.Tensor] = []
            self.records: list[dict[str, torch.Tensor]] = []

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            self.records.append(dict(self.last_pama))
            return output

        def _compute_loss(self, model, inputs):
            self.used.append(inputs["advantages"].detach().clone())
            return super()._compute_loss(model, inputs)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = PAMAGRPOConfig(
        output_dir=str(Path(out_dir) / "run"),
        per_device_train_batch_size=2,
        num_generations=GROUP,
        max_completion_length=8,
        max_steps=STEPS,
        learning_rate=5e-2,
        temperature=1.5,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    trainer = Recording(
        model=model_dir,
        reward_funcs=[count_a, count_ab],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["ab", "cd", "ef", "gh"]}),
        processing_class=tokenizer,
    )
    assert trainer.accelerator.num_processes == WORLD
    trainer.train()
    torch.save(
        {
            "returned": torch.tensor(returned),
            "used": torch.stack(trainer.used),
            "rewards": torch.stack([r["rewards_per_func"] for r in trainer.records]),
            "advantages": torch.stack([r["advantages"] for r in trainer.records]),
            "params": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            "logs": [h for h in trainer.state.log_history if "loss" in h],
        },
        Path(out_dir) / f"rank{rank}.pt",
    )
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """[N, n] rewards in groups of GROUP -> [n, N] advantages (TRL's 'group' scaling)."""
    grouped = rewards.t().reshape(rewards.shape[1], -1, GROUP)
    mean = grouped.mean(-1, keepdim=True)
    std = grouped.std(-1, keepdim=True)  # Bessel-corrected, as TRL
    return ((grouped - mean) / (std + 1e-4)).reshape(rewards.shape[1], -1)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    model_dir = tmp_path_factory.mktemp("tiny_char_gpt2")
    build_char_gpt2(model_dir)
    out = tmp_path_factory.mktemp("trl_ddp")
    mp.spawn(_worker, args=(free_port(), str(model_dir), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_pama_advantages_use_the_groups_across_processes(results: list[dict]) -> None:
    for res in results:
        # each process's slice of the gathered rewards is what its reward functions returned
        torch.testing.assert_close(res["rewards"], res["returned"])
        assert res["used"].shape == (STEPS, 2)
    any_positive = differs = False
    for step in range(STEPS):
        global_rewards = torch.cat([res["returned"][step] for res in results])  # [4, 2]
        assert global_rewards.shape == (GROUP, 2)
        want = pama_advantages(_group_advantages(global_rewards), granularity="sample")
        for rank, res in enumerate(results):
            part = want[rank * 2 : (rank + 1) * 2]
            torch.testing.assert_close(res["advantages"][step], part, rtol=1e-5, atol=1e-6)
            # the loss saw the same values (TRL may shuffle within the process's batch)
            torch.testing.assert_close(
                res["used"][step].sort().values, part.sort().values, rtol=1e-5, atol=1e-6
            )
            any_positive |= bool((part > 0).any())
        # normalising within each process's two completions only would give other values
        local_only = torch.cat(
            [_local_group_advantages(res["returned"][step]) for res in results], dim=1
        )
        differs |= not torch.allclose(
            pama_advantages(local_only, granularity="sample"), want, atol=1e-4
        )
    assert any_positive, "no completion was reinforced"
    assert differs, "the groups never needed the other process"


def _local_group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    r = rewards.t()
    return (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + 1e-4)


def test_processes_stay_in_sync_and_log_pama_metrics(results: list[dict]) -> None:
    for name, value in results[0]["params"].items():
        torch.testing.assert_close(results[1]["params"][name], value)
    logs = results[0]["logs"]
    assert len(logs) == STEPS
    for h in logs:
        assert h["pama/binding_rate/count_a"] + h["pama/binding_rate/count_ab"] == pytest.approx(
            1.0
        )
        assert "rewards/count_a/mean" in h and "reward" in h
