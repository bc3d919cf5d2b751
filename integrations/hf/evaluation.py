"""Held-out evaluation during training, and keeping the best checkpoint.

:func:`evaluate` answers the held-out prompts greedily (by default) with the current policy
and scores every response with the run's n reward functions. It reports:

- ``eval/reward/<name>``: the mean score of each objective;
- ``eval/hypervolume``: the hypervolume of the mean point against a reference point ``r``,
  ``prod_i max(mean_i - r_i, 0)`` (:func:`paretoopt.hypervolume` of one point);
- ``eval/hypervolume_per_response``: the mean over responses of each response's own
  hypervolume, ``mean_b prod_i max(R_bi - r_i, 0)``. The mean point rewards a policy that
  mixes two kinds of responses, each good at one objective only; this one rewards responses
  good at all of them at once;
- a small table of samples (prompt, response, each score).

The reference point is the user's (``reference_point``) or, when none is given, the
per-objective minimum over the first evaluation's responses, kept fixed afterwards (usually
the starting policy's worst response: every later gain counts, a loss below it counts zero).

:class:`BestCheckpoint` keeps the checkpoint with the highest value of a criterion the user
picks: ``"hypervolume"``, ``"hypervolume_per_response"``, one objective's name, or a weighted
score ``{"helpful": 0.7, "verbose": 0.3}`` of the mean rewards. It is written atomically
(``checkpoint.atomic_write_dir``) into ``OUTPUT_DIR/best`` with its evaluation in ``eval.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import Prompt, is_conversation, render_prompts
from .rewards import score_batch

__all__ = [
    "BestCheckpoint",
    "EvalResult",
    "Generation",
    "check_eval_setup",
    "evaluate",
    "held_out_reference",
    "log_evaluation",
    "parse_criterion",
]

EVAL_FILE = "eval.json"


@dataclass
class EvalResult:
    """One held-out evaluation: mean rewards, hypervolumes, per-response scores, samples."""

    step: int
    names: list[str]
    scores: torch.Tensor
    """``[n, B]`` every response's score per objective (all processes)."""
    reference_point: list[float]
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rewards(self) -> dict[str, float]:
        return {n: float(self.scores[i].mean()) for i, n in enumerate(self.names)}

    @property
    def hypervolume(self) -> float:
        from paretoopt import hypervolume

        return float(hypervolume([list(self.rewards.values())], self.reference_point))

    @property
    def hypervolume_per_response(self) -> float:
        ref = torch.tensor(self.reference_point, dtype=self.scores.dtype).unsqueeze(1)
        return float((self.scores - ref).clamp_min(0).prod(dim=0).mean())

    def metrics(self) -> dict[str, float]:
        out = {"step": float(self.step)}
        out.update({f"eval/reward/{n}": v for n, v in self.rewards.items()})
        out["eval/hypervolume"] = self.hypervolume
        out["eval/hypervolume_per_response"] = self.hypervolume_per_response
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.metrics(),
            "reference_point": self.reference_point,
            "samples": self.samples,
        }


def check_eval_setup(config: Any, eval_prompts: Sequence[Prompt] | None, n_objectives: int) -> None:
    """Refuse, before any training step, an evaluation set-up that cannot work: periodic
    evaluation or a best checkpoint without held-out prompts (the first would fail after
    ``eval_every`` steps of work, the second would never write ``best/``), or a reference
    point that is not one finite value per objective."""
    if eval_prompts is None or not len(eval_prompts):
        for name, value, unset in (
            ("eval_every", config.eval_every, 0),
            ("best_criterion", config.best_criterion, None),
        ):
            if value != unset:
                raise ValueError(
                    f"MOPPOConfig.{name}={value!r} needs held-out prompts: pass eval_prompts= "
                    "to MOPPOTrainer"
                )
    reference = config.eval_reference_point
    if reference is None:
        return
    values = list(reference)
    if len(values) != n_objectives:
        raise ValueError(
            f"MOPPOConfig.eval_reference_point has {len(values)} values for {n_objectives} "
            "objectives: give one per reward"
        )
    for i, v in enumerate(values):
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
            raise ValueError(f"MOPPOConfig.eval_reference_point[{i}] must be finite, got {v!r}")


@dataclass
class Generation:
    """What answering prompts needs: the policy, its tokenizer, a ``GenerationConfig``
    (:func:`.models.generation_config`), the batch size and prompt length limit, and the
    ``accelerate.Accelerator`` (autocast, and which prompts this process answers; None: one
    process, no autocast). Whatever holds a policy can build one; the trainer builds one per
    call (:meth:`~.trainer.MOPPOTrainer.generation`)."""

    policy: Any
    tokenizer: Any
    config: Any
    device: torch.device | str
    batch_size: int
    max_prompt_length: int | None = None
    accelerator: Any = None

    @torch.no_grad()
    def seen_and_responses(self, prompts: Sequence[Prompt]) -> tuple[list[str], list[str]]:
        """The prompts as the policy saw them (rendered, cut to ``max_prompt_length``:
        ``Rollout.prompts``) and its responses, in batches of ``batch_size``;
        conversations rendered with the chat template as in training."""
        from .rollout import generate_rollout

        self.policy.eval()
        seen: list[str] = []
        texts: list[str] = []
        prompts = list(prompts)
        step = self.batch_size
        for lo in range(0, len(prompts), step):
            part = prompts[lo : lo + step]
            acc = self.accelerator
            with acc.autocast() if acc is not None else nullcontext():
                roll = generate_rollout(
                    self.policy,
                    self.tokenizer,
                    render_prompts(self.tokenizer, part),
                    self.config,
                    device=self.device,
                    max_prompt_length=self.max_prompt_length,
                    add_special_tokens=not is_conversation(part[0]),
                )
            seen.extend(roll.prompts)
            texts.extend(roll.responses)
        return seen, texts

    def responses(self, prompts: Sequence[Prompt]) -> list[str]:
        """Responses only (no prompt)."""
        return self.seen_and_responses(prompts)[1]


@torch.no_grad()
def evaluate(
    generation: Generation,
    reward_fns: Sequence[Any],
    reward_names: Sequence[str],
    prompts: Sequence[Prompt],
    *,
    step: int,
    reference_point: Sequence[float] | None = None,
    n_samples: int = 4,
) -> EvalResult:
    """Answer ``prompts`` with ``generation``'s policy and score them with ``reward_fns``
    (see the module docstring); ``step`` labels the result.

    Under data parallelism process p answers prompts ``p, p + W, ...`` and every process
    returns the same result (scores are gathered). Collective: call it on every process.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("evaluate needs at least one held-out prompt")
    acc = generation.accelerator
    rank, world = (acc.process_index, acc.num_processes) if acc is not None else (0, 1)
    mine = prompts[rank::world]
    rows: list[dict[str, Any]] = []
    if mine:
        # Scored as in training: on the prompts as the policy saw them (cut to
        # max_prompt_length); conversations as given, with their seen text as prompt_texts.
        texts, responses = generation.seen_and_responses(mine)
        scored = mine if is_conversation(mine[0]) else texts
        scores = score_batch(
            reward_fns, reward_names, scored, responses, step=step,
            prompt_texts=texts, phase=" (held-out evaluation)",
        )  # fmt: skip
        for b, (text, response) in enumerate(zip(texts, responses, strict=True)):
            rows.append({"prompt": text, "response": response, "scores": scores[:, b].tolist()})
    if world > 1:
        from accelerate.utils import gather_object

        rows = gather_object(rows)
    scores = torch.tensor([r["scores"] for r in rows], dtype=torch.float64).T
    names = list(reward_names)
    if reference_point is None:
        reference_point = scores.min(dim=1).values.tolist()
    reference = [float(v) for v in reference_point]
    if len(reference) != len(names):
        raise ValueError(
            f"the reference point has {len(reference)} values for {len(names)} objectives"
        )
    samples = [
        {
            "prompt": r["prompt"],
            "response": r["response"],
            **dict(zip(names, r["scores"], strict=True)),
        }
        for r in rows[:n_samples]
    ]
    return EvalResult(
        step=step,
        names=names,
        scores=scores,
        reference_point=reference,
        samples=samples,
    )


def parse_criterion(criterion: str | Mapping[str, float], names: Sequence[str]) -> Any:
    """Check a best-checkpoint criterion against the objective names; return it normalised.

    ``"hypervolume"``, ``"hypervolume_per_response"``, an objective name (``"helpful"`` or
    ``"reward/helpful"``), a weights mapping, or the string form ``"helpful=0.7,verbose=0.3"``.
    """
    if isinstance(criterion, str):
        text = criterion.strip()
        if text in ("hypervolume", "hypervolume_per_response"):
            return text
        if "=" in text:
            weights: dict[str, float] = {}
            for part in text.split(","):
                name, _, value = part.partition("=")
                try:
                    weights[name.strip()] = float(value)
                except ValueError as exc:
                    raise ValueError(f"bad weight {part!r} in criterion {criterion!r}") from exc
            return parse_criterion(weights, names)
        name = text.removeprefix("reward/")
        if name not in names:
            raise ValueError(
                f"best-checkpoint criterion {criterion!r} is neither 'hypervolume', "
                f"'hypervolume_per_response' nor an objective {list(names)}"
            )
        return name
    weights = {str(k): float(v) for k, v in dict(criterion).items()}
    unknown = sorted(set(weights) - set(names))
    if unknown or not weights:
        raise ValueError(
            f"criterion weights name unknown objectives {unknown}; known {list(names)}"
        )
    if not all(math.isfinite(w) for w in weights.values()):
        raise ValueError(f"criterion weights must be finite, got {weights}")
    return weights


class BestCheckpoint:
    """Keeps ``OUTPUT_DIR/best``: the checkpoint whose evaluation scores highest.

    ``value(result)`` is the criterion's value; :meth:`update` saves a checkpoint (atomically:
    the previous best stays intact until the new one is complete) when it strictly improves.
    """

    def __init__(
        self, criterion: str | Mapping[str, float], names: Sequence[str], directory: str | Path
    ) -> None:
        self.criterion = parse_criterion(criterion, names)
        self.directory = Path(directory)
        self.best: float | None = None
        self.best_step: int | None = None

    @classmethod
    def from_config(cls, config: Any, names: Sequence[str]) -> BestCheckpoint | None:
        """``OUTPUT_DIR/best`` by ``config.best_criterion``; None when there is none."""
        if config.best_criterion is None:
            return None
        return cls(config.best_criterion, names, Path(config.output_dir) / "best")

    def value(self, result: EvalResult) -> float:
        if self.criterion == "hypervolume":
            return result.hypervolume
        if self.criterion == "hypervolume_per_response":
            return result.hypervolume_per_response
        rewards = result.rewards
        if isinstance(self.criterion, str):
            return rewards[self.criterion]
        return sum(w * rewards[n] for n, w in self.criterion.items())

    def restore(self, max_step: int | None = None) -> None:
        """Read the best value back from ``directory/eval.json`` (when resuming a run).

        A best checkpoint from a step after ``max_step`` (the resumed checkpoint's) belongs
        to the abandoned continuation of the run: it is ignored, and the first evaluation of
        the resumed run replaces it.
        """
        path = self.directory / EVAL_FILE
        if path.is_file():
            data = json.loads(path.read_text())
            step = int(data["step"])
            if max_step is not None and step > max_step:
                return
            self.best, self.best_step = float(data["best_value"]), step

    def update(self, save_checkpoint: Callable[..., Any], result: EvalResult) -> bool:
        """Save a checkpoint as the best if ``result`` beats the best so far:
        ``save_checkpoint(directory, extra_files=...)`` writes it (the trainer's method)."""
        value = self.value(result)
        if self.best is not None and not value > self.best:
            return False
        record = {
            **result.to_dict(),
            "criterion": self.criterion,
            "best_value": value,
        }
        save_checkpoint(self.directory, extra_files={EVAL_FILE: json.dumps(record, indent=1)})
        self.best, self.best_step = value, result.step
        return True


def held_out_reference(config: Any, eval_history: Sequence[Mapping[str, Any]]) -> Any:
    """The hypervolume reference point: ``config.eval_reference_point`` or, unset, the one
    fixed by the run's first evaluation (None before it)."""
    reference = config.eval_reference_point
    if reference is None and eval_history:
        reference = eval_history[0]["reference_point"]
    return reference


def log_evaluation(
    result: EvalResult,
    eval_history: list[dict[str, Any]],
    *,
    output_dir: Path,
    log_jsonl: bool,
    is_main_process: bool,
    report: Any = None,
) -> dict[str, Any]:
    """Append ``result`` to ``eval_history``; from the main process, to
    ``OUTPUT_DIR/eval.jsonl`` (with the samples table) and its ``eval/*`` metrics to
    ``report`` (a :class:`.reporting.Reporter`). Returns the record."""
    from .reporting import append_jsonl

    record = result.to_dict()
    eval_history.append(record)
    if is_main_process:
        if log_jsonl:
            append_jsonl(output_dir / "eval.jsonl", record)
        if report is not None:
            report.on_log(result.metrics())
    return record
