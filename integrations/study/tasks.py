"""The study's two tasks behind one small interface: prompts, rewards, thresholds, artefacts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import task_sentiment as ts
from . import task_support as tsup
from .artefacts import StudyArtefactConfig, StudyArtefacts, load_or_train

TASK_NAMES = ("sentiment_length", "support_replies")
#: Each task's objectives, in order (known without loading the task).
TASK_OBJECTIVES: dict[str, list[str]] = {
    "sentiment_length": ["sentiment", "length"],
    "support_replies": ["helpful", "polite", "brief"],
}
RewardFn = Callable[[list[str], list[str]], Sequence[float]]


@dataclass
class Task:
    """One task, ready to train on: what the protocol needs and nothing else."""

    name: str
    objectives: list[str]
    train_prompts: list[str]
    eval_prompts: list[str]
    max_new_tokens: int
    success_thresholds: list[float]
    hv_reference: list[float]
    artefacts: StudyArtefacts
    settings: dict[str, Any] = field(default_factory=dict)

    def reward_fns(self) -> list[RewardFn]:
        """Fresh reward functions (the classifier loads lazily in the calling process)."""
        if self.name == "sentiment_length":
            from paretoopt.integrations.hf import RewardModelFunction

            cfg = ts.SentimentLengthConfig(**self.settings)
            assert self.artefacts.reward_model is not None
            sentiment = RewardModelFunction(
                str(self.artefacts.reward_model), 1, name="sentiment", separator=" "
            )
            return [sentiment, ts.make_length_reward(cfg)]
        return list(tsup.make_rewards(tsup.SupportRepliesConfig(**self.settings)))


def artefact_config(task: str, size: str = "full") -> StudyArtefactConfig:
    """The artefacts of ``task``: ``"full"`` for the study, ``"tiny"`` for the test suite."""
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; expected one of {TASK_NAMES}")
    if size == "full":
        return StudyArtefactConfig(task=task)
    if size == "tiny":
        return StudyArtefactConfig(
            task=task,
            task_config={"n_labelled": 300} if task == "sentiment_length" else {"n_replies": 300},
            n_embd=16,
            n_layer=1,
            n_head=2,
            sft_steps=40,
            rm_steps=40,
            batch_size=32,
        )
    raise ValueError(f"unknown artefact size {size!r}; expected 'full' or 'tiny'")


def load_task(
    name: str, size: str = "full", cache_dir: str | Path | None = None, progress: bool = False
) -> Task:
    """Build (or load from the cache) the artefacts of task ``name`` and describe it."""
    config = artefact_config(name, size)
    artefacts = load_or_train(config, cache_dir, progress)
    settings = dict(config.task_config)
    if name == "sentiment_length":
        cfg = ts.SentimentLengthConfig(**settings)
        train, held = ts.split_prompts(cfg)
    else:
        cfg = tsup.SupportRepliesConfig(**settings)
        train, held = tsup.split_prompts(cfg)
    return Task(
        name=name,
        objectives=list(TASK_OBJECTIVES[name]),
        train_prompts=train,
        eval_prompts=held,
        max_new_tokens=cfg.max_new_tokens,
        success_thresholds=list(cfg.success_thresholds),
        hv_reference=list(cfg.hv_reference),
        artefacts=artefacts,
        settings=settings,
    )
