"""A tiny GPT-2-shaped policy and a word-level tokenizer, built in code, saved to disk.

Everything goes through the real loading path (``from_pretrained(path)``); nothing
is downloaded.  Test modules wrap :func:`make_tiny_lm` in a session fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

WORDS = [
    "the", "a", "film", "movie", "story", "plot", "actor", "scene", "music", "ending",
    "was", "is", "very", "quite", "not", "good", "bad", "great", "dull", "fun",
    "and", "but", "with", "long", "short", "i", "liked", "hated", "it", "this",
]  # fmt: skip
SPECIAL = ["<pad>", "<eos>", "<unk>"]
PROMPTS = [
    "the film was",
    "this movie is",
    "i liked the plot",
    "the actor was very",
    "a story with",
    "the music is quite",
    "i hated the ending",
    "this scene was",
]


def build_tokenizer(
    path: Path,
    extra_special: list[str] | None = None,
    *,
    extra_words: tuple[str, ...] = (),
    chat_template: str | None = None,
):
    """Word-level tokenizer (whitespace split, words joined by spaces on decode).

    ``extra_special``: further special tokens (e.g. a second end-of-turn token), placed
    after the usual three; ``extra_words`` go after the usual words; ``chat_template`` is set
    on the tokenizer (a Jinja string).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    extra = list(extra_special or [])
    vocab = {tok: i for i, tok in enumerate(SPECIAL + extra + WORDS + list(extra_words))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        additional_special_tokens=extra or None,
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def build_policy(path: Path, vocab_size: int, eos_id: int, eos_prob: float = 0.3) -> None:
    """Random GPT-2 (2 layers, width 32) whose EOS probability is ~``eos_prob`` per token.

    Responses of a random model would rarely stop; a bias toward EOS through the
    final layer norm gives short responses that a length reward can lengthen.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        direction = model.transformer.wte.weight[eos_id].clone()
        direction /= direction.norm()
        ids = torch.randint(3, vocab_size, (16, 12))
        # Bisection on the bias size so that mean p(EOS) hits the target.
        lo, hi = 0.0, 50.0
        for _ in range(30):
            mid = (lo + hi) / 2
            model.transformer.ln_f.bias.copy_(mid * direction)
            p = torch.softmax(model(ids).logits, -1)[..., eos_id].mean()
            lo, hi = (mid, hi) if p < eos_prob else (lo, mid)
    model.save_pretrained(str(path))


def make_tiny_lm(path: Path) -> Path:
    """Write a tiny GPT-2 policy and its tokenizer into ``path`` (loadable by path)."""
    tok = build_tokenizer(path)
    build_policy(path, len(tok), tok.eos_token_id)
    return path


CHAT_WORDS = ("user", "assistant", "system", "|")
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} | {{ m['content'] }} | {% endfor %}"
    "{% if add_generation_prompt %}assistant |{% endif %}"
)
"""A tiny chat template: ``user | hi | assistant |`` (role words are in the vocabulary)."""
RM_CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
"""The reward model's own, different template (no separators, no generation prompt)."""
CHATS = [
    [{"role": "user", "content": "the film was"}],
    [{"role": "system", "content": "a short story"}, {"role": "user", "content": "this movie is"}],
    [{"role": "user", "content": "i liked the plot"}, {"role": "assistant", "content": "good"}],
    [{"role": "user", "content": "the music is quite"}],
]


def make_tiny_chat_lm(path: Path) -> Path:
    """A tiny GPT-2 whose tokenizer carries :data:`CHAT_TEMPLATE`."""
    tok = build_tokenizer(path, extra_words=CHAT_WORDS, chat_template=CHAT_TEMPLATE)
    build_policy(path, len(tok), tok.eos_token_id)
    return path


def make_two_head_reward_model(path: Path, seed: int = 1) -> Path:
    """A tiny GPT-2 sequence classifier with two outputs and its own chat template."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tok = build_tokenizer(path, extra_words=CHAT_WORDS, chat_template=RM_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2, num_labels=2,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    GPT2ForSequenceClassification(config).eval().save_pretrained(str(path))
    return path


def __getattr__(name: str) -> Any:
    # ``length_words``: the length reward on words (8 words: 1.0), the first objective of the
    # trainer tests; built on first use, so that importing this module loads no HF library.
    if name == "length_words":
        from paretoopt.integrations.hf import make_length_reward

        globals()[name] = make_length_reward(scale=8, lo=0.0, hi=1.0, unit="words")
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def good_rate(prompts: list[Any], responses: list[str]) -> list[float]:
    """Share of the word "good" in each response (a second, conflicting objective)."""
    return [r.split().count("good") / max(1, len(r.split())) for r in responses]
