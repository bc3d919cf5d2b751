"""MultiObjectiveTrainer: a transformers.Trainer drop-in for a model with several losses.

A tiny two-task BERT (built from a config, saved, loaded through ``from_pretrained``) trained
offline for a few steps: equality with the plain Trainer under a fixed weighting, every
combiner lowering both losses, gradient accumulation semantics, resume, PEFT, gradient
checkpointing, bf16 autocast, logging and the first-step errors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from mo_fixtures import build_two_task, load_two_task, two_task_data  # noqa: E402
from paretoopt.integrations.hf import (  # noqa: E402
    MultiObjectiveTrainer,
    MultiObjectiveTrainingArguments,
)
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from paretoopt import MGDA, PAMA, LinearScalarization, combine_and_backward  # noqa: E402

HEADS = {"a": "head_a", "b": "head_b"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_two_task(tmp_path_factory.mktemp("two_task"))


@pytest.fixture(scope="module")
def dropout_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_two_task(tmp_path_factory.mktemp("two_task_dropout"), dropout=0.1)


def _args(out: Path, cls=MultiObjectiveTrainingArguments, **kw):
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    base.update(kw)
    return cls(**base)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class GradRecorder(TrainerCallback):
    """Keeps a copy of every gradient just before each optimizer step."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []
        self.model = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(
            {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        )


@pytest.mark.parametrize("heads", [None, HEADS], ids=["no_heads", "heads"])
def test_linear_equals_plain_trainer_bit_for_bit(dropout_dir: Path, tmp_path: Path, heads) -> None:
    """LinearScalarization([1, 1]) is the plain Trainer on losses["a"] + losses["b"], with
    dropout, AdamW and gradient accumulation: the same parameters, bit for bit."""
    data = two_task_data(16)
    common = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3)
    plain_model = load_two_task(dropout_dir)
    Trainer(
        plain_model, _args(tmp_path / "p", TrainingArguments, **common), train_dataset=data
    ).train()
    model = load_two_task(dropout_dir)
    args = _args(
        tmp_path / "m", combiner="linear", combiner_kwargs={"weights": [1.0, 1.0]},
        head_modules=heads, **common,
    )  # fmt: skip
    MultiObjectiveTrainer(model, args, train_dataset=data).train()
    want, got = _state(plain_model), _state(model)
    assert any(not torch.equal(want[k], _state(load_two_task(dropout_dir))[k]) for k in want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("combiner", ["linear", "pama", "mgda_ub", "mgda"])
def test_each_combiner_lowers_both_losses_and_logs_them(
    model_dir: Path, tmp_path: Path, combiner: str
) -> None:
    data = two_task_data(32)
    model = load_two_task(model_dir)
    kwargs = {"normalization": "l2"} if combiner.startswith("mgda") else {}
    args = _args(
        tmp_path, combiner=combiner, combiner_kwargs=kwargs, head_modules=HEADS, max_steps=40,
        per_device_train_batch_size=8, per_device_eval_batch_size=32, learning_rate=5e-2,
        logging_steps=8,
    )  # fmt: skip
    trainer = MultiObjectiveTrainer(model, args, train_dataset=data, eval_dataset=data)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    for name in ("a", "b"):
        assert after[f"eval_loss/{name}"] < 0.9 * before[f"eval_loss/{name}"], (before, after)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 5
    for h in logged:
        for name in ("a", "b"):
            assert h[f"loss/{name}"] > 0
            assert 0 <= h[f"weight/{name}"] <= 1.0 + 1e-9
    if combiner == "pama":
        assert 0 <= logged[-1]["pama/veto_rate"] <= 1
    if combiner.startswith("mgda"):
        assert logged[-1]["mgda/kkt_residual"] < 1e-6
