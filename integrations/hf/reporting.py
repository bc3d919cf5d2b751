"""Where step metrics go: a JSONL file and the transformers reporting callbacks (``report_to``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Reporter", "append_jsonl"]


def append_jsonl(path: Path, metrics: dict[str, float]) -> None:
    """One JSON object per line, flushed at once (a crash loses no logged step)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(metrics) + "\n")
        handle.flush()


class Reporter:
    """Feeds step metrics to transformers reporting callbacks (``report_to``).

    ``config``: the run's ``report_to``, ``steps``, ``seed`` and ``learning_rate``;
    ``global_step``: where the run starts; ``policy`` and ``tokenizer``: what the callbacks
    are shown; ``extra``: callbacks besides those ``report_to`` names.
    """

    def __init__(
        self,
        config: Any,
        extra: Sequence[Any],
        *,
        output_dir: Path,
        global_step: int,
        use_cpu: bool,
        policy: Any,
        tokenizer: Any,
    ) -> None:
        self.policy = policy
        self.tokenizer = tokenizer
        self.callbacks: list[Any] = list(extra)
        self.args = self.state = self.control = None
        report_to = list(config.report_to)
        if not report_to and not self.callbacks:
            return
        from transformers import TrainerControl, TrainerState, TrainingArguments
        from transformers.integrations import get_reporting_integration_callbacks

        for cls in get_reporting_integration_callbacks(report_to):
            self.callbacks.append(cls())
        self.args = TrainingArguments(
            output_dir=str(output_dir),
            report_to=report_to or "none",
            logging_steps=1,
            max_steps=config.steps,
            seed=config.seed,
            learning_rate=config.learning_rate,
            use_cpu=use_cpu,
            # Reuse the trainer's accelerate state; by default TrainingArguments resets it.
            accelerator_config={"use_configured_state": True},
        )
        self.state = TrainerState(max_steps=config.steps, global_step=global_step)
        self.state.is_world_process_zero = True
        self.state.is_local_process_zero = True
        self.control = TrainerControl()

    def _call(self, event: str, **kwargs: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self.args, self.state, self.control, **kwargs)

    def on_train_begin(self) -> None:
        if self.callbacks:
            self._call(
                "on_train_begin",
                model=self.policy,
                processing_class=self.tokenizer,
            )

    def on_log(self, metrics: dict[str, float]) -> None:
        if not self.callbacks:
            return
        self.state.global_step = int(metrics["step"])
        logs = {k: v for k, v in metrics.items() if k != "step"}
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._call("on_log", logs=logs, model=self.policy)

    def on_train_end(self) -> None:
        if self.callbacks:
            self._call("on_train_end", model=self.policy)
