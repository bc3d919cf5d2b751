"""Whether two tokenizers agree, and what a tokenizer adds around a text.

A reward model reads the policy's ids instead of re-tokenised text only when its tokenizer is
the policy's (:func:`same_tokenizer`); it then adds its own special tokens around each row
(:func:`added_special_ids`).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["added_special_ids", "same_tokenizer"]


_PROBE = "hello"


def added_special_ids(tokenizer: Any) -> tuple[list[int], list[int]] | None:
    """The ids ``tokenizer`` adds before and after a text (``add_special_tokens=True``), e.g.
    ``([bos], [])``; None when they cannot be told apart from the text's own ids."""
    plain = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    full = tokenizer(_PROBE, add_special_tokens=True)["input_ids"]
    if not plain:
        return None
    starts = [i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain]
    if len(starts) != 1:
        return None
    return full[: starts[0]], full[starts[0] + len(plain) :]


_TOKENIZER_ATTRIBUTES = ("all_special_ids", "clean_up_tokenization_spaces", "model_input_names")


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers map text to ids and ids to text identically: the same object, or
    fast tokenizers of one class whose backends serialise identically (vocabulary, merges,
    added and special tokens, normaliser, pre-tokeniser, post-processor, decoder; the padding
    and truncation state aside) with the same special ids, clean-up and model inputs.
    Anything else (a slow tokenizer, a different vocabulary) is not the same."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    backends = [getattr(t, "backend_tokenizer", None) for t in (a, b)]
    if any(backend is None for backend in backends):
        return False
    states = []
    for backend in backends:
        state = json.loads(backend.to_str())
        state.pop("padding", None)
        state.pop("truncation", None)
        states.append(state)
    if states[0] != states[1]:
        return False
    return all(getattr(a, k, None) == getattr(b, k, None) for k in _TOKENIZER_ATTRIBUTES)
