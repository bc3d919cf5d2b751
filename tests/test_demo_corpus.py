"""The synthetic corpus: deterministic, disjoint prompt split, and conflicting objectives."""

from __future__ import annotations

import statistics

from integrations.demo.corpus import (
    NEGATIVE_ADJ,
    POSITIVE_ADJ,
    CorpusConfig,
    labelled_reviews,
    sft_reviews,
    split_prompts,
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
