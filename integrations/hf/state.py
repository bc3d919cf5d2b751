"""A run's full state on disk: save a checkpoint atomically, load one to resume exactly.

A checkpoint holds the policy (or its LoRA adapter) and tokenizer, the value heads
(safetensors), the optimizer, RNG, a stateful combiner's and, under fp16 mixed precision,
gradient-scaler states
(``torch.save``, loaded with ``weights_only=True``) and ``trainer_state.json`` (step, KL
controller, config, history), written last; see :mod:`.checkpoint` for the layout and the
atomic write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import STATE_FILE, atomic_write_dir, capture_rng_state, restore_rng_state

__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointParts",
    "Progress",
    "combiner_state",
    "load_training_state",
    "restore_combiner_state",
    "save_checkpoint",
]

CHECKPOINT_VERSION = 1
SCALER_FILE = "scaler.pt"
"""The accelerator's ``GradScaler`` state (fp16): its loss scale and growth tracker."""
COMBINER_FILE = "combiner.pt"
"""A stateful combiner's state (GradVac, PCD, Nash-MTL of the torchjd zoo)."""


@dataclass
class CheckpointParts:
    """The objects a checkpoint saves and a resumed run loads into: the policy with its value
    heads (unwrapped), tokenizer, optimizer, accelerator (processes, gradient scaler),
    combiner, adaptive KL controller, config and the objectives' names."""

    model: Any
    tokenizer: Any
    optimizer: Any
    accelerator: Any
    combiner: Any
    kl_controller: Any
    config: Any
    reward_names: list[str]


@dataclass
class Progress:
    """How far a run is: its step, metric and evaluation histories and value warm-up."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    value_warmup_step: int = 0
    value_warmup_history: list[dict[str, Any]] = field(default_factory=list)


def combiner_state(combiner: Any) -> dict[str, Any] | None:
    """The state to checkpoint of a stateful combiner (``None`` for a stateless one)."""
    if not getattr(combiner, "stateful", False):
        return None
    return combiner.state_dict()


def restore_combiner_state(combiner: Any, folder: Path) -> None:
    """Load ``folder``'s combiner state into a stateful combiner; a checkpoint of a stateful
    run without one cannot resume it exactly, so it is refused."""
    if not getattr(combiner, "stateful", False):
        return
    path = folder / COMBINER_FILE
    if not path.is_file():
        raise ValueError(
            f"checkpoint {folder} has no {COMBINER_FILE}, but the combiner "
            f"{getattr(combiner, 'name', type(combiner).__name__)!r} keeps a state across steps: "
            "it was saved by a run with another combiner, so it cannot be resumed exactly"
        )
    combiner.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def save_checkpoint(
    parts: CheckpointParts,
    progress: Progress,
    target: Path,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Save policy/adapter, value heads, optimizer, RNG and the run's state atomically into
    ``target``.

    ``extra_files`` (name -> text) are written into the same folder before it appears, e.g.
    the evaluation that made it the best checkpoint.
    """
    from safetensors.torch import save_file

    accelerator = parts.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = parts.model

        def write(tmp: Path) -> None:
            unwrapped.policy.save_pretrained(str(tmp / "policy"))
            parts.tokenizer.save_pretrained(str(tmp / "policy"))
            heads = {
                k: v.detach().contiguous().cpu()
                for k, v in unwrapped.value_heads.state_dict().items()
            }
            save_file(heads, str(tmp / "value_heads.safetensors"))
            torch.save(parts.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(capture_rng_state(), tmp / "rng_state.pt")
            if getattr(accelerator, "scaler", None) is not None:
                torch.save(accelerator.scaler.state_dict(), tmp / SCALER_FILE)
            combiner = combiner_state(parts.combiner)
            if combiner is not None:
                torch.save(combiner, tmp / COMBINER_FILE)
            state = {
                "version": CHECKPOINT_VERSION,
                "step": progress.step,
                "kl_controller": parts.kl_controller.state_dict(),
                "reward_names": parts.reward_names,
                "n_objectives": len(parts.reward_names),
                "use_lora": parts.config.use_lora,
                "config": parts.config.to_dict(),
                "history": progress.history,
                "eval_history": progress.eval_history,
                "value_warmup_step": progress.value_warmup_step,
                "value_warmup_history": progress.value_warmup_history,
            }
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))

        atomic_write_dir(target, write)
    accelerator.wait_for_everyone()
    return target


def load_training_state(parts: CheckpointParts, folder: Path) -> Progress:
    """Restore value heads, optimizer, gradient scaler, KL controller, combiner and RNG from
    ``folder``; return the run's progress (step, histories) saved with them.

    The policy weights themselves are loaded with the model (:mod:`.models`).
    """
    from safetensors.torch import load_file

    state = json.loads((folder / STATE_FILE).read_text())
    n_objectives = len(parts.reward_names)
    if state.get("n_objectives") != n_objectives:
        raise ValueError(
            f"checkpoint {folder} has {state.get('n_objectives')} objectives, "
            f"this trainer has {n_objectives}"
        )
    if bool(state.get("use_lora")) != parts.config.use_lora:
        raise ValueError(f"checkpoint {folder} use_lora={state.get('use_lora')} differs")
    # accelerate gives each process of a multi-process CPU run an indexed device ("cpu:1"),
    # which safetensors and torch.load refuse: plain "cpu" there.
    device = parts.accelerator.device
    device = "cpu" if device.type == "cpu" else str(device)
    heads = load_file(str(folder / "value_heads.safetensors"), device=device)
    parts.model.value_heads.load_state_dict(heads)
    optim_state = torch.load(folder / "optimizer.pt", map_location=device, weights_only=True)
    parts.optimizer.load_state_dict(optim_state)
    parts.kl_controller.load_state_dict(state["kl_controller"])
    restore_combiner_state(parts.combiner, folder)
    scaler = getattr(parts.accelerator, "scaler", None)
    scaler_path = folder / SCALER_FILE
    if scaler is not None and scaler_path.is_file():
        # Without it fp16 restarts at the initial loss scale: skipped steps, another update.
        scaler.load_state_dict(torch.load(scaler_path, weights_only=True))
    rng_path = folder / "rng_state.pt"
    if rng_path.is_file():
        restore_rng_state(torch.load(rng_path, weights_only=True))
    return Progress(
        step=int(state["step"]),
        history=list(state.get("history", [])),
        eval_history=list(state.get("eval_history", [])),
        value_warmup_step=int(state.get("value_warmup_step", 0)),
        value_warmup_history=list(state.get("value_warmup_history", [])),
    )


def drop_lines_after(path: Path, step: int) -> None:
    """Keep the JSONL lines of ``path`` whose ``step`` is at most ``step``: later lines
    belong to the continuation of the run that the resumed one redoes (``step=-1``: none,
    a fresh start). A line that is not JSON (cut short by a kill) is dropped too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue  # a line cut short by a process killed while appending it
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)
