"""Activation memory of the PPO update and of the rollout forward pass, measured on the CPU.

The bytes of every tensor autograd saves for the backward pass (``saved_tensors_hooks``) are
summed per forward pass; the largest sum over a step is the activation peak of the update.
The rollout forward runs without gradients, so there the measure is the largest logits
tensor it builds. Run from the repository root::

    python bench/llm_memory.py            # a GPT-2-shaped model, 4 layers, width 256

It prints a table of ratios (micro-batches, gradient checkpointing, forward chunks) against
the plain mini-batch; docs/trainer.md quotes it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build(path: Path) -> Path:
    from hf_fixtures import build_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tokenizer(path)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok), n_positions=128, n_embd=256, n_layer=4, n_head=4,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=0,
    )  # fmt: skip
    GPT2LMHeadModel(cfg).save_pretrained(str(path))
    return path


def saved_bytes_peak(trainer, batch) -> int:
    """Largest total of bytes saved for backward by one forward pass during an update
    (activations only: tensors sharing a parameter's storage are not counted)."""
    state = {"now": 0, "peak": 0}
    params = {p.untyped_storage().data_ptr() for p in trainer.model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() in params:
            return t
        state["now"] += t.numel() * t.element_size()
        state["peak"] = max(state["peak"], state["now"])
        return t

    backward = trainer.accelerator.backward

    def counting_backward(loss, **kw):
        backward(loss, **kw)
        state["now"] = 0  # the graph is freed after backward

    trainer.accelerator.backward = counting_backward
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            trainer.update(batch, 1)
    finally:
        trainer.accelerator.backward = backward
    return state["peak"]


def main() -> None:
    from hf_fixtures import PROMPTS
    from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer, make_length_reward

    reward = make_length_reward(scale=8, unit="words")
    with tempfile.TemporaryDirectory() as tmp:
        path = build(Path(tmp) / "lm")
        rows = []
        for label, extra in [
            ("mini-batch 8 (baseline)", {}),
            ("micro-batch 4", {"micro_batch_size": 4}),
            ("micro-batch 1", {"micro_batch_size": 1}),
            ("gradient checkpointing", {"gradient_checkpointing": True}),
            (
                "checkpointing + micro-batch 1",
                {"gradient_checkpointing": True, "micro_batch_size": 1},
            ),
        ]:
            cfg = MOPPOConfig(
                steps=1, batch_size=16, mini_batch_size=8, ppo_epochs=1, max_new_tokens=48,
                min_new_tokens=48, output_dir=str(Path(tmp) / "run"), progress=False,
                save_final=False, **extra,
            )  # fmt: skip
            trainer = MOPPOTrainer(cfg, str(path), prompts=PROMPTS, rewards=[reward, reward])
            torch.manual_seed(0)
            rollout = trainer.rollout(trainer.sample_prompts(1))
            batch = trainer.compute_advantages(rollout, trainer.score(rollout, 1))
            rows.append((label, saved_bytes_peak(trainer, batch)))
        base = rows[0][1]
        print("| update | saved activations (MiB) | ratio |\n|---|---|---|")
        for label, peak in rows:
            print(f"| {label} | {peak / 2**20:.1f} | {peak / base:.2f} |")


if __name__ == "__main__":
    main()
