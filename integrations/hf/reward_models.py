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
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .data import is_conversation, with_response

__all__ = [
    "RewardHead",
    "RewardModel",
    "accepts_prompt_texts",
    "bind_prompt_texts",
    "parse_reward_model_spec",
    "parse_reward_specs",
    "shared_reward_model",
    "unique_reward_names",
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
        self._tokenizer = tokenizer
        self._weights: _LoadedWeights | None = None
        self._last: tuple[tuple[str, ...], torch.Tensor] | None = None
        self.forward_batches = 0
        """Number of scored batches (one per distinct input batch, whatever the heads)."""

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
                f"label_index {label_index} is out of range"
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

    @torch.no_grad()
    def logits(
        self,
        prompts: Sequence[Any],
        responses: Sequence[str],
        prompt_texts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """All outputs ``[B, num_labels]`` (float32, CPU); the last batch is remembered, so
        every head asking about the same batch shares one forward pass."""
        texts, templated = self.texts(prompts, responses, prompt_texts)
        key = (str(templated), *texts)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        model, tokenizer = self.model, self.tokenizer
        device = next(model.parameters()).device
        rows = []
        side = tokenizer.truncation_side
        # Truncate from the left: the end of the exchange is what is being judged.
        tokenizer.truncation_side = "left"
        try:
            for lo in range(0, len(texts), self.batch_size):
                enc = tokenizer(
                    texts[lo : lo + self.batch_size],
                    padding=True,
                    truncation=self.max_length is not None,
                    max_length=self.max_length,
                    add_special_tokens=not templated,
                    return_tensors="pt",
                )
                rows.append(model(**enc.to(device)).logits.float().cpu())
        finally:
            tokenizer.truncation_side = side
        logits = torch.cat(rows, dim=0) if rows else torch.zeros(0, self.num_labels)
        self.forward_batches += 1
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

    Called as ``head(prompts, responses, prompt_texts=None) -> list[float]``; the trainer
    passes ``prompt_texts``, the prompts as the policy saw them.
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
        self.reward_model.load().check_label(self.label_index)
        return self

    def __call__(
        self,
        prompts: Sequence[Any],
        responses: Sequence[str],
        prompt_texts: Sequence[str] | None = None,
    ) -> list[float]:
        column = self.reward_model.check_label(self.label_index)
        return self.reward_model.logits(prompts, responses, prompt_texts)[:, column].tolist()


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


def parse_reward_model_spec(spec: str, **options: Any) -> list[RewardHead]:
    """``NAME[,NAME...]=PATH:LABEL[,LABEL...]`` -> one :class:`RewardHead` per name.

    ``helpful,verbose=path/to/rm:0,4`` gives two objectives, outputs 0 and 4 of one model.
    ``PATH:0,4`` without names names them ``<model>:0`` and ``<model>:4``.
    """
    names: list[str]
    body = spec.strip()
    if "=" in body:
        head, body = body.split("=", 1)
        names = [n.strip() for n in head.split(",")]
        if not all(names):
            raise ValueError(f"reward spec {spec!r}: empty objective name before '='")
    else:
        names = []
    path, sep, tail = body.rpartition(":")
    labels_ok = sep and all(t.strip().lstrip("-").isdigit() for t in tail.split(","))
    if not labels_ok:
        path, labels = body, [0]
    else:
        labels = [int(t) for t in tail.split(",")]
    if not path:
        raise ValueError(f"reward spec {spec!r}: no model name or path")
    if not names:
        base = path.rstrip("/").split("/")[-1]
        names = [base] if len(labels) == 1 else [f"{base}:{label}" for label in labels]
    if len(names) != len(labels):
        raise ValueError(
            f"reward spec {spec!r}: {len(names)} names for {len(labels)} labels; "
            "give one name per output, e.g. helpful,verbose=PATH:0,4"
        )
    if len(set(labels)) != len(labels):
        raise ValueError(f"reward spec {spec!r}: an output is listed twice")
    model = shared_reward_model(path, **options)
    return [model.head(label, name) for name, label in zip(names, labels, strict=True)]


def accepts_prompt_texts(fn: Any) -> bool:
    """Whether a reward function takes the ``prompt_texts`` keyword (or ``**kwargs``); for a
    command-line :class:`~.rewards.NamedReward`, whether the function it wraps does."""
    import inspect

    from .rewards import NamedReward

    if isinstance(fn, NamedReward):
        fn = fn.fn
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "prompt_texts" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


def bind_prompt_texts(fn: Any, prompt_texts: Sequence[str]) -> Any:
    """``fn`` as a two-argument reward function that also receives ``prompt_texts`` (the
    prompts as the policy saw them) when it takes that keyword; ``fn`` itself otherwise."""
    if not accepts_prompt_texts(fn):
        return fn

    def bound(prompts: Sequence[Any], responses: Sequence[str]) -> Any:
        return fn(prompts, responses, prompt_texts=list(prompt_texts))

    return bound


_MULTI_LABELS = re.compile(r".*:-?\d+(,-?\d+)+")


def parse_reward_specs(spec: str) -> list[Any]:
    """One command-line ``--reward`` spec -> its reward functions (one per objective).

    ``N1,N2=PATH:L1,L2`` (several names or labels) -> :func:`parse_reward_model_spec`;
    anything else -> ``[rewards.parse_reward_spec(spec)]``.
    """
    from .rewards import parse_reward_spec

    name, eq, body = spec.strip().partition("=")
    if (eq and "," in name) or _MULTI_LABELS.fullmatch(body if eq else name):
        return list(parse_reward_model_spec(spec))
    return [parse_reward_spec(spec)]


def unique_reward_names(fns: Sequence[Any], names: Sequence[str] | None) -> list[str]:
    """One metric name per reward function (given, or the functions' own), made unique by
    suffixes ``_1``, ``_2`` so that metric keys never collide."""
    from .rewards import reward_name

    if names is None:
        names = [reward_name(fn, i) for i, fn in enumerate(fns)]
    names = [str(n) for n in names]
    if len(names) != len(fns):
        raise ValueError(f"{len(names)} reward_names for {len(fns)} reward functions")
    # Every name as given is reserved, so that a suffix never takes another reward's name
    # (['a', 'a', 'a_1'] -> ['a', 'a_2', 'a_1']): count on until the name is free.
    taken = set(names)
    seen: set[str] = set()
    unique = []
    for name in names:
        candidate, k = name, 0
        while candidate in seen or (k > 0 and candidate in taken):
            k += 1
            candidate = f"{name}_{k}"
        seen.add(candidate)
        taken.add(candidate)
        unique.append(candidate)
    return unique
