"""Quantised base + LoRA (QLoRA) on a GPU: 8-bit and 4-bit training, reference, export.

Skipped without a CUDA GPU or without bitsandbytes (``pip install 'paretoopt[quant]'``).
On a GPU machine: ``pytest tests/test_cuda_quant.py -s`` prints peak memory and step time;
with ``PARETOOPT_DEVICE_REPORT=DIR`` they are also written to ``DIR/quant.json``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes"
    ),
]

REPORT: dict[str, dict[str, float]] = {}


def tiny_llama(path: Path) -> Path:
    """A small Llama (nn.Linear layers, which bitsandbytes quantises) and a word tokenizer."""
    from hf_fixtures import build_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(str(path))
    return path


@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_lora_trains_the_adapter_with_the_base_as_reference(
    tmp_path: Path, bits: int
) -> None:
    from accelerate.state import AcceleratorState
    from hf_fixtures import PROMPTS
    from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer, make_length_reward
    from paretoopt.integrations.hf.value_heads import response_forward

    AcceleratorState._reset_state(True)
    path = tiny_llama(tmp_path / "llama")
    cfg = MOPPOConfig(
        steps=2, batch_size=8, mini_batch_size=4, micro_batch_size=2, ppo_epochs=1,
        max_new_tokens=8, learning_rate=1e-3, use_lora=True, lora_r=8, lora_alpha=16,
        gradient_checkpointing=True, output_dir=str(tmp_path / "run"), progress=False,
        save_final=False, export_dir=str(tmp_path / "ship"), export_merged=True,
        **{f"load_in_{bits}bit": True},
    )  # fmt: skip
    length = make_length_reward(scale=8, unit="words")
    torch.cuda.reset_peak_memory_stats()
    trainer = MOPPOTrainer(cfg, str(path), prompts=PROMPTS, rewards=[length, length])
    base = trainer.policy.get_base_model()
    assert getattr(base, f"is_loaded_in_{bits}bit")
    frozen = {
        k: v.detach().clone() for k, v in trainer.policy.named_parameters() if "lora_" not in k
    }
    lora = {k: v.detach().clone() for k, v in trainer.policy.named_parameters() if "lora_" in k}

    roll = trainer.rollout(PROMPTS[:4])
    with torch.no_grad():
        start_lp = response_forward(
            trainer.policy, roll.input_ids, roll.attention_mask, roll.response_start
        )["logprobs"]

    start = time.perf_counter()
    history = trainer.train()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / len(history)
    assert all(torch.isfinite(torch.tensor(list(m.values()))).all() for m in history)
    after = dict(trainer.policy.named_parameters())
    assert all(torch.equal(after[k], v) for k, v in frozen.items())  # base untouched
    assert any(not torch.equal(after[k], v) for k, v in lora.items())  # the adapter trained

    # The reference is the quantised base with the adapter disabled: the starting policy.
    with torch.no_grad():
        with trainer.reference_context():
            ref_lp = response_forward(
                trainer.reference_model, roll.input_ids, roll.attention_mask, roll.response_start
            )["logprobs"]
        now_lp = response_forward(
            trainer.policy, roll.input_ids, roll.attention_mask, roll.response_start
        )["logprobs"]
    torch.testing.assert_close(ref_lp, start_lp, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(now_lp, start_lp, atol=1e-4)

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ship" / "merged"))
    assert not any("lora" in k for k in merged.state_dict())
    REPORT[f"{bits}bit"] = {
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20,
        "seconds_per_step": seconds,
    }
    print(f"\n{bits}-bit LoRA: {REPORT[f'{bits}bit']}")
    out = os.environ.get("PARETOOPT_DEVICE_REPORT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "quant.json").write_text(json.dumps(REPORT, indent=1))
