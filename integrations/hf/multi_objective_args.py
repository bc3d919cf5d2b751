"""The arguments of :class:`~.multi_objective.MultiObjectiveTrainer` and the checks made on
them before training: the combiner, its weights, the heads and the trunk, sharding.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
from transformers import TrainingArguments

from paretoopt import MGDA, Combiner, TorchJD, make_combiner

from ..distributed import DistributedMGDA, DistributedTorchJD
from ..faults import refuse_sharded_training

__all__ = [
    "MultiObjectiveTrainingArguments",
    "check_head_objectives",
    "check_objective_count",
    "check_weight_count",
    "combiner_from_args",
    "no_shared_message",
]


ComputeLosses = Callable[..., Any]


def _json_field(value: Any, name: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name} must be a dict or a JSON object string: {exc}") from exc
    return value


@dataclass
class MultiObjectiveTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus where the losses, the shared tensor and the heads are.

    Every field is plain data (saved with each checkpoint, settable from the command line
    through ``HfArgumentParser``); a combiner *object* or a ``compute_losses`` callable goes to
    :class:`MultiObjectiveTrainer` instead.
    """

    combiner: str = field(
        default="pama",
        metadata={
            "help": "pama | mgda (exact, over the trunk) | mgda_ub | linear | morlhf | a "
            "torchjd aggregator by its name in lower case (upgrad, cagrad, pcgrad, nashmtl, "
            '...; combiner_kwargs {"mode": "params"} for the trunk, default the shared tensor)'
        },
    )
    combiner_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": 'kwargs for paretoopt.make_combiner, e.g. {"normalization": "l2"}'},
    )
    losses_key: str = field(
        default="losses",
        metadata={"help": "key of the model output holding a dict name->loss or a tuple"},
    )
    objectives: list[str] | None = field(
        default=None,
        metadata={"help": "names (and order) of the objectives; default: the output's keys"},
    )
    shared_module: str | None = field(
        default=None,
        metadata={"help": "module whose output is the shared tensor (PAMA, MGDA-UB); "
                  "default: the model's last hidden states"},
    )  # fmt: skip
    trunk_module: str | None = field(
        default=None,
        metadata={"help": "module whose trainable parameters are the trunk (exact MGDA's "
                  "params); default: every trainable parameter outside the heads"},
    )  # fmt: skip
    head_modules: dict | str | None = field(
        default=None,
        metadata={"help": 'objective -> module name(s) of its head, e.g. {"a": "head_a"}'},
    )
    log_combiner_stats: bool = field(
        default=True, metadata={"help": "log the combiner's stats (min-norm, veto rate, ...)"}
    )
    ddp_timeout: int = field(
        default=600,
        metadata={"help": "seconds a collective waits for the other processes before every "
                  "process stops (transformers' default: 1800)"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        self.combiner_kwargs = _json_field(self.combiner_kwargs, "combiner_kwargs") or {}
        self.head_modules = _json_field(self.head_modules, "head_modules")
        # fail now on a bad name or kwarg
        combiner = make_combiner(self.combiner, **self.combiner_kwargs)
        if self.head_modules is not None and not isinstance(self.head_modules, Mapping):
            raise TypeError("head_modules must map objective names to module names")
        if self.objectives is not None:
            names = [str(o) for o in self.objectives]
            check_objective_count(names, "objectives")
            if self.head_modules:
                check_head_objectives(self.head_modules, names)
            check_weight_count(combiner, names)


_DEFAULTS = MultiObjectiveTrainingArguments.__dataclass_fields__


def check_objective_count(names: list[str], source: str) -> None:
    """At least two distinct objectives: one loss needs no combiner."""
    if len(names) < 2:
        raise ValueError(
            f"{source} names {len(names)} objective ({names}); a multi-objective combiner needs "
            "at least two losses (with one, use transformers.Trainer)"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{source} repeats the objectives {repeated}")


def check_head_objectives(head_modules: Mapping[str, Any], names: list[str]) -> None:
    unknown = [k for k in head_modules if k not in names]
    if unknown:
        raise ValueError(
            f"head_modules names objectives {unknown} that the losses do not have "
            f"(objectives: {names})"
        )


def check_weight_count(combiner: Combiner, names: list[str]) -> None:
    """A combiner with fixed weights (linear, morlhf) has one weight per objective."""
    weights = getattr(combiner, "weights", None)
    if weights is not None and len(weights) != len(names):
        raise ValueError(
            f"{type(combiner).__name__} has {len(weights)} weights {list(weights)} for "
            f"{len(names)} objectives {names}: give one weight per objective, in their order"
        )


def _refuse_sharding(args: TrainingArguments, distributed_type: Any = None) -> None:
    """FSDP and DeepSpeed, asked for by the arguments, accelerate's environment or the built
    accelerator, are refused before any step (on the CPU accelerate would run DDP instead)."""
    requested = {}
    if getattr(args, "fsdp", None):
        requested["FSDP"] = f"TrainingArguments.fsdp={args.fsdp!r}"
    if getattr(args, "deepspeed", None):
        requested["DeepSpeed"] = f"TrainingArguments.deepspeed={args.deepspeed!r}"
    refuse_sharded_training(
        "MultiObjectiveTrainer",
        "the combiners take per-objective gradients with torch.autograd.grad, which under FSDP "
        "or DeepSpeed ZeRO sees only this process's shard of the flattened parameters and "
        "bypasses their gather and reduce hooks",
        "; to save memory use PEFT (LoRA), gradient checkpointing, or a smaller "
        "per_device_train_batch_size with gradient_accumulation_steps",
        distributed_type=distributed_type,
        requested=requested,
    )


def _arg(args: TrainingArguments, name: str) -> Any:
    # A plain TrainingArguments works too: the multi-objective fields take their defaults.
    if hasattr(args, name):
        return getattr(args, name)
    return _DEFAULTS[name].default


def _accumulation_split(
    losses: list[Tensor], steps: int, scaled: bool, degree: int
) -> tuple[list[Tensor], float, float]:
    """How one micro-batch of ``steps`` enters gradient accumulation.

    Returns ``(seen, grad_scale, per_step)``: the losses the combiner sees, the factor on
    every gradient written, and the divisor of the seen losses' combined value that makes the
    micro-batch's share of the step. The target: k micro-batches accumulate the *average* of
    their combined steps (with k identical micro-batches, one step on one of them).

    * A combination that scales with the losses (degree 1: fixed weights, PAMA, MGDA with
      simplex weights) sees the losses divided by ``steps`` (or, with ``scaled``, already
      divided by the accumulated item count), exactly as the Trainer divides one loss.
    * A scale-free one (``MGDA(rescale=True)`` with a normalisation: degree 0 or -1) would
      undo that division, and k micro-batches would add up to k steps. It sees each
      micro-batch's own mean losses instead (with ``scaled``, the losses times ``steps``:
      exact for micro-batches with equal item counts), and ``1 / steps`` goes on the
      gradients.
    """
    if degree == 1:
        if scaled or steps == 1:
            return list(losses), 1.0, 1.0
        return [loss / steps for loss in losses], 1.0, 1.0
    seen = [loss * steps for loss in losses] if scaled else list(losses)
    return seen, 1.0 / steps, float(steps)


def combiner_from_args(args: TrainingArguments) -> Combiner:
    """The combiner the arguments name; under data parallelism exact MGDA and the torchjd
    methods take their weights from the global Gram matrix."""
    kwargs = dict(_arg(args, "combiner_kwargs") or {})
    combiner = make_combiner(_arg(args, "combiner"), **kwargs)
    if isinstance(combiner, MGDA) and args.world_size > 1:
        # Exact MGDA's Gram matrix is of the global gradients: all-reduce before the solve.
        combiner = DistributedMGDA(
            mode=combiner.mode,
            normalization=combiner.normalization,
            solver=combiner.solver,
            tol=combiner.tol,
            max_iter=combiner.max_iter,
            rescale=combiner.rescale,
        )
    if isinstance(combiner, TorchJD) and args.world_size > 1:
        combiner = DistributedTorchJD(combiner)  # weights from the global Gram matrix
    return combiner


def no_shared_message(combiner: str, shared_module: str | None, root: Any, outputs: Any) -> str:
    """Why a combiner that needs a shared tensor found none: ``shared_module`` did not run,
    or the model's ``outputs`` (top-level module ``root``) carry no hidden states."""
    if shared_module is not None:
        return (
            f"{combiner} needs a shared tensor, but shared_module {shared_module!r} did not run "
            "in the forward pass"
        )
    keys = list(outputs.keys()) if isinstance(outputs, Mapping) else []
    return (
        f"{combiner} needs a shared tensor (a representation every loss depends on) and "
        f"none was found: the model output has no hidden_states or last_hidden_state "
        f"(keys: {keys}). Set shared_module='<module name>' (top-level modules of "
        f"{type(root).__name__}: {[n for n, _ in root.named_children()]}), or use combiner='mgda'"
    )
