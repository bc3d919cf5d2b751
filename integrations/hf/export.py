"""A model others can load: the trained policy, its tokenizer and a model card.

Layout of an export folder (written atomically: complete or absent)::

    README.md                 the model card (also inside each model folder)
    adapter/                  with LoRA: PeftModel.from_pretrained(base, "adapter")
    merged/                   with LoRA and merged=True: AutoModelForCausalLM.from_pretrained
    model/                    without LoRA: the full fine-tuned model
    value_heads.safetensors   the n value heads (beside the model: not part of the policy)
    value_heads.json          their objective names and input size
    training_config.json      the MOPPOConfig

Every weight file is safetensors. Merging adds the adapter to a fresh full-precision copy of
the base model (not to the training copy, which may be quantised: merging into 8-bit or 4-bit
weights would round the update away).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_dir

__all__ = ["TrainingSummary", "describe_reward", "export_model", "model_card"]


@dataclass(frozen=True)
class TrainingSummary:
    """What the model card says of a run: its config, objectives, combiner and length.

    ``combiner_given``: the combiner was an instance passed in (it overrides
    ``config.combiner``: the card shows its repr); ``kl_coef``: the KL coefficient at the end;
    ``policy_source``: the name or path the policy was loaded from (None for an instance).
    """

    config: Any
    reward_names: Sequence[str]
    reward_fns: Sequence[Any]
    combiner: Any
    global_step: int
    kl_coef: float
    combiner_given: bool = False
    policy_source: str | None = None


def describe_reward(fn: Any) -> str:
    """How a reward function reads in the model card."""
    path = getattr(fn, "name_or_path", None)
    if path is not None:
        return f"reward model `{path}`, output {getattr(fn, 'label_index', 0)}"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None) or type(fn).__module__
    if module and module.startswith("paretoopt."):
        return f"`{name}` (paretoopt)"
    return f"Python function `{module}.{name}`" if module else f"`{name}`"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(
    summary: TrainingSummary,
    base_model: str | None,
    eval_metrics: Mapping[str, Any] | None,
    layout: list[str],
) -> str:
    """The README.md: objectives and their rewards, combiner, steps, held-out rewards, config."""
    cfg = summary.config
    lines = ["---", "tags:", "- paretoopt", "- rlhf", "- multi-objective"]
    if base_model:
        lines.append(f"base_model: {base_model}")
    if cfg.use_lora:
        lines.append("library_name: peft")
    lines += ["---", "", "# Multi-objective PPO policy", ""]
    if summary.combiner_given:
        # An instance passed in overrides config.combiner: show what trained.
        used = f"the combiner `{summary.combiner!r}`"
    else:
        combiner = type(summary.combiner).__name__
        used = f"the **{cfg.combiner}** combiner (`{combiner}`" + (
            f", granularity {cfg.pama_granularity})" if cfg.combiner == "pama" else ")"
        )
    n = len(summary.reward_names)
    lines.append(
        f"Trained from `{base_model or 'a model instance'}` for {summary.global_step} steps of "
        f"multi-objective PPO (paretoopt) with {used} against {n} objectives."
    )
    lines += ["", "## Objectives", "", "| objective | reward | held-out mean |", "|---|---|---|"]
    for name, fn in zip(summary.reward_names, summary.reward_fns, strict=True):
        held_out = (eval_metrics or {}).get(f"eval/reward/{name}")
        shown = _fmt(held_out) if held_out is not None else "not evaluated"
        lines.append(f"| {name} | {describe_reward(fn)} | {shown} |")
    if eval_metrics:
        lines += ["", "## Held-out evaluation", ""]
        for key in ("step", "eval/hypervolume", "eval/hypervolume_per_response"):
            if key in eval_metrics:
                lines.append(f"- `{key}`: {_fmt(eval_metrics[key])}")
        if "reference_point" in eval_metrics:
            lines.append(f"- hypervolume reference point: {eval_metrics['reference_point']}")
    lines += ["", "## Training", ""]
    lines.append(
        f"- steps {summary.global_step}, batch {cfg.batch_size} per process, PPO epochs "
        f"{cfg.ppo_epochs}, learning rate {cfg.learning_rate}, KL coefficient "
        f"{summary.kl_coef:.4g} at the end (start {cfg.kl_coef}), ratio to "
        f"{'pi_ref' if cfg.ratio_to == 'ref' else 'pi_old'}"
    )
    if cfg.use_lora:
        lines.append(f"- LoRA r {cfg.lora_r}, alpha {cfg.lora_alpha}, dropout {cfg.lora_dropout}")
    for flag in ("load_in_8bit", "load_in_4bit"):
        if getattr(cfg, flag, False):
            lines.append(f"- base weights quantised during training (`{flag}`)")
    lines += ["", "## Files", ""] + [f"- {item}" for item in layout]
    lines += ["", "## How to load", "", "```python"]
    if cfg.use_lora:
        lines += [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{base_model or "BASE"}")',
            'model = PeftModel.from_pretrained(base, "adapter")',
            'tokenizer = AutoTokenizer.from_pretrained("adapter")',
        ]
        if "merged/" in " ".join(layout):
            lines += ['# or, merged: AutoModelForCausalLM.from_pretrained("merged")']
    else:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("model")',
            'tokenizer = AutoTokenizer.from_pretrained("model")',
        ]
    lines += ["```", "", "## Training configuration", "", "```json"]
    lines += [json.dumps(cfg.to_dict(), indent=1, sort_keys=True, default=str), "```", ""]
    return "\n".join(lines)


def _base_name(policy: Any, source: str | None) -> str | None:
    if source is not None:
        return str(source)
    peft_config = getattr(policy, "peft_config", None)
    if peft_config:
        return next(iter(peft_config.values())).base_model_name_or_path
    return getattr(getattr(policy, "config", None), "_name_or_path", None) or None


def _merged_model(policy: Any, dtype: Any, adapter_dir: Path, base_model: str | None) -> Any:
    """The adapter merged into a fresh full-precision base (or a copy of the training one)."""
    from peft import PeftModel

    from .models import from_pretrained
    from .quant import is_quantized

    if base_model is not None:
        local = str(base_model).startswith(("/", ".", "~"))
        if not local or Path(base_model).expanduser().exists():
            base = from_pretrained(base_model, dtype)
            return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    if is_quantized(policy):
        raise ValueError(
            "cannot merge into quantised weights and the base model's path is unknown; "
            "pass base_model= (its name or path)"
        )
    return copy.deepcopy(policy).merge_and_unload()


def export_model(
    model: Any,
    tokenizer: Any,
    summary: TrainingSummary,
    directory: str | Path,
    *,
    accelerator: Any = None,
    merged: bool = False,
    eval_metrics: Mapping[str, Any] | None = None,
    base_model: str | None = None,
) -> Path:
    """Write the shipped model into ``directory`` (layout in the module docstring).

    ``model``: the policy with its value heads (:class:`~.value_heads.PolicyWithValueHeads`,
    unwrapped); ``summary``: what the card says of the run; ``accelerator``: under data
    parallelism the main process writes while the others wait (None: this process writes).
    ``eval_metrics`` (e.g. ``EvalResult.to_dict()``) fill the card's held-out column;
    ``base_model`` overrides where the base weights for merging come from.
    """
    from safetensors.torch import save_file

    cfg = summary.config
    if merged and not cfg.use_lora:
        raise ValueError("merged=True needs use_lora=True: without LoRA the model is full already")
    base_model = base_model or _base_name(model.policy, summary.policy_source)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    target = Path(directory)
    if accelerator is None or accelerator.is_main_process:
        unwrapped = model

        def write(tmp: Path) -> None:
            layout = []
            main = tmp / ("adapter" if cfg.use_lora else "model")
            unwrapped.policy.save_pretrained(str(main), safe_serialization=True)
            tokenizer.save_pretrained(str(main))
            folders = [main]
            layout.append(
                f"`{main.name}/`: "
                + ("the LoRA adapter and tokenizer" if cfg.use_lora else "the model and tokenizer")
            )
            if merged:
                merged_model = _merged_model(unwrapped.policy, cfg.dtype, main, base_model)
                merged_model.save_pretrained(str(tmp / "merged"), safe_serialization=True)
                tokenizer.save_pretrained(str(tmp / "merged"))
                folders.append(tmp / "merged")
                layout.append("`merged/`: the adapter merged into the base weights, and tokenizer")
            heads = {
                k: v.detach().contiguous().cpu()
                for k, v in unwrapped.value_heads.state_dict().items()
            }
            save_file(heads, str(tmp / "value_heads.safetensors"))
            (tmp / "value_heads.json").write_text(
                json.dumps(
                    {
                        "objectives": list(summary.reward_names),
                        "hidden_size": unwrapped.value_heads.hidden_size,
                    },
                    indent=1,
                )
            )
            layout.append("`value_heads.safetensors`: one value head per objective (training only)")
            cfg.to_json(tmp / "training_config.json")
            card = model_card(summary, base_model, eval_metrics, layout)
            for folder in [tmp, *folders]:
                (folder / "README.md").write_text(card)

        atomic_write_dir(target, write)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return target
