"""Configuration of the multi-objective PPO trainer.

Plain, serialisable data: every field has a documented default, the paper's
value where the paper states one (He & Maghsudi 2025, arXiv 2508.07768).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from paretoopt.zoo import ZOO_NAMES

COMBINER_NAMES = (
    "pama", "pama_ub", "morlhf", "gdpo", "linear_noon", "mgda_ub", "mgda", "linear", *ZOO_NAMES
)  # fmt: skip
"""Our combiners, then the torchjd zoo by torchjd's class names in lower case (``upgrad``,
``cagrad``, ``nashmtl``, ...: :data:`paretoopt.zoo.ZOO`)."""
GRADIENT_COMBINERS = ("mgda", "mgda_ub", *ZOO_NAMES)
"""Combiners whose weights come from the mini-batch's per-objective gradients."""
WEIGHTED_COMBINERS = ("morlhf", "gdpo", "linear_noon", "linear")
"""Combiners with fixed weights (``combiner_weights``; default uniform 1/n)."""
SCALARISED_COMBINERS = ("morlhf", "gdpo")
"""Combiners that scalarise the advantages into one standard PPO surrogate (never Noon)."""
MGDA_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


@dataclass
class MOPPOConfig:
    """Hyper-parameters of :class:`~paretoopt.integrations.hf.MOPPOTrainer`.

    Optimisation (paper defaults): ``learning_rate=1e-5``, ``kl_coef=0.2``,
    ``cliprange=0.2``, ``gae_lambda=0.95``, ``gamma=1.0``, adaptive KL toward
    ``target_kl``.  LoRA (the paper's 7B run): ``lora_r=64``,
    ``lora_alpha=128``, ``lora_dropout=0.05``.

    Per step: ``batch_size`` prompts are sampled (per process), one response
    each; then ``ppo_epochs`` passes over the batch in mini-batches of
    ``mini_batch_size``.
    """

    # -- combiner ---------------------------------------------------------
    combiner: str = "pama"
    """"pama" | "pama_ub" | "morlhf" | "gdpo" | "linear_noon" | "mgda_ub" | "mgda" | "linear"; or
    give the trainer a combiner instance, which takes precedence (docs/trainer.md, "PPO set-up").

    * "pama_ub": MGDA-UB taken at the PPO ratio. Each objective's PPO loss at ratio 1 has
      gradient ``-A_i / N`` with respect to the per-token ratio, so the min-norm point of those
      gradients is that of the n advantage vectors ``A_i`` over the batch (normalised per
      ``advantage_normalization``, Noon-clipped per ``noon``, valid tokens of every process):
      ``c = argmin_{c in simplex} c^T G c`` with the Gram ``G_ij = sum_t A_it A_jt``, solved
      once per batch in float64, then one standard PPO surrogate on ``A = sum_i c_i A_i``.
      No normalisation of the vectors: the objective with the smaller advantages weighs more,
      as at MGDA's min-norm point. Cost O(n^2 N) for the Gram, one backward; the weights are
      chosen per batch, so ``combiner_weights`` and ``combiner_kwargs`` are refused.

    * "morlhf": PPO on the scalarised reward ``sum_i w_i r_i`` (Wu et al. 2023, Rame et
      al. 2023): one advantage ``A = sum_i w_i A'_i`` per token, standard PPO clipping, no Noon.
    * "gdpo": each objective's GAE advantages whitened on their own over the batch (valid
      tokens of every process), then ``A = sum_i w_i whiten(A'_i)``, standard PPO clipping,
      no Noon: the decoupled normalisation of GDPO, TRL's
      ``multi_objective_aggregation="normalize_then_sum"`` and verl's ``adv_estimator=gdpo``,
      in PPO form (docs/trainer.md).
    * "linear_noon": ``sum_i w_i L_i`` of per-objective Noon PPO losses (Noon always).
    * "linear": ``sum_i w_i L_i`` of per-objective PPO losses, Noon per ``noon``.
    * a torchjd zoo name ("upgrad", "cagrad", "pcgrad", "nashmtl", "dualproj", "imtlg",
      "alignedmtl", "gradvac", "fairgrad", "config", ...): that torchjd aggregator on the n
      per-objective PPO losses (Noon per ``noon``), by default over the policy's last hidden
      states as "mgda_ub" (``combiner_kwargs={"mode": "params"}``: over the trainable
      parameters, as "mgda"); other ``combiner_kwargs`` go to the torchjd class (docs/api.md,
      "The torchjd zoo"). A stateful one (GradVac, PCD, Nash-MTL) is saved in each checkpoint.
    """
    combiner_kwargs: dict[str, Any] = field(default_factory=dict)
    """Passed to ``paretoopt.make_combiner``, e.g. ``{"weights": [0.5, 0.5]}``."""
    combiner_weights: list[float] | None = None
    """Fixed weights of "morlhf" / "gdpo" / "linear_noon" / "linear", one per reward, checked
    against the number of rewards when the trainer is built; None: uniform 1/n."""
    noon: bool = True
    """Noon clipping ``A = max(A', 0)`` for PAMA, "pama_ub" and the per-objective-loss combiners
    ("linear", "mgda_ub", "mgda"). "linear_noon" always clips, "morlhf" and "gdpo" never. With
    ``combiner="pama", noon=False`` PAMA uses the closed form on unclipped advantages
    (``s* = relu(min A) - relu(-max A)``) and the standard PPO surrogate."""
    mgda_normalization: Literal["none", "l2", "loss", "loss+"] = "l2"
    """Gradient normalisation of "mgda" / "mgda_ub" (Sener & Koltun's code); "none" is an
    ablation. "loss" / "loss+" divide by the loss and need positive losses: refused here,
    since a PPO policy loss has no sign (with Noon it is always <= 0)."""
    mgda_rescale: bool = False
    """False (the authors' code): train on ``sum_i c_i L_i``, simplex weights on the raw
    losses, so the policy loss keeps the scale of one PPO loss. True: ``sum_i (c_i/nu_i)
    L_i``, the min-norm point of the normalised gradients (``paretoopt.MGDA(rescale=True)``)."""
    pama_granularity: Literal["token", "sample", "batch"] = "token"
    """Where PAMA's closed form is solved: per token (the paper), per sequence, per batch."""
    pama_fast_path: bool = True
    """PAMA via ``s* = pama_advantages(A)`` in one surrogate (True), or the generic
    combiner route with the per-token ratio as the shared tensor (False); same update.
    Granularity "batch" needs True (the generic route sees one mini-batch at a time)."""

    # -- schedule ----------------------------------------------------------
    steps: int = 20
    value_warmup_steps: int = 0
    """Value-only steps on rollouts of the starting policy before the first policy update
    (the policy is untouched); counted apart from ``steps``."""
    batch_size: int = 8
    mini_batch_size: int = 4
    ppo_epochs: int = 2
    max_new_tokens: int = 16
    min_new_tokens: int = 0
    max_prompt_length: int | None = None
    """Prompts longer than this many tokens are truncated from the left; reward functions
    get the prompt as truncated (what the policy saw)."""

    # -- optimisation -----------------------------------------------------
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    """Gradient-norm clip on the total loss (a choice; None disables)."""

    # -- PPO / KL -----------------------------------------------------------
    kl_coef: float = 0.2
    adaptive_kl: bool = True
    target_kl: float = 3.0
    """Target of the adaptive controller: mean per-sequence KL (sum over tokens); 3 as in
    the paper's hyper-parameter table."""
    kl_horizon: int = 10000
    """Horizon of the adaptive controller (Ziegler et al. 2019)."""
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    gae_lambda: float = 0.95
    ratio_to: Literal["ref", "old"] = "old"
    """Importance ratio's denominator: the rollout policy (``"old"``, the default: ordinary
    PPO and TRL's PPO trainer, whose constants the paper uses) or the frozen reference policy
    (``"ref"``, as the paper writes it). The default comes from the study's tuning seeds,
    where ``"old"`` scored above ``"ref"`` in every cell (docs/study.md); with ``"ref"`` and
    Noon clipping the ratio drifts far above 1 + eps and most tokens stop carrying gradient."""
    advantage_normalization: Literal["none", "scale", "whiten"] = "none"
    """Per objective, over all valid tokens of all processes: "none" (the
    paper), "scale" (divide by the std; keeps signs, so Noon clipping zeroes the same
    entries, but PAMA's min_i A_i then compares objectives in units of their own std:
    which objective binds, and so the update, changes), "whiten" (subtract the mean too).
    Without normalisation, PAMA's binding objective depends on the rewards' scales."""
    reward_clip: float | None = None
    """Clip each objective's score to [-reward_clip, reward_clip] (None: off)."""
    detach_value_input: bool = False
    """Stop value-loss gradients at the policy's hidden states (heads train alone)."""

    # -- model ------------------------------------------------------------
    use_lora: bool = False
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None
    """None: peft's default for the architecture."""
    dtype: str | None = None
    """"float32" | "bfloat16" | "float16" | None (the checkpoint's): passed as ``dtype=``."""
    disable_dropout: bool = True
    """Zero the base model's dropout (not LoRA's) so log-probs of the rollout and
    of the update agree."""
    gradient_checkpointing: bool = False
    load_in_8bit: bool = False
    """Base weights in 8 bits (bitsandbytes, the ``quant`` extra, a CUDA GPU); needs LoRA."""
    load_in_4bit: bool = False
    """Base weights in 4 bits (QLoRA); needs LoRA, bitsandbytes and a CUDA GPU."""
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_compute_dtype: str = "bfloat16"
    bnb_4bit_use_double_quant: bool = True

    # -- memory -------------------------------------------------------------
    forward_chunk_size: int | None = None
    """Sequences per forward pass when computing the rollout's log-probs and values
    (policy, reference, value heads); None: ``mini_batch_size``."""
    micro_batch_size: int | None = None
    """Gradient accumulation: each mini-batch is run in micro-batches of this many sequences
    whose token-weighted losses add up to the mini-batch's (the same update, less memory);
    None: the whole mini-batch at once."""

    # -- held-out evaluation and the shipped model ------------------------------
    eval_every: int = 0
    """Evaluate on the trainer's ``eval_prompts`` every this many steps (and at the end);
    0: only at the end (when there are eval prompts)."""
    eval_max_new_tokens: int | None = None
    """Response length at evaluation (None: ``max_new_tokens``); greedy decoding."""
    eval_samples: int = 4
    """Rows of the samples table logged with each evaluation."""
    eval_reference_point: list[float] | None = None
    """Hypervolume reference point, one value per objective; None: each objective's worst
    response score in the first evaluation."""
    best_criterion: str | dict[str, float] | None = None
    """Keep ``OUTPUT_DIR/best``, the checkpoint with the best evaluation by this criterion:
    "hypervolume", "hypervolume_per_response", an objective's name, or weights
    ``{"name": w}`` of a weighted mean reward; None: no best checkpoint."""
    export_dir: str | None = None
    """Write the shipped model here at the end of training (:mod:`.export`); None: don't."""
    export_merged: bool = False
    """Also export the LoRA adapter merged into the base weights."""

    # -- sampling -------------------------------------------------------------
    temperature: float = 1.0
    top_k: int = 0
    """0 disables top-k (pure sampling from the policy, as PPO assumes)."""
    top_p: float = 1.0

    # -- run ----------------------------------------------------------------
    seed: int = 0
    output_dir: str = "runs/moppo"
    save_every: int = 0
    """Save a checkpoint every this many steps (0: only at the end, if save_final)."""
    save_final: bool = True
    resume_from: str | None = None
    """A checkpoint folder; "latest": the newest complete ``checkpoint-*`` in output_dir (an
    error if there is none); "auto": the same, or a fresh start when there is none (for jobs
    a scheduler restarts after preemption)."""
    log_jsonl: bool = True
    report_to: list[str] = field(default_factory=list)
    """transformers reporting integrations, e.g. ["tensorboard"]; empty: none."""
    progress: bool = True
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    cpu: bool = False
    """Force CPU even if an accelerator is present."""
    collective_timeout: float | None = 600.0
    """Seconds a collective operation (DDP's gradient all-reduce, a barrier) waits for the
    other processes before it raises, set on the process group whoever started it; None keeps
    the group's own (30 minutes for gloo, 10 for NCCL). A process that raises or is killed
    stops the others at once; this bounds the wait for one that hangs. The longest wait of a
    healthy run is the others waiting while process 0 writes a checkpoint: raise it for
    checkpoints that take minutes to write (docs/reliability.md, "Distributed faults")."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; errors name the field and the expected value."""

        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MOPPOConfig.{name} must be a positive integer, got {value!r}")

        for name in ("steps", "batch_size", "mini_batch_size", "ppo_epochs", "max_new_tokens"):
            positive_int(name)
        if self.mini_batch_size > self.batch_size:
            raise ValueError(
                f"MOPPOConfig.mini_batch_size ({self.mini_batch_size}) must not exceed "
                f"batch_size ({self.batch_size})"
            )
        if self.combiner not in COMBINER_NAMES:
            raise ValueError(
                f"MOPPOConfig.combiner must be one of {COMBINER_NAMES}, got {self.combiner!r}"
            )
        for name in ("learning_rate", "cliprange", "cliprange_value", "temperature", "target_kl"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"MOPPOConfig.{name} must be a finite number > 0, got {value!r}")
        for name in ("kl_coef", "vf_coef", "weight_decay"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"MOPPOConfig.{name} must be a finite number >= 0, got {value!r}")
        for name in ("gamma", "gae_lambda", "top_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"MOPPOConfig.{name} must lie in [0, 1], got {value!r}")
        self._validate_ppo_setup()
        if self.ratio_to not in ("ref", "old"):
            raise ValueError(f"MOPPOConfig.ratio_to must be 'ref' or 'old', got {self.ratio_to!r}")
        if self.pama_granularity not in ("token", "sample", "batch"):
            raise ValueError(
                "MOPPOConfig.pama_granularity must be 'token', 'sample' or 'batch', "
                f"got {self.pama_granularity!r}"
            )
        if self.advantage_normalization not in ("none", "scale", "whiten"):
            raise ValueError(
                "MOPPOConfig.advantage_normalization must be 'none', 'scale' or 'whiten', "
                f"got {self.advantage_normalization!r}"
            )
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(
                "MOPPOConfig.mixed_precision must be 'no', 'fp16' or 'bf16', "
                f"got {self.mixed_precision!r}"
            )
        if self.dtype not in (None, "auto", "float32", "bfloat16", "float16"):
            raise ValueError(
                "MOPPOConfig.dtype must be None, 'auto', 'float32', 'bfloat16' or 'float16', "
                f"got {self.dtype!r}"
            )
        if self.top_k < 0 or self.min_new_tokens < 0 or self.save_every < 0:
            raise ValueError("MOPPOConfig.top_k, min_new_tokens and save_every must be >= 0")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError("MOPPOConfig.min_new_tokens must not exceed max_new_tokens")
        timeout = self.collective_timeout
        if timeout is not None and not (
            isinstance(timeout, (int, float))
            and not isinstance(timeout, bool)
            and math.isfinite(timeout)
            and timeout > 0
        ):
            raise ValueError(
                "MOPPOConfig.collective_timeout must be a finite number of seconds > 0 or None, "
                f"got {timeout!r}"
            )
        if self.reward_clip is not None and not self.reward_clip > 0:
            raise ValueError(f"MOPPOConfig.reward_clip must be > 0 or None, got {self.reward_clip}")
        if isinstance(self.report_to, str):
            self.report_to = [] if self.report_to == "none" else [self.report_to]
        if self.use_lora and (self.lora_r < 1 or self.lora_alpha <= 0):
            raise ValueError("MOPPOConfig.lora_r must be >= 1 and lora_alpha > 0")
        self._validate_llm_options()

    def _validate_llm_options(self) -> None:
        """Quantisation, memory, evaluation and export fields."""
        from .quant import check_quantization

        # Missing bitsandbytes or GPU: refused here, before any model is loaded.
        check_quantization(self)
        for name in ("forward_chunk_size", "micro_batch_size"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ValueError(f"MOPPOConfig.{name} must be a positive integer or None")
        if self.micro_batch_size is not None:
            if self.micro_batch_size > self.mini_batch_size:
                raise ValueError(
                    f"MOPPOConfig.micro_batch_size ({self.micro_batch_size}) must not exceed "
                    f"mini_batch_size ({self.mini_batch_size})"
                )
            if self.combiner in GRADIENT_COMBINERS and self.micro_batch_size < self.mini_batch_size:
                what = (
                    "MGDA's min-norm weights"
                    if self.combiner in ("mgda", "mgda_ub")
                    else "the torchjd method's weights"
                )
                raise ValueError(
                    f"MOPPOConfig.micro_batch_size with combiner={self.combiner!r}: {what} "
                    "need the whole mini-batch's gradients, so accumulating "
                    "micro-batches would change the update; lower mini_batch_size instead"
                )
        if self.eval_every < 0 or self.eval_samples < 0:
            raise ValueError("MOPPOConfig.eval_every and eval_samples must be >= 0")
        if self.eval_max_new_tokens is not None and self.eval_max_new_tokens < 1:
            raise ValueError("MOPPOConfig.eval_max_new_tokens must be >= 1 or None")
        if self.export_merged and not self.use_lora:
            raise ValueError("MOPPOConfig.export_merged needs use_lora=True (merges the adapter)")
        if self.export_merged and self.export_dir is None:
            raise ValueError("MOPPOConfig.export_merged needs export_dir")

    def _validate_ppo_setup(self) -> None:
        """The fields of the "PPO set-up": weights, Noon, MGDA normalisation, warm-up."""
        if not isinstance(self.noon, bool):
            raise ValueError(f"MOPPOConfig.noon must be True or False, got {self.noon!r}")
        if self.mgda_normalization not in MGDA_NORMALIZATIONS:
            raise ValueError(
                f"MOPPOConfig.mgda_normalization must be one of {MGDA_NORMALIZATIONS}, "
                f"got {self.mgda_normalization!r}"
            )
        if not isinstance(self.mgda_rescale, bool):
            raise ValueError(
                f"MOPPOConfig.mgda_rescale must be True or False, got {self.mgda_rescale!r}"
            )
        normalization = self.combiner_kwargs.get("normalization", self.mgda_normalization)
        if self.combiner in ("mgda", "mgda_ub") and normalization in ("loss", "loss+"):
            # A PPO policy loss -min(r A, clip(r) A) has the sign of the advantages: with
            # Noon-clipped advantages (>= 0) it is always <= 0, without Noon either sign.
            # Dividing by it is undefined; refuse now rather than at some later update.
            raise ValueError(
                f"MOPPOConfig.mgda_normalization={normalization!r} divides by the losses and "
                f"needs them > 0, but the {self.combiner!r} PPO policy losses have no fixed "
                "sign (with noon=True they are always <= 0); use 'l2' or 'none'"
            )
        granularity = self.combiner_kwargs.get("granularity", self.pama_granularity)
        if self.combiner == "pama" and granularity == "batch" and not self.pama_fast_path:
            raise ValueError(
                "MOPPOConfig: PAMA with granularity='batch' needs pama_fast_path=True: the "
                "generic combiner route sees one mini-batch at a time and would solve one weight "
                "vector per mini-batch, not one for the rollout batch; use the fast path, or "
                "pama_granularity 'token' or 'sample'"
            )
        warmup = self.value_warmup_steps
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
            raise ValueError(
                f"MOPPOConfig.value_warmup_steps must be an integer >= 0, got {warmup!r}"
            )
        mode = self.combiner_kwargs.get("mode")
        if mode is not None and self.combiner not in GRADIENT_COMBINERS:
            raise ValueError(
                f"MOPPOConfig.combiner_kwargs['mode'] applies to the gradient combiners "
                f"(mgda, mgda_ub and the torchjd zoo), not to combiner={self.combiner!r}"
            )
        if self.combiner in ZOO_NAMES and mode not in (None, "shared", "params"):
            raise ValueError(
                f"MOPPOConfig.combiner_kwargs['mode'] must be 'shared' (the last hidden states) "
                f"or 'params' (the trainable parameters), got {mode!r}"
            )
        if self.combiner == "pama_ub":
            if self.combiner_weights is not None:
                raise ValueError(
                    "MOPPOConfig.combiner_weights does not apply to combiner='pama_ub': its "
                    "weights are chosen per batch (the min-norm point of the objectives' "
                    "advantages); leave combiner_weights None"
                )
            if self.combiner_kwargs:
                raise ValueError(
                    "MOPPOConfig.combiner_kwargs must be empty for combiner='pama_ub' (its "
                    "weights are chosen per batch; it takes no arguments), got "
                    f"{self.combiner_kwargs!r}"
                )
        if self.combiner_weights is None:
            return
        if self.combiner not in WEIGHTED_COMBINERS:
            raise ValueError(
                f"MOPPOConfig.combiner_weights applies to {WEIGHTED_COMBINERS}, "
                f"not to combiner={self.combiner!r}"
            )
        if "weights" in self.combiner_kwargs:
            raise ValueError(
                "give the weights once: MOPPOConfig.combiner_weights or "
                "combiner_kwargs['weights'], not both"
            )
        weights = list(self.combiner_weights)
        if not weights:
            raise ValueError("MOPPOConfig.combiner_weights is empty: one weight per reward")
        for i, w in enumerate(weights):
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(
                    f"MOPPOConfig.combiner_weights[{i}] must be a finite number >= 0, got {w!r}"
                )
        if sum(weights) == 0:
            raise ValueError("MOPPOConfig.combiner_weights are all zero")
        self.combiner_weights = [float(w) for w in weights]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MOPPOConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MOPPOConfig fields: {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> MOPPOConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
