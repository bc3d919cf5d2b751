"""The synthetic corpus: deterministic, disjoint prompt split, and conflicting objectives."""

from __future__ import annotations

import statistics

from paretoopt.integrations.demo.corpus import (
    NEGATIVE_ADJ,
    POSITIVE_ADJ,
    CorpusConfig,
    heldout_unfinished_reviews,
    labelled_reviews,
    sentiment_word_index,
    sft_reviews,
    split_prompts,
    unfinished_reviews,
    vocabulary,
)


def _length(review) -> int:
    return len(review.continuation.split())


def test_same_seed_same_corpus_and_different_seed_differs() -> None:
    config = CorpusConfig(n_reviews=200)
    assert sft_reviews(config) == sft_reviews(config)
    assert sft_reviews(config) != sft_reviews(CorpusConfig(n_reviews=200, seed=1))


def test_heldout_prompts_are_disjoint_from_training_prompts() -> None:
    train, heldout = split_prompts(CorpusConfig())
    assert train and heldout
    assert not set(train) & set(heldout)
    assert {r.prompt for r in sft_reviews(CorpusConfig(n_reviews=500))} <= set(train)


def test_positive_reviews_are_shorter_so_the_objectives_conflict() -> None:
    reviews = sft_reviews(CorpusConfig(n_reviews=2000))
    pos = [_length(r) for r in reviews if r.label == 1]
    neg = [_length(r) for r in reviews if r.label == 0]
    assert statistics.mean(neg) > 1.8 * statistics.mean(pos)
    # ...but long positive reviews exist: both objectives can improve together.
    long_positive = sum(1 for r in reviews if r.label == 1 and _length(r) >= 12)
    assert 0.05 < long_positive / len(pos) < 0.3


def test_labelled_split_is_balanced_and_length_does_not_predict_the_label() -> None:
    reviews = labelled_reviews(CorpusConfig(n_labelled=2000))
    pos = [_length(r) for r in reviews if r.label == 1]
    neg = [_length(r) for r in reviews if r.label == 0]
    assert len(pos) == len(neg)
    assert abs(statistics.mean(pos) - statistics.mean(neg)) < 1.5


def test_label_matches_the_words_and_every_word_is_in_the_vocabulary() -> None:
    vocab = set(vocabulary())
    for r in sft_reviews(CorpusConfig(n_reviews=300)):
        words = r.text.split()
        assert set(words) <= vocab
        polar = POSITIVE_ADJ if r.label else NEGATIVE_ADJ
        other = NEGATIVE_ADJ if r.label else POSITIVE_ADJ
        assert any(w in polar for w in words)
        assert not any(w in other for w in words)


def test_unfinished_reviews_are_prefixes_without_the_final_stop_and_keep_the_label() -> None:
    reviews = labelled_reviews(CorpusConfig(n_labelled=300))
    cuts = unfinished_reviews(reviews, seed=0, cut_lengths=(24,), random_cuts=1)
    assert cuts == unfinished_reviews(reviews, seed=0, cut_lengths=(24,), random_cuts=1)
    full = {(r.prompt, r.label): [] for r in reviews}
    for r in reviews:
        full[(r.prompt, r.label)].append(r.continuation.split())
    for cut in cuts:
        words = cut.continuation.split()
        assert words and words[-1] != "."
        # A prefix of some review with the same prompt and the same label.
        assert any(f[: len(words)] == words for f in full[(cut.prompt, cut.label)])
    # One random cut per review, plus one at 24 words for each review longer than that.
    n_long = sum(1 for r in reviews if len(r.continuation.split()) > 24)
    assert n_long > 0
    assert len(cuts) == len(reviews) + n_long
    assert sum(1 for c in cuts if len(c.continuation.split()) == 24) >= n_long


def test_heldout_unfinished_reviews_carry_their_sentiment_on_heldout_prompts() -> None:
    config = CorpusConfig()
    _, heldout = split_prompts(config)
    held = heldout_unfinished_reviews(config, n=200, cut_lengths=(24,))
    assert {r.prompt for r in held} <= set(heldout)
    labels = [r.label for r in held]
    assert 0.4 < sum(labels) / len(labels) < 0.6
    assert any(len(r.continuation.split()) == 24 for r in held)
    for r in held:
        assert not r.continuation.endswith(".")
        # The sentiment word is in the prefix, so the true label is readable from it.
        assert sentiment_word_index(r.continuation) >= 0
        polar = POSITIVE_ADJ if r.label else NEGATIVE_ADJ
        assert any(w in polar for w in r.continuation.split())
