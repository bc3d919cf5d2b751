"""Loading what the trainer trains: tokenizer, policy, reference, combiner, generation config.

Kept apart from the training loop so that a reader of :mod:`.trainer` sees the algorithm, and
a reader of this module sees every choice made while loading (no remote code, dropout off,
LoRA with the adapter-disabled base as the reference).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import SCALARISED_COMBINERS, MOPPOConfig

__all__ = [
    "DTYPES",
    "build_combiner",
    "build_trainable",
    "check_model_source",
    "combiner_weights",
    "context_length",
    "eos_token_ids",
    "from_pretrained",
    "generation_config",
    "hidden_size",
    "is_pama",
    "load_policy_and_reference",
    "load_tokenizer",
    "looks_like_local_path",
    "uses_noon",
    "zero_dropout",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(policy: Any, tokenizer: Any) -> Any:
    """The given tokenizer, or the policy's; a pad token is set to EOS when missing."""
    if tokenizer is None:
        if not isinstance(policy, (str, Path)):
            raise ValueError("pass tokenizer= when policy is a model instance")
        from transformers import AutoTokenizer

        check_model_source(policy, "policy")
        tokenizer = AutoTokenizer.from_pretrained(str(policy), trust_remote_code=False)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token")
        # Response masks come from the first EOS, so pad == eos is safe here.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")


def context_length(policy: Any) -> int | None:
    """The positions the policy's config allows (``max_position_embeddings`` or the like),
    read from the config alone (no weights are loaded); None when it names none."""
    config = getattr(policy, "config", None)
    if isinstance(policy, (str, Path)):
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(str(policy), trust_remote_code=False)
        except (OSError, ValueError):  # loading the policy itself reports it
            return None
    for name in _CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def from_pretrained(path: str | Path, dtype: str | None, **extra: Any) -> nn.Module:
    from transformers import AutoModelForCausalLM

    check_model_source(path, "policy")
    # Never run code shipped with a checkpoint.
    kwargs: dict[str, Any] = {"trust_remote_code": False, **extra}
    if dtype is not None:
        kwargs["dtype"] = "auto" if dtype == "auto" else DTYPES[dtype]
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def load_policy_and_reference(
    config: MOPPOConfig,
    policy: Any,
    resume_dir: Path | None,
    device: torch.device | None = None,
) -> tuple[nn.Module, nn.Module | None]:
    """Policy (trainable) and reference (frozen; None with LoRA: adapter disabled).

    With ``load_in_8bit`` / ``load_in_4bit`` the base is loaded quantised onto ``device``
    and prepared for k-bit training (:mod:`.quant`) before the adapter goes on.
    """
    from .quant import is_quantized, prepare_quantized_policy, quantized_load_kwargs

    cfg = config
    if isinstance(policy, (str, Path)):
        base = from_pretrained(policy, cfg.dtype, **quantized_load_kwargs(cfg, device))
    else:
        base = policy
    if cfg.disable_dropout:
        zero_dropout(base)
    if cfg.use_lora:
        from peft import LoraConfig, PeftModel, get_peft_model

        if isinstance(base, PeftModel):
            raise ValueError("pass the base model; the trainer adds the LoRA adapter itself")
        if is_quantized(base):
            base = prepare_quantized_policy(base, cfg.gradient_checkpointing)
        if resume_dir is not None:
            model = PeftModel.from_pretrained(base, str(resume_dir / "policy"), is_trainable=True)
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
    if resume_dir is not None:
        # The reference stays the initial policy; the trained weights come from the checkpoint.
        ref = base
        model = from_pretrained(resume_dir / "policy", cfg.dtype)
        if cfg.disable_dropout:
            zero_dropout(model)
    else:
        model = base
        ref = copy.deepcopy(base)
    ref.eval().requires_grad_(False)
    model.requires_grad_(True)
    return model, ref


def build_trainable(
    config: MOPPOConfig, model: nn.Module, n_objectives: int, accelerator: Any
) -> tuple[nn.Module, Any]:
    """The trainable module (policy + n value heads) and its AdamW, prepared by accelerate.

    Quantised weights stay where bitsandbytes placed them while loading (they cannot move);
    everything else goes to the accelerator's device.
    """
    from .quant import is_quantized
    from .value_heads import PolicyWithValueHeads, ValueHeads

    device = accelerator.device
    heads = ValueHeads(hidden_size(model), n_objectives)
    quantized = is_quantized(model)
    module = PolicyWithValueHeads(model, heads.to(device))
    if not quantized:
        module.to(device)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if config.use_lora and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=config.learning_rate, eps=config.adam_eps, weight_decay=config.weight_decay
    )
    return accelerator.prepare(module, optimizer, device_placement=[not quantized, True])


def generation_config(
    config: MOPPOConfig,
    tokenizer: Any,
    *,
    do_sample: bool,
    max_new_tokens: int | None = None,
    eos_token_ids: list[int] | None = None,
) -> Any:
    """Sampling settings of the rollout; ``eos_token_ids`` (default: the tokenizer's EOS)
    stop generation and end the response mask (see :func:`eos_token_ids`)."""
    from transformers import GenerationConfig

    eos: Any = tokenizer.eos_token_id
    if eos_token_ids:
        eos = eos_token_ids[0] if len(eos_token_ids) == 1 else list(eos_token_ids)
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens or config.max_new_tokens,
        "min_new_tokens": config.min_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": eos,
        "use_cache": True,
    }
    if do_sample:
        # top_k must be given explicitly: unset, generate() applies top_k=50.
        kwargs.update(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
    return GenerationConfig(**kwargs)


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a response: the model's generation config (an int or a list, e.g.
    Llama-3's ``<|eot_id|>`` beside ``<|end_of_text|>``), its config, and the tokenizer's EOS.

    Order: the generation config's first (it is what ``generate`` would use), duplicates
    dropped.
    """
    ids: list[int] = []
    sources = [
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(getattr(model, "config", None), "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ]
    for source in sources:
        for i in _as_id_list(source):
            if i not in ids:
                ids.append(i)
    return ids


def looks_like_local_path(name_or_path: str | Path) -> bool:
    """True for what can only be a local path: absolute, ``./``, ``../``, ``~``, a backslash,
    or more than one ``/`` (hub ids are ``name`` or ``org/name``)."""
    text = str(name_or_path)
    return (
        isinstance(name_or_path, Path)
        or Path(text).expanduser().is_absolute()
        or text.startswith((".", "~"))
        or "\\" in text
        or text.count("/") > 1
    )


def check_model_source(name_or_path: str | Path, what: str) -> None:
    """Fail before any hub call when a local model path does not exist.

    ``from_pretrained`` treats a missing folder as a hub id and answers with a hub error
    ("Repo id must use alphanumeric chars ...") or a download attempt; say what is wrong.
    """
    path = Path(str(name_or_path)).expanduser()
    if path.exists():
        return
    if looks_like_local_path(name_or_path):
        raise FileNotFoundError(
            f"{what} path {str(name_or_path)!r} does not exist (no such local folder); it is "
            "not a hub id either, and nothing can be downloaded when offline"
        )


def is_pama(combiner: Any) -> bool:
    from paretoopt import PAMA

    return isinstance(combiner, PAMA)


def combiner_weights(config: MOPPOConfig, n_objectives: int) -> list[float]:
    """The fixed weights of "morlhf" / "gdpo" / "linear_noon" / "linear", checked against n.

    ``config.combiner_weights``, else ``combiner_kwargs["weights"]``, else uniform 1/n.
    Called when the trainer is built, so a wrong count fails before any rollout.
    """
    weights = config.combiner_weights
    source = "MOPPOConfig.combiner_weights"
    if weights is None and config.combiner_kwargs.get("weights") is not None:
        weights = config.combiner_kwargs["weights"]
        source = "MOPPOConfig.combiner_kwargs['weights']"
    if weights is None:
        return [1.0 / n_objectives] * n_objectives
    weights = [float(w) for w in weights]
    if len(weights) != n_objectives:
        raise ValueError(
            f"{source} has {len(weights)} weights but the trainer has {n_objectives} rewards: "
            "give one weight per reward"
        )
    return weights


def uses_noon(config: MOPPOConfig) -> bool:
    """Whether the per-objective advantages are Noon-clipped for ``config.combiner``
    ("pama", "pama_ub", "linear", "mgda_ub", "mgda": per ``config.noon``)."""
    if config.combiner == "linear_noon":
        return True
    if config.combiner in SCALARISED_COMBINERS:
        return False
    return bool(config.noon)


def build_combiner(
    config: MOPPOConfig, num_processes: int = 1, n_objectives: int | None = None
) -> Any:
    """The combiner named by the config (MGDA variants all-reduce under data parallelism).

    "morlhf", "gdpo", "linear_noon" and "linear" are all a
    :class:`paretoopt.LinearScalarization` with the resolved weights; "morlhf" and "gdpo"
    scalarise advantages, not losses, so the trainer uses their weights only
    (:meth:`MOPPOTrainer.combine`). "pama_ub" is a :class:`.advantages.MinNormAdvantages`,
    whose weights the trainer solves for on each batch. A torchjd zoo name is a
    :class:`paretoopt.TorchJD` (a :class:`~paretoopt.integrations.distributed.DistributedTorchJD`
    under data parallelism).
    """
    from paretoopt import LinearScalarization, make_combiner
    from paretoopt.zoo import ZOO_NAMES

    if config.combiner == "pama_ub":
        from .advantages import MinNormAdvantages

        return MinNormAdvantages()
    kwargs = dict(config.combiner_kwargs)
    if config.combiner in ("morlhf", "gdpo", "linear_noon", "linear"):
        kwargs.pop("weights", None)
        if n_objectives is None:
            weights = config.combiner_weights or config.combiner_kwargs.get("weights")
        else:
            weights = combiner_weights(config, n_objectives)
        return LinearScalarization(weights, **kwargs)
    if config.combiner == "pama":
        kwargs.setdefault("granularity", config.pama_granularity)
    if config.combiner in ("mgda", "mgda_ub"):
        kwargs.setdefault("normalization", config.mgda_normalization)
        kwargs.setdefault("rescale", config.mgda_rescale)
    if config.combiner in ZOO_NAMES:
        from paretoopt.zoo import zoo_combiner

        combiner = zoo_combiner(config.combiner, **kwargs)
        if num_processes > 1:  # the Gram matrix (or Jacobian) of the global batch
            from paretoopt.integrations.distributed import DistributedTorchJD

            return DistributedTorchJD(combiner)
        return combiner
    if config.combiner in ("mgda", "mgda_ub") and num_processes > 1:
        # MGDA's Gram matrix does not decompose over processes: reduce it globally.
        from paretoopt.integrations.distributed import DistributedMGDA

        mode = "params" if config.combiner == "mgda" else "shared"
        return DistributedMGDA(mode=kwargs.pop("mode", mode), **kwargs)
    return make_combiner(config.combiner, **kwargs)


def hidden_size(model: nn.Module) -> int:
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if size is None:
        raise ValueError("cannot find the policy's hidden size in its config")
    return int(size)


def zero_dropout(model: nn.Module) -> None:
    """Dropout off in the base model: rollout and update log-probs then agree."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for key in ("attn_pdrop", "resid_pdrop", "embd_pdrop", "dropout", "attention_dropout"):
        if config is not None and hasattr(config, key):
            setattr(config, key, 0.0)
