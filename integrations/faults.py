r"""Faults under data parallelism: one process that fails stops every process, soon, saying why.

A collective operation (an all-reduce of DDP's gradients, a barrier before a checkpoint) waits
for every process. When one process raises, exits or is killed, the backend notices the closed
connection at the others' next collective; when one hangs, the others wait for the backend's
timeout, 30 minutes for gloo by default. Three pieces bound that and make it readable:

* :func:`set_collective_timeout` bounds every collective of a group already started
  (default in the trainers: :data:`DEFAULT_COLLECTIVE_TIMEOUT`, 10 minutes);
* :func:`stop_together` wraps a training loop: a process that fails shuts its process group
  down, so that the others' next collective fails at once instead of waiting for it, and a
  process whose collective failed raises :class:`DistributedRunError`, which says whether
  another process stopped or timed out, and what to do next;
* :func:`refuse_sharded_training` refuses FSDP, DeepSpeed and Megatron-LM when they are asked
  for: the combiners are tested under DDP only.

On one process every function here is a no-op.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from .distributed import is_distributed

__all__ = [
    "DEFAULT_COLLECTIVE_TIMEOUT",
    "DistributedRunError",
    "collective_failure",
    "describe_collective_failure",
    "refuse_sharded_training",
    "set_collective_timeout",
    "shut_down_process_group",
    "stop_together",
]

DEFAULT_COLLECTIVE_TIMEOUT = 600.0
"""Seconds a collective waits for the other processes before it raises: NCCL's default in
torch and accelerate, instead of gloo's 30 minutes. The longest wait of a healthy run is the
others waiting while process 0 writes a checkpoint or exports the model."""

# What a failed collective raises: gloo a plain RuntimeError whose text comes from its
# transport, NCCL a torch.distributed.DistError (DistBackendError, DistNetworkError, ...).
_BACKEND_FAILURE = re.compile(
    r"gloo|nccl|connection (closed|reset) by peer|timed out waiting|pair closure"
    r"|process group has not been initialized|broken pipe",
    re.IGNORECASE,
)
_TIMED_OUT = re.compile(r"timed? ?out|timeout", re.IGNORECASE)


class DistributedRunError(RuntimeError):
    """This process stopped because a collective operation failed: another process stopped
    (raised, exited or was killed) or did not reach the operation within the collective
    timeout. ``rank`` and ``world_size`` say which process, ``timed_out`` which of the two."""

    def __init__(self, message: str, *, rank: int, world_size: int, timed_out: bool) -> None:
        super().__init__(message)
        self.rank = rank
        self.world_size = world_size
        self.timed_out = timed_out


def set_collective_timeout(seconds: float | None, group: dist.ProcessGroup | None = None) -> bool:
    """Make every later collective of ``group`` (default: the world) raise after ``seconds``
    instead of the backend's default (30 minutes for gloo, 10 for NCCL).

    It applies to a group already started (by accelerate, ``torchrun`` or the caller), and to
    the gloo and NCCL backends. Returns whether it was set: ``False`` on one process, with
    ``seconds=None`` (the group's own timeout is kept) or where torch cannot set it.
    """
    if seconds is None or not is_distributed():
        return False
    setter = getattr(dist.distributed_c10d, "_set_pg_timeout", None)  # torch >= 2.3
    if setter is None:
        return False
    setter(timedelta(seconds=float(seconds)), group)
    return True


def collective_failure(exc: BaseException) -> BaseException | None:
    """The exception in ``exc``'s chain that a failed collective raised, if any.

    Only the backend's own exceptions count: a ``DistError``, or a plain ``RuntimeError`` from
    gloo's transport. An exception of the caller's (a reward that lost its connection to a
    service) is never taken for one, whatever its text.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, dist.DistError) or (
            type(current) is RuntimeError and _BACKEND_FAILURE.search(str(current))
        ):
            return current
        current = current.__cause__ or current.__context__
    return None


def shut_down_process_group() -> None:
    """Shut the default process group down, best effort: the other processes' pending and
    next collectives fail at once (their connection to this process closes) instead of
    waiting for the timeout. After it ``torch.distributed`` is no longer initialised here."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    # abort: no flush of pending work, which for NCCL could wait on the very peer that failed
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    try:
        if abort is not None:
            abort()
        else:
            dist.destroy_process_group()
    except Exception:  # stopping anyway: the original error is what matters
        pass


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note(note)


@contextmanager
def stop_together(
    where: Callable[[], str] | None = None,
    advice: Callable[[], str] | None = None,
    timeout: float | None = None,
) -> Iterator[None]:
    """Run a block of collective code (a training loop) so that one process's failure stops
    every process within a bounded time. A no-op on one process.

    When the block raises on this process:

    * the process group is shut down (:func:`shut_down_process_group`), so that the other
      processes' next collective fails at once instead of waiting for this one;
    * if a collective failed (another process stopped, or did not arrive within the timeout),
      :class:`DistributedRunError` is raised from it, naming this process and what happened,
      followed by ``where()`` (e.g. ``" at step 3"``) and ``advice()`` (what to do next);
    * any other exception (this process's own failure: a reward, a bad input) is re-raised as
      it is, with a note that the process group was shut down.

    ``timeout`` (seconds) is only quoted in the message; set it with
    :func:`set_collective_timeout`.
    """
    if not is_distributed():
        yield
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        yield
    except BaseException as exc:
        failure = collective_failure(exc)
        shut_down_process_group()
        if failure is None:
            _add_note(
                exc,
                f"process {rank} of {world} stopped here; its process group was shut down so "
                "that the other processes stop at their next collective operation",
            )
            raise
        raise DistributedRunError(
            describe_collective_failure(failure, rank, world, where, advice, timeout),
            rank=rank,
            world_size=world,
            timed_out=bool(_TIMED_OUT.search(str(failure))),
        ) from exc


def describe_collective_failure(
    failure: BaseException,
    rank: int,
    world: int,
    where: Callable[[], str] | None = None,
    advice: Callable[[], str] | None = None,
    timeout: float | None = None,
) -> str:
    """The message of :class:`DistributedRunError` (see :func:`stop_together`)."""
    place = where() if where is not None else ""
    detail = str(failure).strip().splitlines()[0] if str(failure).strip() else ""
    if _TIMED_OUT.search(str(failure)):
        limit = f" ({timeout:g} s)" if timeout is not None else ""
        cause = (
            f"another process did not reach the same collective operation within the "
            f"collective timeout{limit}: it hangs (a reward, a data source or a file system "
            "that does not answer) or is far slower than this one"
        )
    else:
        cause = (
            "another process stopped (it raised, exited or was killed) and a collective "
            "operation lost its connection to it; that process's own log holds the first error"
        )
    message = f"process {rank} of {world} stopped{place}: {cause}."
    if advice is not None:
        message += " " + advice()
    return message + (f" [{type(failure).__name__}: {detail}]" if detail else "")


_SHARDING_ENV = {
    "FSDP": "ACCELERATE_USE_FSDP",
    "DeepSpeed": "ACCELERATE_USE_DEEPSPEED",
    "Megatron-LM": "ACCELERATE_USE_MEGATRON_LM",
}
_SHARDING_TYPES = {"FSDP": "FSDP", "DEEPSPEED": "DeepSpeed", "MEGATRON_LM": "Megatron-LM"}


def refuse_sharded_training(
    trainer: str,
    why: str,
    instead: str,
    *,
    distributed_type: Any = None,
    requested: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Raise ``ValueError`` when FSDP, DeepSpeed or Megatron-LM is asked for.

    Asked for means: accelerate's environment (``accelerate launch --use_fsdp`` /
    ``--use_deepspeed`` or an accelerate config sets ``ACCELERATE_USE_FSDP=true``, ...), an
    accelerator of that ``distributed_type``, or ``requested`` (``{"FSDP": "TrainingArguments
    .fsdp"}``: the engine and the setting that asked). The message names the engine and where
    it was asked for, ``why`` it is refused and what to use ``instead``. On the CPU accelerate
    ignores FSDP and runs DDP; it is refused there too, so that no run silently trains under
    another engine than the one asked for.
    """
    env = os.environ if environ is None else environ
    asked: dict[str, str] = dict(requested or {})
    for engine, var in _SHARDING_ENV.items():
        if engine not in asked and env.get(var, "false").lower() in ("true", "1", "yes"):
            asked[engine] = f"{var}={env[var]}, set by accelerate launch or an accelerate config"
    kind = getattr(distributed_type, "value", distributed_type)
    engine = _SHARDING_TYPES.get(str(kind)) if kind is not None else None
    if engine is not None and engine not in asked:
        asked[engine] = f"the accelerator's distributed_type {kind}"
    if not asked:
        return
    engine, source = next(iter(asked.items()))
    raise ValueError(
        f"{trainer} does not support {engine} (asked for by {source}): {why}. It is untested "
        f"and refused rather than run wrong; use DDP instead (accelerate launch --multi_gpu or "
        f"torchrun, without --use_fsdp / --use_deepspeed){instead}"
    )
