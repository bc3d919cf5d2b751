"""Multi-objective PPO on transformers + peft + accelerate: PAMA's Algorithm 1.

:meth:`MOPPOTrainer.step` is the algorithm, one named call per line (docs/trainer.md has the
mathematics):

1. :meth:`~MOPPOTrainer.sample_prompts` - this step's prompts, a function of (seed, step);
2. :meth:`~MOPPOTrainer.rollout` - one sampled response per prompt (batched, KV cache);
3. :meth:`~MOPPOTrainer.score` - n reward functions -> scores ``[n, B]`` (a reward model
   sharing the policy's tokenizer reads the rollout's ids, not re-tokenised text);
4. :meth:`~MOPPOTrainer.forward_rollout` - log-probs of policy and reference, n values;
5. :meth:`~MOPPOTrainer.kl_penalized_rewards` - per-token rewards with the KL penalty;
6. :meth:`~MOPPOTrainer.per_objective_gae` - n advantages and returns (GAE);
7. :meth:`~MOPPOTrainer.combine` - normalisation, Noon clip ``A = max(A', 0)`` and, for
   PAMA, the closed form ``s* = pama_advantages(A)``;
8. :meth:`~MOPPOTrainer.update` - PPO epochs over mini-batches: the combiner's policy loss
   plus ``vf_coef`` times the clipped value losses (:mod:`.update`);
9. :func:`~.metrics.step_metrics` and :meth:`~MOPPOTrainer.log`.

Loading lives in :mod:`.models`, the update in :mod:`.update`, metrics in :mod:`.metrics`,
reporting in :mod:`.reporting` and checkpoints in :mod:`.state`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..faults import refuse_sharded_training, set_collective_timeout, stop_together
from .advantages import (
    AdaptiveKLController,
    MinNormAdvantages,
    gae,
    kl_penalized_rewards,
    normalize_advantages,
    scalarize_advantages,
)
from .batch import RolloutBatch
from .checkpoint import RESUME_MODES, clean_interrupted_writes, resolve_resume, resume_advice
from .config import SCALARISED_COMBINERS, WEIGHTED_COMBINERS, MOPPOConfig
from .data import Prompt, is_conversation, load_prompt_dataset, render_prompts, sample_prompts
from .evaluation import (
    BestCheckpoint,
    EvalResult,
    Generation,
    check_eval_setup,
    evaluate,
    held_out_reference,
    log_evaluation,
)
from .export import TrainingSummary, export_model
from .metrics import PhaseClock, step_metrics
from .models import (
    build_combiner,
    build_trainable,
    combiner_weights,
    context_length,
    eos_token_ids,
    generation_config,
    is_pama,
    load_policy_and_reference,
    load_tokenizer,
    uses_noon,
)
from .pama import check_pama_route, pama_targets
from .reporting import Reporter, append_jsonl
from .reward_models import RewardHead, accepts_tokens
from .rewards import parse_reward_spec, score_batch, unique_reward_names
from .rollout import Rollout, check_prompts_fit, generate_rollout, warn_processed_sampling
from .state import (
    CheckpointParts,
    Progress,
    drop_lines_after,
    load_training_state,
    save_checkpoint,
)
from .update import PPOSetup, check_accumulation, ppo_update
from .value_heads import PolicyWithValueHeads, response_forward
from .warmup import fit_value_heads, warmup_metrics, warmup_seed

__all__ = ["MOPPOTrainer", "RolloutBatch"]


class MOPPOTrainer:
    """Multi-objective PPO with a pluggable combiner (PAMA, PAMA-UB, MGDA-UB, MGDA, linear).

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
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        config.validate()
        self.config = config
        refuse_sharded_training(
            "MOPPOTrainer",
            "generation and the rollout's forward passes run the unwrapped policy, whose "
            "parameters these engines shard across the processes, and the gradient combiners "
            "(mgda, the torchjd zoo over parameters) differentiate the sharded parameters",
            "; to save memory use LoRA (use_lora), 4- or 8-bit base weights (load_in_4bit, "
            "load_in_8bit), gradient_checkpointing and micro_batch_size",
            distributed_type=getattr(accelerator, "distributed_type", None),
        )
        self.accelerator = accelerator or Accelerator(
            cpu=config.cpu, mixed_precision=config.mixed_precision
        )
        # Bounded: a process that hangs stops the others after this long, not gloo's 30 min.
        set_collective_timeout(config.collective_timeout)
        self.device = self.accelerator.device
        # The same seed on every process: value heads (and LoRA) start identical.
        set_seed(config.seed)

        if isinstance(prompts, Sequence) and not isinstance(prompts, str) and not len(prompts):
            raise ValueError("MOPPOTrainer needs a non-empty list of prompts")
        self.prompts: list[Prompt] = load_prompt_dataset(prompts)
        self.eval_prompts: list[Prompt] | None = (
            None if eval_prompts is None else load_prompt_dataset(eval_prompts)
        )
        self.reward_fns = [parse_reward_spec(r) if isinstance(r, str) else r for r in rewards]
        if not self.reward_fns:
            raise ValueError("MOPPOTrainer needs at least one reward function")
        for index, fn in enumerate(self.reward_fns):
            if not callable(fn):
                raise TypeError(f"reward {index} is not callable: {fn!r}")
            if isinstance(fn, RewardHead):
                fn.to(self.device).load()  # a missing model or bad label fails now
        self.n_objectives = len(self.reward_fns)
        check_eval_setup(config, self.eval_prompts, self.n_objectives)
        self.reward_names = unique_reward_names(self.reward_fns, reward_names)
        if combiner is None and config.combiner in WEIGHTED_COMBINERS:
            combiner_weights(config, self.n_objectives)  # one weight per reward, checked now

        if config.resume_from in RESUME_MODES:
            # A process killed while writing a checkpoint left a hidden temporary folder.
            if self.accelerator.is_main_process:
                clean_interrupted_writes(config.output_dir)
            self.accelerator.wait_for_everyone()
        self.resume_dir = resolve_resume(config.resume_from, config.output_dir)
        self.tokenizer = load_tokenizer(policy, tokenizer)
        self.policy_source = str(policy) if isinstance(policy, (str, Path)) else None
        if is_conversation(self.prompts[0]):
            render_prompts(self.tokenizer, self.prompts[:1])  # no chat template: fail now
        self._check_prompt_lengths(policy)
        model, self.ref_model = load_policy_and_reference(
            config, policy, self.resume_dir, self.device
        )
        self.model, self.optimizer = build_trainable(
            config, model, self.n_objectives, self.accelerator
        )
        if self.ref_model is not None:
            self.ref_model.to(self.device)

        self.combiner_given = combiner is not None  # it overrides config.combiner
        self.combiner = (
            combiner
            if combiner is not None
            else build_combiner(config, self.accelerator.num_processes, self.n_objectives)
        )
        self.use_pama_fast_path = is_pama(self.combiner) and config.pama_fast_path
        # MORLHF and GDPO scalarise the advantages (one PPO surrogate), not the losses.
        self.scalarized_reward = combiner is None and config.combiner in SCALARISED_COMBINERS
        self.noon = uses_noon(config)
        self.value_warmup_step = 0
        """Value warm-up steps done (``config.value_warmup_steps``; :mod:`.warmup`)."""
        self.value_warmup_history: list[dict[str, float]] = []
        check_pama_route(self.combiner, config.pama_fast_path)
        warn_processed_sampling(config)
        self.eos_token_ids = eos_token_ids(self.policy, self.tokenizer)
        check_accumulation(config, self.combiner, self.use_pama_fast_path)
        self.generation_config = self._generation_config(do_sample=True)
        self.kl_controller = AdaptiveKLController(
            config.kl_coef, config.target_kl, config.kl_horizon, config.adaptive_kl
        )
        self.global_step = 0
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

    # ------------------------------------------------------------------ setup

    def _check_prompt_lengths(self, policy: Any) -> None:
        """Every prompt, with its new tokens, fits the policy's context: checked from the
        policy's config before its weights are loaded."""
        context = context_length(policy)
        if context is None:
            return
        cfg = self.config
        pools = [("prompt", self.prompts, cfg.max_new_tokens)]
        if self.eval_prompts is not None:
            pools.append(
                ("eval prompt", self.eval_prompts, cfg.eval_max_new_tokens or cfg.max_new_tokens)
            )
        for what, prompts, new_tokens in pools:
            chat = is_conversation(prompts[0])
            check_prompts_fit(
                self.tokenizer,
                render_prompts(self.tokenizer, prompts),
                context,
                new_tokens,
                cfg.max_prompt_length,
                add_special_tokens=not chat,
                what=what,
            )

    def _generation_config(self, *, do_sample: bool, max_new_tokens: int | None = None) -> Any:
        eos = self.eos_token_ids
        kw = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, eos_token_ids=eos)
        return generation_config(self.config, self.tokenizer, **kw)

    @property
    def unwrapped(self) -> PolicyWithValueHeads:
        return self.accelerator.unwrap_model(self.model)

    @property
    def policy(self) -> nn.Module:
        """The policy (a ``PeftModel`` when ``use_lora``)."""
        return self.unwrapped.policy

    def reference_context(self) -> AbstractContextManager[Any]:
        """Context in which ``self.reference_model`` is pi_ref (LoRA: adapter off)."""
        if self.ref_model is None:
            return self.policy.disable_adapter()
        return nullcontext()

    @property
    def reference_model(self) -> nn.Module:
        return self.ref_model if self.ref_model is not None else self.policy

    # ------------------------------------------------------------ the step

    def step(self) -> dict[str, float]:
        """One step of Algorithm 1; returns its metrics (also kept in ``history``)."""
        from accelerate.utils import set_seed

        step = self.global_step + 1
        # Each step reseeds from (seed, step, process): a resumed run samples exactly
        # as an uninterrupted one, whatever happened before.
        set_seed(self.config.seed * 1_000_003 + step * 1_009 + self.accelerator.process_index)
        clock = PhaseClock(self.device)
        with clock.phase("step"):
            prompts = self.sample_prompts(step)
            with clock.phase("generate"):
                rollout = self.rollout(prompts)
            with clock.phase("score"):
                scores = self.score(rollout, step)
            with clock.phase("advantages"):
                batch = self.compute_advantages(rollout, scores, clock)
            with clock.phase("update"):
                update_stats = self.update(batch, step, clock)
        metrics = step_metrics(
            step, batch, update_stats, clock.timings,
            reward_names=self.reward_names, kl_coef=self.kl_controller.value,
            log_pama_weights=self.use_pama_fast_path, accelerator=self.accelerator,
        )  # fmt: skip
        # The controller sees the KL of the batch that was just trained on.
        self.kl_controller.update(
            metrics["kl"], self.config.batch_size * self.accelerator.num_processes
        )
        self.global_step = step
        return metrics

    def sample_prompts(self, step: int) -> list[Prompt]:
        """This process's prompts for ``step`` (1-based): a function of (seed, step) only
        (:func:`.data.sample_prompts`)."""
        acc = self.accelerator
        return sample_prompts(
            self.prompts, self.config.seed, step, self.config.batch_size,
            acc.process_index, acc.num_processes,
        )  # fmt: skip

    def rollout(self, prompts: list[Prompt]) -> Rollout:
        """Sample one response per prompt from the current policy.

        Conversations are rendered with the chat template (generation prompt added) and
        tokenized without adding special tokens again; ``Rollout.conversations`` keeps them.
        """
        self.model.eval()
        chat = bool(prompts) and is_conversation(prompts[0])
        with self.accelerator.autocast():
            rollout = generate_rollout(
                self.policy,
                self.tokenizer,
                render_prompts(self.tokenizer, prompts),
                self.generation_config,
                device=self.device,
                max_prompt_length=self.config.max_prompt_length,
                add_special_tokens=not chat,
            )
        if chat:
            rollout.conversations = list(prompts)
        return rollout

    def score(self, rollout: Rollout, step: int | None = None) -> torch.Tensor:
        """Scores ``[n, B]`` on the device (see :func:`.rewards.score_batch`)."""
        # Functions taking ``prompt_texts`` also get the text the policy saw, those naming
        # ``tokens`` (reward models) the rollout's ids: a reward model that shares the
        # policy's tokenizer reads them instead of re-tokenising the decoded text.
        tokens = None
        if any(accepts_tokens(fn) for fn in self.reward_fns):
            tokens = rollout.exchange_tokens(self.tokenizer)
        scores = score_batch(
            self.reward_fns,
            self.reward_names,
            rollout.conversations or rollout.prompts,
            rollout.responses,
            step=self.global_step + 1 if step is None else step,
            prompt_texts=rollout.prompts,
            tokens=tokens,
            phase=" (value warm-up)" if step == 0 else "",
        )
        if self.config.reward_clip is not None:
            scores = scores.clamp(-self.config.reward_clip, self.config.reward_clip)
        return scores.to(self.device)

    @torch.no_grad()
    def compute_advantages(
        self, rollout: Rollout, scores: torch.Tensor, clock: PhaseClock | None = None
    ) -> RolloutBatch:
        """Lines 4-7 of the step: forward pass, KL-penalised rewards, GAE, combination."""
        fwd = self.forward_rollout(rollout)
        rewards, kl = self.kl_penalized_rewards(scores, fwd, rollout.mask)
        raw, returns = self.per_objective_gae(rewards, fwd["values"], rollout.mask)
        return self.combine(rollout, scores, fwd, raw, returns, kl, clock)

    @torch.no_grad()
    def forward_rollout(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """Log-probs under the policy and the reference, and the n values, in chunks of
        ``forward_chunk_size`` sequences (default ``mini_batch_size``)."""
        self.model.eval()
        mb = self.config.forward_chunk_size or self.config.mini_batch_size
        parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "values": [], "ref_logprobs": []}
        temperature = self.config.temperature
        for lo in range(0, rollout.input_ids.shape[0], mb):
            ids = rollout.input_ids[lo : lo + mb]
            attn = rollout.attention_mask[lo : lo + mb]
            # The same autocast as the prepared model's forward in the update: ratios start at 1.
            with self.accelerator.autocast():
                out = self.unwrapped(ids, attn, rollout.response_start, temperature=temperature)
                with self.reference_context():
                    ref = response_forward(
                        self.reference_model,
                        ids,
                        attn,
                        rollout.response_start,
                        temperature=temperature,
                    )
            parts["logprobs"].append(out["logprobs"])
            parts["values"].append(out["values"])
            parts["ref_logprobs"].append(ref["logprobs"])
        return {
            "logprobs": torch.cat(parts["logprobs"], dim=0),
            "ref_logprobs": torch.cat(parts["ref_logprobs"], dim=0),
            "values": torch.cat(parts["values"], dim=1),
        }

    def kl_penalized_rewards(
        self, scores: torch.Tensor, fwd: dict[str, torch.Tensor], mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token rewards ``[n, B, T]`` (score at the last token, minus beta * KL) and KL."""
        return kl_penalized_rewards(
            scores, fwd["logprobs"], fwd["ref_logprobs"], mask, self.kl_controller.value
        )

    def per_objective_gae(
        self, rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw advantages and returns ``[n, B, T]``, one GAE per objective and value head."""
        return gae(rewards, values, mask, self.config.gamma, self.config.gae_lambda)

    def combine(
        self,
        rollout: Rollout,
        scores: torch.Tensor,
        fwd: dict[str, torch.Tensor],
        raw: torch.Tensor,
        returns: torch.Tensor,
        kl: torch.Tensor,
        clock: PhaseClock | None = None,
    ) -> RolloutBatch:
        """Normalisation, Noon clip and, for PAMA's fast path, the closed form ``s*``; for
        MORLHF and GDPO the scalarised advantage, for "pama_ub" the min-norm combination."""
        from paretoopt import noon_clip, pama_stats

        cfg = self.config
        mask = rollout.mask
        gather = self.accelerator.gather
        normalized = normalize_advantages(raw, mask, cfg.advantage_normalization, gather=gather)
        advantages = (noon_clip(normalized) if self.noon else normalized) * mask.unsqueeze(0)
        extra: dict[str, Any] = {}
        if self.scalarized_reward:
            # GDPO: each objective whitened on its own first (decoupled normalisation).
            per_objective = (
                normalize_advantages(raw, mask, "whiten", gather=gather)
                if cfg.combiner == "gdpo"
                else raw
            )
            extra["scalar_advantages"] = scalarize_advantages(
                per_objective,
                self.combiner.weights,
                mask,
                cfg.advantage_normalization,
                gather=gather,
            )
        if isinstance(self.combiner, MinNormAdvantages):
            # MGDA-UB at the ratio: the min-norm point of the (normalised, Noon-clipped)
            # advantage vectors of the global batch, then one standard PPO surrogate.
            with (clock or PhaseClock(self.device)).add("combine"):
                scalar, weights, value = self.combiner(advantages, mask, gather=gather)
            extra.update(
                scalar_advantages=scalar,
                scalar_weights=weights,
                combine_stats={"pama_ub/min_norm": value},
            )
        if is_pama(self.combiner):
            with (clock or PhaseClock(self.device)).add("combine"):
                granularity = getattr(self.combiner, "granularity", cfg.pama_granularity)
                s_star, weights = pama_targets(advantages, mask, granularity, noon=self.noon)
            # Diagnostics of the s* trained on; conflict from the normalised, unclipped signs.
            extra["pama_stats"] = pama_stats(normalized, mask, noon=self.noon, weights=weights)
            if self.use_pama_fast_path:
                extra.update(s_star=s_star, pama_weights=weights)
        return RolloutBatch(
            rollout,
            scores,
            logprobs=fwd["logprobs"],
            ref_logprobs=fwd["ref_logprobs"],
            values=fwd["values"],
            returns=returns,
            advantages=advantages,
            raw_advantages=raw,
            kl=kl,
            **extra,
        )

    def update(
        self, batch: RolloutBatch, step: int, clock: PhaseClock | dict[str, float] | None = None
    ) -> dict[str, float]:
        """PPO epochs over shuffled mini-batches (:func:`.update.ppo_update`)."""
        if not isinstance(clock, PhaseClock):
            clock = PhaseClock(self.device, clock)
        return ppo_update(self.ppo_setup(), batch, step, clock)

    def ppo_setup(self) -> PPOSetup:
        """The pieces the update works with (:class:`.update.PPOSetup`)."""
        return PPOSetup(
            self.config, self.model, self.policy, self.optimizer, self.accelerator, self.combiner,
            self.reward_names, self.noon, self.use_pama_fast_path,
        )  # fmt: skip

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
