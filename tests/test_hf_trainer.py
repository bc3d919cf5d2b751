"""End-to-end tests of the multi-objective PPO trainer on a tiny offline GPT-2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from hf_fixtures import PROMPTS, build_tokenizer
from paretoopt.integrations.hf import (
    MOPPOConfig,
    MOPPOTrainer,
    RewardError,
    RewardModelFunction,
    make_length_reward,
)
from paretoopt.integrations.hf.checkpoint import STATE_FILE, is_checkpoint

pytestmark = pytest.mark.hf


length_words = make_length_reward(scale=8, lo=0.0, hi=1.0, unit="words")


def good_rate(prompts: list[str], responses: list[str]) -> list[float]:
    """Share of the word "good" in each response (a second, conflicting objective)."""
    return [r.split().count("good") / max(1, len(r.split())) for r in responses]


def make_config(tmp_path: Path, **overrides) -> MOPPOConfig:
    base = dict(
        steps=2,
        batch_size=8,
        mini_batch_size=4,
        ppo_epochs=1,
        max_new_tokens=8,
        learning_rate=3e-3,
        kl_coef=0.05,
        output_dir=str(tmp_path / "run"),
        progress=False,
        save_final=False,
    )
    base.update(overrides)
    return MOPPOConfig(**base)


def make_trainer(path: Path, config: MOPPOConfig, rewards=None, **kwargs) -> MOPPOTrainer:
    rewards = rewards if rewards is not None else [length_words, good_rate]
    names = kwargs.pop("reward_names", ["len", "other"] if len(rewards) == 2 else None)
    return MOPPOTrainer(
        config, str(path), prompts=PROMPTS, rewards=rewards, reward_names=names, **kwargs
    )


def params_of(trainer: MOPPOTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()}


def comparable(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


@pytest.mark.parametrize("combiner", ["pama", "linear", "mgda_ub", "mgda"])
def test_each_combiner_trains(tiny_lm: Path, tmp_path: Path, combiner: str) -> None:
    kwargs = {"weights": [0.3, 0.7]} if combiner == "linear" else {}
    cfg = make_config(tmp_path, combiner=combiner, combiner_kwargs=kwargs)
    trainer = make_trainer(tiny_lm, cfg)
    before = params_of(trainer)
    history = trainer.train()

    assert len(history) == 2 and [m["step"] for m in history] == [1.0, 2.0]
    for metrics in history:
        for key in (
            "reward/len",
            "reward/other",
            "kl",
            "kl_coef",
            "loss/policy",
            "loss/value",
            "weights/len",
            "weights/other",
            "time/generate",
            "time/score",
            "time/advantages",
            "time/update",
            "time/combine",
        ):
            assert key in metrics, key
            assert math.isfinite(metrics[key]), key
        weights = [metrics["weights/len"], metrics["weights/other"]]
        if combiner == "linear":
            assert weights == pytest.approx([0.3, 0.7])
        else:  # PAMA and MGDA put their weights on the simplex
            assert min(weights) >= -1e-9 and sum(weights) == pytest.approx(1.0, abs=1e-6)
    # Step 1 samples from pi_ref itself: the KL estimate is exactly zero.
    assert history[0]["kl"] == 0.0
    if combiner == "pama":
        assert history[0]["binding_rate/len"] + history[0]["binding_rate/other"] == pytest.approx(1)
    after = params_of(trainer)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("policy.") for k in changed)
    assert any(k.startswith("value_heads.") for k in changed)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1.0, 2.0]


def test_pama_fast_path_equals_generic_combiner_route(tiny_lm: Path, tmp_path: Path) -> None:
    """s* = pama_advantages(A) in one surrogate == PAMA(shared=u) on the n Noon PPO losses."""
    results = []
    for fast in (True, False):
        cfg = make_config(tmp_path / str(fast), steps=1, ppo_epochs=2, pama_fast_path=fast)
        trainer = make_trainer(tiny_lm, cfg)
        initial = params_of(trainer)
        trainer.train()
        results.append((initial, params_of(trainer)))
    (init_a, fast_params), (_, generic_params) = results
    moved = 0
    for key in fast_params:
        torch.testing.assert_close(fast_params[key], generic_params[key], rtol=1e-5, atol=1e-6)
        moved += int(not torch.equal(fast_params[key], init_a[key]))
    assert moved > 0


def test_length_reward_drives_responses_longer(tiny_lm: Path, tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path, steps=12, batch_size=16, mini_batch_size=8, ppo_epochs=2, max_new_tokens=12
    )
    # Two objectives that agree (words and characters): PAMA reinforces what both favour.
    chars = make_length_reward(scale=60, unit="chars")
    history = make_trainer(tiny_lm, cfg, rewards=[length_words, chars]).train()
    lengths = [m["response_length"] for m in history]
    rewards = [m["reward/len"] for m in history]
    first, last = sum(lengths[:2]) / 2, sum(lengths[-3:]) / 3
    assert last > first + 3.0, lengths
    assert sum(rewards[-3:]) / 3 > sum(rewards[:2]) / 2 + 0.2, rewards


def test_lora_trains_the_adapter_only_and_uses_the_base_as_reference(
    tiny_lm: Path, tmp_path: Path
) -> None:
    from paretoopt.integrations.hf.value_heads import response_forward
    from transformers import AutoModelForCausalLM

    cfg = make_config(tmp_path, use_lora=True, lora_r=4, lora_alpha=8, learning_rate=1e-2)
    trainer = make_trainer(tiny_lm, cfg)
    assert trainer.ref_model is None  # no second copy: the reference is the adapter switched off
    trainable = [n for n, p in trainer.unwrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("value_heads.") for n in trainable)
    trainer.train()

    base = AutoModelForCausalLM.from_pretrained(str(tiny_lm)).eval()
    ids = trainer.tokenizer(["the film was good and long"], return_tensors="pt")
    start = 3
    with torch.no_grad():
        expected = response_forward(base, ids["input_ids"], ids["attention_mask"], start)
        with trainer.reference_context():
            ref = response_forward(
                trainer.reference_model, ids["input_ids"], ids["attention_mask"], start
            )
        policy = response_forward(trainer.policy, ids["input_ids"], ids["attention_mask"], start)
    torch.testing.assert_close(ref["logprobs"], expected["logprobs"])
    assert not torch.allclose(policy["logprobs"], expected["logprobs"])  # the adapter moved

    ckpt = trainer.save_checkpoint()
    saved = {p.name for p in (ckpt / "policy").iterdir()}
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved
    assert (ckpt / "value_heads.safetensors").is_file()


@pytest.mark.parametrize("use_lora", [False, True])
def test_resume_continues_exactly(tiny_lm: Path, tmp_path: Path, use_lora: bool) -> None:
    lora = dict(use_lora=use_lora, lora_r=4, lora_alpha=8)
    straight = make_trainer(tiny_lm, make_config(tmp_path / "a", steps=4, **lora))
    full = straight.train()

    first = make_trainer(tiny_lm, make_config(tmp_path / "b", steps=2, save_final=True, **lora))
    first.train()
    ckpt = tmp_path / "b" / "run" / "checkpoint-2"
    assert is_checkpoint(ckpt)
    resumed = make_trainer(
        tiny_lm, make_config(tmp_path / "b", steps=4, resume_from=str(ckpt), **lora)
    )
    assert resumed.global_step == 2
    history = resumed.train()

    assert len(history) == 4
    for a, b in zip(full, history, strict=True):
        assert comparable(a) == comparable(b)
    end_a, end_b = params_of(straight), params_of(resumed)
    for key in end_a:
        assert torch.equal(end_a[key], end_b[key]), key
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "b/run/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1.0, 2.0, 3.0, 4.0]


def _fails_at_second_call(kind: str):
    calls = {"n": 0}

    def flaky(prompts: list[str], responses: list[str]) -> list[float]:
        calls["n"] += 1
        if calls["n"] < 2:
            return [1.0] * len(responses)
        if kind == "raise":
            raise RuntimeError("service unavailable")
        if kind == "nan":
            return [float("nan")] * len(responses)
        return [1.0] * (len(responses) - 1)

    return flaky


@pytest.mark.parametrize("kind", ["raise", "nan", "wrong_length"])
def test_bad_reward_names_function_and_step_and_keeps_checkpoints(
    tiny_lm: Path, tmp_path: Path, kind: str
) -> None:
    cfg = make_config(tmp_path, steps=3, save_every=1)
    trainer = make_trainer(
        tiny_lm, cfg, rewards=[length_words, _fails_at_second_call(kind)],
        reward_names=["len", "flaky"],
    )  # fmt: skip
    with pytest.raises(RewardError) as info:
        trainer.train()
    message = str(info.value)
    assert "'flaky'" in message and "step 2" in message
    run = tmp_path / "run"
    assert is_checkpoint(run / "checkpoint-1") and not (run / "checkpoint-2").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no half-written folder
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    # What was saved is usable: resume from it with a working reward.
    cfg2 = make_config(tmp_path, steps=2, resume_from="latest")
    resumed = make_trainer(tiny_lm, cfg2, rewards=[length_words, good_rate],
                           reward_names=["len", "flaky"])  # fmt: skip
    assert resumed.global_step == 1
    assert len(resumed.train()) == 2


def test_failed_save_leaves_the_previous_checkpoint(
    tiny_lm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer(tiny_lm, make_config(tmp_path, steps=1))
    trainer.train()
    target = tmp_path / "ckpt"
    trainer.save_checkpoint(target)
    state_before = (target / STATE_FILE).read_text()
    trainer.global_step = 5

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("paretoopt.integrations.hf.trainer.torch.save", disk_full)
    with pytest.raises(OSError, match="No space"):
        trainer.save_checkpoint(target)
    assert (target / STATE_FILE).read_text() == state_before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_callbacks_receive_every_step(tiny_lm: Path, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.logs: list[dict] = []
            self.events: list[str] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.events.append("begin")

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append({"global_step": state.global_step, **logs})

        def on_train_end(self, args, state, control, **kwargs):
            self.events.append("end")

    recorder = Recorder()
    trainer = make_trainer(tiny_lm, make_config(tmp_path), callbacks=[recorder])
    history = trainer.train()
    assert recorder.events == ["begin", "end"]
    assert [log["global_step"] for log in recorder.logs] == [1, 2]
    assert recorder.logs[1]["reward/len"] == history[1]["reward/len"]


def test_reward_model_by_path(tiny_lm: Path, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    rm_path = tmp_path / "rm"
    tok = build_tokenizer(rm_path)
    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2, num_labels=2,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model = GPT2ForSequenceClassification(config).eval()
    model.save_pretrained(str(rm_path))

    reward = RewardModelFunction(str(rm_path), label_index=1, name="rm")
    prompts, responses = ["the film was", "this movie is"], [" good", " very dull and long"]
    scores = reward(prompts, responses)
    with torch.no_grad():
        for p, r, s in zip(prompts, responses, scores, strict=True):
            enc = tok([p + r], return_tensors="pt")
            assert s == pytest.approx(float(model(**enc).logits[0, 1]), abs=1e-5)

    trainer = make_trainer(
        tiny_lm, make_config(tmp_path, steps=1), rewards=[f"rm={rm_path}:1", "length"],
        reward_names=None,
    )  # fmt: skip
    assert trainer.reward_names == ["rm", "length"]
    metrics = trainer.train()[0]
    assert math.isfinite(metrics["reward/rm"]) and math.isfinite(metrics["reward/length"])


def test_ratio_to_old_with_whitening_and_generate(tiny_lm: Path, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, ratio_to="old", advantage_normalization="whiten", ppo_epochs=2)
    trainer = make_trainer(tiny_lm, cfg)
    history = trainer.train()
    # Against pi_old the first mini-batch of every step starts at ratio 1.
    assert all(math.isfinite(v) for m in history for v in m.values())
    texts = trainer.generate(PROMPTS[:3], max_new_tokens=5)
    assert texts == trainer.generate(PROMPTS[:3], max_new_tokens=5)  # greedy
    assert len(texts) == 3 and all(isinstance(t, str) and len(t.split()) <= 5 for t in texts)


def test_cli_trains_from_a_prompt_file(tiny_lm: Path, tmp_path: Path, capsys) -> None:
    from paretoopt.integrations.hf.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "cli_run"
    argv = [
        "--policy", str(tiny_lm), "--prompts", str(prompts),
        "--reward", "length:8:0:1:words", "--reward", "length",
        "--combiner", "linear", "--weights", "0.5", "0.5",
        "--steps", "2", "--batch-size", "4", "--max-new-tokens", "6", "--lr", "1e-3",
        "--output-dir", str(out), "--no-progress", "--sample", "1",
    ]  # fmt: skip
    assert main(argv) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert is_checkpoint(out / "checkpoint-2")
    assert "done: 2 steps" in capsys.readouterr().out

    # A reward model path that does not exist is refused before any loading or training.
    bad = [*argv[:4], "--reward", f"broken={tmp_path / 'missing'}:0", *argv[6:]]
    assert main([*bad, "--output-dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "'broken'" in err and "does not exist" in err
    assert not (tmp_path / "bad").exists()
