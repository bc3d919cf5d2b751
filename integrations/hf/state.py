"""The trainer's full state on disk: save a checkpoint atomically, load one to resume exactly.

A checkpoint holds the policy (or its LoRA adapter) and tokenizer, the value heads
(safetensors), the optimizer, RNG, a stateful combiner's and, under fp16 mixed precision,
gradient-scaler states
(``torch.save``, loaded with ``weights_only=True``) and ``trainer_state.json`` (step, KL
controller, config, history), written last; see :mod:`.checkpoint` for the layout and the
atomic write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .checkpoint import STATE_FILE, atomic_write_dir, capture_rng_state, restore_rng_state

if TYPE_CHECKING:
    from .trainer import MOPPOTrainer

__all__ = [
    "CHECKPOINT_VERSION",
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
    trainer: MOPPOTrainer,
    directory: str | Path | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Save policy/adapter, value heads, optimizer, RNG and trainer state atomically.

    ``extra_files`` (name -> text) are written into the same folder before it appears, e.g.
    the evaluation that made it the best checkpoint.
    """
    from safetensors.torch import save_file

    target = (
        Path(directory) if directory else trainer.output_dir / f"checkpoint-{trainer.global_step}"
    )
    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = trainer.unwrapped

        def write(tmp: Path) -> None:
            unwrapped.policy.save_pretrained(str(tmp / "policy"))
            trainer.tokenizer.save_pretrained(str(tmp / "policy"))
            heads = {
                k: v.detach().contiguous().cpu()
                for k, v in unwrapped.value_heads.state_dict().items()
            }
            save_file(heads, str(tmp / "value_heads.safetensors"))
            torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(capture_rng_state(), tmp / "rng_state.pt")
            if getattr(accelerator, "scaler", None) is not None:
                torch.save(accelerator.scaler.state_dict(), tmp / SCALER_FILE)
            combiner = combiner_state(trainer.combiner)
            if combiner is not None:
                torch.save(combiner, tmp / COMBINER_FILE)
            state = {
                "version": CHECKPOINT_VERSION,
                "step": trainer.global_step,
                "kl_controller": trainer.kl_controller.state_dict(),
                "reward_names": trainer.reward_names,
                "n_objectives": trainer.n_objectives,
                "use_lora": trainer.config.use_lora,
                "config": trainer.config.to_dict(),
                "history": trainer.history,
                "eval_history": getattr(trainer, "eval_history", []),
                "value_warmup_step": trainer.value_warmup_step,
                "value_warmup_history": trainer.value_warmup_history,
            }
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))

        atomic_write_dir(target, write)
    accelerator.wait_for_everyone()
    return target


def load_training_state(trainer: MOPPOTrainer, folder: Path) -> None:
    """Restore value heads, optimizer, gradient scaler, KL controller, step, histories, RNG
    and the best checkpoint's value from ``folder``.

    The policy weights themselves are loaded with the model (:mod:`.models`).
    """
    from safetensors.torch import load_file

    state = json.loads((folder / STATE_FILE).read_text())
    if state.get("n_objectives") != trainer.n_objectives:
        raise ValueError(
            f"checkpoint {folder} has {state.get('n_objectives')} objectives, "
            f"this trainer has {trainer.n_objectives}"
        )
    if bool(state.get("use_lora")) != trainer.config.use_lora:
        raise ValueError(f"checkpoint {folder} use_lora={state.get('use_lora')} differs")
    # accelerate gives each process of a multi-process CPU run an indexed device ("cpu:1"),
    # which safetensors and torch.load refuse: plain "cpu" there.
    device = "cpu" if trainer.device.type == "cpu" else str(trainer.device)
    heads = load_file(str(folder / "value_heads.safetensors"), device=device)
    trainer.unwrapped.value_heads.load_state_dict(heads)
    optim_state = torch.load(folder / "optimizer.pt", map_location=device, weights_only=True)
    trainer.optimizer.load_state_dict(optim_state)
    trainer.kl_controller.load_state_dict(state["kl_controller"])
    restore_combiner_state(trainer.combiner, folder)
    trainer.global_step = int(state["step"])
    trainer.history = list(state.get("history", []))
    trainer.eval_history = list(state.get("eval_history", []))
    trainer.value_warmup_step = int(state.get("value_warmup_step", 0))
    trainer.value_warmup_history = list(state.get("value_warmup_history", []))
    scaler = getattr(trainer.accelerator, "scaler", None)
    scaler_path = folder / SCALER_FILE
    if scaler is not None and scaler_path.is_file():
        # Without it fp16 restarts at the initial loss scale: skipped steps, another update.
        scaler.load_state_dict(torch.load(scaler_path, weights_only=True))
    rng_path = folder / "rng_state.pt"
    if rng_path.is_file():
        restore_rng_state(torch.load(rng_path, weights_only=True))
    if trainer.accelerator.is_main_process:
        for path in (trainer.metrics_path, trainer.output_dir / "eval.jsonl"):
            drop_lines_after(path, trainer.global_step)
    if trainer.best is not None:
        trainer.best.restore(max_step=trainer.global_step)


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
