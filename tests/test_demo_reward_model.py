"""The demo's sentiment classifier reads unfinished (cut-off) reviews correctly.

The policy's responses stop at ``max_new_tokens``, so the classifier scores many
unfinished reviews. Trained on finished reviews only (the format-1 recipe), the default
classifier scored about 30% of held-out unfinished reviews with the wrong sign (a negative
review cut at 24 tokens got +1.43, the top of its range): a reward the policy could hack by
writing negative reviews until the limit. The fixed recipe also trains on prefixes.

The test trains the default (shipped) classifier recipe, not the tiny test-suite one: the
tiny model happens to generalise to unfinished reviews even without the prefixes, so it
could not tell the two recipes apart. Reading goes through the demo's own reward path
(:class:`paretoopt.integrations.hf.RewardModelFunction` on a ``save_pretrained`` folder).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("transformers")

from paretoopt.integrations.demo import artefacts as art
from paretoopt.integrations.demo.corpus import (
    CorpusConfig,
    heldout_unfinished_reviews,
    labelled_reviews,
    split_prompts,
)
from paretoopt.integrations.demo.experiment import DemoConfig

#: Share of held-out unfinished reviews the POSITIVE logit must sign correctly. The fixed
#: recipe measured 1.00 (and 0.996 with 250 steps); the old one 0.69 (0.68 at 24 tokens).
MIN_UNFINISHED_ACCURACY = 0.95

DEFAULT = DemoConfig()
#: The format-1 recipe: finished reviews only, 250 steps.
OLD_RECIPE = dataclasses.replace(
    DEFAULT.artefacts, rm_random_cuts=0, rm_cut_lengths=(), rm_steps=250
)


def _train_and_read(config: art.ArtefactConfig, tmp_path) -> dict[str, float]:
    """Train the classifier with ``config``, save it, and measure accuracies via the reward."""
    from paretoopt.integrations.hf import RewardModelFunction

    torch.set_num_threads(1)  # the result must not depend on the runner's thread count
    tokenizer = art.build_tokenizer()
    train_prompts, heldout_prompts = split_prompts(config.corpus)
    labelled = labelled_reviews(config.corpus, train_prompts)
    model, _ = art.train_reward_model(config, tokenizer, labelled, [labelled[0]], progress=False)
    model.save_pretrained(tmp_path / "rm", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "rm")
    reward = RewardModelFunction(str(tmp_path / "rm"), 1, name="sentiment", separator=" ")

    def accuracy(reviews) -> float:
        scores = reward([r.prompt for r in reviews], [r.continuation for r in reviews])
        return sum((s > 0) == bool(r.label) for s, r in zip(scores, reviews, strict=True)) / len(
            reviews
        )

    max_new = DEFAULT.max_new_tokens
    unfinished = heldout_unfinished_reviews(config.corpus, n=300, cut_lengths=(max_new,))
    at_limit = [r for r in unfinished if len(r.continuation.split()) == max_new]
    finished_cfg = CorpusConfig(**{**config.corpus.to_dict(), "n_labelled": 200, "seed": 5})
    finished = labelled_reviews(finished_cfg, heldout_prompts)
    assert len(at_limit) >= 30 and len(unfinished) >= 300
    return {
        "unfinished": accuracy(unfinished),
        "at_limit": accuracy(at_limit),
        "finished": accuracy(finished),
    }


def test_default_recipe_trains_on_cuts_at_the_policys_token_limit() -> None:
    assert DEFAULT.max_new_tokens in DEFAULT.artefacts.rm_cut_lengths
    assert DEFAULT.artefacts.rm_random_cuts >= 1


def test_cache_key_differs_from_the_finished_only_classifier() -> None:
    # Artefacts cached by the old recipe must not be reloaded for the fixed one.
    assert DEFAULT.artefacts.cache_key() != OLD_RECIPE.cache_key()
    assert DEFAULT.artefacts.cache_key() != "b0e15fe2e7a0917c"  # the format-1 default key
    assert (
        dataclasses.replace(DEFAULT.artefacts, rm_random_cuts=2).cache_key()
        != DEFAULT.artefacts.cache_key()
    )


def test_default_classifier_reads_unfinished_reviews(tmp_path) -> None:
    acc = _train_and_read(DEFAULT.artefacts, tmp_path)
    assert acc["unfinished"] >= MIN_UNFINISHED_ACCURACY, acc
    assert acc["at_limit"] >= MIN_UNFINISHED_ACCURACY, acc
    assert acc["finished"] >= 0.98, acc


@pytest.mark.slow
def test_old_recipe_fails_the_unfinished_review_threshold(tmp_path) -> None:
    """The threshold above can fail: the finished-only recipe does not reach it."""
    acc = _train_and_read(OLD_RECIPE, tmp_path)
    assert acc["finished"] >= 0.98, acc  # it is a good classifier of finished reviews...
    assert acc["unfinished"] < MIN_UNFINISHED_ACCURACY, acc  # ...but not of cut-off ones
