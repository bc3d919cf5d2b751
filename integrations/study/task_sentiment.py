"""Task 1, ``sentiment_length``: graded sentiment against length, fixed before any reported run.

Reviews come from a small grammar: a neutral prompt ("the acting of this film", 132 of them)
and a continuation of clauses ("was great", "and the plot was dull", "and i loved it"),
closed by ".". The rewards are built so that neither can be gamed by the policy's cut-off
or saturated by one adjective:

* **Graded sentiment.** Every clause of the grammar carries exactly one sentiment word
  (an adjective or a verb). The classifier is trained to read the *net amount* of positive
  content: its target log-odds for a text with ``p`` positive and ``q`` negative sentiment
  words is ``clip(logodds_per_word * (p - q), -max_logodds, max_logodds)``, learnt by
  cross-entropy against the soft label ``sigmoid(target)`` on reviews whose clauses mix
  both polarities, finished and cut at random. As an IMDb classifier does, its POSITIVE
  logit keeps growing with more positive content (here up to four net positive clauses)
  instead of saturating after the first adjective, as a classifier trained on hard
  labels does (about +-1.47 on this grammar).
  A centring penalty pins ``logit_neg + logit_pos`` at 0, so the POSITIVE logit is half
  the log-odds: within ``[-1.5, 1.5]`` for ``max_logodds = 3``.
* **Length with headroom.** ``length = min(words, cap) / scale`` with ``cap = 16`` words
  and ``scale = 8`` (range [0, 2], comparable to sentiment's 3), while the policy may write
  ``max_new_tokens = 32`` tokens: the cap sits at half the budget.
* **Cut-off responses.** A response that reaches ``max_new_tokens`` without emitting EOS
  scores **0** on length (the tokenizer is word level, so a response of ``max_new_tokens``
  words is exactly one that never stopped). Otherwise a rambling cut-off response would
  score the full cap. The sentiment classifier reads cut-off text as it is (it was trained
  on prefixes).
* **SFT corpus.** Positive reviews are mostly short (1-2 clauses) and negative ones long
  (3-6 clauses), but ``mixed_rate`` (15%) break the rule, so long positive reviews, which
  are good on both rewards, exist in the SFT policy's support.
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
#: Words of the grammar outside the lists above.
FUNCTION_WORDS = ("was", "felt", "and", "the", "i", "it", "but", "too", ".", "of", "this", "in",
                  "overall")  # fmt: skip

POSITIVE_WORDS = frozenset(POSITIVE_ADJ) | frozenset(POSITIVE_VERB)
NEGATIVE_WORDS = frozenset(NEGATIVE_ADJ) | frozenset(NEGATIVE_VERB)


@dataclass(frozen=True)
class SentimentLengthConfig:
    """Everything that defines task 1 (all of it enters the artefacts' cache key)."""

    n_reviews: int = 3000
    n_labelled: int = 4000
    mixed_rate: float = 0.15
    heldout_fraction: float = 0.25
    corpus_seed: int = 0
    logodds_per_word: float = 0.75
    max_logodds: float = 3.0
    length_scale: float = 8.0
    length_cap: int = 16
    max_new_tokens: int = 32
    # Thresholds of per-response joint success, fixed in advance: at least two net positive
    # clauses (0.375 each) and more than 8 words.
    success_thresholds: tuple[float, float] = (0.5, 1.0)
    # Hypervolume reference: the lowest value each reward can take.
    hv_reference: tuple[float, float] = (-1.5, 0.0)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def all_prompts() -> list[str]:
    """Every prompt the grammar can produce, in a fixed order."""
    prompts = []
    for opener in OPENERS:
        for aspect in ASPECTS:
            works = WORKS if "{work}" in opener else ("",)
            for work in works:
                prompts.append(opener.format(aspect=aspect, work=work))
    return prompts


def split_prompts(cfg: SentimentLengthConfig) -> tuple[list[str], list[str]]:
    """Disjoint (train, held-out) prompt lists, deterministic for ``corpus_seed``."""
    prompts = all_prompts()
    rng = random.Random(f"study-prompts-{cfg.corpus_seed}")
    rng.shuffle(prompts)
    n_held = max(1, round(cfg.heldout_fraction * len(prompts)))
    return sorted(prompts[n_held:]), sorted(prompts[:n_held])


def clause(rng: random.Random, positive: bool, first: bool) -> str:
    """One clause carrying exactly one sentiment word of the given polarity."""
    adj = rng.choice(POSITIVE_ADJ if positive else NEGATIVE_ADJ)
    if first:
        # The prompt ends with a noun phrase, so the first clause is a predicate.
        return rng.choice((f"was {adj}", f"was {rng.choice(INTENSIFIERS)} {adj}", f"felt {adj}"))
    verb = rng.choice(POSITIVE_VERB if positive else NEGATIVE_VERB)
    aspect = rng.choice(ASPECTS)
    return rng.choice(
        (
            f"and the {aspect} was {adj}",
            f"and i {verb} it",
            f"and the {aspect} felt {rng.choice(INTENSIFIERS)} {adj}",
            f"but the {aspect} was {adj} too",
        )
    )


def continuation(rng: random.Random, polarities: Sequence[bool]) -> str:
    """Clauses of the given polarities, closed by "."."""
    parts = [clause(rng, pos, first=i == 0) for i, pos in enumerate(polarities)]
    return " ".join([*parts, "."])


def net_positive(text: str) -> int:
    """Positive minus negative sentiment words in ``text`` (the classifier's target)."""
    words = text.split()
    return sum(w in POSITIVE_WORDS for w in words) - sum(w in NEGATIVE_WORDS for w in words)


def target_logodds(text: str, cfg: SentimentLengthConfig) -> float:
    value = cfg.logodds_per_word * net_positive(text)
    return max(-cfg.max_logodds, min(cfg.max_logodds, value))


def sft_texts(cfg: SentimentLengthConfig, prompts: Sequence[str]) -> list[str]:
    """The SFT corpus: positive short, negative long, ``mixed_rate`` against the rule."""
    rng = random.Random(f"study-sft-{cfg.corpus_seed}")
    out = []
    for _ in range(cfg.n_reviews):
        positive = rng.random() < 0.5
        against = rng.random() < cfg.mixed_rate
        long = (not positive) != against
        n = rng.randint(3, 6) if long else rng.randint(1, 2)
        out.append(f"{rng.choice(prompts)} {continuation(rng, [positive] * n)}")
    return out


def labelled_texts(
    cfg: SentimentLengthConfig, prompts: Sequence[str], seed: str = "labelled"
) -> list[tuple[str, float]]:
    """(text, target log-odds) pairs for the classifier: mixed polarities, random cuts.

    Each review has 1-6 clauses, each positive with a probability drawn per review from
    {0, 1/4, 1/2, 3/4, 1}; half of them are cut after a random word (the policy's responses
    can be cut, and the target of a prefix counts only the words it holds).
    """
    rng = random.Random(f"study-{seed}-{cfg.corpus_seed}")
    out = []
    for _ in range(cfg.n_labelled):
        share = rng.choice((0.0, 0.25, 0.5, 0.75, 1.0))
        n = rng.randint(1, 6)
        words = continuation(rng, [rng.random() < share for _ in range(n)]).split()
        if rng.random() < 0.5:
            words = words[: rng.randint(1, len(words) - 1)]
        text = f"{rng.choice(prompts)} {' '.join(words)}"
        out.append((text, target_logodds(text, cfg)))
    return out


def graded_probe_texts(
    prompts: Sequence[str], n_clauses: int, n_positive: int, n: int, seed: int = 0
) -> list[str]:
    """Held-out probes: ``n`` finished reviews of ``n_clauses`` clauses, ``n_positive`` positive.

    Used to check that the classifier is graded (its score grows with ``n_positive``).
    """
    rng = random.Random(f"probe-{seed}-{n_clauses}-{n_positive}")
    out = []
    for _ in range(n):
        pol = [True] * n_positive + [False] * (n_clauses - n_positive)
        rng.shuffle(pol)
        out.append(f"{rng.choice(prompts)} {continuation(rng, pol)}")
    return out


def make_length_reward(cfg: SentimentLengthConfig):
    """``min(words, cap) / scale``, and 0 for a response cut at ``max_new_tokens``."""

    def length(prompts: list[str], responses: list[str]) -> list[float]:
        del prompts
        out = []
        for text in responses:
            n = len(text.split())
            out.append(
                0.0 if n >= cfg.max_new_tokens else min(n, cfg.length_cap) / cfg.length_scale
            )
        return out

    length.__name__ = "length"
    return length


def words() -> list[str]:
    """Every word the grammar can emit, sorted: the tokenizer's vocabulary."""
    out: set[str] = set(FUNCTION_WORDS)
    for group in (POSITIVE_ADJ, NEGATIVE_ADJ, POSITIVE_VERB, NEGATIVE_VERB, INTENSIFIERS, WORKS):
        out.update(group)
    for aspect in ASPECTS:
        out.update(aspect.split())
    return sorted(out)
