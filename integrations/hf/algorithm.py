"""The step of multi-objective PPO on transformers + peft + accelerate: PAMA's Algorithm 1.

:meth:`MOPPOAlgorithm.step` is the algorithm, one named call per line (docs/trainer.md has the
mathematics):

1. :meth:`~MOPPOAlgorithm.sample_prompts` - this step's prompts, a function of (seed, step);
2. :meth:`~MOPPOAlgorithm.rollout` - one sampled response per prompt (batched, KV cache);
3. :meth:`~MOPPOAlgorithm.score` - n reward functions -> scores ``[n, B]`` (a reward model
   sharing the policy's tokenizer reads the rollout's ids, not re-tokenised text);
4. :meth:`~MOPPOAlgorithm.forward_rollout` - log-probs of policy and reference, n values;
5. :meth:`~MOPPOAlgorithm.kl_penalized_rewards` - per-token rewards with the KL penalty;
6. :meth:`~MOPPOAlgorithm.per_objective_gae` - n advantages and returns (GAE);
7. :meth:`~MOPPOAlgorithm.combine` - normalisation, Noon clip ``A = max(A', 0)`` and, for
   PAMA, the closed form ``s* = pama_advantages(A)``;
8. :meth:`~MOPPOAlgorithm.update` - PPO epochs over mini-batches: the combiner's policy loss
   plus ``vf_coef`` times the clipped value losses (:mod:`.update`);
9. :func:`~.metrics.step_metrics`; the trainer logs them (:meth:`.trainer.MOPPOTrainer.log`).

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

from ..faults import refuse_sharded_training, set_collective_timeout
from .advantages import (
    AdaptiveKLController,
    gae,
    kl_penalized_rewards,
)
from .batch import RolloutBatch
from .checkpoint import RESUME_MODES, clean_interrupted_writes, resolve_resume
from .combine import combine_advantages
from .config import SCALARISED_COMBINERS, WEIGHTED_COMBINERS, MOPPOConfig
from .data import Prompt, is_conversation, load_prompt_dataset, render_prompts, sample_prompts
from .evaluation import (
    check_eval_setup,
)
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
from .pama import check_pama_route
from .reward_models import RewardHead, accepts_tokens
from .rewards import parse_reward_spec, score_batch, unique_reward_names
from .rollout import Rollout, check_prompt_pools, generate_rollout, warn_processed_sampling
from .update import PPOSetup, check_accumulation, ppo_update
from .value_heads import PolicyWithValueHeads, forward_rollout

__all__ = ["MOPPOAlgorithm"]


class MOPPOAlgorithm:
    """One step of multi-objective PPO with a pluggable combiner (PAMA, PAMA-UB, MGDA-UB,
    MGDA, linear): the models, rewards and combiner, and :meth:`step`.

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
        check_pama_route(self.combiner, config.pama_fast_path)
        warn_processed_sampling(config)
        self.eos_token_ids = eos_token_ids(self.policy, self.tokenizer)
        check_accumulation(config, self.combiner, self.use_pama_fast_path)
        self.generation_config = self._generation_config(do_sample=True)
        self.kl_controller = AdaptiveKLController(
            config.kl_coef, config.target_kl, config.kl_horizon, config.adaptive_kl
        )
        self.global_step = 0

    # ------------------------------------------------------------------ setup

    def _check_prompt_lengths(self, policy: Any) -> None:
        """Every prompt, with its new tokens, fits the policy's context: checked from the
        policy's config before its weights are loaded (:func:`.rollout.check_prompt_pools`)."""
        cfg = self.config
        pools = [("prompt", self.prompts, cfg.max_new_tokens)]
        if self.eval_prompts is not None:
            new_tokens = cfg.eval_max_new_tokens or cfg.max_new_tokens
            pools.append(("eval prompt", self.eval_prompts, new_tokens))
        check_prompt_pools(self.tokenizer, context_length(policy), pools, cfg.max_prompt_length)

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
        ``forward_chunk_size`` sequences (default ``mini_batch_size``;
        :func:`.value_heads.forward_rollout`)."""
        self.model.eval()
        return forward_rollout(
            self.unwrapped, self.reference_model, self.reference_context, rollout,
            chunk_size=self.config.forward_chunk_size or self.config.mini_batch_size,
            temperature=self.config.temperature, accelerator=self.accelerator,
        )  # fmt: skip

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
        """The advantages the update trains on (:func:`.combine.combine_advantages`)."""
        return combine_advantages(
            rollout, scores, fwd, raw, returns, kl, config=self.config, combiner=self.combiner,
            accelerator=self.accelerator, noon=self.noon, scalarized=self.scalarized_reward,
            pama_fast_path=self.use_pama_fast_path, clock=clock,
        )  # fmt: skip

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
