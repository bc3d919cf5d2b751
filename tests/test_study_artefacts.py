"""The study's tiny artefacts: trained once, cached under a settings hash, reloaded from cache.

And the review grammar of task 1 they are trained on: every word it emits is in the
tokenizer's vocabulary.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("transformers")

from paretoopt.integrations.study import artefacts as art
from paretoopt.integrations.study import task_sentiment as ts
from paretoopt.integrations.study import task_support as tsup
from paretoopt.integrations.study.tasks import artefact_config


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    cache = tmp_path_factory.mktemp("study-cache")
    config = artefact_config("sentiment_length", "tiny")
    return cache, config, art.load_or_train(config, cache)


def test_cache_key_changes_with_every_setting() -> None:
    config = artefact_config("sentiment_length", "tiny")
    assert config.cache_key() == artefact_config("sentiment_length", "tiny").cache_key()
    assert dataclasses.replace(config, sft_steps=41).cache_key() != config.cache_key()
    other = dataclasses.replace(config, task_config={"n_labelled": 300, "corpus_seed": 7})
    assert other.cache_key() != config.cache_key()
    assert artefact_config("support_replies", "tiny").cache_key() != config.cache_key()


def test_artefacts_are_saved_as_safetensors_under_the_key(cached) -> None:
    cache, config, found = cached
    assert found.root == cache / f"study-sentiment_length-{config.cache_key()}"
    assert (found.policy / "model.safetensors").exists()
    assert found.reward_model is not None
    assert (found.reward_model / "model.safetensors").exists()
    assert not list(found.root.rglob("*.bin"))
    assert found.metrics["train_seconds"] > 0 and "sft_final_loss" in found.metrics


def test_second_call_reloads_from_cache_without_training(cached, monkeypatch) -> None:
    cache, config, first = cached

    def fail(*args, **kwargs):
        raise AssertionError("training ran although the artefacts are cached")

    monkeypatch.setattr(art, "train_sft_policy", fail)
    monkeypatch.setattr(art, "train_graded_classifier", fail)
    again = art.load_or_train(config, cache)
    assert again == first


def test_reloaded_models_work_through_from_pretrained(cached) -> None:
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    _, _, found = cached
    tok = AutoTokenizer.from_pretrained(found.tokenizer)
    policy = AutoModelForCausalLM.from_pretrained(found.policy, trust_remote_code=False)
    rm = AutoModelForSequenceClassification.from_pretrained(found.reward_model)
    assert rm.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}
    assert tok.padding_side == "left" and tok.pad_token == "<pad>" and tok.eos_token == "<eos>"
    texts = ["the plot of this film was great .", "the plot of this film was awful ."]
    enc = tok(texts, return_tensors="pt", padding=True)
    assert tok.unk_token_id not in enc["input_ids"].flatten().tolist()
    with torch.no_grad():
        assert torch.isfinite(rm(**enc).logits).all()
        assert torch.isfinite(policy(**enc).logits).all()


def test_interrupted_training_leaves_no_cache_entry(tmp_path, monkeypatch) -> None:
    config = dataclasses.replace(
        artefact_config("sentiment_length", "tiny"), sft_steps=2, rm_steps=2
    )

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(art, "train_graded_classifier", boom)
    with pytest.raises(KeyboardInterrupt):
        art.load_or_train(config, tmp_path)
    assert not (tmp_path / f"study-sentiment_length-{config.cache_key()}").exists()


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PARETOOPT_CACHE", str(tmp_path))
    assert art.default_cache_dir() == tmp_path
    monkeypatch.delenv("PARETOOPT_CACHE")
    assert art.default_cache_dir().parts[-3:] == (".cache", "paretoopt", "demo")


def test_sft_batches_cover_every_example_once_per_epoch() -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [b.tolist() for b in art.batches(10, 4, 5, gen)]
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4]
    # 10 examples, batches of 4: two per epoch (the remainder is dropped), then a reshuffle.
    assert len(set(batches[0] + batches[1])) == 8
    assert len(set(batches[2] + batches[3])) == 8


def test_every_word_of_either_grammar_is_in_its_vocabulary() -> None:
    prompts = ts.all_prompts()
    assert len(prompts) == len(set(prompts)) == 132
    cfg = ts.SentimentLengthConfig(n_reviews=300, n_labelled=300)
    train, held = ts.split_prompts(cfg)
    texts = [*prompts, *ts.sft_texts(cfg, train), *(t for t, _ in ts.labelled_texts(cfg, train))]
    texts += ts.graded_probe_texts(held, 4, 2, 20)
    vocab = set(ts.words())
    assert {w for t in texts for w in t.split()} <= vocab
    assert ts.words() == sorted(vocab)
    scfg = tsup.SupportRepliesConfig(n_replies=300)
    support = tsup.sft_texts(scfg, tsup.split_prompts(scfg)[0])
    assert {w for t in support for w in t.split()} <= set(tsup.words())
    tok = art.build_tokenizer(ts.words())
    assert len(tok) == len(art.SPECIAL_TOKENS) + len(vocab)
    ids = tok(texts[:50])["input_ids"]
    assert tok.unk_token_id not in {i for row in ids for i in row}
