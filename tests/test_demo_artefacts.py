"""Tiny demo artefacts: trained once, cached under a settings hash, reloaded from cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("transformers")

from paretoopt.integrations.demo import artefacts as art
from paretoopt.integrations.demo.experiment import tiny_config


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    cache = tmp_path_factory.mktemp("demo-cache")
    config = tiny_config().artefacts
    return cache, config, art.load_or_train(config, cache, progress=False)


def test_cache_key_changes_with_every_setting() -> None:
    config = tiny_config().artefacts
    assert config.cache_key() == tiny_config().artefacts.cache_key()
    assert dataclasses.replace(config, sft_steps=61).cache_key() != config.cache_key()
    corpus = dataclasses.replace(config.corpus, seed=7)
    assert dataclasses.replace(config, corpus=corpus).cache_key() != config.cache_key()


def test_artefacts_are_saved_as_safetensors_under_the_key(cached) -> None:
    cache, config, found = cached
    assert not found.from_cache
    assert found.root == cache / config.cache_key()
    assert (found.policy / "model.safetensors").exists()
    assert (found.reward_model / "model.safetensors").exists()
    assert not list(found.root.rglob("*.bin"))


def test_second_call_reloads_from_cache_without_training(cached, monkeypatch) -> None:
    cache, config, first = cached

    def fail(*args, **kwargs):
        raise AssertionError("training ran although the artefacts are cached")

    monkeypatch.setattr(art, "train_sft_policy", fail)
    monkeypatch.setattr(art, "train_reward_model", fail)
    again = art.load_or_train(config, cache, progress=False)
    assert again.from_cache
    assert again.metrics == first.metrics


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
    assert rm.config.id2label[1] == "POSITIVE"
    texts = ["the plot of this film was great .", "the plot of this film was awful ."]
    enc = tok(texts, return_tensors="pt", padding=True)
    assert tok.unk_token_id not in enc["input_ids"].flatten().tolist()
    with torch.no_grad():
        logits = rm(**enc).logits
        lm = policy(**enc).logits
    assert torch.isfinite(lm).all()
    # The classifier learned the words: positive text scores higher on POSITIVE.
    assert logits[0, 1] > logits[1, 1]
    assert found.metrics["reward_model_heldout_accuracy"] > 0.8


def test_interrupted_training_leaves_no_cache_entry(tmp_path, monkeypatch) -> None:
    config = dataclasses.replace(tiny_config().artefacts, sft_steps=2, rm_steps=2)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(art, "train_reward_model", boom)
    with pytest.raises(KeyboardInterrupt):
        art.load_or_train(config, tmp_path, progress=False)
    assert not (tmp_path / config.cache_key()).exists()


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PARETOOPT_CACHE", str(tmp_path))
    assert art.default_cache_dir() == tmp_path
    monkeypatch.delenv("PARETOOPT_CACHE")
    assert art.default_cache_dir().parts[-3:] == (".cache", "paretoopt", "demo")
