"""The multi-objective PPO trainer: :class:`MOPPOTrainer` runs the steps of
:class:`~.algorithm.MOPPOAlgorithm` with a value warm-up, held-out evaluations, checkpoints,
logging and the final export.

One step's data flow (docs/architecture.md): sample -> roll out -> score -> advantages ->
update (:mod:`.algorithm`) -> log (:meth:`MOPPOTrainer.log`: :mod:`.reporting`). The
trainer owns the run's state (step, histories, the best checkpoint) and passes pieces down:
:mod:`.warmup` fits the value heads from a :class:`~.update.PPOSetup`, :mod:`.evaluation`
answers prompts from a :class:`~.evaluation.Generation`, :mod:`.state` saves
:class:`~.state.CheckpointParts` and a :class:`~.state.Progress`, :mod:`.export` writes the
policy with a :class:`~.export.TrainingSummary`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..faults import stop_together
from .algorithm import MOPPOAlgorithm
from .batch import RolloutBatch
from .checkpoint import resume_advice
from .config import MOPPOConfig
from .data import Prompt, load_prompt_dataset
from .evaluation import (
    BestCheckpoint,
    EvalResult,
    Generation,
    evaluate,
    held_out_reference,
    log_evaluation,
)
from .export import TrainingSummary, export_model
from .metrics import PhaseClock
from .reporting import Reporter, append_jsonl
from .state import (
    CheckpointParts,
    Progress,
    drop_lines_after,
    load_training_state,
    save_checkpoint,
)
from .warmup import fit_value_heads, warmup_metrics, warmup_seed

__all__ = ["MOPPOTrainer", "RolloutBatch"]


class MOPPOTrainer(MOPPOAlgorithm):
    """Multi-objective PPO with a pluggable combiner (PAMA, PAMA-UB, MGDA-UB, MGDA, linear):
    :class:`~.algorithm.MOPPOAlgorithm`'s steps, run by :meth:`train`.

    Args:
        config: hyper-parameters (:class:`MOPPOConfig`).
        policy: a model name or path (loaded with ``AutoModelForCausalLM.from_pretrained``)
            or a ``PreTrainedModel`` (trained in place; the reference is a frozen copy).
        tokenizer: a tokenizer; loaded from ``policy`` when it is a name or path.
        prompts: the prompt pool; each step samples ``config.batch_size`` per process.
            Strings or conversations (lists of ``{"role", "content"}`` messages, rendered
            with the tokenizer's chat template), or any source
            :func:`~.data.load_prompt_dataset` reads (a ``datasets.Dataset``, a file, ...).
        rewards: n reward functions ``(prompts, responses) -> list[float]``. They receive
            the prompts as given (a conversation stays a list of messages); a function that
            takes a ``prompt_texts`` keyword also gets the text the policy saw. Also
            :class:`~paretoopt.integrations.hf.RewardModelFunction` instances, or specs such
            as ``"length"`` / ``"name=PATH:LABEL"`` (see ``parse_reward_spec``).
        reward_names: names for logging (default: the functions' names).
        combiner: a ``paretoopt`` combiner instance; overrides ``config.combiner``.
        callbacks: extra ``transformers.TrainerCallback`` objects (``on_log`` gets
            every step's metrics), besides those named in ``config.report_to``.
        accelerator: an ``accelerate.Accelerator``; one is made from the config if None.
        eval_prompts: held-out prompts (any prompt source) evaluated every
            ``config.eval_every`` steps and at the end (:mod:`.evaluation`).
    """

    def __init__(
        self,
        config: MOPPOConfig,
        policy: str | Path | nn.Module,
        tokenizer: Any = None,
        prompts: Sequence[Prompt] | Any = (),
        rewards: Sequence[Callable[..., Any] | str] = (),
        reward_names: Sequence[str] | None = None,
        combiner: Any = None,
        callbacks: Sequence[Any] = (),
        accelerator: Any = None,
        eval_prompts: Sequence[Prompt] | Any = None,
    ) -> None:
        super().__init__(
            config, policy, tokenizer, prompts, rewards, reward_names, combiner, accelerator,
            eval_prompts,
        )  # fmt: skip
        self.value_warmup_step = 0
        """Value warm-up steps done (``config.value_warmup_steps``; :mod:`.warmup`)."""
        self.value_warmup_history: list[dict[str, float]] = []
        self.history: list[dict[str, float]] = []
        self.output_dir = Path(config.output_dir)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self._callbacks = list(callbacks)
        self._report: Reporter | None = None
        self.eval_history: list[dict[str, Any]] = []
        self.best = BestCheckpoint.from_config(config, self.reward_names)
        if self.resume_dir is not None:
            self._resume(self.resume_dir)
        elif config.resume_from == "auto" and self.accelerator.is_main_process:
            # A fresh start: lines a run killed before its first checkpoint logged go.
            for path in (self.metrics_path, self.output_dir / "eval.jsonl"):
                drop_lines_after(path, -1)

    # -------------------------------------------------------------- training

    def train(self) -> list[dict[str, float]]:
        """Run until ``config.steps``; returns the metric history (one dict per step)."""
        cfg = self.config
        is_main = self.accelerator.is_main_process
        if is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self._report = (
            Reporter(
                cfg, self._callbacks, output_dir=self.output_dir, global_step=self.global_step,
                use_cpu=self.device.type == "cpu", policy=self.policy, tokenizer=self.tokenizer,
            )
            if is_main
            else None
        )  # fmt: skip
        if self._report is not None:
            self._report.on_train_begin()
        bar = None
        if cfg.progress and is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.global_step, desc="moppo", dynamic_ncols=True)
        try:
            # One process failing (a reward, a kill, a hang) stops every process, each saying
            # why and from which checkpoint to restart.
            advice = lambda: resume_advice(self.output_dir)  # noqa: E731
            with stop_together(self._step_in_progress, advice, cfg.collective_timeout):
                self._train_loop(bar)
        finally:
            if bar is not None:
                bar.close()
            if self._report is not None:
                self._report.on_train_end()
        return self.history

    def _train_loop(self, bar: Any) -> None:
        """The steps of ``train()``: warm-up, steps with their evaluations and checkpoints,
        the final evaluation, checkpoint and export."""
        cfg = self.config
        if self.global_step == 0 and self.value_warmup_step < cfg.value_warmup_steps:
            self.run_value_warmup()
            if cfg.save_every:
                self.save_checkpoint()  # checkpoint-0: a resumed run skips the warm-up
        while self.global_step < cfg.steps:
            metrics = self.step()
            self.log(metrics)
            if bar is not None:
                bar.update(1)
                shown = {
                    k.split("/", 1)[1]: f"{v:.3g}"
                    for k, v in metrics.items()
                    if k.startswith("reward/")
                }
                shown["kl"] = f"{metrics['kl']:.3g}"
                bar.set_postfix(shown)
            if cfg.eval_every and self.global_step % cfg.eval_every == 0:
                self.run_evaluation()
            if cfg.save_every and self.global_step % cfg.save_every == 0:
                self.save_checkpoint()
        evaluated = bool(self.eval_history) and self.eval_history[-1]["step"] == self.global_step
        if self.eval_prompts is not None and not evaluated:
            self.run_evaluation()
        if cfg.save_final and not (cfg.save_every and self.global_step % cfg.save_every == 0):
            self.save_checkpoint()
        if cfg.export_dir is not None:
            self.export(cfg.export_dir, merged=cfg.export_merged)

    def run_value_warmup(self) -> None:
        """The value warm-up steps still due (:mod:`.warmup`): only before the first policy
        update, resumable."""
        if self.global_step > 0:
            return  # a run resumed after its first policy update never warms up again
        while self.value_warmup_step < self.config.value_warmup_steps:
            k = self.value_warmup_step + 1
            metrics = self.value_warmup_step_metrics(k)
            self.value_warmup_step = k
            self.log_value_warmup(metrics)

    def value_warmup_step_metrics(self, k: int) -> dict[str, float]:
        """Warm-up step ``k`` (1-based): a rollout of the current (starting) policy, its n
        returns, then the value heads' fit (:func:`.warmup.fit_value_heads`); its metrics."""
        from accelerate.utils import set_seed

        set_seed(warmup_seed(self.config.seed, k, self.accelerator.process_index))
        clock = PhaseClock(self.device)
        with clock.phase("step"):
            rollout = self.rollout(self.sample_prompts(k))
            scores = self.score(rollout, step=0)
            with torch.no_grad():
                fwd = self.forward_rollout(rollout)
                rewards, _ = self.kl_penalized_rewards(scores, fwd, rollout.mask)
                _, returns = self.per_objective_gae(rewards, fwd["values"], rollout.mask)
            metrics = warmup_metrics(
                k, scores, fwd["values"], returns, rollout.mask, self.reward_names,
                self.accelerator,
            )  # fmt: skip
            metrics["loss/value"] = fit_value_heads(
                self.ppo_setup(), rollout, fwd["values"], returns, k
            )
        metrics.update(clock.timings)
        return metrics

    def _step_in_progress(self) -> str:
        """Where ``train()`` is, for an error message: " at step 3", " after step 20"."""
        if self.global_step == 0 and self.value_warmup_step < self.config.value_warmup_steps:
            return f" at value warm-up step {self.value_warmup_step + 1}"
        if self.global_step < self.config.steps:
            return f" at step {self.global_step + 1}"
        return f" after its last step ({self.global_step})"

    def evaluate(self, prompts: Sequence[Prompt] | Any = None) -> EvalResult:
        """Held-out rewards and hypervolumes of the current policy on ``prompts`` (default
        ``eval_prompts``; :func:`.evaluation.evaluate`). The reference point is
        ``config.eval_reference_point`` or, unset, the one fixed by the run's first evaluation."""
        if prompts is None:
            if self.eval_prompts is None:
                raise ValueError("no held-out prompts: pass eval_prompts= to the trainer")
            prompts = self.eval_prompts
        else:
            prompts = load_prompt_dataset(prompts)
        cfg = self.config
        return evaluate(
            self.generation(cfg.eval_max_new_tokens), self.reward_fns, self.reward_names,
            prompts, step=self.global_step, n_samples=cfg.eval_samples,
            reference_point=held_out_reference(cfg, self.eval_history),
        )  # fmt: skip

    def run_evaluation(self) -> EvalResult:
        """Evaluate, log (``OUTPUT_DIR/eval.jsonl``, ``eval/*`` metrics to ``report_to``) and
        update the best checkpoint."""
        result = self.evaluate()
        log_evaluation(
            result, self.eval_history, output_dir=self.output_dir,
            log_jsonl=self.config.log_jsonl, is_main_process=self.accelerator.is_main_process,
            report=self._report,
        )  # fmt: skip
        if self.best is not None:
            self.best.update(self.save_checkpoint, result)
        return result

    def generation(self, max_new_tokens: int | None = None, do_sample: bool = False) -> Generation:
        """The current policy's generation setup (:class:`.evaluation.Generation`), greedy by
        default; puts the model in eval mode."""
        config = self._generation_config(do_sample=do_sample, max_new_tokens=max_new_tokens)
        self.model.eval()
        return Generation(
            self.policy, self.tokenizer, config, self.device, self.config.batch_size,
            self.config.max_prompt_length, self.accelerator,
        )  # fmt: skip

    def export(self, directory: str | Path, merged: bool = False) -> Path:
        """The shipped model (adapter, merged weights on request, tokenizer, model card) in
        ``directory`` (:func:`.export.export_model`); the card shows the last evaluation."""
        last = self.eval_history[-1] if self.eval_history else None
        return export_model(
            self.unwrapped, self.tokenizer, self.training_summary(), directory,
            accelerator=self.accelerator, merged=merged, eval_metrics=last,
        )  # fmt: skip

    def training_summary(self) -> TrainingSummary:
        """The run as the model card describes it (:class:`.export.TrainingSummary`)."""
        return TrainingSummary(
            self.config, self.reward_names, self.reward_fns, self.combiner, self.global_step,
            self.kl_controller.value, self.combiner_given, self.policy_source,
        )  # fmt: skip

    def log_value_warmup(self, metrics: dict[str, float]) -> None:
        """A warm-up step's metrics: kept apart from ``history``, logged with ``step`` 0."""
        self.value_warmup_history.append(metrics)
        self._emit(metrics)

    def log(self, metrics: dict[str, float]) -> None:
        self.history.append(metrics)
        self._emit(metrics)

    def _emit(self, metrics: dict[str, float]) -> None:
        """JSONL and ``report_to``, from the main process only."""
        if not self.accelerator.is_main_process:
            return
        if self.config.log_jsonl:
            append_jsonl(self.metrics_path, metrics)
        if self._report is not None:
            self._report.on_log(metrics)

    def generate(
        self, prompts: Sequence[Prompt], max_new_tokens: int | None = None, do_sample: bool = False
    ) -> list[str]:
        """Responses only (no prompt), greedy by default, in batches of ``batch_size``;
        conversations rendered with the chat template as in training."""
        return self.generation(max_new_tokens, do_sample).responses(prompts)

    def save_checkpoint(
        self, directory: str | Path | None = None, extra_files: dict[str, str] | None = None
    ) -> Path:
        """Save policy/adapter, value heads, optimizer, RNG and trainer state atomically."""
        default = self.output_dir / f"checkpoint-{self.global_step}"
        target = Path(directory) if directory else default
        progress = Progress(
            self.global_step, self.history, self.eval_history, self.value_warmup_step,
            self.value_warmup_history,
        )  # fmt: skip
        return save_checkpoint(self.checkpoint_parts(), progress, target, extra_files)

    def checkpoint_parts(self) -> CheckpointParts:
        """What a checkpoint holds (:class:`.state.CheckpointParts`)."""
        return CheckpointParts(
            self.unwrapped, self.tokenizer, self.optimizer, self.accelerator, self.combiner,
            self.kl_controller, self.config, self.reward_names,
        )  # fmt: skip

    def _resume(self, folder: Path) -> None:
        """Load ``folder``'s training state (:func:`.state.load_training_state`), its step and
        histories; drop the log lines of the abandoned continuation; the best checkpoint's
        value."""
        progress = load_training_state(self.checkpoint_parts(), folder)
        self.global_step = progress.step
        self.history = progress.history
        self.eval_history = progress.eval_history
        self.value_warmup_step = progress.value_warmup_step
        self.value_warmup_history = progress.value_warmup_history
        if self.accelerator.is_main_process:
            for path in (self.metrics_path, self.output_dir / "eval.jsonl"):
                drop_lines_after(path, self.global_step)
        if self.best is not None:
            self.best.restore(max_step=self.global_step)
