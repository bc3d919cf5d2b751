"""Runs of ``paretoopt train`` that a test can kill at any moment, as a scheduler would.

``python resume_driver.py`` imports torch, transformers and the trainer once, then reads
one JSON request per line from stdin: ``{"argv": [...], "slow_write": SECONDS}``. For each
it forks a child that runs ``paretoopt train ARGV`` (one CPU thread, so every run does the
same arithmetic), writes ``{"pid": PID}`` as soon as the child exists and
``{"pid": PID, "rc": CODE}`` when it has ended (``-9`` for a child killed with SIGKILL).
Forking skips the imports, which take most of a short run's time.

With ``slow_write`` each checkpoint write pauses before its ``optimizer.pt``: the hidden
temporary folder then holds the policy but not the rest for that long, so that a kill can
land in the middle of a checkpoint write.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


def _run_child(argv: list[str], slow_write: float) -> int:
    import torch

    if slow_write:
        original = torch.save

        def slow_save(obj, f, *args, **kwargs):  # type: ignore[no-untyped-def]
            if str(f).endswith("optimizer.pt"):
                time.sleep(slow_write)
            return original(obj, f, *args, **kwargs)

        torch.save = slow_save
    from paretoopt.cli import main

    return main(["train", *argv])


def serve() -> None:
    import paretoopt.integrations.hf
    import paretoopt.integrations.hf.cli  # noqa: F401
    import torch
    import transformers  # noqa: F401

    torch.set_num_threads(1)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                sys.stdin.close()
                os.dup2(2, 1)  # the child's prints stay out of the replies on stdout
                code = _run_child(request["argv"], float(request.get("slow_write", 0)))
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"pid": pid, "rc": code}), flush=True)


if __name__ == "__main__":
    serve()
