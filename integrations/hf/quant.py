"""Quantised base weights with a LoRA adapter (QLoRA), as in the paper's 7B run.

The paper trained LLaMA-2 7B with LoRA (r 64) on 8-bit base weights. Here
``load_in_8bit`` / ``load_in_4bit`` load the policy through bitsandbytes, peft's
``prepare_model_for_kbit_training`` readies it (layer norms in float32, inputs that carry
gradients for checkpointing) and the LoRA adapter goes on top. The reference policy is the
same quantised base with the adapter disabled: no second copy, and pi_ref is exactly the
weights the policy started from.

bitsandbytes kernels need a CUDA GPU; everything that can be checked without one is checked
when the configuration is validated, so a missing package or GPU stops the run before any
model is loaded, never in the middle of a step.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

__all__ = [
    "QUANT_EXTRA",
    "check_quantization",
    "is_quantized",
    "prepare_quantized_policy",
    "quantization_config",
    "quantized_load_kwargs",
]

QUANT_EXTRA = "pip install 'paretoopt[quant]'"

_COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _bits(config: Any) -> int | None:
    eight, four = (
        bool(getattr(config, "load_in_8bit", False)),
        bool(getattr(config, "load_in_4bit", False)),
    )
    if eight and four:
        raise ValueError("MOPPOConfig.load_in_8bit and load_in_4bit are exclusive; choose one")
    return 8 if eight else 4 if four else None


def check_quantization(config: Any, *, hardware: bool = True) -> None:
    """Refuse a quantised configuration that cannot run; the error says what is missing.

    Always checked: one of 8/4 bits, LoRA on (quantised weights are frozen: only an adapter
    trains), a known compute dtype, not ``cpu=True``. With ``hardware=True`` also: bitsandbytes
    importable and a CUDA GPU present.
    """
    bits = _bits(config)
    if bits is None:
        return
    flag = f"load_in_{bits}bit"
    if not getattr(config, "use_lora", False):
        raise ValueError(
            f"MOPPOConfig.{flag} needs use_lora=True: quantised base weights cannot be "
            "trained, only a LoRA adapter on top of them"
        )
    compute = getattr(config, "bnb_4bit_compute_dtype", "bfloat16")
    if compute not in _COMPUTE_DTYPES:
        raise ValueError(
            f"MOPPOConfig.bnb_4bit_compute_dtype must be one of {sorted(_COMPUTE_DTYPES)}, "
            f"got {compute!r}"
        )
    quant_type = getattr(config, "bnb_4bit_quant_type", "nf4")
    if quant_type not in ("nf4", "fp4"):
        raise ValueError(
            f"MOPPOConfig.bnb_4bit_quant_type must be 'nf4' or 'fp4', got {quant_type!r}"
        )
    if getattr(config, "cpu", False):
        raise ValueError(f"MOPPOConfig.{flag} needs a CUDA GPU; cpu=True forbids it")
    if not hardware:
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"MOPPOConfig.{flag} needs bitsandbytes: {QUANT_EXTRA}")
    if not torch.cuda.is_available():
        raise ValueError(
            f"MOPPOConfig.{flag} needs a CUDA GPU (bitsandbytes kernels); none is available. "
            "On a CPU, train a LoRA adapter on full-precision weights instead."
        )


def quantization_config(config: Any) -> Any:
    """The ``transformers.BitsAndBytesConfig`` for the config, or None when not quantised."""
    bits = _bits(config)
    if bits is None:
        return None
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=getattr(config, "bnb_4bit_quant_type", "nf4"),
        bnb_4bit_compute_dtype=_COMPUTE_DTYPES[
            getattr(config, "bnb_4bit_compute_dtype", "bfloat16")
        ],
        bnb_4bit_use_double_quant=bool(getattr(config, "bnb_4bit_use_double_quant", True)),
    )


def quantized_load_kwargs(config: Any, device: torch.device | None = None) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments: the quantisation config and a one-device map.

    bitsandbytes places weights while loading (a quantised model cannot be moved afterwards),
    so the device is chosen here: this process's GPU under data parallelism.
    """
    qconfig = quantization_config(config)
    if qconfig is None:
        return {}
    if device is None or device.type != "cuda":
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
    else:
        index = device.index if device.index is not None else torch.cuda.current_device()
    return {"quantization_config": qconfig, "device_map": {"": index}}


def is_quantized(model: Any) -> bool:
    return bool(
        getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False)
    )


def prepare_quantized_policy(model: Any, gradient_checkpointing: bool) -> Any:
    """peft's ``prepare_model_for_kbit_training``: base frozen, norms in float32, and inputs
    that require gradients so checkpointed layers pass gradients to the adapter."""
    from peft import prepare_model_for_kbit_training

    kwargs = {"use_reentrant": False} if gradient_checkpointing else None
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs=kwargs,
    )
    if gradient_checkpointing and not getattr(model, "is_gradient_checkpointing", True):
        # peft enables it only on models it sees as quantised; the same preparation otherwise.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()
    return model
