"""One process failing stops every process within a bounded time, each saying why
(:mod:`paretoopt.integrations.faults`), on 2 CPU processes over gloo, torch only.

The two processes are started one by one (``multiprocessing`` ``Process``), not with
``mp.spawn``, which would terminate the survivor itself as soon as one worker fails: here the
survivor has to stop on its own. In each scenario process 1 fails after 3 all-reduces, inside
:func:`stop_together`, while process 0 keeps all-reducing: it raises (its process group is
shut down), hangs (process 0's collective times out after 1 s) or is killed with SIGKILL.
The MOPPOTrainer runs of the same faults, with resume, are in test_distributed_fault_resume.py.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from dist_fixtures import free_port
from paretoopt.integrations.faults import (
    DistributedRunError,
    collective_failure,
    describe_collective_failure,
    refuse_sharded_training,
    stop_together,
)

SCENARIOS = ("raise", "hang", "kill")  # kill last: process 1 does not come back from it
TIMEOUT = 1.0
GOOD_STEPS = 3


def _scenario(rank: int, port: int, fault: str, out: Path) -> None:
    import torch.distributed as dist
    from paretoopt.integrations.faults import set_collective_timeout

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    assert set_collective_timeout(TIMEOUT)
    x = torch.ones(2)
    step = {"n": 0}
    record: dict = {"fault": fault}
    began = time.monotonic()
    try:
        with stop_together(lambda: f" at step {step['n'] + 1}", lambda: "restart it.", TIMEOUT):
            for step["n"] in range(100 if rank == 0 else GOOD_STEPS):
                dist.all_reduce(x)
            if fault == "raise":
                raise ValueError("process 1 cannot go on")
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3 * TIMEOUT)  # hang: longer than process 0's collective timeout
            dist.all_reduce(x)
    except BaseException as exc:  # recorded, for the test to judge
        record.update(
            type=type(exc).__name__,
            message=str(exc),
            notes=list(getattr(exc, "__notes__", [])),
            timed_out=getattr(exc, "timed_out", None),
        )
    record.update(seconds=time.monotonic() - began, initialized=dist.is_initialized())
    (out / f"{fault}-rank{rank}.json").write_text(json.dumps(record))


def _worker(rank: int, ports: list[int], out: str) -> None:
    torch.set_num_threads(1)
    for fault, port in zip(SCENARIOS, ports, strict=True):
        _scenario(rank, port, fault, Path(out))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("faults")
    ports = [free_port() for _ in SCENARIOS]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, ports, str(out))) for r in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    assert procs[1].exitcode == -signal.SIGKILL  # the last scenario killed it
    assert procs[0].exitcode == 0
    files = {f: [out / f"{f}-rank{r}.json" for r in (0, 1)] for f in SCENARIOS}
    return {f: [json.loads(p.read_text()) for p in ps if p.exists()] for f, ps in files.items()}


def test_a_process_that_raises_stops_the_other_at_its_next_collective(outcomes) -> None:
    survivor, failed = outcomes["raise"]
    # Process 1 raises its own error, with a note; its group is shut down.
    assert failed["type"] == "ValueError" and failed["message"] == "process 1 cannot go on"
    assert any("process 1 of 2 stopped here" in note for note in failed["notes"])
    assert not failed["initialized"]
    # Process 0 stops at once (well before the collective timeout), saying what happened.
    assert survivor["type"] == "DistributedRunError" and survivor["timed_out"] is False
    assert survivor["message"].startswith(
        "process 0 of 2 stopped at step 4: another process stopped (it raised, exited or was "
        "killed)"
    )
    assert "restart it." in survivor["message"] and "[RuntimeError: " in survivor["message"]
    assert survivor["seconds"] < 30 and not survivor["initialized"]


def test_a_process_that_hangs_stops_the_other_after_the_timeout(outcomes) -> None:
    survivor, hung = outcomes["hang"]
    assert survivor["type"] == "DistributedRunError" and survivor["timed_out"] is True
    assert "within the collective timeout (1 s)" in survivor["message"]
    assert TIMEOUT * 0.8 <= survivor["seconds"] < 30
    # When the hung process comes back, its collective fails at once: the group is gone.
    assert hung["type"] == "DistributedRunError" and hung["seconds"] < 30


def test_a_killed_process_stops_the_other(outcomes) -> None:
    assert len(outcomes["kill"]) == 1  # process 1 died without writing anything
    survivor = outcomes["kill"][0]
    assert survivor["type"] == "DistributedRunError" and survivor["timed_out"] is False
    assert "another process stopped" in survivor["message"] and survivor["seconds"] < 30


def test_on_one_process_nothing_changes() -> None:
    with pytest.raises(ValueError, match=r"^mine$") as info:
        with stop_together(lambda: " at step 1"):
            raise ValueError("mine")
    assert not getattr(info.value, "__notes__", [])


def test_only_the_backends_own_errors_count_as_a_failed_collective() -> None:
    class RewardError(RuntimeError):  # as the trainer's: a RuntimeError of the caller's
        pass

    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [::1]:1")
    assert collective_failure(gloo) is gloo
    wrapped = ValueError("while stepping")
    wrapped.__cause__ = gloo
    assert collective_failure(wrapped) is gloo
    # A reward that lost its own connection is the reward's failure, not a collective's.
    reward = RewardError("reward 'remote' raised ConnectionResetError: Connection reset by peer")
    reward.__cause__ = ConnectionResetError("Connection reset by peer")
    assert collective_failure(reward) is None
    assert collective_failure(RuntimeError("shapes do not match")) is None
    timeout = RuntimeError("[gloo/unbound_buffer.cc:78] Timed out waiting 600000ms for recv")
    text = describe_collective_failure(timeout, 1, 4, lambda: " at step 9", None, 600)
    assert text.startswith("process 1 of 4 stopped at step 9: another process did not reach")
    assert "(600 s)" in text


def test_sharded_engines_are_refused_by_name() -> None:
    refuse_sharded_training("T", "why", "", environ={})  # DDP: nothing asked, nothing refused
    with pytest.raises(ValueError, match=r"^T does not support FSDP \(asked for by "
                       r"ACCELERATE_USE_FSDP=true, set by accelerate launch"):  # fmt: skip
        refuse_sharded_training("T", "why", "", environ={"ACCELERATE_USE_FSDP": "true"})
    with pytest.raises(
        ValueError, match=r"DeepSpeed .*the accelerator's distributed_type DEEPSPEED"
    ):
        refuse_sharded_training("T", "why", "", distributed_type="DEEPSPEED", environ={})
    with pytest.raises(ValueError, match="use DDP instead"):
        refuse_sharded_training("T", "why", "", requested={"FSDP": "TrainingArguments.fsdp"})


def test_distributed_run_error_is_a_runtime_error() -> None:
    err = DistributedRunError("m", rank=0, world_size=2, timed_out=False)
    assert isinstance(err, RuntimeError) and (err.rank, err.world_size) == (0, 2)
