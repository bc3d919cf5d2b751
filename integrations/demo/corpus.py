"""A synthetic movie-review corpus in which sentiment and length conflict.

The paper aligns GPT-2 on IMDb with a sentiment reward and a length reward. Here no data
can be downloaded, so the corpus is generated from a small grammar, deterministically for a
seed. It is built so that the two objectives pull against each other in the SFT policy:

* a review is a neutral prompt ("the acting of this film") and a continuation made of
  clauses ("was great", "and the plot was dull", "i loved it"), closed by ".";
* positive reviews are mostly *short* (1-2 clauses) and negative reviews mostly *long*
  (3-6 clauses, a rambling complaint), so a policy that learned the corpus writes longer
  when it writes negatively: pushing length up alone pushes sentiment down;
* a minority (``mixed_rate``, 15% by default) of reviews break the rule: long positive
  and short negative reviews exist, so both objectives *can* be improved together, which
  is what a Pareto method should find and a fixed weighting may trade away.

The reward model is trained on a separate labelled split where length and sentiment are
independent (:func:`labelled_reviews`), so it learns the words, not the length shortcut.
It also sees *unfinished* reviews (:func:`unfinished_reviews`): the policy's responses are
cut at ``max_new_tokens``, and a classifier that only ever read finished reviews (ending
with ".") scores such cut-off text arbitrarily (a cut negative review scored +1.43, the
top of its range), which the policy can exploit.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

POSITIVE_ADJ = (
    "great", "wonderful", "brilliant", "superb", "moving", "delightful", "charming",
    "excellent", "beautiful", "fun", "touching", "clever", "stunning", "lovely",
)  # fmt: skip
NEGATIVE_ADJ = (
    "boring", "awful", "dull", "terrible", "weak", "clumsy", "bland", "painful",
    "messy", "silly", "tedious", "poor", "flat", "forgettable",
)  # fmt: skip
POSITIVE_VERB = ("loved", "enjoyed", "adored", "liked", "admired")
NEGATIVE_VERB = ("hated", "regretted", "disliked", "resented", "endured")
INTENSIFIERS = ("really", "truly", "very", "quite", "so")
ASPECTS = (
    "acting", "plot", "music", "ending", "cast", "script", "story", "dialogue",
    "camera work", "pacing", "soundtrack", "direction",
)  # fmt: skip
WORKS = ("movie", "film", "show", "picture", "series")
OPENERS = ("the {aspect} of this {work}", "in this {work} the {aspect}", "overall the {aspect}")


@dataclass(frozen=True)
class CorpusConfig:
    """Settings of the synthetic corpus (all of them enter the cache key).

    :param n_reviews: reviews in the SFT corpus.
    :param n_labelled: labelled reviews for the reward model (half positive).
    :param positive_rate: share of positive reviews in the SFT corpus.
    :param mixed_rate: share of reviews whose length goes against the rule
        (long positive, short negative).
    :param heldout_fraction: share of (opener, aspect, work) prompts kept out of training.
    :param seed: seed of the generator.
    """

    n_reviews: int = 3000
    n_labelled: int = 2000
    positive_rate: float = 0.5
    mixed_rate: float = 0.15
    heldout_fraction: float = 0.25
    seed: int = 0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Review:
    """One review: ``prompt + " " + continuation`` is the full text; ``label`` 1 = positive."""

    prompt: str
    continuation: str
    label: int

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.continuation}"


def all_prompts() -> list[str]:
    """Every prompt the grammar can produce, in a fixed order."""
    prompts = []
    for opener in OPENERS:
        for aspect in ASPECTS:
            works = WORKS if "{work}" in opener else ("",)
            for work in works:
                prompts.append(opener.format(aspect=aspect, work=work))
    return prompts


def split_prompts(config: CorpusConfig) -> tuple[list[str], list[str]]:
    """Split the prompts into (train, held-out), disjoint, deterministic for the seed."""
    prompts = all_prompts()
    rng = random.Random(config.seed)
    rng.shuffle(prompts)
    n_heldout = max(1, round(config.heldout_fraction * len(prompts)))
    return sorted(prompts[n_heldout:]), sorted(prompts[:n_heldout])


def _clause(rng: random.Random, positive: bool, first: bool) -> str:
    adj = rng.choice(POSITIVE_ADJ if positive else NEGATIVE_ADJ)
    verb = rng.choice(POSITIVE_VERB if positive else NEGATIVE_VERB)
    if first:
        # The prompt ends with a noun phrase, so the first clause is a predicate.
        forms = (f"was {adj}", f"was {rng.choice(INTENSIFIERS)} {adj}", f"felt {adj}")
        return rng.choice(forms)
    aspect = rng.choice(ASPECTS)
    forms = (
        f"and the {aspect} was {adj}",
        f"and i {verb} it",
        f"and the {aspect} felt {rng.choice(INTENSIFIERS)} {adj}",
        f"but the {aspect} was {adj} too",
    )
    return rng.choice(forms)


def _n_clauses(rng: random.Random, long: bool) -> int:
    return rng.randint(3, 6) if long else rng.randint(1, 2)


def make_continuation(rng: random.Random, positive: bool, long: bool) -> str:
    """A continuation of ``1-2`` (short) or ``3-6`` (long) clauses of one sentiment."""
    n = _n_clauses(rng, long)
    clauses = [_clause(rng, positive, first=i == 0) for i in range(n)]
    return " ".join([*clauses, "."])


def sft_reviews(config: CorpusConfig, prompts: Sequence[str] | None = None) -> list[Review]:
    """The SFT corpus: positive reviews short, negative long, except ``mixed_rate`` of them."""
    rng = random.Random(f"sft-{config.seed}")
    prompts = list(prompts) if prompts is not None else split_prompts(config)[0]
    reviews = []
    for _ in range(config.n_reviews):
        positive = rng.random() < config.positive_rate
        against_rule = rng.random() < config.mixed_rate
        long = (not positive) != against_rule
        cont = make_continuation(rng, positive, long)
        reviews.append(Review(rng.choice(prompts), cont, int(positive)))
    return reviews


def labelled_reviews(config: CorpusConfig, prompts: Sequence[str] | None = None) -> list[Review]:
    """Labelled data for the sentiment classifier: balanced, length independent of label."""
    rng = random.Random(f"labelled-{config.seed}")
    prompts = list(prompts) if prompts is not None else split_prompts(config)[0]
    reviews = []
    for i in range(config.n_labelled):
        positive = i % 2 == 0
        long = rng.random() < 0.5
        reviews.append(
            Review(rng.choice(prompts), make_continuation(rng, positive, long), int(positive))
        )
    rng.shuffle(reviews)
    return reviews


def sentiment_word_index(continuation: str) -> int:
    """Index (in words) of the first sentiment adjective of a continuation, -1 if none.

    The first clause always ends with one ("was great", "felt so dull"), so every prefix
    that reaches past this index carries the review's sentiment.
    """
    sentiment_words = set(POSITIVE_ADJ) | set(NEGATIVE_ADJ)
    for i, word in enumerate(continuation.split()):
        if word in sentiment_words:
            return i
    return -1


def cut_review(review: Review, n_words: int) -> Review:
    """``review`` with only the first ``n_words`` words of its continuation (same label)."""
    return Review(review.prompt, " ".join(review.continuation.split()[:n_words]), review.label)


def unfinished_reviews(
    reviews: Sequence[Review],
    seed: int | str,
    cut_lengths: Sequence[int] = (),
    random_cuts: int = 1,
    min_words: int = 1,
) -> list[Review]:
    """Prefixes of ``reviews`` that stop before the final ".", labelled like the full review.

    For a continuation of ``n`` words (the last one ".") it returns ``random_cuts`` prefixes
    of ``k ~ U{min_words, ..., n - 1}`` words, plus, for every ``L`` in ``cut_lengths``
    with ``L < n``, the prefix of ``L`` words: what the policy's response looks like when
    generation stops at ``max_new_tokens = L`` (the tokenizer is word level, so a token is
    a word). ``min_words = 1`` admits prefixes with no sentiment word yet ("was so"):
    with the two labels equally likely for them, the classifier learns to score them near
    0 rather than guess. Deterministic for ``seed``.
    """
    rng = random.Random(f"unfinished-{seed}")
    out = []
    for review in reviews:
        n = len(review.continuation.split())
        if n - 1 >= min_words:
            out.extend(
                cut_review(review, rng.randint(min_words, n - 1)) for _ in range(random_cuts)
            )
        out.extend(cut_review(review, length) for length in cut_lengths if length < n)
    return out


def heldout_unfinished_reviews(
    config: CorpusConfig, n: int = 400, cut_lengths: Sequence[int] = ()
) -> list[Review]:
    """Held-out unfinished reviews whose true label is readable: the evaluation set.

    Reviews on held-out prompts from a different generator seed than the reward model's
    training split, each cut once at random *after* its first sentiment word and before
    its final ".", plus the cuts at ``cut_lengths``.
    """
    held_cfg = CorpusConfig(**{**config.to_dict(), "n_labelled": n, "seed": config.seed + 1})
    reviews = labelled_reviews(held_cfg, split_prompts(config)[1])
    rng = random.Random(f"heldout-unfinished-{config.seed}")
    out = []
    for review in reviews:
        n_words = len(review.continuation.split())
        first = sentiment_word_index(review.continuation) + 1
        if first <= n_words - 1:
            out.append(cut_review(review, rng.randint(first, n_words - 1)))
        out.extend(
            cut_review(review, length) for length in cut_lengths if first <= length < n_words
        )
    return out


def vocabulary() -> list[str]:
    """Every word the grammar can emit, sorted (the tokenizer's vocabulary)."""
    words: set[str] = {"was", "felt", "and", "the", "i", "it", "but", "too", ".", "of", "this",
                       "in", "overall"}  # fmt: skip
    for group in (POSITIVE_ADJ, NEGATIVE_ADJ, POSITIVE_VERB, NEGATIVE_VERB, INTENSIFIERS, WORKS):
        words.update(group)
    for aspect in ASPECTS:
        words.update(aspect.split())
    return sorted(words)
