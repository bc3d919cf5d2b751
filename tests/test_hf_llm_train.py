"""The trainer on LLM-shaped work: chat datasets, a two-head reward model, evaluation during
training, the best checkpoint, export, micro-batches and chunked forward passes (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("datasets")

import datasets
from hf_fixtures import (
    CHATS,
    PROMPTS,
    good_rate,
    length_words,
    make_tiny_chat_lm,
    make_two_head_reward_model,
)
from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer
from paretoopt.integrations.hf.checkpoint import is_checkpoint
from paretoopt.integrations.hf.reward_model_specs import parse_reward_model_spec

pytestmark = pytest.mark.hf


@pytest.fixture(scope="module")
def chat_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_chat_lm(tmp_path_factory.mktemp("tiny_chat_lm"))


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_two_head_reward_model(tmp_path_factory.mktemp("rm_two_heads"))


def config(tmp_path: Path, **overrides) -> MOPPOConfig:
    base = dict(
        steps=1, batch_size=8, mini_batch_size=4, ppo_epochs=1, max_new_tokens=6,
        learning_rate=1e-2, kl_coef=0.05, output_dir=str(tmp_path / "run"), progress=False,
        save_final=False, max_grad_norm=None,
    )  # fmt: skip
    base.update(overrides)
    return MOPPOConfig(**base)


def trained_params(path: Path, cfg: MOPPOConfig) -> dict[str, torch.Tensor]:
    """Parameters after one step with plain SGD: Adam's first step is about ``lr * sign(g)``,
    which turns float rounding of gradients that should be zero (e.g. a query bias, under
    softmax's shift invariance) into full-size differences; SGD's step is linear in ``g``."""
    trainer = MOPPOTrainer(cfg, str(path), prompts=PROMPTS, rewards=[length_words, good_rate])
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.5)
    trainer.step()
    return {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()}


@pytest.mark.parametrize(
    ("combiner", "kwargs"),
    [
        ("pama", {}),
        ("linear", {"combiner_kwargs": {"weights": [0.3, 0.7]}}),
        ("morlhf", {"combiner_weights": [0.3, 0.7]}),
    ],
)
def test_micro_batches_give_the_mini_batch_update(
    tiny_lm: Path, tmp_path: Path, combiner: str, kwargs: dict
) -> None:
    whole = trained_params(tiny_lm, config(tmp_path, combiner=combiner, **kwargs))
    start = MOPPOTrainer(
        config(tmp_path, combiner=combiner, **kwargs),
        str(tiny_lm),
        prompts=PROMPTS,
        rewards=[length_words, good_rate],
    ).unwrapped.state_dict()
    moved = max(float((whole[k] - start[k]).abs().max()) for k in whole)
    assert moved > 1e-3  # the step did change the parameters
    for micro in (1, 3):  # 3 does not divide 4: micro-batches of 3 and 1 sequences
        cfg = config(tmp_path, combiner=combiner, micro_batch_size=micro, **kwargs)
        got = trained_params(tiny_lm, cfg)
        for key in whole:
            torch.testing.assert_close(got[key], whole[key], rtol=1e-5, atol=1e-6, msg=key)


def test_micro_batches_are_refused_where_they_change_the_update(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MGDA's min-norm weights need the whole mini-batch"):
        config(tmp_path, combiner="mgda_ub", micro_batch_size=2)
    with pytest.raises(ValueError, match="must not exceed mini_batch_size"):
        config(tmp_path, micro_batch_size=8)


def test_forward_chunks_do_not_change_the_rollout_statistics(tiny_lm: Path, tmp_path: Path) -> None:
    trainer = MOPPOTrainer(
        config(tmp_path), str(tiny_lm), prompts=PROMPTS, rewards=[length_words, good_rate]
    )
    torch.manual_seed(3)
    rollout = trainer.rollout(PROMPTS)
    whole = trainer.forward_rollout(rollout)
    trainer.config.forward_chunk_size = 3
    chunked = trainer.forward_rollout(rollout)
    for key in whole:
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-5, atol=1e-5)


def test_chat_dataset_two_head_reward_model_eval_best_and_export(
    chat_lm: Path, rm_path: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    seen: dict[str, list] = {}

    def records(prompts, responses, prompt_texts=None):
        seen["prompts"], seen["texts"] = list(prompts), list(prompt_texts)
        return [float(len(r.split())) / 6 for r in responses]

    helpful, verbose = parse_reward_model_spec(f"helpful,verbose={rm_path}:1,0")
    train = datasets.Dataset.from_list([{"messages": m} for m in CHATS * 2])
    held_out = datasets.Dataset.from_list([{"messages": m} for m in CHATS[:2]])
    cfg = config(
        tmp_path, steps=2, batch_size=4, use_lora=True, lora_r=4, lora_alpha=8,
        eval_every=1, eval_samples=2, best_criterion="hypervolume_per_response",
        export_dir=str(tmp_path / "ship"), export_merged=True,
    )  # fmt: skip
    trainer = MOPPOTrainer(
        cfg,
        str(chat_lm),
        prompts=train,
        rewards=[helpful, verbose, records],
        reward_names=["helpful", "verbose", "length"],
        eval_prompts=held_out,
    )
    rollout = trainer.rollout(trainer.prompts[:2])
    assert rollout.prompts[1] == "system | a short story | user | this movie is | assistant |"
    assert rollout.conversations == CHATS[:2]
    trainer.train()

    # Reward functions get the conversations, and the text the policy saw when they ask.
    assert all(isinstance(p, list) for p in seen["prompts"])
    assert all(t.endswith("assistant |") for t in seen["texts"])
    assert helpful.reward_model.forward_batches >= 1
    evals = [json.loads(x) for x in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [1.0, 2.0]
    assert evals[0]["reference_point"] == evals[1]["reference_point"]  # fixed by the first
    assert {"eval/reward/helpful", "eval/hypervolume", "samples"} <= set(evals[1])
    assert len(evals[1]["samples"]) == 2 and "assistant |" in evals[1]["samples"][0]["prompt"]
    best = tmp_path / "run" / "best"
    assert is_checkpoint(best)
    record = json.loads((best / "eval.json").read_text())
    assert record["best_value"] == max(e["eval/hypervolume_per_response"] for e in evals)

    ship = tmp_path / "ship"
    card = (ship / "README.md").read_text()
    assert f"reward model `{rm_path}`, output 1" in card and "| verbose |" in card
    assert f"{evals[-1]['eval/reward/helpful']:.4g}" in card
    base = AutoModelForCausalLM.from_pretrained(str(chat_lm))
    PeftModel.from_pretrained(base, str(ship / "adapter"))
    AutoModelForCausalLM.from_pretrained(str(ship / "merged"))


def test_cli_trains_on_a_chat_dataset_and_ships(
    chat_lm: Path, rm_path: Path, tmp_path: Path, capsys
) -> None:
    from paretoopt.integrations.hf.cli import main

    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHATS))
    out, ship = tmp_path / "cli", tmp_path / "cli_ship"
    argv = [
        "--policy", str(chat_lm), "--dataset", str(data), "--eval-dataset", str(data),
        "--reward", f"helpful,verbose={rm_path}:1,0", "--reward", "length:6:0:1:words",
        "--steps", "1", "--batch-size", "4", "--mini-batch-size", "4", "--micro-batch-size", "2",
        "--forward-chunk-size", "2", "--max-new-tokens", "4", "--lora", "--lora-r", "2",
        "--best", "helpful=1,verbose=0.5", "--export-dir", str(ship), "--export-merged",
        "--output-dir", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "eval.jsonl").is_file() and is_checkpoint(out / "best")
    assert (ship / "merged" / "model.safetensors").is_file()
    assert "| helpful |" in (ship / "README.md").read_text()

    assert main([*argv, "--prompts", str(data)]) == 2
    assert "exactly one of --prompts FILE or --dataset" in capsys.readouterr().err
    assert main([*argv, "--load-in-8bit", "--cpu"]) == 2
    assert "load_in_8bit needs a CUDA GPU" in capsys.readouterr().err
