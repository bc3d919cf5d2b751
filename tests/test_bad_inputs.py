"""Bad input, refused by name before any work: one test per case, grouped by surface.

Each test feeds one bad input and checks the error names what is wrong (the objective, the
column, the head, the method, the expected and the actual sizes). Where the input can be
checked before a model is loaded or trained, the test also shows that nothing was loaded or
no parameter moved. The verl estimator's cases run in the verl environment
(tests/test_verl_pama.py, "Bad input"). docs/reliability.md lists every case.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")

import datasets
from hf_fixtures import CHATS, PROMPTS, make_two_head_reward_model
from mo_fixtures import build_two_task, load_two_task, two_task_data
from paretoopt.integrations.hf import MultiObjectiveTrainer, MultiObjectiveTrainingArguments
from paretoopt.integrations.hf.data import load_prompt_dataset
from paretoopt.integrations.hf.reward_model_specs import parse_reward_model_spec
from torch import nn

from paretoopt import LinearScalarization

HEADS = {"a": "head_a", "b": "head_b"}


@pytest.fixture(scope="module")
def two_task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_two_task(tmp_path_factory.mktemp("two_task"))


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_two_head_reward_model(tmp_path_factory.mktemp("rm2"))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------- MultiObjectiveTrainer


def _mo_args(out: Path, **kw) -> MultiObjectiveTrainingArguments:
    base = dict(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=1, learning_rate=1e-2,
        report_to=[], save_strategy="no", use_cpu=True, seed=0, dataloader_num_workers=0,
        disable_tqdm=True, combiner="linear",
    )  # fmt: skip
    base.update(kw)
    return MultiObjectiveTrainingArguments(**base)


def _mo_trainer(model_dir: Path, out: Path, data=None, compute_losses=None, obj=None, **kw):
    """A trainer on the two-task model; ``obj`` a combiner object, ``kw`` the arguments."""
    model = load_two_task(model_dir)
    trainer = MultiObjectiveTrainer(
        model, _mo_args(out, **kw), train_dataset=data if data is not None else two_task_data(8),
        compute_losses=compute_losses, combiner=obj,
    )  # fmt: skip
    return trainer, model


def test_mo_model_that_returns_no_losses(two_task_dir: Path, tmp_path: Path) -> None:
    # Without labels_b the model computes no losses: named at the first forward, before any
    # update (what the model returns is known only once it ran).
    data = two_task_data(8).remove_columns(["labels_b"])
    trainer, model = _mo_trainer(two_task_dir, tmp_path, data)
    before = _state(model)
    with pytest.raises(ValueError, match=r"no 'losses' \(its keys: \['pred_a', 'logits_b'\]\)"):
        trainer.train()
    assert _unchanged(model, before)


def test_mo_loss_that_is_not_a_scalar(two_task_dir: Path, tmp_path: Path) -> None:
    def per_sample(model, inputs):
        out = model(**inputs)
        return {"a": (out["pred_a"] - inputs["labels_a"]) ** 2, "b": out["losses"]["b"]}

    trainer, model = _mo_trainer(two_task_dir, tmp_path, compute_losses=per_sample)
    before = _state(model)
    with pytest.raises(ValueError, match=r"loss 'a' in compute_losses.* has shape \(4,\)"):
        trainer.train()
    assert _unchanged(model, before)


@pytest.mark.parametrize("combiner", ["linear", "mgda", "pama"])
def test_mo_nan_loss_is_named_before_any_update(
    two_task_dir: Path, tmp_path: Path, combiner: str
) -> None:
    # A NaN appears only in the forward pass: refused at the first step, before any update.
    # (Under an fp16 grad scaler a non-finite loss skips the step instead, as for one loss.)
    def nan_b(model, inputs):
        losses = dict(model(**inputs)["losses"])
        losses["b"] = losses["b"] * float("nan")
        return losses

    kw = {"head_modules": HEADS, "shared_module": "bert"} if combiner == "pama" else {}
    kw["combiner"] = combiner
    trainer, model = _mo_trainer(two_task_dir, tmp_path, compute_losses=nan_b, **kw)
    before = _state(model)
    with pytest.raises(ValueError, match=r"loss 'b' .* is nan at step 1.*no update"):
        trainer.train()
    assert _unchanged(model, before)


def test_mo_head_module_that_does_not_exist(two_task_dir: Path, tmp_path: Path) -> None:
    # Module names are checked when the trainer is built, before train().
    with pytest.raises(
        ValueError, match=r"head module of objective 'a' 'head_x' is not a module of TwoTaskBert"
    ):
        _mo_trainer(two_task_dir, tmp_path, head_modules={"a": "head_x", "b": "head_b"})
    with pytest.raises(ValueError, match=r"shared_module 'pooler' is not a module"):
        _mo_trainer(two_task_dir, tmp_path, combiner="pama", shared_module="pooler")
    with pytest.raises(ValueError, match=r"trunk_module 'trunk' is not a module"):
        _mo_trainer(two_task_dir, tmp_path, combiner="mgda", trunk_module="trunk")
    # With the objectives declared, a head of an unknown objective is refused at once too.
    with pytest.raises(ValueError, match=r"head_modules names objectives \['c'\].*\['a', 'b'\]"):
        _mo_args(tmp_path, objectives=["a", "b"], head_modules={"a": "head_a", "c": "head_b"})


def test_mo_shared_tensor_hook_that_never_fires(two_task_dir: Path, tmp_path: Path) -> None:
    model = load_two_task(two_task_dir)
    model.spare = nn.Identity()  # a module of the model that its forward never calls
    args = _mo_args(tmp_path, combiner="pama", shared_module="spare", head_modules=HEADS)
    trainer = MultiObjectiveTrainer(model, args, train_dataset=two_task_data(8))
    before = _state(model)
    with pytest.raises(ValueError, match=r"shared_module 'spare' did not run in the forward"):
        trainer.train()
    assert _unchanged(model, before)


def test_mo_fewer_than_two_losses(two_task_dir: Path, tmp_path: Path) -> None:
    def only_a(model, inputs):
        return {"a": model(**inputs)["losses"]["a"]}

    trainer, model = _mo_trainer(two_task_dir, tmp_path, compute_losses=only_a)
    before = _state(model)
    with pytest.raises(ValueError, match=r"gave 1 loss \(\['a'\]\); .* at least two"):
        trainer.train()
    assert _unchanged(model, before)
    # Declared objectives are checked with the arguments, before any model exists.
    with pytest.raises(ValueError, match=r"objectives names 1 objective \(\['a'\]\)"):
        _mo_args(tmp_path, objectives=["a"])


def test_mo_weights_of_the_wrong_length(two_task_dir: Path, tmp_path: Path) -> None:
    three = LinearScalarization([0.2, 0.3, 0.5])
    # Objectives declared: refused when the trainer is built.
    with pytest.raises(ValueError, match=r"3 weights \[0.2, 0.3, 0.5\] for 2 objectives"):
        _mo_trainer(two_task_dir, tmp_path, obj=three, objectives=["a", "b"])
    with pytest.raises(ValueError, match=r"3 weights .* for 2 objectives \['a', 'b'\]"):
        _mo_args(tmp_path, objectives=["a", "b"], combiner_kwargs={"weights": [1, 1, 1]})
    # Objectives known only from the model's output: at the first step, before any update.
    trainer, model = _mo_trainer(two_task_dir, tmp_path, obj=three)
    before = _state(model)
    with pytest.raises(ValueError, match=r"3 weights \[0.2, 0.3, 0.5\] for 2 objectives"):
        trainer.train()
    assert _unchanged(model, before)


# ------------------------------------------------------- sharded engines, collectives


def test_mo_fsdp_and_deepspeed_are_refused_when_built(
    two_task_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # accelerate launch --use_fsdp: refused even on the CPU, where accelerate would run DDP.
    args = _mo_args(tmp_path, combiner="pama")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match=r"^MultiObjectiveTrainer does not support FSDP \(asked "
                       r"for by ACCELERATE_USE_FSDP=true, .*use DDP instead"):  # fmt: skip
        MultiObjectiveTrainer(load_two_task(two_task_dir), args, train_dataset=two_task_data(8))
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    # The arguments of a multi-process run (one process refuses fsdp=... itself).
    for field, value, engine in (("fsdp", True, "FSDP"), ("deepspeed", "ds.json", "DeepSpeed")):
        args = _mo_args(tmp_path, combiner="mgda")
        setattr(args, field, value)
        asked = rf"does not support {engine} \(asked for by TrainingArguments.{field}={value!r}\)"
        with pytest.raises(ValueError, match=asked + ": the combiners take"):
            MultiObjectiveTrainer(load_two_task(two_task_dir), args, train_dataset=two_task_data(8))


def test_moppo_fsdp_and_deepspeed_are_refused_before_loading(
    tiny_lm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_policy_loading
) -> None:
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer

    cfg = MOPPOConfig(steps=1, batch_size=2, mini_batch_size=2, output_dir=str(tmp_path))
    kw = dict(prompts=PROMPTS, rewards=["length", "length:8:0:1:words"])
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match=r"^MOPPOTrainer does not support FSDP .*use DDP instead"
                       r".*use LoRA \(use_lora\)"):  # fmt: skip
        MOPPOTrainer(cfg, str(tiny_lm), **kw)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    deepspeed = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED)
    with pytest.raises(
        ValueError, match=r"does not support DeepSpeed .*distributed_type DEEPSPEED"
    ):
        MOPPOTrainer(cfg, str(tiny_lm), accelerator=deepspeed, **kw)


@pytest.mark.parametrize("value", [0, -5.0, float("inf"), "600", True])
def test_collective_timeout_that_is_not_a_positive_number(value) -> None:
    from paretoopt.integrations.hf import MOPPOConfig

    with pytest.raises(ValueError, match=r"MOPPOConfig.collective_timeout must be a finite number "
                       rf"of seconds > 0 or None, got {value!r}"):  # fmt: skip
        MOPPOConfig(collective_timeout=value)


# ------------------------------------------------------------------ CLI and datasets


@pytest.fixture
def no_policy_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the policy's weights are loaded: the error must come first."""
    from paretoopt.integrations.hf import algorithm as trainer_module

    def refuse(*args, **kwargs):
        raise AssertionError("the policy was loaded before the bad input was refused")

    monkeypatch.setattr(trainer_module, "load_policy_and_reference", refuse)


def _train_cli(policy: Path, tmp_path: Path, *extra: str, reward: str = "length") -> list[str]:
    return [
        "--policy", str(policy), "--reward", reward, "--reward", "length:8:0:1:words",
        "--steps", "1", "--batch-size", "2", "--max-new-tokens", "4",
        "--output-dir", str(tmp_path / "out"), "--no-progress", "--cpu", *extra,
    ]  # fmt: skip


def test_cli_empty_data_set(tiny_lm: Path, tmp_path: Path, capsys, no_policy_loading) -> None:
    from paretoopt.integrations.hf.cli import main

    empty_txt = tmp_path / "empty.txt"
    empty_txt.write_text("\n\n")
    assert main(_train_cli(tiny_lm, tmp_path, "--prompts", str(empty_txt))) == 2
    assert f"no prompts in {empty_txt}" in capsys.readouterr().err
    assert main(_train_cli(tiny_lm, tmp_path, "--dataset", str(empty_txt))) == 2
    assert f"no prompts in {empty_txt}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no prompts in the dataset"):
        load_prompt_dataset(datasets.Dataset.from_dict({"prompt": []}))
    assert not (tmp_path / "out").exists()


def test_cli_missing_prompt_column(tiny_lm: Path, tmp_path: Path, capsys, no_policy_loading):
    from paretoopt.integrations.hf.cli import main

    data = tmp_path / "p.jsonl"
    data.write_text(
        "".join(json.dumps({"question": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS))
    )
    argv = _train_cli(tiny_lm, tmp_path, "--dataset", str(data), "--prompt-column", "prompt")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{data} has no column 'prompt'; its columns: ['question', 'id']" in err
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"id": 1}) + "\n")
    assert main(_train_cli(tiny_lm, tmp_path, "--dataset", str(bare))) == 2
    assert "name the prompt column (its columns: ['id'])" in capsys.readouterr().err


def test_cli_chat_prompts_without_a_chat_template(
    tiny_lm: Path, tmp_path: Path, capsys, no_policy_loading
) -> None:
    from paretoopt.integrations.hf.cli import main

    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHATS))
    assert main(_train_cli(tiny_lm, tmp_path, "--dataset", str(data))) == 2
    err = capsys.readouterr().err
    assert "the prompts are conversations but the policy tokenizer" in err
    assert f"{tiny_lm}" in err and "has no chat template" in err


def test_cli_prompt_longer_than_the_context(
    tiny_lm: Path, tmp_path: Path, capsys, no_policy_loading
) -> None:
    from paretoopt.integrations.hf.cli import main

    # The tiny policy has 64 positions; row 1 has 70 tokens, plus 4 new ones.
    data = tmp_path / "long.txt"
    data.write_text("the film was\n" + " ".join(["good"] * 70) + "\n")
    assert main(_train_cli(tiny_lm, tmp_path, "--prompts", str(data))) == 2
    err = capsys.readouterr().err
    assert "prompt row 1 has 70 tokens" in err
    assert "70 + max_new_tokens 4 = 74 > the policy's context of 64 positions" in err
    assert "max_prompt_length" in err
    # The same prompt cut to max_prompt_length fits: then no refusal for it.
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"max_prompt_length": 61}))
    assert main(_train_cli(tiny_lm, tmp_path, "--prompts", str(data), "--config", str(config))) == 2
    assert "max_prompt_length 61 + max_new_tokens 4 = 65 > the policy's context of 64" in (
        capsys.readouterr().err
    )


# ------------------------------------------------------------- multi-head reward spec


def test_reward_head_index_out_of_range(
    tiny_lm: Path, rm_path: Path, tmp_path: Path, capsys, no_policy_loading
) -> None:
    from paretoopt.integrations.hf.cli import main

    (bad,) = parse_reward_model_spec(f"verbose={rm_path}:5")
    with pytest.raises(ValueError, match=r"reward 'verbose': .* has 2 outputs; label_index 5"):
        bad.load()
    argv = _train_cli(tiny_lm, tmp_path, "--prompts", str(tmp_path / "p.txt"))
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS))
    argv[3] = f"helpful,verbose={rm_path}:0,-3"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "reward 'verbose'" in err and "has 2 outputs; label_index -3 is out of range" in err


def test_reward_spec_duplicate_names(rm_path: Path) -> None:
    with pytest.raises(ValueError, match=r"objective name 'helpful' is given twice"):
        parse_reward_model_spec(f"helpful,helpful={rm_path}:0,1")
    with pytest.raises(ValueError, match=r"output 1 is listed twice"):
        parse_reward_model_spec(f"a,b={rm_path}:1,1")


def test_cli_duplicate_reward_names(tiny_lm: Path, rm_path: Path, tmp_path: Path, capsys):
    from paretoopt.integrations.hf.cli import main

    (tmp_path / "p.txt").write_text("\n".join(PROMPTS))
    argv = _train_cli(tiny_lm, tmp_path, "--prompts", str(tmp_path / "p.txt"))
    argv[3], argv[5] = f"helpful={rm_path}:0", f"helpful={rm_path}:1"
    assert main(argv) == 2
    assert "objective name 'helpful' is given by two --reward specs" in capsys.readouterr().err


# ------------------------------------------------------------------- paretoopt study


def _study(argv: list[str]):
    pytest.importorskip("matplotlib")
    from paretoopt.integrations.study.cli import main

    return main(argv)


def test_study_unknown_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _refuse_task_loading(monkeypatch)
    with pytest.raises(SystemExit, match=r"--methods: unknown method 'ppo'; expected one of"):
        _study(["--tiny", "--out", str(tmp_path), "--methods", "pama,ppo"])


def test_study_unknown_task(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    _refuse_task_loading(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        _study(["--tiny", "--out", str(tmp_path), "--task", "translation"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'translation'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"--seeds: unknown task 'translation'; tasks:"):
        _study(["--tiny", "--out", str(tmp_path), "--seeds", "translation=3"])


def test_study_fewer_than_two_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _refuse_task_loading(monkeypatch)
    with pytest.raises(SystemExit, match=r"sentiment_length has 1 seed; the paired statistics"):
        _study(["--tiny", "--out", str(tmp_path), "--seeds", "sentiment_length=1"])
    with pytest.raises(SystemExit, match=r"--seeds: 'two' is not a number"):
        _study(["--tiny", "--out", str(tmp_path), "--seeds", "two"])


def _refuse_task_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    from paretoopt.integrations.study import tasks

    def refuse(*args, **kwargs):
        raise AssertionError("a task was loaded before the bad input was refused")

    monkeypatch.setattr(tasks, "load_task", refuse)


def test_study_output_folder_with_another_studys_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from paretoopt.integrations.study import protocol

    _refuse_task_loading(monkeypatch)
    other = replace(protocol.preset("tiny"), steps=5)  # the other study: 5 steps, not 2
    job = protocol.make_jobs(other, "support_replies", 3)[1]
    runs = tmp_path / "runs" / "support_replies"
    runs.mkdir(parents=True)
    record = {"job": job, "settings": protocol.run_settings(job, other), "evals": {}}
    (runs / f"{protocol.job_name(job)}.json").write_text(json.dumps(record))
    # Refused before either task's artefacts are loaded or any run starts (task 1 first).
    with pytest.raises(SystemExit) as exit_info:
        _study(["--tiny", "--out", str(tmp_path), "--no-progress"])
    message = str(exit_info.value.code)
    assert f"{runs} holds runs of another study" in message
    assert f"{protocol.job_name(job)}.json" in message and "steps: saved 5, now 2" in message


# ---------------------------------------------------------------------- TRL plug-in


@pytest.fixture(scope="module")
def grpo_args(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("trl")
    from paretoopt.integrations.trl import PAMAGRPOConfig

    def make(**kw):
        base = dict(
            output_dir=str(tmp_path_factory.mktemp("grpo")), per_device_train_batch_size=4,
            num_generations=2, max_completion_length=4, max_steps=1, report_to=[],
            save_strategy="no", use_cpu=True, bf16=False,
        )  # fmt: skip
        base.update(kw)
        return PAMAGRPOConfig(**base)

    return make


def _count_a(prompts, completions, **kwargs):
    return [float(c.count("a")) for c in completions]


def _short(prompts, completions, **kwargs):
    return [-float(len(c)) for c in completions]


def test_trl_one_reward_function(grpo_args, tmp_path: Path) -> None:
    from paretoopt.integrations.trl import PAMAGRPOTrainer

    # A model path that does not exist: the refusal comes before any loading.
    missing = str(tmp_path / "no_model")
    for funcs in (_count_a, [_count_a]):
        with pytest.raises(
            ValueError, match=r"at least two reward functions; got 1 \('_count_a'\)"
        ):
            PAMAGRPOTrainer(model=missing, reward_funcs=funcs, args=grpo_args())


def test_trl_reward_weights_of_the_wrong_length(grpo_args, tmp_path: Path) -> None:
    from paretoopt.integrations.trl import PAMAGRPOTrainer

    args = grpo_args(reward_weights=[1.0, 0.5, 0.5])
    with pytest.raises(
        ValueError,
        match=r"reward_weights has 3 entries for 2 reward functions \['_count_a', '_short'\]",
    ):
        PAMAGRPOTrainer(str(tmp_path / "no_model"), [_count_a, _short], args)
