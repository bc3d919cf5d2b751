"""Multi-objective PPO on transformers + peft + accelerate (PAMA's Algorithm 1).

One step, as small named methods (see docs/trainer.md for the maths):

1. :meth:`MOPPOTrainer.rollout`  - sample one response per prompt (batched, KV cache);
2. :meth:`MOPPOTrainer.score`    - n reward functions -> scores ``[n, B]``;
3. :meth:`MOPPOTrainer.compute_advantages` - log-probs of policy and reference, n
   values, per-token KL penalty, per-objective GAE, Noon clipping
   ``A = max(A', 0)``, and for PAMA the closed form ``s* = pama_advantages(A)``;
4. :meth:`MOPPOTrainer.update`   - PPO epochs over mini-batches: the combiner's
   policy loss plus ``vf_coef`` times the clipped value losses.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .advantages import (
    AdaptiveKLController,
    gae,
    kl_penalized_rewards,
    masked_mean,
    normalize_advantages,
)
from .checkpoint import (
    STATE_FILE,
    atomic_write_dir,
    capture_rng_state,
    find_latest_checkpoint,
    is_checkpoint,
    restore_rng_state,
)
from .config import MOPPOConfig
from .rewards import RewardModelFunction, parse_reward_spec, reward_name, score_batch
from .rollout import Rollout, generate_rollout
from .value_heads import PolicyWithValueHeads, ValueHeads, clipped_value_loss, response_forward

__all__ = ["MOPPOTrainer", "RolloutBatch"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CHECKPOINT_VERSION = 1


class RolloutBatch:
    """Everything the update needs, computed once per step without gradients.

    Tensors ``[B, T]`` (``logprobs``, ``ref_logprobs``, ``mask``, ``kl``) and
    ``[n, B, T]`` (``values``, ``returns``, ``advantages`` = Noon-clipped);
    ``s_star[B, T]`` and ``pama_weights[n, B, T]`` only with the PAMA fast path.
    """

    def __init__(self, rollout: Rollout, scores: torch.Tensor, **tensors: Any):
        self.rollout = rollout
        self.scores = scores
        self.logprobs: torch.Tensor = tensors["logprobs"]  # type: ignore[assignment]
        self.ref_logprobs: torch.Tensor = tensors["ref_logprobs"]  # type: ignore[assignment]
        self.values: torch.Tensor = tensors["values"]  # type: ignore[assignment]
        self.returns: torch.Tensor = tensors["returns"]  # type: ignore[assignment]
        self.advantages: torch.Tensor = tensors["advantages"]  # type: ignore[assignment]
        self.raw_advantages: torch.Tensor = tensors["raw_advantages"]  # type: ignore[assignment]
        self.kl: torch.Tensor = tensors["kl"]  # type: ignore[assignment]
        self.s_star = tensors.get("s_star")
        self.pama_weights = tensors.get("pama_weights")
        self.pama_stats: dict[str, float] = tensors.get("pama_stats") or {}

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.mask


class MOPPOTrainer:
    """Multi-objective PPO with a pluggable combiner (PAMA, MGDA-UB, MGDA, linear).

    Args:
        config: hyper-parameters (:class:`MOPPOConfig`).
        policy: a model name or path (loaded with ``AutoModelForCausalLM.from_pretrained``)
            or a ``PreTrainedModel`` (trained in place; the reference is a frozen copy).
        tokenizer: a tokenizer; loaded from ``policy`` when it is a name or path.
        prompts: the prompt pool; each step samples ``config.batch_size`` per process.
        rewards: n reward functions ``(prompts, responses) -> list[float]``,
            :class:`~paretoopt.integrations.hf.RewardModelFunction` instances, or specs such
            as ``"length"`` / ``"name=PATH:LABEL"`` (see ``parse_reward_spec``).
        reward_names: names for logging (default: the functions' names).
        combiner: a ``paretoopt`` combiner instance; overrides ``config.combiner``.
        callbacks: extra ``transformers.TrainerCallback`` objects (``on_log`` gets
            every step's metrics), besides those named in ``config.report_to``.
        accelerator: an ``accelerate.Accelerator``; one is made from the config if None.
    """

    def __init__(
        self,
        config: MOPPOConfig,
        policy: str | Path | nn.Module,
        tokenizer: Any = None,
        prompts: Sequence[str] = (),
        rewards: Sequence[Callable[..., Any] | str] = (),
        reward_names: Sequence[str] | None = None,
        combiner: Any = None,
        callbacks: Sequence[Any] = (),
        accelerator: Any = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        config.validate()
        self.config = config
        self.accelerator = accelerator or Accelerator(
            cpu=config.cpu, mixed_precision=config.mixed_precision
        )
        self.device = self.accelerator.device
        # The same seed on every process: value heads (and LoRA) start identical.
        set_seed(config.seed)

        self.prompts = [str(p) for p in prompts]
        if not self.prompts:
            raise ValueError("MOPPOTrainer needs a non-empty list of prompts")
        self.reward_fns = [parse_reward_spec(r) if isinstance(r, str) else r for r in rewards]
        if not self.reward_fns:
            raise ValueError("MOPPOTrainer needs at least one reward function")
        for index, fn in enumerate(self.reward_fns):
            if not callable(fn):
                raise TypeError(f"reward {index} is not callable: {fn!r}")
            if isinstance(fn, RewardModelFunction):
                fn.to(self.device)
        self.n_objectives = len(self.reward_fns)
        self.reward_names = self._resolve_names(reward_names)

        self.resume_dir = self._resolve_resume(config.resume_from)
        self.tokenizer = self._load_tokenizer(policy, tokenizer)
        model, self.ref_model = self._load_models(policy)
        hidden_size = _hidden_size(model)
        heads = ValueHeads(hidden_size, self.n_objectives)
        module = PolicyWithValueHeads(model, heads).to(self.device)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if config.use_lora and hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        trainable = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            trainable,
            lr=config.learning_rate,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
        self.model, self.optimizer = self.accelerator.prepare(module, optimizer)
        if self.ref_model is not None:
            self.ref_model.to(self.device)

        self.combiner = (
            combiner
            if combiner is not None
            else _make_combiner(config, self.accelerator.num_processes)
        )
        self.use_pama_fast_path = _is_pama(self.combiner) and config.pama_fast_path
        self.generation_config = self._generation_config(do_sample=True)
        self.kl_controller = AdaptiveKLController(
            config.kl_coef, config.target_kl, config.kl_horizon, config.adaptive_kl
        )
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        self.output_dir = Path(config.output_dir)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self._callbacks = list(callbacks)
        self._report: _Reporter | None = None
        if self.resume_dir is not None:
            self._load_training_state(self.resume_dir)

    # ------------------------------------------------------------------ setup

    def _resolve_names(self, names: Sequence[str] | None) -> list[str]:
        if names is None:
            names = [reward_name(fn, i) for i, fn in enumerate(self.reward_fns)]
        names = [str(n) for n in names]
        if len(names) != self.n_objectives:
            raise ValueError(f"{len(names)} reward_names for {self.n_objectives} reward functions")
        seen: dict[str, int] = {}
        unique = []
        for name in names:  # metric keys must not collide
            seen[name] = seen.get(name, 0) + 1
            unique.append(name if seen[name] == 1 else f"{name}_{seen[name] - 1}")
        return unique

    def _resolve_resume(self, resume_from: str | None) -> Path | None:
        if resume_from is None:
            return None
        if resume_from == "latest":
            found = find_latest_checkpoint(self.config.output_dir)
            if found is None:
                raise FileNotFoundError(
                    f"resume_from='latest' but no complete checkpoint-* in {self.config.output_dir}"
                )
            return found
        path = Path(resume_from)
        if not is_checkpoint(path):
            raise FileNotFoundError(f"{path} is not a checkpoint (no {STATE_FILE})")
        return path

    def _load_tokenizer(self, policy: Any, tokenizer: Any) -> Any:
        if tokenizer is None:
            if not isinstance(policy, (str, Path)):
                raise ValueError("pass tokenizer= when policy is a model instance")
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(policy), trust_remote_code=False)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError("the tokenizer has neither a pad token nor an EOS token")
            # Response masks come from the first EOS, so pad == eos is safe here.
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def _from_pretrained(self, path: str | Path) -> nn.Module:
        from transformers import AutoModelForCausalLM

        # Never run code shipped with a checkpoint.
        kwargs: dict[str, Any] = {"trust_remote_code": False}
        if self.config.dtype is not None:
            kwargs["dtype"] = "auto" if self.config.dtype == "auto" else _DTYPES[self.config.dtype]
        return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)

    def _load_models(self, policy: Any) -> tuple[nn.Module, nn.Module | None]:
        """Policy (trainable) and reference (frozen; None with LoRA: adapter disabled)."""
        cfg = self.config
        base = self._from_pretrained(policy) if isinstance(policy, (str, Path)) else policy
        if cfg.disable_dropout:
            _zero_dropout(base)
        if cfg.use_lora:
            from peft import LoraConfig, PeftModel, get_peft_model

            if isinstance(base, PeftModel):
                raise ValueError("pass the base model; the trainer adds the LoRA adapter itself")
            if self.resume_dir is not None:
                model = PeftModel.from_pretrained(
                    base, str(self.resume_dir / "policy"), is_trainable=True
                )
            else:
                from transformers.pytorch_utils import Conv1D

                lora = LoraConfig(
                    task_type="CAUSAL_LM",
                    r=cfg.lora_r,
                    lora_alpha=cfg.lora_alpha,
                    lora_dropout=cfg.lora_dropout,
                    target_modules=cfg.lora_target_modules,
                    # GPT-2-style Conv1D layers store weights transposed.
                    fan_in_fan_out=any(isinstance(m, Conv1D) for m in base.modules()),
                )
                model = get_peft_model(base, lora)
            return model, None
        if self.resume_dir is not None:
            # The reference stays the initial policy; the trained weights come from the checkpoint.
            ref = base
            model = self._from_pretrained(self.resume_dir / "policy")
            if cfg.disable_dropout:
                _zero_dropout(model)
        else:
            model = base
            ref = copy.deepcopy(base)
        ref.eval().requires_grad_(False)
        model.requires_grad_(True)
        return model, ref

    def _generation_config(self, *, do_sample: bool, max_new_tokens: int | None = None) -> Any:
        from transformers import GenerationConfig

        cfg = self.config
        eos = self.tokenizer.eos_token_id
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens or cfg.max_new_tokens,
            "min_new_tokens": cfg.min_new_tokens,
            "do_sample": do_sample,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": eos,
            "use_cache": True,
        }
        if do_sample:
            # top_k must be given explicitly: unset, generate() applies top_k=50.
            kwargs.update(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
        return GenerationConfig(**kwargs)

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

    def sample_prompts(self, step: int) -> list[str]:
        """This process's prompts for ``step`` (1-based): a function of (seed, step) only.

        Prompts are visited in a fresh random order each pass over the pool;
        process p takes its own slice of the global batch.
        """
        n_proc = self.accelerator.num_processes
        global_batch = self.config.batch_size * n_proc
        start = (step - 1) * global_batch + self.accelerator.process_index * self.config.batch_size
        pool = len(self.prompts)
        out = []
        perm_epoch, perm = -1, None
        for k in range(start, start + self.config.batch_size):
            epoch = k // pool
            if epoch != perm_epoch:
                gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
                perm, perm_epoch = torch.randperm(pool, generator=gen).tolist(), epoch
            out.append(self.prompts[perm[k % pool]])  # type: ignore[index]
        return out

    def rollout(self, prompts: list[str]) -> Rollout:
        """Sample one response per prompt from the current policy."""
        self.model.eval()
        with self.accelerator.autocast():
            return generate_rollout(
                self.policy,
                self.tokenizer,
                prompts,
                self.generation_config,
                device=self.device,
                max_prompt_length=self.config.max_prompt_length,
            )

    def score(self, rollout: Rollout, step: int | None = None) -> torch.Tensor:
        """Scores ``[n, B]`` on the device; see :func:`~paretoopt.integrations.hf.rewards.score_batch`."""
        scores = score_batch(
            self.reward_fns,
            self.reward_names,
            rollout.prompts,
            rollout.responses,
            step=self.global_step + 1 if step is None else step,
        )
        if self.config.reward_clip is not None:
            scores = scores.clamp(-self.config.reward_clip, self.config.reward_clip)
        return scores.to(self.device)

    @torch.no_grad()
    def forward_rollout(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """Log-probs under the policy and the reference, and the n values, in mini-batches."""
        self.model.eval()
        mb = self.config.mini_batch_size
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

    @torch.no_grad()
    def compute_advantages(
        self, rollout: Rollout, scores: torch.Tensor, timings: dict[str, float] | None = None
    ) -> RolloutBatch:
        """KL-penalised rewards, per-objective GAE, normalisation, Noon clip, PAMA's s*."""
        from paretoopt import noon_clip, pama_advantages, pama_stats

        cfg = self.config
        fwd = self.forward_rollout(rollout)
        mask = rollout.mask
        rewards, kl = kl_penalized_rewards(
            scores, fwd["logprobs"], fwd["ref_logprobs"], mask, self.kl_controller.value
        )
        raw, returns = gae(rewards, fwd["values"], mask, cfg.gamma, cfg.gae_lambda)
        normalized = normalize_advantages(
            raw, mask, cfg.advantage_normalization, gather=self.accelerator.gather
        )
        advantages = noon_clip(normalized) * mask.unsqueeze(0)
        extra: dict[str, Any] = {}
        if _is_pama(self.combiner):
            # Diagnostics on the normalised, not yet clipped advantages (conflict = signs differ).
            extra["pama_stats"] = pama_stats(normalized, mask, noon=True)
        if self.use_pama_fast_path:
            t0 = _now(self.device)
            s_star, weights = pama_advantages(
                advantages,
                mask,
                granularity=getattr(self.combiner, "granularity", cfg.pama_granularity),
                noon=True,
                return_weights=True,
            )
            if timings is not None:
                timings["time/combine"] = timings.get("time/combine", 0.0) + _now(self.device) - t0
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

    def policy_loss(
        self,
        out: dict[str, torch.Tensor],
        batch: RolloutBatch,
        idx: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
        """The combined policy loss of one mini-batch; its weights [n] and stats.

        PAMA fast path: the Noon PPO surrogate with advantage ``s*`` (one
        backward).  Otherwise the n per-objective Noon PPO losses go to the
        combiner, with ``shared=`` the last hidden states (MGDA-UB), the
        per-token log-probs (generic PAMA), or ``params=`` the trainable policy
        parameters (exact MGDA).
        """
        from paretoopt.losses import ppo_losses, ppo_losses_from_ratio, ppo_surrogate, ratio

        cfg = self.config
        mask = batch.mask[idx]
        anchor = (batch.ref_logprobs if cfg.ratio_to == "ref" else batch.logprobs)[idx]
        scale = self._dp_loss_scale(mask)
        if self.use_pama_fast_path:
            assert batch.s_star is not None
            loss = ppo_surrogate(
                out["logprobs"], anchor, batch.s_star[idx], mask, cliprange=cfg.cliprange
            )
            return loss * scale, None, {}
        advantages = batch.advantages[:, idx]
        requires = getattr(self.combiner, "requires", None)
        kwargs: dict[str, Any] = {}
        if _is_pama(self.combiner):
            # Generic PAMA: the per-token ratio u is the shared tensor (DESIGN section 2).
            u = ratio(out["logprobs"], anchor)
            losses = ppo_losses_from_ratio(u, advantages, mask, cliprange=cfg.cliprange, noon=True)
            kwargs["shared"] = u
        else:
            losses = ppo_losses(
                out["logprobs"], anchor, advantages, mask, cliprange=cfg.cliprange, noon=True
            )
        losses = losses * scale
        if requires == "shared" and "shared" not in kwargs:
            # MGDA-UB: the last hidden states; only response positions get nonzero gradients.
            kwargs["shared"] = out["hidden_full"]
        elif requires == "params":
            kwargs["params"] = [p for p in self.policy.parameters() if p.requires_grad]
        result = self.combiner(list(losses.unbind(0)), **kwargs)
        stats = {
            self._named_key(k): float(v)
            for k, v in (result.stats or {}).items()
            if _is_number(v) and not k.startswith("weight/")  # weights are logged by name
        }
        stats.update(
            {
                f"loss/objective/{self.reward_names[i]}": float(v)
                for i, v in enumerate(losses.detach())
            }
        )
        return result.loss, result.weights, stats

    def _dp_loss_scale(self, mask: torch.Tensor) -> float | torch.Tensor:
        """Under data parallelism, ``W c_r / sum_q c_q`` (c = valid tokens per process).

        Each loss is a mean over this process's tokens and DDP averages gradients
        over processes; the factor makes that average the global token mean, so W
        processes take the single-process step.  Collective: every process runs
        the same number of mini-batches.  1 on one process.
        """
        if self.accelerator.num_processes == 1:
            return 1.0
        from paretoopt.integrations.distributed import dp_loss_scale

        return dp_loss_scale(mask).to(torch.float32)

    def _named_key(self, key: str) -> str:
        """``"loss_weight/1"`` -> ``"loss_weight/<name of objective 1>"``."""
        head, sep, tail = key.rpartition("/")
        if sep and tail.isdigit() and int(tail) < self.n_objectives:
            return f"{head}/{self.reward_names[int(tail)]}"
        return key

    def update(self, batch: RolloutBatch, step: int, timings: dict[str, float]) -> dict[str, float]:
        """PPO epochs over shuffled mini-batches; returns averaged loss statistics."""
        cfg = self.config
        self.model.train()
        size = batch.mask.shape[0]
        gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
        sums: dict[str, float] = {}
        weight_sum = torch.zeros(self.n_objectives, dtype=torch.float64)
        n_updates = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(size, generator=gen).to(self.device)
            for lo in range(0, size, cfg.mini_batch_size):
                idx = order[lo : lo + cfg.mini_batch_size]
                out = self.model(
                    batch.rollout.input_ids[idx],
                    batch.rollout.attention_mask[idx],
                    batch.rollout.response_start,
                    temperature=cfg.temperature,
                    detach_value_input=cfg.detach_value_input,
                )
                t0 = _now(self.device)
                pg_loss, weights, stats = self.policy_loss(out, batch, idx)
                timings["time/combine"] = timings.get("time/combine", 0.0) + _now(self.device) - t0
                mask = batch.mask[idx]
                vf_loss = clipped_value_loss(
                    out["values"],
                    batch.values[:, idx],
                    batch.returns[:, idx],
                    mask,
                    cfg.cliprange_value,
                )
                loss = pg_loss + cfg.vf_coef * vf_loss * self._dp_loss_scale(mask)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss at step {step} (policy {float(pg_loss)}, "
                        f"value {float(vf_loss)})"
                    )
                self.accelerator.backward(loss)
                if cfg.max_grad_norm is not None:
                    norm = self.accelerator.clip_grad_norm_(
                        self.model.parameters(), cfg.max_grad_norm
                    )
                    stats["grad_norm"] = float(norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    anchor = (batch.ref_logprobs if cfg.ratio_to == "ref" else batch.logprobs)[idx]
                    ratio = torch.exp(out["logprobs"].detach() - anchor)
                    clipped = ((ratio - 1.0).abs() > cfg.cliprange).to(ratio.dtype)
                    stats["policy/ratio_mean"] = float(masked_mean(ratio, mask))
                    stats["policy/clipfrac"] = float(masked_mean(clipped, mask))
                stats["loss/policy"] = float(pg_loss.detach())
                stats["loss/value"] = float(vf_loss.detach())
                stats["loss/total"] = float(loss.detach())
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                if weights is not None:
                    weight_sum += weights.detach().to("cpu", torch.float64).reshape(-1)
                n_updates += 1
        out_stats = {k: v / n_updates for k, v in sums.items()}
        if not self.use_pama_fast_path:
            mean_w = weight_sum / n_updates
            for i, name in enumerate(self.reward_names):
                out_stats[f"weights/{name}"] = float(mean_w[i])
        return out_stats

    def step(self) -> dict[str, float]:
        """One full training step; returns its metrics (also logged)."""
        from accelerate.utils import set_seed

        step = self.global_step + 1
        # Each step reseeds from (seed, step, process): a resumed run samples exactly
        # as an uninterrupted one, whatever happened before.
        set_seed(self.config.seed * 1_000_003 + step * 1_009 + self.accelerator.process_index)
        timings: dict[str, float] = {}
        t_step = _now(self.device)
        prompts = self.sample_prompts(step)

        t0 = _now(self.device)
        rollout = self.rollout(prompts)
        timings["time/generate"] = _now(self.device) - t0

        t0 = _now(self.device)
        scores = self.score(rollout, step)
        timings["time/score"] = _now(self.device) - t0

        t0 = _now(self.device)
        batch = self.compute_advantages(rollout, scores, timings)
        timings["time/advantages"] = _now(self.device) - t0

        t0 = _now(self.device)
        update_stats = self.update(batch, step, timings)
        timings["time/update"] = _now(self.device) - t0
        timings["time/step"] = _now(self.device) - t_step

        metrics = self._step_metrics(step, batch, update_stats, timings)
        # The controller sees the KL of the batch that was just trained on.
        self.kl_controller.update(
            metrics["kl"], self.config.batch_size * self.accelerator.num_processes
        )
        self.global_step = step
        return metrics

    def _step_metrics(
        self,
        step: int,
        batch: RolloutBatch,
        update_stats: dict[str, float],
        timings: dict[str, float],
    ) -> dict[str, float]:
        """Per-step metrics, averaged over all processes."""
        gather = self.accelerator.gather
        mask = batch.mask.to(torch.float32)
        lengths = mask.sum(dim=1)
        seq_kl = batch.kl.sum(dim=1)
        per_sample = torch.cat([batch.scores.T, seq_kl[:, None], lengths[:, None]], dim=1)
        per_sample = gather(per_sample.float().contiguous())
        metrics: dict[str, float] = {"step": float(step)}
        for i, name in enumerate(self.reward_names):
            metrics[f"reward/{name}"] = float(per_sample[:, i].mean())
        metrics["kl"] = float(per_sample[:, self.n_objectives].mean())
        metrics["kl_coef"] = self.kl_controller.value
        metrics["response_length"] = float(per_sample[:, self.n_objectives + 1].mean())
        # Token-level metrics: means over this process's valid tokens ...
        token_means: dict[str, float] = {}
        for i, name in enumerate(self.reward_names):
            token_means[f"advantage/{name}"] = float(
                masked_mean(batch.raw_advantages[i], batch.mask)
            )
        stats = batch.pama_stats
        for i, name in enumerate(self.reward_names):
            rate = stats.get(f"binding_rate/{i}")
            if rate is not None:
                token_means[f"binding_rate/{name}"] = float(rate)
        for key in ("conflict_rate", "zero_rate", "mean_s_star"):
            if key in stats:
                token_means[key] = float(stats[key])
        if self.use_pama_fast_path:
            assert batch.pama_weights is not None
            for i, name in enumerate(self.reward_names):
                w = batch.pama_weights[i]
                if w.shape == batch.mask.shape:
                    token_means[f"weights/{name}"] = float(masked_mean(w.float(), batch.mask))
                else:
                    token_means[f"weights/{name}"] = float(w.float().mean())
        if self.accelerator.num_processes > 1 and token_means:
            # ... and over all processes, each weighted by its number of valid tokens.
            keys = sorted(token_means)
            count = float(batch.mask.sum())
            local = torch.tensor(
                [[token_means[k] * count for k in keys] + [count]],
                dtype=torch.float64,
                device=self.device,
            )
            total = gather(local).sum(dim=0)
            token_means = {
                k: float(total[j] / total[-1].clamp_min(1.0)) for j, k in enumerate(keys)
            }
        metrics.update(token_means)
        # Loss statistics are per process; average them across processes.
        keys = sorted(update_stats)
        if keys:
            local = torch.tensor([[update_stats[k] for k in keys]], device=self.device)
            averaged = gather(local).mean(dim=0).tolist()
            metrics.update(dict(zip(keys, averaged, strict=True)))
        metrics.update(timings)
        return metrics

    # -------------------------------------------------------------- training

    def train(self) -> list[dict[str, float]]:
        """Run until ``config.steps``; returns the metric history (one dict per step)."""
        cfg = self.config
        is_main = self.accelerator.is_main_process
        if is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self._report = _Reporter(self, self._callbacks) if is_main else None
        if self._report is not None:
            self._report.on_train_begin()
        bar = None
        if cfg.progress and is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.global_step, desc="moppo", dynamic_ncols=True)
        try:
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
                if cfg.save_every and self.global_step % cfg.save_every == 0:
                    self.save_checkpoint()
            if cfg.save_final and not (cfg.save_every and self.global_step % cfg.save_every == 0):
                self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            if self._report is not None:
                self._report.on_train_end()
        return self.history

    def log(self, metrics: dict[str, float]) -> None:
        self.history.append(metrics)
        if not self.accelerator.is_main_process:
            return
        if self.config.log_jsonl:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_path, "a") as handle:
                handle.write(json.dumps(metrics) + "\n")
                handle.flush()
        if self._report is not None:
            self._report.on_log(metrics)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int | None = None,
        do_sample: bool = False,
    ) -> list[str]:
        """Responses only (no prompt), greedy by default; in batches of ``batch_size``."""
        config = self._generation_config(do_sample=do_sample, max_new_tokens=max_new_tokens)
        self.model.eval()
        texts: list[str] = []
        prompts = list(prompts)
        for lo in range(0, len(prompts), self.config.batch_size):
            with self.accelerator.autocast():
                roll = generate_rollout(
                    self.policy,
                    self.tokenizer,
                    prompts[lo : lo + self.config.batch_size],
                    config,
                    device=self.device,
                    max_prompt_length=self.config.max_prompt_length,
                )
            texts.extend(roll.responses)
        return texts

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self, directory: str | Path | None = None) -> Path:
        """Save policy/adapter, value heads, optimizer, RNG and trainer state atomically."""
        from safetensors.torch import save_file

        target = (
            Path(directory) if directory else self.output_dir / f"checkpoint-{self.global_step}"
        )
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            unwrapped = self.unwrapped

            def write(tmp: Path) -> None:
                unwrapped.policy.save_pretrained(str(tmp / "policy"))
                self.tokenizer.save_pretrained(str(tmp / "policy"))
                heads = {
                    k: v.detach().contiguous().cpu()
                    for k, v in unwrapped.value_heads.state_dict().items()
                }
                save_file(heads, str(tmp / "value_heads.safetensors"))
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(capture_rng_state(), tmp / "rng_state.pt")
                state = {
                    "version": _CHECKPOINT_VERSION,
                    "step": self.global_step,
                    "kl_controller": self.kl_controller.state_dict(),
                    "reward_names": self.reward_names,
                    "n_objectives": self.n_objectives,
                    "use_lora": self.config.use_lora,
                    "config": self.config.to_dict(),
                    "history": self.history,
                }
                (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))

            atomic_write_dir(target, write)
        self.accelerator.wait_for_everyone()
        return target

    def _load_training_state(self, folder: Path) -> None:
        from safetensors.torch import load_file

        state = json.loads((folder / STATE_FILE).read_text())
        if state.get("n_objectives") != self.n_objectives:
            raise ValueError(
                f"checkpoint {folder} has {state.get('n_objectives')} objectives, "
                f"this trainer has {self.n_objectives}"
            )
        if bool(state.get("use_lora")) != self.config.use_lora:
            raise ValueError(f"checkpoint {folder} use_lora={state.get('use_lora')} differs")
        heads = load_file(str(folder / "value_heads.safetensors"), device=str(self.device))
        self.unwrapped.value_heads.load_state_dict(heads)
        optim_state = torch.load(
            folder / "optimizer.pt", map_location=self.device, weights_only=True
        )
        self.optimizer.load_state_dict(optim_state)
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.global_step = int(state["step"])
        self.history = list(state.get("history", []))
        rng_path = folder / "rng_state.pt"
        if rng_path.is_file():
            restore_rng_state(torch.load(rng_path, weights_only=True))
        if self.accelerator.is_main_process and self.metrics_path.is_file():
            # Lines from steps after the checkpoint belong to a run that is being redone.
            kept = [
                line
                for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= self.global_step
            ]
            tmp = self.metrics_path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.metrics_path)


class _Reporter:
    """Feeds step metrics to transformers reporting callbacks (``report_to``)."""

    def __init__(self, trainer: MOPPOTrainer, extra: Sequence[Any]) -> None:
        self.trainer = trainer
        self.callbacks: list[Any] = list(extra)
        self.args = self.state = self.control = None
        report_to = list(trainer.config.report_to)
        if not report_to and not self.callbacks:
            return
        from transformers import TrainerControl, TrainerState, TrainingArguments
        from transformers.integrations import get_reporting_integration_callbacks

        for cls in get_reporting_integration_callbacks(report_to):
            self.callbacks.append(cls())
        self.args = TrainingArguments(
            output_dir=str(trainer.output_dir),
            report_to=report_to or "none",
            logging_steps=1,
            max_steps=trainer.config.steps,
            seed=trainer.config.seed,
            learning_rate=trainer.config.learning_rate,
            use_cpu=trainer.device.type == "cpu",
            # Reuse the trainer's accelerate state; by default TrainingArguments resets it.
            accelerator_config={"use_configured_state": True},
        )
        self.state = TrainerState(max_steps=trainer.config.steps, global_step=trainer.global_step)
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
                model=self.trainer.policy,
                processing_class=self.trainer.tokenizer,
            )

    def on_log(self, metrics: dict[str, float]) -> None:
        if not self.callbacks:
            return
        self.state.global_step = int(metrics["step"])
        logs = {k: v for k, v in metrics.items() if k != "step"}
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._call("on_log", logs=logs, model=self.trainer.policy)

    def on_train_end(self) -> None:
        if self.callbacks:
            self._call("on_train_end", model=self.trainer.policy)


# ------------------------------------------------------------------ helpers


def _now(device: torch.device) -> float:
    # Kernels are asynchronous on GPUs: synchronise so each phase is charged its own time.
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _is_pama(combiner: Any) -> bool:
    from paretoopt import PAMA

    return isinstance(combiner, PAMA)


def _make_combiner(config: MOPPOConfig, num_processes: int = 1) -> Any:
    from paretoopt import make_combiner

    kwargs = dict(config.combiner_kwargs)
    if config.combiner == "pama":
        kwargs.setdefault("granularity", config.pama_granularity)
    if config.combiner in ("mgda", "mgda_ub") and num_processes > 1:
        # MGDA's Gram matrix does not decompose over processes: reduce it globally.
        from paretoopt.integrations.distributed import DistributedMGDA

        mode = "params" if config.combiner == "mgda" else "shared"
        return DistributedMGDA(mode=kwargs.pop("mode", mode), **kwargs)
    return make_combiner(config.combiner, **kwargs)


def _hidden_size(model: nn.Module) -> int:
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if size is None:
        raise ValueError("cannot find the policy's hidden size in its config")
    return int(size)


def _zero_dropout(model: nn.Module) -> None:
    """Dropout off in the base model: rollout and update log-probs then agree."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for key in ("attn_pdrop", "resid_pdrop", "embd_pdrop", "dropout", "attention_dropout"):
        if config is not None and hasattr(config, key):
            setattr(config, key, 0.0)
