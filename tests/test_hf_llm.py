"""Held-out evaluation, best checkpoint, export of a shippable model, quantisation checks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from hf_fixtures import PROMPTS, good_rate, length_words
from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer
from paretoopt.integrations.hf.checkpoint import is_checkpoint
from paretoopt.integrations.hf.evaluation import (
    BestCheckpoint,
    EvalResult,
    evaluate,
    parse_criterion,
)
from paretoopt.integrations.hf.export import export_model
from paretoopt.integrations.hf.quant import (
    check_quantization,
    prepare_quantized_policy,
    quantization_config,
)

pytestmark = pytest.mark.hf


def make_trainer(path: Path, tmp_path: Path, **overrides) -> MOPPOTrainer:
    base = dict(
        steps=1, batch_size=4, mini_batch_size=4, ppo_epochs=1, max_new_tokens=6,
        learning_rate=3e-2, kl_coef=0.05, output_dir=str(tmp_path / "run"), progress=False,
        save_final=False,
    )  # fmt: skip
    base.update(overrides)
    return MOPPOTrainer(
        MOPPOConfig(**base),
        str(path),
        prompts=PROMPTS,
        rewards=[length_words, good_rate],
        reward_names=["len", "good"],
    )


def logits_of(model, tokenizer, texts: list[str]) -> torch.Tensor:
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits.float()


# ---------------------------------------------------------------- evaluation


def evaluate_now(trainer: MOPPOTrainer, prompts, **kwargs) -> EvalResult:
    """:func:`evaluate` of the trainer's current policy with its rewards, greedy."""
    return evaluate(
        trainer.generation(), trainer.reward_fns, trainer.reward_names, prompts,
        step=trainer.global_step, **kwargs,
    )  # fmt: skip


def test_evaluate_scores_held_out_prompts_and_hypervolumes(tiny_lm: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_lm, tmp_path)
    held_out = PROMPTS[4:]
    result = evaluate_now(trainer, held_out, n_samples=2)
    responses = trainer.generate(held_out)  # greedy, as evaluate answers
    want = [length_words(held_out, responses), good_rate(held_out, responses)]
    torch.testing.assert_close(result.scores, torch.tensor(want, dtype=torch.float64))
    assert result.rewards["len"] == pytest.approx(sum(want[0]) / len(held_out))
    # Default reference: each objective's worst response in this evaluation.
    ref = [min(want[0]), min(want[1])]
    assert result.reference_point == pytest.approx(ref)
    means = [sum(w) / len(w) for w in want]
    hv = max(means[0] - ref[0], 0) * max(means[1] - ref[1], 0)
    per = sum(max(a - ref[0], 0) * max(b - ref[1], 0) for a, b in zip(*want, strict=True)) / 4
    metrics = result.metrics()
    assert metrics["eval/hypervolume"] == pytest.approx(hv)
    assert metrics["eval/hypervolume_per_response"] == pytest.approx(per)
    assert len(result.samples) == 2 and result.samples[0]["response"] == responses[0]
    assert result.samples[0]["len"] == pytest.approx(want[0][0])
    # A reference point above every response gives zero volume.
    high = evaluate_now(trainer, held_out, reference_point=[5.0, 5.0])
    assert high.hypervolume == 0.0 and high.hypervolume_per_response == 0.0
    with pytest.raises(ValueError, match="1 values for 2 objectives"):
        evaluate_now(trainer, held_out, reference_point=[0.0])


def test_best_checkpoint_keeps_the_highest_criterion_atomically(
    tiny_lm: Path, tmp_path: Path
) -> None:
    trainer = make_trainer(tiny_lm, tmp_path)
    names = ["len", "good"]
    assert parse_criterion("reward/len", names) == "len"
    assert parse_criterion("len=0.7,good=0.3", names) == {"len": 0.7, "good": 0.3}
    with pytest.raises(ValueError, match="neither 'hypervolume'"):
        parse_criterion("fluency", names)
    with pytest.raises(ValueError, match=r"unknown objectives \['x'\]"):
        parse_criterion({"x": 1.0}, names)

    best = BestCheckpoint("len=1,good=2", names, tmp_path / "run" / "best")
    result = evaluate_now(trainer, PROMPTS[:4], reference_point=[0.0, 0.0])
    value = result.rewards["len"] + 2 * result.rewards["good"]
    assert best.value(result) == pytest.approx(value)
    assert best.update(trainer.save_checkpoint, result)
    folder = tmp_path / "run" / "best"
    assert is_checkpoint(folder)
    record = json.loads((folder / "eval.json").read_text())
    assert record["best_value"] == pytest.approx(value) and record["criterion"] == {
        "len": 1.0,
        "good": 2.0,
    }
    stamp = (folder / "trainer_state.json").stat().st_mtime_ns
    worse_result = EvalResult(7, names, result.scores - 1.0, [0.0, 0.0])
    # Not better: the folder is untouched.
    assert not best.update(trainer.save_checkpoint, worse_result)
    assert (folder / "trainer_state.json").stat().st_mtime_ns == stamp
    better = EvalResult(9, names, result.scores + 1.0, [0.0, 0.0])
    assert best.update(trainer.save_checkpoint, better) and best.best_step == 9
    assert json.loads((folder / "eval.json").read_text())["step"] == 9.0
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".best")]
    assert leftovers == []
    again = BestCheckpoint("len=1,good=2", names, folder)
    again.restore()
    assert again.best == pytest.approx(best.best) and again.best_step == 9


# -------------------------------------------------------------------- export


def test_export_adapter_and_merged_weights_load_and_match(tiny_lm: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer = make_trainer(tiny_lm, tmp_path, use_lora=True, lora_r=4, lora_alpha=8)
    trainer.train()
    out = export_model(
        trainer.unwrapped, trainer.tokenizer, trainer.training_summary(), tmp_path / "ship",
        merged=True, eval_metrics={"eval/reward/len": 0.25},
    )  # fmt: skip
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert "adapter/adapter_model.safetensors" in files and "merged/model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth"))]
    assert "value_heads.safetensors" in files
    assert not [f for f in files if f.startswith(("adapter/value", "merged/value"))]

    tok = AutoTokenizer.from_pretrained(str(out / "merged"))
    texts = PROMPTS[:3]
    trainer.policy.eval()
    trained = logits_of(trainer.policy, tok, texts)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_lm))
    before = logits_of(base, tok, texts)
    assert (trained - before).abs().max() > 1e-3  # the adapter learned something
    adapter = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    torch.testing.assert_close(logits_of(adapter, tok, texts), trained, atol=1e-5, rtol=1e-5)
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged")).eval()
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(logits_of(merged, tok, texts), trained, atol=1e-4, rtol=1e-4)

    card = (out / "README.md").read_text()
    assert card == (out / "adapter" / "README.md").read_text()
    for text in ("| len |", "| good |", "0.25", "**pama**", "1 steps", '"lora_r": 4'):
        assert text in card, text
    assert f"base_model: {tiny_lm}" in card and "hf_fixtures.good_rate" in card
    assert json.loads((out / "value_heads.json").read_text())["objectives"] == ["len", "good"]


def test_export_full_model_without_lora(tiny_lm: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    trainer = make_trainer(tiny_lm, tmp_path)
    trainer.train()
    summary = trainer.training_summary()
    out = export_model(trainer.unwrapped, trainer.tokenizer, summary, tmp_path / "ship")
    model = AutoModelForCausalLM.from_pretrained(str(out / "model")).eval()
    trainer.policy.eval()
    want = logits_of(trainer.policy, trainer.tokenizer, PROMPTS[:2])
    torch.testing.assert_close(logits_of(model, trainer.tokenizer, PROMPTS[:2]), want)
    assert "not evaluated" in (out / "README.md").read_text()
    with pytest.raises(ValueError, match="merged=True needs use_lora=True"):
        export_model(trainer.unwrapped, trainer.tokenizer, summary, tmp_path / "ship2", merged=True)


# -------------------------------------------------------------- quantisation


def _quant_cfg(**kw) -> SimpleNamespace:
    base = dict(load_in_8bit=False, load_in_4bit=False, use_lora=True, cpu=False)
    base.update(kw)
    return SimpleNamespace(**base)


def test_quantisation_is_refused_early_with_the_reason(monkeypatch) -> None:
    check_quantization(_quant_cfg())  # not quantised: nothing to check
    with pytest.raises(ValueError, match="exclusive"):
        check_quantization(_quant_cfg(load_in_8bit=True, load_in_4bit=True))
    with pytest.raises(ValueError, match="load_in_4bit needs use_lora=True"):
        check_quantization(_quant_cfg(load_in_4bit=True, use_lora=False))
    with pytest.raises(ValueError, match="cpu=True forbids it"):
        check_quantization(_quant_cfg(load_in_8bit=True, cpu=True))
    with pytest.raises(ValueError, match="bnb_4bit_quant_type"):
        check_quantization(_quant_cfg(load_in_4bit=True, bnb_4bit_quant_type="int3"))
    check_quantization(_quant_cfg(load_in_8bit=True), hardware=False)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a),
    )
    with pytest.raises(ImportError, match=r"needs bitsandbytes: pip install 'paretoopt\[quant\]'"):
        check_quantization(_quant_cfg(load_in_8bit=True))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="load_in_4bit needs a CUDA GPU"):
        check_quantization(_quant_cfg(load_in_4bit=True))


def test_quantisation_config_and_kbit_preparation_on_cpu(tiny_lm: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    q4 = quantization_config(_quant_cfg(load_in_4bit=True, bnb_4bit_compute_dtype="float16"))
    assert q4.load_in_4bit and q4.bnb_4bit_quant_type == "nf4"
    assert q4.bnb_4bit_compute_dtype == torch.float16 and q4.bnb_4bit_use_double_quant
    assert quantization_config(_quant_cfg(load_in_8bit=True)).load_in_8bit
    assert quantization_config(_quant_cfg()) is None

    # The preparation itself runs on any model: base frozen, checkpointing on, inputs with grad.
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm))
    model = prepare_quantized_policy(model, gradient_checkpointing=True)
    assert not any(p.requires_grad for p in model.parameters())
    assert model.is_gradient_checkpointing
    lora = LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=4, fan_in_fan_out=True)
    peft_model = get_peft_model(model, lora)
    tok = AutoTokenizer.from_pretrained(str(tiny_lm))
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    peft_model.train()
    peft_model(**enc).logits.sum().backward()
    trained = [n for n, p in peft_model.named_parameters() if p.grad is not None]
    assert trained and all("lora_" in n for n in trained)
