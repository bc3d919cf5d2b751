"""The torchjd zoo inside the trainers: MOPPOTrainer (RLHF) and MultiObjectiveTrainer
(``transformers.Trainer``) train for real with ``upgrad``; a stateful method (GradVac) resumes
from a checkpoint bit for bit; the names are valid everywhere a combiner is named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")
pytest.importorskip("torchjd")

from mo_fixtures import build_two_task, load_two_task, two_task_data
from paretoopt.integrations.hf import (
    MOPPOConfig,
    MultiObjectiveTrainer,
    MultiObjectiveTrainingArguments,
)
from paretoopt.integrations.hf.cli import _config_from_args, build_parser
from paretoopt.integrations.hf.state import COMBINER_FILE
from test_hf_trainer import comparable, make_config, make_trainer, params_of

from paretoopt import TorchJD
from paretoopt.zoo import ZOO_NAMES

pytestmark = pytest.mark.hf


@pytest.mark.parametrize("name,mode", [("upgrad", "shared"), ("upgrad", "params"),
                                       ("config", "shared")])  # fmt: skip
def test_moppo_trains_with_a_zoo_combiner(tiny_lm: Path, tmp_path: Path, name, mode) -> None:
    cfg = make_config(tmp_path, combiner=name, combiner_kwargs={"mode": mode})
    trainer = make_trainer(tiny_lm, cfg)
    assert isinstance(trainer.combiner, TorchJD) and trainer.combiner.mode == mode
    before = params_of(trainer)
    history = trainer.train()
    assert len(history) == 2
    for metrics in history:
        assert math.isfinite(metrics["loss/policy"])
        assert math.isfinite(metrics["min_directional_derivative"])
        # ConFIG aggregates the Jacobian into a vector: it has no weights to log
        assert ("weights/len" in metrics) == (name != "config")
        if name == "upgrad":
            assert metrics["weights/len"] >= 0 and metrics["weights/other"] >= 0
    after = params_of(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("policy."))


def test_moppo_resumes_a_stateful_zoo_combiner_exactly(tiny_lm: Path, tmp_path: Path) -> None:
    """GradVac keeps an EMA of the objectives' cosines: the checkpoint holds it, and the resumed
    run takes the uninterrupted run's steps bit for bit."""
    kw = dict(combiner="gradvac")
    straight = make_trainer(tiny_lm, make_config(tmp_path / "a", steps=4, **kw))
    full = straight.train()
    first = make_trainer(tiny_lm, make_config(tmp_path / "b", steps=2, save_final=True, **kw))
    first.train()
    ckpt = tmp_path / "b" / "run" / "checkpoint-2"
    saved = torch.load(ckpt / COMBINER_FILE, weights_only=True)
    assert saved and torch.equal(
        saved["weighting.weighting"]["state"]["_phi_t"],
        first.combiner.state_dict()["weighting.weighting"]["state"]["_phi_t"],
    )
    resumed = make_trainer(
        tiny_lm, make_config(tmp_path / "b", steps=4, resume_from=str(ckpt), **kw)
    )
    history = resumed.train()
    for a, b in zip(full, history, strict=True):
        assert comparable(a) == comparable(b)
    end_a, end_b = params_of(straight), params_of(resumed)
    for key in end_a:
        assert torch.equal(end_a[key], end_b[key]), key
    # without its state the same checkpoint cannot resume that run exactly: refused
    (ckpt / COMBINER_FILE).unlink()
    with pytest.raises(ValueError, match=r"has no combiner.pt.*keeps a state"):
        make_trainer(tiny_lm, make_config(tmp_path / "b", steps=4, resume_from=str(ckpt), **kw))


def test_config_and_cli_know_the_zoo(tmp_path: Path) -> None:
    for name in ZOO_NAMES:
        MOPPOConfig(combiner=name)
    with pytest.raises(ValueError, match=r"combiner_kwargs\['mode'\] must be 'shared'"):
        MOPPOConfig(combiner="upgrad", combiner_kwargs={"mode": "both"})
    with pytest.raises(ValueError, match=r"applies to the gradient combiners.*'pama'"):
        MOPPOConfig(combiner="pama", combiner_kwargs={"mode": "params"})
    with pytest.raises(ValueError, match="micro_batch_size with combiner='cagrad'"):
        MOPPOConfig(combiner="cagrad", mini_batch_size=4, micro_batch_size=2)
    args = build_parser().parse_args(
        ["--policy", "p", "--reward", "length", "--combiner", "upgrad", "--combiner-mode",
         "params", "--output-dir", str(tmp_path)]
    )  # fmt: skip
    config = _config_from_args(args)
    assert config.combiner == "upgrad" and config.combiner_kwargs == {"mode": "params"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--policy", "p", "--reward", "x", "--combiner", "upgradd"])


def test_study_methods_know_the_zoo() -> None:
    from paretoopt.integrations.study.protocol import METHOD_LABELS, method_fields

    for name in ZOO_NAMES:
        fields = method_fields(name, 2)
        assert fields == {"combiner": name, "combiner_kwargs": {"mode": "shared"}, "noon": False}
        MOPPOConfig(**fields)
        assert "torchjd" in METHOD_LABELS[name]


# ---- MultiObjectiveTrainer -----------------------------------------------------------------

HEADS = {"a": "head_a", "b": "head_b"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_two_task(tmp_path_factory.mktemp("two_task_zoo"))


def _args(out: Path, **kw) -> MultiObjectiveTrainingArguments:
    base = dict(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True, head_modules=HEADS,
    )  # fmt: skip
    base.update(kw)
    return MultiObjectiveTrainingArguments(**base)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["shared", "params"])
def test_multi_objective_trainer_lowers_both_losses_with_upgrad(
    model_dir: Path, tmp_path: Path, mode: str
) -> None:
    data = two_task_data(32)
    args = _args(
        tmp_path, combiner="upgrad", combiner_kwargs=json.dumps({"mode": mode}), max_steps=40,
        per_device_train_batch_size=8, per_device_eval_batch_size=32, learning_rate=5e-2,
        logging_steps=8,
    )  # fmt: skip
    trainer = MultiObjectiveTrainer(load_two_task(model_dir), args, train_dataset=data,
                                    eval_dataset=data)  # fmt: skip
    assert isinstance(trainer.combiner, TorchJD) and trainer.combiner.mode == mode
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    for name in ("a", "b"):
        assert after[f"eval_loss/{name}"] < 0.9 * before[f"eval_loss/{name}"], (before, after)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(h["weight/a"] >= 0 and h["weight/b"] >= 0 for h in logged)
    assert "upgrad/min_directional_derivative" in logged[-1]
    assert "upgrad/torchjd" not in logged[-1]  # the name is no metric


def test_multi_objective_trainer_resumes_a_stateful_zoo_combiner_exactly(
    model_dir: Path, tmp_path: Path
) -> None:
    data = two_task_data(16)
    common = dict(
        combiner="gradvac", max_steps=4, per_device_train_batch_size=2,
        gradient_accumulation_steps=2, save_strategy="steps", save_steps=2,
    )  # fmt: skip
    full = load_two_task(model_dir)
    MultiObjectiveTrainer(full, _args(tmp_path / "full", **common), train_dataset=data).train()
    assert (tmp_path / "full" / "checkpoint-2" / COMBINER_FILE).is_file()
    resumed = load_two_task(model_dir)
    trainer = MultiObjectiveTrainer(resumed, _args(tmp_path / "again", **common),
                                    train_dataset=data)  # fmt: skip
    trainer.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert trainer.state.global_step == 4
    assert trainer.combiner.state_dict()  # restored, then carried on
    want, got = _state(full), _state(resumed)
    for k in want:
        assert torch.equal(got[k], want[k]), k
