"""Regression tests of the trainer's first review: truncation, EOS ids, PAMA granularity
and masks on the trainer's routes, early errors for missing models, rewards from Python
functions on the command line, sampling warnings and the reward model's separator."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from hf_fixtures import PROMPTS, build_policy, build_tokenizer
from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer, RewardModelFunction
from paretoopt.integrations.hf.advantages import masked_mean
from paretoopt.integrations.hf.cli import build_parser, main
from paretoopt.integrations.hf.rewards import parse_reward_spec

pytestmark = pytest.mark.hf

LONG = "the film was very good and long"


def config(tmp_path: Path, **overrides) -> MOPPOConfig:
    base = dict(
        steps=1, batch_size=8, mini_batch_size=8, ppo_epochs=1, max_new_tokens=8,
        learning_rate=3e-3, kl_coef=0.05, output_dir=str(tmp_path / "run"), progress=False,
        save_final=False,
    )  # fmt: skip
    base.update(overrides)
    return MOPPOConfig(**base)


def word_count(prompts: list[str], responses: list[str]) -> list[float]:
    return [len(r.split()) / 8 for r in responses]


def good_rate(prompts: list[str], responses: list[str]) -> list[float]:
    return [r.split().count("good") / max(1, len(r.split())) for r in responses]


def trainer_for(path: Path, cfg: MOPPOConfig, rewards=None, prompts=PROMPTS) -> MOPPOTrainer:
    rewards = rewards or [word_count, good_rate]
    return MOPPOTrainer(cfg, str(path), prompts=prompts, rewards=rewards)


# -- 1. truncation from the left; rewards see the prompt the policy saw ----------------------


def test_prompts_are_cut_from_the_left_and_rewards_get_them(tiny_lm: Path, tmp_path: Path):
    seen: list[str] = []

    def record(prompts: list[str], responses: list[str]) -> list[float]:
        seen.extend(prompts)
        return [0.0] * len(responses)

    cfg = config(tmp_path, max_prompt_length=3, batch_size=2, mini_batch_size=2)
    trainer = trainer_for(tiny_lm, cfg, rewards=[record, word_count], prompts=[LONG, "a story"])
    tok = trainer.tokenizer
    assert tok.truncation_side == "right"
    rollout = trainer.rollout([LONG, "a story"])
    assert tok.truncation_side == "right"  # the tokenizer's own setting is restored
    kept = rollout.input_ids[0, : rollout.response_start].tolist()
    assert kept == tok(LONG)["input_ids"][-3:]  # "good and long", not "the film was"
    trainer.score(rollout, step=1)
    assert seen == ["good and long", "a story"]


# -- 7. several end-of-sequence ids --------------------------------------------------------


@pytest.fixture(scope="module")
def two_eos_lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """A tiny model whose generation config lists two EOS ids; it prefers the second."""
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("two_eos")
    tok = build_tokenizer(path, extra_special=["<eot>"])
    eot = tok.convert_tokens_to_ids("<eot>")
    build_policy(path, len(tok), eot, eos_prob=0.3)
    model = AutoModelForCausalLM.from_pretrained(str(path))
    model.generation_config.eos_token_id = [tok.eos_token_id, eot]
    model.config.eos_token_id = tok.eos_token_id
    model.save_pretrained(str(path))
    return path, tok.eos_token_id, eot


def test_generation_stops_and_masks_at_every_eos_id(two_eos_lm, tmp_path: Path) -> None:
    path, eos, eot = two_eos_lm
    trainer = trainer_for(path, config(tmp_path, max_new_tokens=10))
    assert set(trainer.eos_token_ids) == {eos, eot}
    rollout = trainer.rollout(list(PROMPTS) * 2)
    ids, mask = rollout.response_ids, rollout.mask
    stopped_at_eot = 0
    for row, m in zip(ids.tolist(), mask.tolist(), strict=True):
        length = sum(m)
        assert m == [1] * length + [0] * (len(m) - length)
        ends = [t for t in row[:length] if t in (eos, eot)]
        # at most one EOS-like token, and it is the last valid one
        assert ends == ([] if length == len(m) and row[-1] not in (eos, eot) else [row[length - 1]])
        stopped_at_eot += int(row[length - 1] == eot)
    assert stopped_at_eot >= 3  # the model prefers <eot>: most responses end there
    assert not any("<eot>" in r for r in rollout.responses)


# -- 2, 3, 4. PAMA: batch granularity, masks on the generic route, diagnostics --------------


def test_generic_route_refuses_batch_granularity(tiny_lm: Path, tmp_path: Path) -> None:
    from paretoopt import PAMA

    with pytest.raises(ValueError, match="granularity='batch' needs pama_fast_path=True"):
        config(tmp_path, pama_granularity="batch", pama_fast_path=False)  # the config alone
    cfg = config(tmp_path, pama_fast_path=False)
    with pytest.raises(ValueError, match="granularity='batch' needs pama_fast_path=True"):
        rewards = [word_count, good_rate]
        MOPPOTrainer(cfg, str(tiny_lm), prompts=PROMPTS, rewards=rewards,
                     combiner=PAMA(granularity="batch"))  # fmt: skip


@pytest.mark.parametrize("granularity", ["sample", "batch"])
def test_pama_diagnostics_describe_the_s_star_trained_on(
    tiny_lm: Path, tmp_path: Path, granularity: str
) -> None:
    trainer = trainer_for(tiny_lm, config(tmp_path, pama_granularity=granularity))
    rollout = trainer.rollout(list(PROMPTS))
    batch = trainer.compute_advantages(rollout, trainer.score(rollout, step=1))
    stats, mask = batch.pama_stats, batch.mask
    assert batch.s_star is not None and batch.pama_weights is not None
    assert float(batch.s_star.abs().sum()) > 0
    assert stats["mean_s_star"] == pytest.approx(float(masked_mean(batch.s_star, mask)))
    zero = ((batch.s_star == 0) & mask.bool()).sum() / mask.sum()
    assert stats["zero_rate"] == pytest.approx(float(zero))
    for i in range(2):
        w = float(masked_mean(batch.pama_weights[i].double(), mask))
        assert stats[f"binding_rate/{i}"] == pytest.approx(w)


def test_generic_route_logs_the_weights_of_valid_tokens(tiny_lm: Path, tmp_path: Path) -> None:
    """One mini-batch, ratio 1: the generic route's mean weights equal the fast path's."""
    logged = []
    for fast in (True, False):
        trainer = trainer_for(tiny_lm, config(tmp_path / str(fast), pama_fast_path=fast))
        metrics = trainer.train()[0]
        logged.append([metrics["weights/word_count"], metrics["weights/good_rate"]])
    assert metrics["response_length"] < 8  # padding exists, so the mask matters
    assert logged[1] == pytest.approx(logged[0], abs=1e-6)


# -- 8. the paper's target KL ----------------------------------------------------------------


def test_target_kl_defaults_to_the_papers_value() -> None:
    assert MOPPOConfig().target_kl == 3.0


# -- 10. missing local models fail early and clearly -------------------------------------------


def test_missing_local_model_paths_are_named(tmp_path: Path, capsys) -> None:
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match=r"does not exist.*offline"):
        trainer_for(Path(missing), config(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"reward model 'rm'.*does not exist"):
        RewardModelFunction(missing, name="rm")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_reward_spec(f"rm={missing}:1")
    RewardModelFunction("org/some-model")  # a hub id: loaded lazily, not checked here
    prompts = tmp_path / "p.txt"
    prompts.write_text("the film was\n")
    argv = ["--policy", "/nonexistent", "--prompts", str(prompts), "--reward", "length"]
    assert main([*argv, "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'/nonexistent' does not exist" in err and "Repo id" not in err


# -- 11. Python reward functions on the command line -------------------------------------------


def test_reward_spec_imports_a_named_python_function(tmp_path: Path, monkeypatch) -> None:
    module = f"myrewards_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        "def polite(prompts, responses):\n"
        "    return [float('please' in r) for r in responses]\n"
        "NOT_CALLABLE = 3\n"
    )
    monkeypatch.chdir(tmp_path)
    fn = parse_reward_spec(f"manners={module}:polite")
    assert fn.name == "manners" and fn(["p", "q"], ["please go", "go"]) == [1.0, 0.0]
    assert parse_reward_spec(f"{module}:polite").name == "polite"
    assert str(tmp_path) not in sys.path  # the search path is left as it was
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        parse_reward_spec("r=no_such_module_xyz:fn")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        parse_reward_spec(f"r={module}:missing")
    with pytest.raises(ValueError, match="not a callable"):
        parse_reward_spec(f"r={module}:NOT_CALLABLE")
    assert "package.module:func" in build_parser().format_help()


def test_cli_reports_a_failing_python_reward(tiny_lm: Path, tmp_path: Path, monkeypatch, capsys):
    module = f"badrewards_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        "def broken(prompts, responses):\n    raise RuntimeError('no score today')\n"
    )
    monkeypatch.chdir(tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    argv = [
        "--policy", str(tiny_lm), "--prompts", str(prompts), "--reward", f"b={module}:broken",
        "--reward", "length", "--steps", "1", "--batch-size", "2", "--max-new-tokens", "3",
        "--output-dir", str(tmp_path / "out"), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'b'" in err and "step 1" in err and "no score today" in err


# -- 12. sampling warnings and the reward model's separator -----------------------------------


def test_processed_sampling_warns(tiny_lm: Path, tmp_path: Path) -> None:
    for field, value in (("top_k", 5), ("top_p", 0.9), ("min_new_tokens", 2)):
        with pytest.warns(UserWarning, match=rf"{field}={value}.*off-policy"):
            trainer_for(tiny_lm, config(tmp_path, **{field: value}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        trainer_for(tiny_lm, config(tmp_path))


def test_reward_model_separator_is_explicit(tiny_lm: Path) -> None:
    auto = RewardModelFunction(str(tiny_lm))
    assert auto.join("the film was", "good") == "the film was good"  # SentencePiece-style
    assert auto.join("the film was", " good") == "the film was good"  # byte-level BPE
    assert auto.join("the film was\n", "good") == "the film was\ngood"
    assert RewardModelFunction(str(tiny_lm), separator="").join("was", "good") == "wasgood"
    scores = auto(["the film was"], ["good"])
    assert len(scores) == 1 and math.isfinite(scores[0])
