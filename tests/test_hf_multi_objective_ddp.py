"""MultiObjectiveTrainer on two CPU processes (gloo DDP through accelerate) equals one process.

Each process holds 2 of the 4 samples of every global batch. For exact MGDA the trainer swaps
in ``DistributedMGDA`` (the Jacobian all-reduced before the solve); MGDA-UB sums the local Gram
matrices; PAMA needs no communication. A control, MGDA solved on each process's local
gradients, shows that the comparison can fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from dist_fixtures import free_port, set_worker_env
from mo_fixtures import build_two_task, load_two_task, two_task_data

WORLD = 2
SCENARIOS = ("mgda", "mgda_ub", "pama")
HEADS = {"a": "head_a", "b": "head_b"}


def _train(model_dir: str, out: str, scenario: str, batch: int) -> dict[str, torch.Tensor]:
    from paretoopt.integrations.hf import MultiObjectiveTrainer, MultiObjectiveTrainingArguments

    from paretoopt import MGDA

    args = MultiObjectiveTrainingArguments(
        output_dir=out,
        combiner="mgda" if scenario == "mgda_local" else scenario,
        head_modules=HEADS,
        per_device_train_batch_size=batch,
        max_steps=2,
        optim="sgd",
        learning_rate=0.5,
        max_grad_norm=0.0,
        logging_steps=1,  # the per-objective logs are averaged over processes: a collective
        train_sampling_strategy="sequential",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    model = load_two_task(Path(model_dir), torch.float64)
    combiner = MGDA(mode="params") if scenario == "mgda_local" else None
    trainer = MultiObjectiveTrainer(model, args, train_dataset=two_task_data(4), combiner=combiner)
    trainer.train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, port: int, model_dir: str, out_dir: str) -> None:
    set_worker_env(rank, WORLD, port)
    results = {
        s: _train(model_dir, str(Path(out_dir) / s), s, batch=2) for s in (*SCENARIOS, "mgda_local")
    }
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path: Path) -> None:
    model_dir = build_two_task(tmp_path / "model")
    mp.spawn(_worker, args=(free_port(), str(model_dir), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    init = {k: v.double() for k, v in load_two_task(model_dir).state_dict().items()}
    for scenario in SCENARIOS:
        want = _train(str(model_dir), str(tmp_path / f"single_{scenario}"), scenario, batch=4)
        assert any(not torch.allclose(want[k], init[k]) for k in want)
        for rank, res in enumerate(results):
            for k in want:
                torch.testing.assert_close(
                    res[scenario][k], want[k], rtol=1e-9, atol=1e-11,
                    msg=lambda m, s=scenario, r=rank, k=k: f"{s} rank {r} {k}: {m}",
                )  # fmt: skip
    want = _train(str(model_dir), str(tmp_path / "single_mgda2"), "mgda", batch=4)
    gap = max(float((results[0]["mgda_local"][k] - want[k]).abs().max()) for k in want)
    assert gap > 1e-6, gap


def _failing_worker(rank: int, port: int, model_dir: str, out_dir: str) -> None:
    """Process 1's losses raise at step 2; both record how they stopped."""
    import json
    import time

    set_worker_env(rank, WORLD, port)
    from paretoopt.integrations.hf import MultiObjectiveTrainer, MultiObjectiveTrainingArguments

    calls = {"n": 0}

    def compute_losses(model, inputs):
        calls["n"] += 1
        if rank == 1 and calls["n"] == 2:
            (Path(out_dir) / "fault.json").write_text(json.dumps({"time": time.time()}))
            raise ValueError("process 1's batch is broken")
        return model(**inputs)["losses"]

    args = MultiObjectiveTrainingArguments(
        output_dir=str(Path(out_dir) / "run"), combiner="mgda", head_modules=HEADS,
        per_device_train_batch_size=2, max_steps=4, save_strategy="steps", save_steps=1,
        report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = MultiObjectiveTrainer(
        load_two_task(Path(model_dir)), args, train_dataset=two_task_data(16),
        compute_losses=compute_losses,
    )  # fmt: skip
    record: dict = {}
    try:
        trainer.train()
    except BaseException as exc:  # recorded, for the test to judge
        record = {"type": type(exc).__name__, "message": str(exc), "time": time.time()}
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
def test_one_process_failing_stops_the_other(tmp_path: Path) -> None:
    """Started one by one (mp.spawn would terminate the survivor itself): process 0 stops at
    its next collective, saying that another process stopped and which checkpoint to resume."""
    import json
    import multiprocessing

    model_dir = build_two_task(tmp_path / "model")
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(target=_failing_worker, args=(r, port, str(model_dir), str(tmp_path)))
        for r in range(WORLD)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=180)
        if proc.is_alive():
            proc.kill()
    assert [proc.exitcode for proc in procs] == [0, 0]  # each recorded its error and returned
    survivor, failed = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert failed["type"] == "ValueError" and "process 1's batch is broken" in failed["message"]
    assert survivor["type"] == "DistributedRunError", survivor
    assert survivor["message"].startswith(
        "process 0 of 2 stopped at step 2: another process stopped (it raised, exited or was "
        "killed)"
    )
    assert f"The last checkpoint is {tmp_path / 'run' / 'checkpoint-1'}" in survivor["message"]
    fault = json.loads((tmp_path / "fault.json").read_text())["time"]
    assert survivor["time"] - fault < 60
