"""Two-process runs of ``paretoopt train`` in which one process fails, as a launcher runs them.

``python dist_fault_driver.py`` imports torch, transformers and the trainer once, then reads one
JSON request per line from stdin::

    {"argv": [...], "world": 2, "fault": "raise" | "kill" | "hang" | "none", "fault_step": 3,
     "log_dir": DIR, "grace": 10, "deadline": 240}

For each it forks ``world`` children, rank 0 to ``world - 1``, each running
``paretoopt train ARGV`` on the CPU with one thread and gloo (the environment ``torchrun``
would set; a fresh port per request), its output in ``LOG_DIR/rank{R}.log``. It answers
``{"pids": [...]}`` at once and, when every child has ended, ``{"rc": [...], "ended": [...],
"killed": [...]}``: exit codes (``-9`` for SIGKILL), wall-clock end times (``time.time()``) and
the ranks it killed itself. Like ``torchrun``, once a child has failed it kills those still
running ``grace`` seconds later; past ``deadline`` seconds it kills them all.

The fault happens in process 1's second reward (``good``, this module's :func:`good`) at
``fault_step``: ``raise`` raises, ``kill`` sends itself SIGKILL, ``hang`` sleeps for 10 minutes.
Just before, it writes ``time.time()`` to ``LOG_DIR/fault.json``. The steps are counted by the
reward's calls, so a fault is only meant for a run that starts at step 1.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

_calls = {"n": 0}


def good(prompts, responses) -> list[float]:  # type: ignore[no-untyped-def]
    """Share of the word "good" in each response; fails on process 1 as the request says."""
    _calls["n"] += 1
    fault, step = os.environ.get("FAULT", "none"), int(os.environ.get("FAULT_STEP", "0"))
    if os.environ.get("RANK") == "1" and fault != "none" and _calls["n"] == step:
        Path(os.environ["FAULT_LOG"]).write_text(json.dumps({"time": time.time()}))
        if fault == "raise":
            raise ValueError(f"the reward service refused process 1's batch at step {step}")
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "hang":
            time.sleep(600)
    return [r.split().count("good") / max(1, len(r.split())) for r in responses]


def _child(rank: int, world: int, port: int, request: dict) -> int:
    from dist_fixtures import set_worker_env

    set_worker_env(rank, world, port)
    os.environ.update(
        FAULT=request.get("fault", "none"),
        FAULT_STEP=str(request.get("fault_step", 0)),
        FAULT_LOG=str(Path(request["log_dir"]) / "fault.json"),
    )
    from paretoopt.cli import main

    return main(["train", *request["argv"]])


def _launch(request: dict) -> None:
    from dist_fixtures import free_port

    world = int(request.get("world", 2))
    log_dir = Path(request["log_dir"])
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    pids = []
    for rank in range(world):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                sys.stdin.close()
                log = os.open(log_dir / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(log, 1)
                os.dup2(log, 2)
                code = _child(rank, world, port, request)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    print(json.dumps({"pids": pids}), flush=True)
    rc: list[int | None] = [None] * world
    ended: list[float | None] = [None] * world
    killed: list[int] = []
    began, first_failure = time.monotonic(), None
    deadline, grace = float(request.get("deadline", 240)), float(request.get("grace", 10))
    while any(code is None for code in rc):
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            rank = pids.index(pid)
            rc[rank] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            ended[rank] = time.time()
            if rc[rank] != 0 and first_failure is None:
                first_failure = time.monotonic()
            continue
        now = time.monotonic()
        late = first_failure is not None and now - first_failure > grace
        if late or now - began > deadline:
            for rank, code in enumerate(rc):
                if code is None and rank not in killed:
                    os.kill(pids[rank], signal.SIGKILL)
                    killed.append(rank)
        time.sleep(0.02)
    print(json.dumps({"rc": rc, "ended": ended, "killed": killed}), flush=True)


def serve() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import paretoopt.integrations.hf
    import paretoopt.integrations.hf.cli  # noqa: F401
    import torch
    import transformers  # noqa: F401

    torch.set_num_threads(1)
    for line in sys.stdin:
        if line.strip():
            _launch(json.loads(line))


if __name__ == "__main__":
    serve()
