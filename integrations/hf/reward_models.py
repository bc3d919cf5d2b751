"""Sequence-classification reward models: loaded once, scored once per batch, several heads.

Multi-attribute reward models (one ``AutoModelForSequenceClassification`` with an output per
attribute: helpfulness, verbosity, ...) give several objectives from one forward pass.
:class:`RewardModel` holds one such model; :meth:`RewardModel.head` makes a reward function
for one of its outputs. All heads of a model share its weights and its scores: the batch is
scored once and every head reads its column.

Weights are shared process-wide: two :class:`RewardModel` objects for the same path and dtype
use one loaded copy (held weakly: it is freed when no reward function uses it any more), so
two objectives from the same model never load it twice, whichever way they were declared.

What the reward model reads: for a conversation prompt, the whole exchange (the messages plus
the response as the assistant's message) through the reward model's own chat template when
its tokenizer has one; otherwise ``prompt_text + separator + response``, where
``prompt_text`` is the text the policy saw (the prompt rendered with the policy's template).

Token ids instead of text: when the reward model's tokenizer is the policy's (the same object,
or an identical one: :func:`same_tokenizer`) and the prompts are strings, the trainer passes the
rollout's ids (:class:`~.rollout.ExchangeTokens`) and the reward model builds its input from
them (:meth:`RewardModel.token_rows`) instead of decoding and re-tokenising: the same ids, the
same truncation and padding as the text path would give, and the same scores. A batch whose
ids do not decode to exactly the text the text path would score goes through the text path.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .data import is_conversation, with_response
from .rollout import ExchangeTokens
from .tokenizer_match import added_special_ids, same_tokenizer

__all__ = [
    "RewardHead",
    "RewardModel",
    "accepts_tokens",
    "added_special_ids",
    "same_tokenizer",
    "shared_reward_model",
]


class _LoadedWeights:
    """A loaded classifier and its tokenizer (the object the weak caches point to)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer


_WEIGHTS: weakref.WeakValueDictionary[tuple[Any, ...], _LoadedWeights] = (
    weakref.WeakValueDictionary()
)
_MODELS: weakref.WeakValueDictionary[tuple[Any, ...], RewardModel] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


class RewardModel:
    """One sequence-classification reward model; every output is available as a head.

    Args:
        name_or_path: loaded with ``AutoModelForSequenceClassification.from_pretrained``
            (``trust_remote_code=False``), lazily on first use.
        tokenizer: its tokenizer (default: loaded from ``name_or_path``). Never the policy's:
            the reward model reads text the way it was trained to.
        batch_size, max_length: scoring batch and truncation (from the left: the response,
            at the end, is what is being judged).
        separator: between prompt text and response when no chat template is used; None:
            one space unless either side already has whitespace there (see :meth:`join`).
        dtype, device: of the loaded weights.
        use_chat_template: score conversations through this model's chat template when its
            tokenizer has one.
        token_inputs: read the policy's token ids instead of re-tokenising the decoded text
            (:meth:`token_rows`). ``None`` (default): when this model's tokenizer is the
            policy's, the prompts are strings and every row's ids decode to exactly the text the
            text path would score; otherwise text. ``False``: always text. ``True``: ids
            whenever the tokenizer is shared, without the decoded-text check (a mismatch in the
            tokenizer or conversation prompts raise ``ValueError``).
    """

    def __init__(
        self,
        name_or_path: str | Path,
        *,
        tokenizer: Any = None,
        batch_size: int = 32,
        max_length: int | None = 512,
        separator: str | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        use_chat_template: bool = True,
        token_inputs: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name_or_path = str(name_or_path)
        self.batch_size = batch_size
        self.max_length = max_length
        self.separator = separator
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.use_chat_template = use_chat_template
        self.token_inputs = token_inputs
        self._tokenizer = tokenizer
        self._weights: _LoadedWeights | None = None
        self._last: tuple[tuple[str, ...], torch.Tensor] | None = None
        self.forward_batches = 0
        """Number of scored batches (one per distinct input batch, whatever the heads)."""
        self.token_batches = 0
        """How many of them were read from token ids (:meth:`token_rows`)."""
        # (policy tokenizer, same_tokenizer(ours, it), added_special_ids(ours)), for the last
        # policy tokenizer seen.
        self._shared: tuple[Any, bool, tuple[list[int], list[int]] | None] | None = None

    def __repr__(self) -> str:
        return f"RewardModel({self.name_or_path!r})"

    # ------------------------------------------------------------------ loading

    def _weights_key(self) -> tuple[Any, ...]:
        tok = None if self._tokenizer is None else id(self._tokenizer)
        return (self.name_or_path, str(self.dtype), tok)

    def load(self) -> RewardModel:
        """Load (or reuse) the weights; idempotent."""
        if self._weights is not None:
            return self
        with _LOCK:
            key = self._weights_key()
            weights = _WEIGHTS.get(key)
            if weights is None:
                weights = self._load_weights()
                _WEIGHTS[key] = weights
        self._weights = weights
        if self.device is not None:
            weights.model.to(self.device)
        return self

    def _load_weights(self) -> _LoadedWeights:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .models import check_model_source

        path = self.name_or_path
        check_model_source(path, "reward model")
        tokenizer = self._tokenizer
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        kwargs: dict[str, Any] = {"trust_remote_code": False}
        if self.dtype is not None:
            kwargs["dtype"] = self.dtype
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
        if tokenizer.pad_token is None:
            # Classification heads of decoder models find the last token through the pad id.
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        model.eval().requires_grad_(False)
        return _LoadedWeights(model.to(self.device or torch.device("cpu")), tokenizer)

    def join(self, prompt: str, response: str) -> str:
        """``prompt + separator + response``; with ``separator=None`` one space, unless the
        prompt ends or the response starts with whitespace (SentencePiece decodes drop the
        leading space; byte-level BPE keeps it)."""
        if self.separator is not None:
            return prompt + self.separator + response
        if not prompt or not response or prompt[-1].isspace() or response[0].isspace():
            return prompt + response
        return prompt + " " + response

    def to(self, device: str | torch.device) -> RewardModel:
        self.device = torch.device(device)
        if self._weights is not None:
            self._weights.model.to(self.device)
        return self

    @property
    def model(self) -> Any:
        return self.load()._weights.model  # type: ignore[union-attr]

    @property
    def tokenizer(self) -> Any:
        return self.load()._weights.tokenizer  # type: ignore[union-attr]

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    def check_label(self, label_index: int) -> int:
        n = self.num_labels
        if not -n <= label_index < n:
            raise ValueError(
                f"reward model {self.name_or_path!r} has {n} outputs; "
                f"label_index {label_index} is out of range (0..{n - 1}, or -{n}..-1)"
            )
        return label_index % n

    # ------------------------------------------------------------------ scoring

    def texts(
        self,
        prompts: Sequence[Any],
        responses: Sequence[str],
        prompt_texts: Sequence[str] | None = None,
    ) -> tuple[list[str], bool]:
        """The texts this model scores, and whether they already hold special tokens."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        if prompt_texts is not None and len(prompt_texts) != len(prompts):
            raise ValueError(f"{len(prompt_texts)} prompt texts for {len(prompts)} prompts")
        tokenizer = self.tokenizer
        template = self.use_chat_template and getattr(tokenizer, "chat_template", None)
        out: list[str] = []
        chat = [is_conversation(p) for p in prompts]
        if any(chat) and not all(chat):
            raise ValueError("a batch mixes string and conversation prompts")
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            if is_conversation(prompt) and template:
                exchange = with_response(prompt, response)
                out.append(tokenizer.apply_chat_template(exchange, tokenize=False))
                continue
            if prompt_texts is not None:
                text = prompt_texts[i]
            elif isinstance(prompt, str):
                text = prompt
            else:
                raise ValueError(
                    f"reward model {self.name_or_path!r} has no chat template and prompt {i} is "
                    "a conversation; pass prompt_texts (the text the policy saw)"
                )
            out.append(self.join(text, response))
        # A rendered chat template already holds the model's special tokens (BOS, ...).
        return out, bool(template) and all(chat)

    def encode_texts(self, texts: Sequence[str], templated: bool) -> list[dict[str, torch.Tensor]]:
        """The text path's inputs: ``texts`` tokenized in batches of ``batch_size``, cut from
        the left to ``max_length``, padded to the longest of each batch."""
        tokenizer = self.tokenizer
        out = []
        side = tokenizer.truncation_side
        # Truncate from the left: the end of the exchange is what is being judged.
        tokenizer.truncation_side = "left"
        try:
            for lo in range(0, len(texts), self.batch_size):
                enc = tokenizer(
                    list(texts[lo : lo + self.batch_size]),
                    padding=True,
                    truncation=self.max_length is not None,
                    max_length=self.max_length,
                    add_special_tokens=not templated,
                    return_tensors="pt",
                )
                out.append(dict(enc))
        finally:
            tokenizer.truncation_side = side
        return out

    def token_rows(
        self,
        prompts: Sequence[Any],
        responses: Sequence[str],
        prompt_texts: Sequence[str] | None,
        tokens: ExchangeTokens | None,
    ) -> list[list[int]] | None:
        """This model's input ids, one row per exchange, built from the policy's ids; None
        where the text path must be taken (see ``token_inputs``).

        Row = the special tokens this tokenizer adds (:func:`added_special_ids`) around
        ``prompt content + response content``, where the prompt content is the policy's prompt
        ids less the special tokens the tokenizer added, the response content the response ids
        less special tokens (the final EOS; as ``skip_special_tokens`` decoding drops them), cut
        from the left to ``max_length`` as the tokenizer's left truncation cuts. With
        ``token_inputs=None`` every row must decode to the text the text path would score
        (:meth:`join` of the prompt text and the response), or the whole batch goes through text.
        """
        if self.token_inputs is False or tokens is None:
            return None
        refusal = self._token_refusal(prompts, responses, tokens)
        if refusal is not None:
            if self.token_inputs:
                raise ValueError(
                    f"reward model {self.name_or_path!r} has token_inputs=True but {refusal}"
                )
            return None
        tokenizer = self.tokenizer
        assert self._shared is not None and self._shared[2] is not None  # by _token_refusal
        # The tokenizers are the same: the policy's prompts carry the ids this one adds.
        head, tail = p_head, p_tail = self._shared[2]
        special = set(tokens.tokenizer.all_special_ids)
        contents = []
        for prompt, response in zip(tokens.prompt_ids, tokens.response_ids, strict=True):
            n = len(prompt)
            starts = not p_head or prompt[: len(p_head)] == p_head
            ends = not p_tail or prompt[n - len(p_tail) :] == p_tail
            if not (starts and ends and n >= len(p_head) + len(p_tail)):
                if self.token_inputs:
                    raise ValueError(
                        f"reward model {self.name_or_path!r} has token_inputs=True but a prompt "
                        "lacks the special tokens its tokenizer adds"
                    )
                return None
            kept = prompt[len(p_head) : n - len(p_tail)]
            if special.isdisjoint(response):
                contents.append(kept + response)
            else:
                contents.append(kept + [t for t in response if t not in special])
        if not self.token_inputs:
            if prompt_texts is not None and len(prompt_texts) != len(prompts):
                raise ValueError(f"{len(prompt_texts)} prompt texts for {len(prompts)} prompts")
            texts = prompt_texts if prompt_texts is not None else prompts
            wanted = [self.join(p, r) for p, r in zip(texts, responses, strict=True)]
            decoded = tokenizer.batch_decode(contents, skip_special_tokens=False)
            if decoded != wanted:
                return None
        room = None if self.max_length is None else self.max_length - len(head) - len(tail)
        return [
            head + (c if room is None or len(c) <= room else c[len(c) - room :]) + tail
            for c in contents
        ]

    def _token_refusal(
        self, prompts: Sequence[Any], responses: Sequence[str], tokens: ExchangeTokens
    ) -> str | None:
        """Why the policy's ids cannot be this model's input (None: they can)."""
        if len(tokens.prompt_ids) != len(prompts) or len(tokens.response_ids) != len(responses):
            raise ValueError(
                f"{len(tokens.prompt_ids)} prompt and {len(tokens.response_ids)} response id "
                f"rows for {len(prompts)} prompts and {len(responses)} responses"
            )
        if self._shared is None or self._shared[0] is not tokens.tokenizer:
            shared = same_tokenizer(self.tokenizer, tokens.tokenizer)
            added = added_special_ids(self.tokenizer) if shared else None
            self._shared = (tokens.tokenizer, shared, added)
        if not self._shared[1]:
            return "its tokenizer is not the policy's"
        if not tokens.add_special_tokens or not all(isinstance(p, str) for p in prompts):
            return "the prompts are conversations (scored through text)"
        if set(self.tokenizer.model_input_names) - {"input_ids", "attention_mask"}:
            return f"its tokenizer also returns {self.tokenizer.model_input_names}"
        added = self._shared[2]
        if added is None:
            return "the special tokens its tokenizer adds cannot be located"
        if self.max_length is not None and self.max_length <= len(added[0]) + len(added[1]):
            return f"max_length={self.max_length} leaves no room between its special tokens"
        return None

    def pad_rows(self, rows: Sequence[list[int]]) -> list[dict[str, torch.Tensor]]:
        """``rows`` in batches of ``batch_size``, padded to the longest of each batch on the
        tokenizer's padding side, with its pad id: the tensors the text path's tokenizer call
        gives for the same ids."""
        tokenizer = self.tokenizer
        pad = tokenizer.pad_token_id
        left = tokenizer.padding_side == "left"
        out = []
        for lo in range(0, len(rows), self.batch_size):
            chunk = rows[lo : lo + self.batch_size]
            width = max(len(r) for r in chunk)
            ids, attn = [], []
            for row in chunk:
                fill = width - len(row)
                ids.append([pad] * fill + row if left else row + [pad] * fill)
                attn.append([0] * fill + [1] * len(row) if left else [1] * len(row) + [0] * fill)
            out.append(
                {
                    "input_ids": torch.tensor(ids, dtype=torch.long),
                    "attention_mask": torch.tensor(attn, dtype=torch.long),
                }
            )
        return out

    @torch.no_grad()
    def logits(
        self,
        prompts: Sequence[Any],
        responses: Sequence[str],
        prompt_texts: Sequence[str] | None = None,
        tokens: ExchangeTokens | None = None,
    ) -> torch.Tensor:
        """All outputs ``[B, num_labels]`` (float32, CPU); the last batch is remembered, so
        every head asking about the same batch shares one forward pass. ``tokens``: the
        policy's ids of the same exchanges, read instead of the text where they can be
        (:meth:`token_rows`)."""
        rows = self.token_rows(prompts, responses, prompt_texts, tokens)
        if rows is not None:
            key: tuple[Any, ...] = ("tokens", *map(tuple, rows))
        else:
            texts, templated = self.texts(prompts, responses, prompt_texts)
            key = (str(templated), *texts)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        model = self.model
        device = next(model.parameters()).device
        batches = self.pad_rows(rows) if rows is not None else self.encode_texts(texts, templated)
        out = [
            model(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu()
            for enc in batches
        ]
        logits = torch.cat(out, dim=0) if out else torch.zeros(0, self.num_labels)
        self.forward_batches += 1
        self.token_batches += rows is not None
        self._last = (key, logits)
        return logits

    def head(self, label_index: int, name: str | None = None) -> RewardHead:
        return RewardHead(self, label_index, name=name)

    def heads(self, labels: Mapping[str, int] | Sequence[int]) -> list[RewardHead]:
        """Reward functions for several outputs: ``{"helpful": 0, "verbose": 4}`` or ``[0, 4]``."""
        if isinstance(labels, Mapping):
            return [self.head(index, name) for name, index in labels.items()]
        return [self.head(index) for index in labels]


class RewardHead:
    """A reward function reading one output (``label_index``) of a :class:`RewardModel`.

    Called as ``head(prompts, responses, prompt_texts=None, tokens=None) -> list[float]``; the
    trainer passes ``prompt_texts``, the prompts as the policy saw them, and ``tokens``, the
    rollout's ids (:class:`~.rollout.ExchangeTokens`), read when the tokenizer is shared.
    """

    def __init__(self, model: RewardModel, label_index: int = 0, *, name: str | None = None):
        self.reward_model = model
        self.label_index = int(label_index)
        self.name = name or model.name_or_path.rstrip("/").split("/")[-1]

    def __repr__(self) -> str:
        return (
            f"RewardHead({self.reward_model.name_or_path!r}, label_index={self.label_index}, "
            f"name={self.name!r})"
        )

    @property
    def name_or_path(self) -> str:
        return self.reward_model.name_or_path

    def to(self, device: str | torch.device) -> RewardHead:
        self.reward_model.to(device)
        return self

    def load(self) -> RewardHead:
        """Load the model now and check the label index (errors before training starts)."""
        model = self.reward_model.load()
        try:
            model.check_label(self.label_index)
        except ValueError as exc:
            raise ValueError(f"reward {self.name!r}: {exc}") from None
        return self

    def __call__(
        self,
        prompts: Sequence[Any],
        responses: Sequence[str],
        prompt_texts: Sequence[str] | None = None,
        tokens: ExchangeTokens | None = None,
    ) -> list[float]:
        column = self.reward_model.check_label(self.label_index)
        logits = self.reward_model.logits(prompts, responses, prompt_texts, tokens)
        return logits[:, column].tolist()


def shared_reward_model(name_or_path: str | Path, **options: Any) -> RewardModel:
    """The :class:`RewardModel` for ``name_or_path`` and ``options``, made once per process.

    Objectives declared separately (``--reward a=PATH:0 --reward b=PATH:1``) get the same
    object, hence one load and one forward pass per batch.
    """
    # A tokenizer object is keyed by identity; every other option by value.
    key = (
        str(name_or_path),
        *sorted((k, id(v) if k == "tokenizer" else repr(v)) for k, v in options.items()),
    )
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = RewardModel(name_or_path, **options)
            _MODELS[key] = model
    return model


def accepts_tokens(fn: Any) -> bool:
    """Whether a reward function gets the rollout's ids (:class:`~.rollout.ExchangeTokens`): a
    :class:`RewardHead` whose call names a ``tokens`` parameter. Other callables never do (a
    user's function may have a ``tokens`` parameter of its own)."""
    import inspect

    if not isinstance(fn, RewardHead):
        return False
    try:
        return "tokens" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
