"""Short MOPPOTrainer runs whose metrics and final parameters must never change.

Each arm trains the tiny GPT-2 of :mod:`hf_fixtures` for a few steps (a value warm-up step,
two PPO steps, an evaluation) with one combiner; the record keeps every metric (exact floats,
``time/*`` left out), the evaluation history and the sha256 of each final parameter tensor.
``tests/data/bitwise_reference.json`` holds the record of the code as it was; the test
:mod:`test_hf_bitwise` re-runs the arms and compares to the bit. Regenerate (only when a
behaviour change is meant) with ``python tests/bitwise_reference.py``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_fixtures import PROMPTS, good_rate, make_tiny_lm

REFERENCE = Path(__file__).resolve().parent / "data" / "bitwise_reference.json"
ARMS: dict[str, dict[str, Any]] = {
    "pama_fast": {"combiner": "pama", "pama_fast_path": True},
    "pama_generic": {"combiner": "pama", "pama_fast_path": False},
    "mgda_ub": {"combiner": "mgda_ub"},
    "mgda": {"combiner": "mgda"},
    "morlhf": {"combiner": "morlhf", "combiner_weights": [0.3, 0.7]},
    "gdpo": {"combiner": "gdpo", "combiner_weights": [0.3, 0.7]},
}


def exact(value: Any) -> Any:
    """Floats as their repr (exact round trip), containers recursively."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {k: exact(v) for k, v in sorted(value.items()) if not k.startswith("time/")}
    if isinstance(value, (list, tuple)):
        return [exact(v) for v in value]
    return value


def run_arm(model_dir: Path, out_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    from hf_fixtures import length_words
    from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer

    config = MOPPOConfig(
        steps=2, batch_size=8, mini_batch_size=4, ppo_epochs=2, max_new_tokens=8,
        learning_rate=3e-3, kl_coef=0.05, value_warmup_steps=1, eval_every=1, eval_samples=4,
        output_dir=str(out_dir), progress=False, save_final=False, seed=7, cpu=True,
        **overrides,
    )  # fmt: skip
    trainer = MOPPOTrainer(
        config, str(model_dir), prompts=PROMPTS, eval_prompts=PROMPTS[:4],
        rewards=[length_words, good_rate],
        reward_names=["len", "good"],
    )  # fmt: skip
    history = trainer.train()
    state = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    params = {
        k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        for k, v in sorted(state.items())
    }
    return {
        "history": exact(history),
        "warmup": exact(trainer.value_warmup_history),
        "eval": exact(trainer.eval_history),
        "params": params,
    }


def run_all(work: Path, arms: list[str] | None = None) -> dict[str, Any]:
    torch.set_num_threads(1)
    model_dir = make_tiny_lm(work / "tiny_lm")
    return {name: run_arm(model_dir, work / name, ARMS[name]) for name in (arms or list(ARMS))}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        record = run_all(Path(tmp))
    REFERENCE.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE}")
