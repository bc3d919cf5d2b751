"""Regression tests of the second trainer review: early errors for the evaluation set-up,
config-only refusals, resuming (eval.jsonl, best/, the fp16 gradient scaler), evaluation on
the prompts as seen, ``prompt_texts`` through command-line rewards, reward heads loaded at
build, unique reward names and the model card's combiner."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from hf_fixtures import PROMPTS, make_two_head_reward_model
from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer
from paretoopt.integrations.hf.reward_models import RewardHead, shared_reward_model
from paretoopt.integrations.hf.rewards import (
    bind_prompt_texts,
    parse_reward_spec,
    unique_reward_names,
)

pytestmark = pytest.mark.hf


def config(tmp_path: Path, **overrides) -> MOPPOConfig:
    base = dict(
        steps=1, batch_size=4, mini_batch_size=4, ppo_epochs=1, max_new_tokens=4,
        learning_rate=3e-3, output_dir=str(tmp_path / "run"), progress=False, save_final=False,
    )  # fmt: skip
    base.update(overrides)
    return MOPPOConfig(**base)


def word_count(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(len(r.split())) for r in responses]


def prompt_words(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(len(p.split())) for p in prompts]


# -- 1, 2. the evaluation set-up is checked when the trainer is built -------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(eval_every=1), "eval_every=1 needs held-out prompts"),
        (dict(best_criterion="hypervolume"), "best_criterion='hypervolume' needs held-out"),
    ],
)
def test_evaluation_without_eval_prompts_fails_at_build(
    tiny_lm: Path, tmp_path: Path, overrides: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        MOPPOTrainer(config(tmp_path, **overrides), str(tiny_lm), prompts=PROMPTS,
                     rewards=[word_count])  # fmt: skip


@pytest.mark.parametrize(
    ("point", "match"),
    [([0.0], "has 1 values for 2 objectives"), ([0.0, math.nan], r"eval_reference_point\[1\]")],
)
def test_eval_reference_point_is_checked_at_build(
    tiny_lm: Path, tmp_path: Path, point: list[float], match: str
) -> None:
    cfg = config(tmp_path, eval_reference_point=point)
    with pytest.raises(ValueError, match=match):
        MOPPOTrainer(cfg, str(tiny_lm), prompts=PROMPTS, rewards=[word_count, prompt_words],
                     eval_prompts=PROMPTS[:2])  # fmt: skip


# -- 3. config-only refusals ----------------------------------------------------------------


@pytest.mark.parametrize("combiner", ["mgda", "mgda_ub"])
@pytest.mark.parametrize("normalization", ["loss", "loss+"])
def test_loss_normalization_is_refused_on_ppo_losses_at_build(
    combiner: str, normalization: str
) -> None:
    """A PPO policy loss has no fixed sign: with Noon always <= 0, without Noon either sign,
    so dividing by it would fail at some later update. Refused when the config is built."""
    for noon in (True, False):
        with pytest.raises(ValueError, match="no fixed sign"):
            MOPPOConfig(combiner=combiner, mgda_normalization=normalization, noon=noon)
        with pytest.raises(ValueError, match="no fixed sign"):
            MOPPOConfig(combiner=combiner, combiner_kwargs={"normalization": normalization},
                        noon=noon)  # fmt: skip
    # other combiners never divide by the loss
    assert MOPPOConfig(combiner="pama", mgda_normalization=normalization)


@pytest.mark.parametrize("rescale", [False, True])
def test_mgda_rescale_reaches_the_combiner(rescale: bool) -> None:
    from paretoopt.integrations.hf.models import build_combiner

    config = MOPPOConfig(combiner="mgda_ub", mgda_rescale=rescale)
    combiner = build_combiner(config, 1, 2)
    assert combiner.rescale is rescale and combiner.normalization == "l2"
    distributed = build_combiner(config, 2, 2)  # DistributedMGDA under data parallelism
    assert distributed.mgda.rescale is rescale
    assert distributed.loss_scale_degree == (0 if rescale else 1)
    assert MOPPOConfig().mgda_rescale is False  # the authors' code: simplex weights
    with pytest.raises(ValueError, match="mgda_rescale"):
        MOPPOConfig(mgda_rescale="yes")


def test_batch_granularity_on_the_generic_route_is_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match="granularity='batch' needs pama_fast_path=True"):
        MOPPOConfig(pama_granularity="batch", pama_fast_path=False)
    with pytest.raises(ValueError, match="granularity='batch' needs pama_fast_path=True"):
        MOPPOConfig(combiner_kwargs={"granularity": "batch"}, pama_fast_path=False)
    assert MOPPOConfig(pama_granularity="batch", pama_fast_path=True)


# -- 4. resuming drops the abandoned steps' evaluations and best checkpoint -----------------


def test_resume_drops_later_evaluations_and_best(tiny_lm: Path, tmp_path: Path) -> None:
    calls = [0]

    def rising(prompts: list[str], responses: list[str]) -> list[float]:
        calls[0] += 1  # every call scores higher: the last evaluation is the best
        return [float(calls[0])] * len(responses)

    common = dict(eval_every=1, save_every=1, best_criterion="rising")
    MOPPOTrainer(config(tmp_path, steps=2, **common), str(tiny_lm), prompts=PROMPTS,
                 rewards=[rising], eval_prompts=PROMPTS[:2]).train()  # fmt: skip
    run = tmp_path / "run"
    assert [json.loads(x)["step"] for x in (run / "eval.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((run / "best" / "eval.json").read_text())["step"] == 2

    cfg = config(tmp_path, steps=2, resume_from=str(run / "checkpoint-1"), **common)
    resumed = MOPPOTrainer(cfg, str(tiny_lm), prompts=PROMPTS, rewards=[rising],
                           eval_prompts=PROMPTS[:2])  # fmt: skip
    assert resumed.global_step == 1
    assert [json.loads(x)["step"] for x in (run / "eval.jsonl").read_text().splitlines()] == [1]
    assert resumed.best is not None and resumed.best.best is None  # step 2's best/ ignored
    # A best checkpoint from before the resumed step is kept.
    resumed.best.restore(max_step=2)
    assert resumed.best.best_step == 2


# -- 5. the fp16 gradient scaler is checkpointed ---------------------------------------------


def test_grad_scaler_state_is_saved_and_restored(tiny_lm: Path, tmp_path: Path) -> None:
    import torch
    from accelerate import Accelerator

    # The trainer's own arguments: AcceleratorState is process-wide and refuses changes.
    first = Accelerator(cpu=False, mixed_precision="no")
    first.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**7, growth_interval=7)
    trainer = MOPPOTrainer(config(tmp_path), str(tiny_lm), prompts=PROMPTS,
                           rewards=[word_count], accelerator=first)  # fmt: skip
    folder = trainer.save_checkpoint()
    assert (folder / "scaler.pt").is_file()

    second = Accelerator(cpu=False, mixed_precision="no")
    second.scaler = torch.amp.GradScaler("cpu")  # default scale 2**16
    MOPPOTrainer(config(tmp_path, resume_from=str(folder)), str(tiny_lm), prompts=PROMPTS,
                 rewards=[word_count], accelerator=second)  # fmt: skip
    state = second.scaler.state_dict()
    assert state["scale"] == 2.0**7 and state["growth_interval"] == 7


# -- 6. evaluation scores the prompts as the policy saw them ---------------------------------


def test_evaluation_scores_the_truncated_prompts(tiny_lm: Path, tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def seen_words(prompts, responses, prompt_texts=None) -> list[float]:
        seen.append(list(prompt_texts))
        return [float(len(p.split())) for p in prompt_texts]

    long_prompts = ["the film was very good", "i liked the plot and the music"]
    cfg = config(tmp_path, max_prompt_length=2)
    trainer = MOPPOTrainer(cfg, str(tiny_lm), prompts=PROMPTS,
                           rewards=[prompt_words, seen_words])  # fmt: skip
    result = trainer.evaluate(long_prompts)
    # Both objectives count the 2 words the policy saw, as the training scores would.
    assert result.rewards == {"prompt_words": 2.0, "seen_words": 2.0}
    assert seen[-1] == ["very good", "the music"]
    training = trainer.score(trainer.rollout(long_prompts))
    assert training.tolist() == [[2.0, 2.0], [2.0, 2.0]]


# -- 7. command-line Python rewards receive prompt_texts -------------------------------------


def test_imported_reward_receives_prompt_texts(tmp_path: Path, monkeypatch) -> None:
    module = f"seenrewards_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        "def seen(prompts, responses, prompt_texts=None):\n"
        "    return [float(len(t)) for t in prompt_texts]\n"
        "def plain(prompts, responses):\n"
        "    return [0.0 for _ in responses]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = parse_reward_spec(f"s={module}:seen")
    assert bind_prompt_texts(fn, ["abc", "de"])(["x", "y"], ["r", "r"]) == [3.0, 2.0]
    plain = parse_reward_spec(f"p={module}:plain")
    assert bind_prompt_texts(plain, ["abc"]) is plain  # no prompt_texts keyword: unchanged


# -- 8. a reward head's model and label are checked at build ---------------------------------


def test_bad_reward_label_fails_at_build(tiny_lm: Path, tmp_path: Path) -> None:
    rm = make_two_head_reward_model(tmp_path / "rm")
    head = RewardHead(shared_reward_model(str(rm)), label_index=5, name="bad")
    with pytest.raises(ValueError, match="label_index 5 is out of range"):
        MOPPOTrainer(config(tmp_path), str(tiny_lm), prompts=PROMPTS, rewards=[head])


# -- 9. unique reward names -------------------------------------------------------------------


@pytest.mark.parametrize(
    "names",
    [["a", "a", "a_1"], ["a", "a_1", "a"], ["a", "a", "a", "a_1", "a_2"], ["a", "a_1", "a_1"]],
)
def test_reward_names_are_made_unique(names: list[str]) -> None:
    unique = unique_reward_names([word_count] * len(names), names)
    assert len(set(unique)) == len(names)
    # The first of each name, and every name given once, are kept as given.
    for i, name in enumerate(names):
        if name not in names[:i]:
            assert unique[i] == name


# -- 10. the model card names the combiner instance that trained ------------------------------


def test_model_card_reports_a_given_combiner(tiny_lm: Path, tmp_path: Path) -> None:
    from paretoopt.integrations.hf.export import model_card

    from paretoopt import LinearScalarization

    given = LinearScalarization([0.25, 0.75])
    trainer = MOPPOTrainer(config(tmp_path), str(tiny_lm), prompts=PROMPTS,
                           rewards=[word_count, prompt_words], combiner=given)  # fmt: skip
    card = model_card(trainer.training_summary(), None, None, [])
    assert repr(given) in card and "**pama**" not in card
    default = MOPPOTrainer(config(tmp_path), str(tiny_lm), prompts=PROMPTS,
                           rewards=[word_count, prompt_words])  # fmt: skip
    assert "**pama**" in model_card(default.training_summary(), None, None, [])
