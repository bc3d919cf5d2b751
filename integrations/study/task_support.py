"""Task 2, ``support_replies``: helpfulness, politeness and brevity, by grammar, offline.

A prompt is a customer question naming 1-3 *slots* ("when will my order ship and how much
is my refund ? agent :"); a reply is made of units from a small grammar:

* an *answer* to a slot, e.g. "it ships monday" (one per slot, 3-4 words);
* a *detail*, extra true-sounding information that answers nothing ("the warehouse is busy");
* a *polite phrase* ("thank you", "have a nice day", "we appreciate your patience");
* a *curt phrase* ("as stated", "read the faq").

The three rewards are rules, so they are exact and cost nothing:

* ``helpful`` = share of the asked slots whose answer appears (0, 1/3, 1/2, 2/3, 1);
* ``polite`` = ``clip((polite phrases - curt phrases) / 2, -1, 1)``, distinct phrases;
* ``brief`` = ``max(0, 1 - words / brevity_words)``; a reply cut at ``max_new_tokens``
  without EOS (exactly ``max_new_tokens`` words: the tokenizer is word level) scores 0.

The SFT corpus pulls the three apart: *helpful* replies answer every slot but are long
(details) and curt; *polite* replies pad with polite phrases and answer only some slots;
``short_rate`` (10%) are short, polite and complete, the joint improvement a Pareto method
should find.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

SLOTS: dict[str, tuple[str, str]] = {
    # slot: (question, answer template with one {} filled from ANSWER_FILLERS)
    "shipping": ("when will my order ship", "it ships {}"),
    "refund": ("how much is my refund", "refund is {} dollars"),
    "tracking": ("what is my tracking number", "tracking is {}"),
    "returns": ("where do i send the return", "return it to {}"),
    "hours": ("when is the store open", "we open at {}"),
    "warranty": ("how long is the warranty", "warranty is {} years"),
}
ANSWER_FILLERS: dict[str, tuple[str, ...]] = {
    "shipping": ("monday", "tuesday", "friday", "tomorrow"),
    "refund": ("ten", "twenty", "forty", "fifty"),
    "tracking": ("ab12", "cd34", "ef56", "gh78"),
    "returns": ("dock", "warehouse", "store", "office"),
    "hours": ("eight", "nine", "ten", "noon"),
    "warranty": ("two", "three", "five", "ten"),
}
POLITE = (
    "thank you",
    "happy to help",
    "have a nice day",
    "sorry for the wait",
    "we appreciate your patience",
    "let us know if you need anything else",
)
CURT = ("as stated", "read the faq", "nothing else to add")
DETAILS = (
    "the warehouse is busy this week",
    "orders are packed by hand",
    "our system updates every hour",
    "prices include tax",
    "the courier works on weekends",
    "returns are checked on arrival",
)


@dataclass(frozen=True)
class SupportRepliesConfig:
    """Everything that defines task 2 (all of it enters the artefacts' cache key)."""

    n_replies: int = 3000
    helpful_rate: float = 0.45
    short_rate: float = 0.10
    heldout_fraction: float = 0.25
    corpus_seed: int = 0
    brevity_words: int = 30
    max_new_tokens: int = 40
    # Joint success, fixed in advance: every asked slot answered, at least one net polite
    # phrase, fewer than 20 words. Brevity's threshold is brief(20 words) itself, computed as
    # the reward computes it, so that a reply of exactly 20 words is not above it (0.33
    # admitted 20 words: 1 - 20/30 = 0.3333...).
    success_thresholds: tuple[float, float, float] = (0.99, 0.49, 1.0 - 20 / 30)
    hv_reference: tuple[float, float, float] = (0.0, -1.0, 0.0)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def prompt_for(slots: Sequence[str]) -> str:
    return " and ".join(SLOTS[s][0] for s in slots) + " ? agent :"


def all_prompts() -> list[str]:
    """Every ordered choice of 1-3 distinct slots, as a prompt."""
    out = []
    for k in (1, 2, 3):
        out.extend(prompt_for(p) for p in itertools.permutations(SLOTS, k))
    return out


def asked_slots(prompt: str) -> list[str]:
    """Slots named by a prompt, in order."""
    question = prompt.split(" ? agent :")[0]
    parts = question.split(" and ")
    by_question = {q: s for s, (q, _) in SLOTS.items()}
    return [by_question[p] for p in parts if p in by_question]


def split_prompts(cfg: SupportRepliesConfig) -> tuple[list[str], list[str]]:
    prompts = all_prompts()
    rng = random.Random(f"support-prompts-{cfg.corpus_seed}")
    rng.shuffle(prompts)
    n_held = max(1, round(cfg.heldout_fraction * len(prompts)))
    return sorted(prompts[n_held:]), sorted(prompts[:n_held])


def answer(rng: random.Random, slot: str) -> str:
    return SLOTS[slot][1].format(rng.choice(ANSWER_FILLERS[slot]))


def _join(units: Sequence[str]) -> str:
    return " ".join(f"{u} ." for u in units)


def reply(rng: random.Random, slots: Sequence[str], kind: str) -> str:
    """A reply of ``kind``: "helpful" (complete, long, curt), "polite" (padded, partial),
    or "short" (short, polite, complete)."""
    answers = [answer(rng, s) for s in slots]
    if kind == "helpful":
        details = rng.sample(DETAILS, rng.randint(2, 3))
        units = [*answers, *details]
        rng.shuffle(units)
        return _join([*units, rng.choice(CURT)])
    if kind == "polite":
        kept = rng.sample(answers, rng.randint(0, len(answers) - 1))
        polite = rng.sample(POLITE, rng.randint(3, 4))
        return _join([polite[0], *kept, *polite[1:]])
    if kind == "short":
        # One polite phrase (politeness 0.5), every answer, nothing else.
        units = [*answers, "thank you"] if rng.random() < 0.5 else ["thank you", *answers]
        return _join(units)
    raise ValueError(f"unknown reply kind {kind!r}")


def sft_texts(cfg: SupportRepliesConfig, prompts: Sequence[str]) -> list[str]:
    rng = random.Random(f"support-sft-{cfg.corpus_seed}")
    out = []
    for _ in range(cfg.n_replies):
        prompt = rng.choice(prompts)
        u = rng.random()
        kind = (
            "short"
            if u < cfg.short_rate
            else "helpful"
            if u < cfg.short_rate + cfg.helpful_rate
            else "polite"
        )
        out.append(f"{prompt} {reply(rng, asked_slots(prompt), kind)}")
    return out


def helpfulness(prompt: str, response: str) -> float:
    slots = asked_slots(prompt)
    if not slots:
        return 0.0
    text = f" {response} "
    found = 0
    for slot in slots:
        template = SLOTS[slot][1]
        if any(f" {template.format(v)} " in text for v in ANSWER_FILLERS[slot]):
            found += 1
    return found / len(slots)


def politeness(response: str) -> float:
    text = f" {response} "
    polite = sum(f" {p} " in text for p in POLITE)
    curt = sum(f" {c} " in text for c in CURT)
    return max(-1.0, min(1.0, (polite - curt) / 2))


def make_rewards(cfg: SupportRepliesConfig):
    """The three reward functions ``(prompts, responses) -> list[float]``."""

    def helpful(prompts: list[str], responses: list[str]) -> list[float]:
        return [helpfulness(p, r) for p, r in zip(prompts, responses, strict=True)]

    def polite(prompts: list[str], responses: list[str]) -> list[float]:
        del prompts
        return [politeness(r) for r in responses]

    def brief(prompts: list[str], responses: list[str]) -> list[float]:
        del prompts
        out = []
        for r in responses:
            n = len(r.split())
            out.append(0.0 if n >= cfg.max_new_tokens else max(0.0, 1.0 - n / cfg.brevity_words))
        return out

    helpful.__name__, polite.__name__, brief.__name__ = "helpful", "polite", "brief"
    return [helpful, polite, brief]


def words() -> list[str]:
    vocab: set[str] = {".", "?", ":", "and", "agent", "dollars", "years"}
    for question, template in SLOTS.values():
        vocab.update(question.split())
        vocab.update(template.replace("{}", "").split())
    for fillers in ANSWER_FILLERS.values():
        vocab.update(fillers)
    for group in (POLITE, CURT, DETAILS):
        for phrase in group:
            vocab.update(phrase.split())
    return sorted(vocab)
