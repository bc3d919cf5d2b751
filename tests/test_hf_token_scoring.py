"""Reward models that share the policy's tokenizer read the rollout's token ids: the same
input tensors and the same scores as decoding and re-tokenising, the same training run; any
other tokenizer (or a conversation, or ids that do not decode to the scored text) keeps the
text path."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

import torch
from hf_fixtures import (
    CHATS,
    PROMPTS,
    SPECIAL,
    WORDS,
    build_policy,
    build_tokenizer,
    make_tiny_chat_lm,
    make_two_head_reward_model,
)
from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer, RewardModelFunction
from paretoopt.integrations.hf.reward_models import (
    RewardModel,
    added_special_ids,
    same_tokenizer,
)

pytestmark = pytest.mark.hf

LONG_PROMPTS = [*PROMPTS, "the film was very good and the music was great but the ending"]


def save_reward_model(path: Path, tokenizer, num_labels: int = 2, seed: int = 3) -> Path:
    """A tiny GPT-2 sequence classifier over ``tokenizer``'s vocabulary, saved with it."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tokenizer.save_pretrained(str(path))
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2,
        num_labels=num_labels, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    GPT2ForSequenceClassification(config).eval().save_pretrained(str(path))
    return path


def bos_tokenizer(path: Path):
    """The fixture's word-level tokenizer with a BOS that it adds before every text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL, "<bos>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
        bos_token="<bos>",
    )  # fmt: skip
    fast.save_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module", params=["plain", "two_eos", "bos"])
def policy_and_rm(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A tiny policy and a reward model saved with an identical copy of its tokenizer:
    plain; two EOS ids (the model prefers ``<eot>``); a tokenizer that adds a BOS."""
    from transformers import AutoModelForCausalLM

    kind = request.param
    root = tmp_path_factory.mktemp(f"tok_{kind}")
    lm = root / "lm"
    if kind == "bos":
        tok = bos_tokenizer(lm)
        eos = tok.eos_token_id
    else:
        tok = build_tokenizer(lm, extra_special=["<eot>"] if kind == "two_eos" else None)
        eos = tok.convert_tokens_to_ids("<eot>") if kind == "two_eos" else tok.eos_token_id
    build_policy(lm, len(tok), eos, eos_prob=0.15)
    if kind == "two_eos":
        model = AutoModelForCausalLM.from_pretrained(str(lm))
        model.generation_config.eos_token_id = [tok.eos_token_id, eos]
        model.config.eos_token_id = tok.eos_token_id
        model.save_pretrained(str(lm))
    return lm, save_reward_model(root / "rm", tok), kind


def config(tmp_path: Path, **overrides) -> MOPPOConfig:
    base = dict(
        steps=1, batch_size=9, mini_batch_size=3, ppo_epochs=1, max_new_tokens=6,
        max_prompt_length=5, learning_rate=3e-3, output_dir=str(tmp_path / "run"),
        progress=False, save_final=False, log_jsonl=False,
    )  # fmt: skip
    base.update(overrides)
    return MOPPOConfig(**base)


def text_inputs(rm: RewardModel, rollout) -> list[dict[str, torch.Tensor]]:
    texts, templated = rm.texts(rollout.prompts, rollout.responses, rollout.prompts)
    return rm.encode_texts(texts, templated)


@pytest.mark.parametrize("max_length", [512, 7])
def test_token_inputs_are_the_text_paths_tensors(policy_and_rm, tmp_path: Path, max_length):
    """Left-truncated prompts, responses cut at max_new_tokens or ended by any EOS id, the
    reward model's own left truncation (max_length=7) and a chunk smaller than the batch: the
    ids built from the rollout are the tensors the tokenizer makes from the decoded text."""
    lm, rm_path, kind = policy_and_rm
    head = RewardModelFunction(str(rm_path), 1, max_length=max_length, batch_size=4)
    trainer = MOPPOTrainer(config(tmp_path), str(lm), prompts=LONG_PROMPTS, rewards=[head])
    rm = head.reward_model
    cut_prompts = cut_responses = ended = 0
    for seed in range(3):
        torch.manual_seed(seed)
        rollout = trainer.rollout(LONG_PROMPTS)
        tokens = rollout.exchange_tokens(trainer.tokenizer)
        rows = rm.token_rows(rollout.prompts, rollout.responses, rollout.prompts, tokens)
        assert rows is not None, "the shared tokenizer was not detected"
        by_ids, by_text = rm.pad_rows(rows), text_inputs(rm, rollout)
        assert len(by_ids) == len(by_text) == 3
        for ours, theirs in zip(by_ids, by_text, strict=True):
            assert set(theirs) == {"input_ids", "attention_mask"}
            assert torch.equal(ours["input_ids"], theirs["input_ids"])
            assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
        lengths = rollout.mask.sum(1)
        cut_prompts += sum(p != q for p, q in zip(rollout.prompts, LONG_PROMPTS, strict=True))
        cut_responses += int((lengths == rollout.mask.shape[1]).sum())
        last = rollout.response_ids.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)
        ended += sum(int(t) in trainer.eos_token_ids for t in last)
        assert rm.logits(rollout.prompts, rollout.responses, rollout.prompts, tokens).equal(
            rm.logits(rollout.prompts, rollout.responses, rollout.prompts)
        )
    assert cut_prompts > 0 and cut_responses > 0 and ended > 0  # every case was exercised
    if kind == "two_eos":
        assert len(trainer.eos_token_ids) == 2
    if kind == "bos":
        assert added_special_ids(trainer.tokenizer) == ([trainer.tokenizer.bos_token_id], [])


def test_trainer_scores_equal_the_text_path(policy_and_rm, tmp_path: Path) -> None:
    lm, rm_path, _ = policy_and_rm
    scores = {}
    for mode in (None, False):
        head = RewardModelFunction(str(rm_path), 0, token_inputs=mode)
        trainer = MOPPOTrainer(config(tmp_path), str(lm), prompts=LONG_PROMPTS,
                               rewards=[head, "length"])  # fmt: skip
        torch.manual_seed(0)
        rollout = trainer.rollout(LONG_PROMPTS)
        scores[mode] = trainer.score(rollout, 1)
        assert head.reward_model.token_batches == (1 if mode is None else 0)
    assert torch.equal(scores[None], scores[False])


def test_training_is_identical_with_either_path(tmp_path: Path, tmp_path_factory) -> None:
    """Bit-for-bit: the same metrics (timings aside) and the same parameters."""
    root = tmp_path_factory.mktemp("train_same")
    tok = build_tokenizer(root / "lm")
    build_policy(root / "lm", len(tok), tok.eos_token_id)
    rm_path = save_reward_model(root / "rm", tok)
    runs = {}
    for mode in (None, False):
        head = RewardModelFunction(str(rm_path), 1, token_inputs=mode)
        cfg = config(tmp_path / str(mode), steps=3, batch_size=6, combiner="pama")
        trainer = MOPPOTrainer(cfg, str(root / "lm"), prompts=LONG_PROMPTS,
                               rewards=[head, "length"])  # fmt: skip
        history = trainer.train()
        assert head.reward_model.token_batches == (3 if mode is None else 0)
        params = [p.detach().clone() for p in trainer.model.parameters()]
        runs[mode] = ([{k: v for k, v in m.items() if not k.startswith("time/")}
                       for m in history], params)  # fmt: skip
    assert runs[None][0] == runs[False][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[None][1], runs[False][1], strict=True))


def test_another_tokenizer_keeps_the_text_path(tmp_path: Path, tmp_path_factory) -> None:
    root = tmp_path_factory.mktemp("other_tok")
    tok = build_tokenizer(root / "lm")
    build_policy(root / "lm", len(tok), tok.eos_token_id)
    other = make_two_head_reward_model(root / "rm")  # more words, its own chat template
    head = RewardModelFunction(str(other), 0)
    trainer = MOPPOTrainer(config(tmp_path), str(root / "lm"), prompts=PROMPTS, rewards=[head])
    rollout = trainer.rollout(PROMPTS)
    tokens = rollout.exchange_tokens(trainer.tokenizer)
    rm = head.reward_model
    assert not same_tokenizer(rm.tokenizer, trainer.tokenizer)
    assert rm.token_rows(rollout.prompts, rollout.responses, rollout.prompts, tokens) is None
    trainer.score(rollout, 1)
    assert rm.forward_batches == 1 and rm.token_batches == 0
    forced = RewardModel(str(other), token_inputs=True)
    with pytest.raises(ValueError, match="token_inputs=True but its tokenizer is not the policy's"):
        forced.logits(rollout.prompts, rollout.responses, rollout.prompts, tokens)


def test_same_tokenizer_is_conservative(tmp_path: Path) -> None:
    a = build_tokenizer(tmp_path / "a")
    assert same_tokenizer(a, a)
    assert same_tokenizer(a, build_tokenizer(tmp_path / "b"))  # an identical copy
    assert not same_tokenizer(a, build_tokenizer(tmp_path / "c", extra_words=("extra",)))
    assert not same_tokenizer(a, build_tokenizer(tmp_path / "d", extra_special=["<eot>"]))
    assert not same_tokenizer(a, bos_tokenizer(tmp_path / "e"))  # adds a BOS
    assert not same_tokenizer(a, object())


def test_ids_that_decode_to_other_text_keep_the_text_path(tmp_path: Path, tmp_path_factory):
    """A prompt with a double space: its ids decode with one space, so the text the text path
    scores is not what the ids spell; the batch is scored through text."""
    root = tmp_path_factory.mktemp("double_space")
    tok = build_tokenizer(root / "lm")
    build_policy(root / "lm", len(tok), tok.eos_token_id)
    rm_path = save_reward_model(root / "rm", tok)
    prompts = ["the  film was", *PROMPTS[1:]]
    head = RewardModelFunction(str(rm_path), 0)
    trainer = MOPPOTrainer(config(tmp_path, max_prompt_length=None), str(root / "lm"),
                           prompts=prompts, rewards=[head])  # fmt: skip
    rollout = trainer.rollout(prompts)
    tokens = rollout.exchange_tokens(trainer.tokenizer)
    rm = head.reward_model
    assert rm.token_rows(rollout.prompts, rollout.responses, rollout.prompts, tokens) is None
    assert rm.token_rows(rollout.prompts[1:], rollout.responses[1:], rollout.prompts[1:],
                         type(tokens)(tokens.prompt_ids[1:], tokens.response_ids[1:],
                                      tokens.tokenizer)) is not None  # fmt: skip
    rm.token_inputs = True  # asked for: the ids are read whatever they decode to
    assert rm.token_rows(rollout.prompts, rollout.responses, rollout.prompts, tokens) is not None


def test_conversations_keep_the_text_path(tmp_path: Path, tmp_path_factory) -> None:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("chat_tok")
    lm = make_tiny_chat_lm(root / "lm")
    rm_path = save_reward_model(root / "rm", AutoTokenizer.from_pretrained(str(lm)))
    head = RewardModelFunction(str(rm_path), 0)
    trainer = MOPPOTrainer(config(tmp_path, max_prompt_length=None), str(lm), prompts=CHATS,
                           rewards=[head])  # fmt: skip
    rollout = trainer.rollout(CHATS)
    trainer.score(rollout, 1)
    rm = head.reward_model
    assert same_tokenizer(rm.tokenizer, trainer.tokenizer)
    assert rm.forward_batches == 1 and rm.token_batches == 0


def test_only_reward_models_get_the_ids() -> None:
    from paretoopt.integrations.hf.reward_models import accepts_tokens
    from paretoopt.integrations.hf.rewards import bind_prompt_texts

    def mine(prompts, responses, tokens=None):  # a parameter of its own that happens to match
        return [float(tokens is None)] * len(responses)

    assert not accepts_tokens(mine)
    assert bind_prompt_texts(mine, ["p"], tokens=object())(["p"], ["r"]) == [1.0]
