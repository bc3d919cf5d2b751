"""Reward functions: Python callables or sequence-classification reward models.

A reward function maps ``(prompts, responses)`` (two lists of strings of equal
length) to one float per response.  The trainer validates what comes back and
names the function and the step when it is wrong (:class:`RewardError`).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol

import torch

from .reward_model_specs import parse_reward_model_spec
from .reward_models import (
    RewardHead,
    accepts_tokens,
    shared_reward_model,
)
from .rollout import ExchangeTokens

__all__ = [
    "NamedReward",
    "RewardError",
    "RewardFunction",
    "RewardModelFunction",
    "accepts_prompt_texts",
    "bind_prompt_texts",
    "import_reward_function",
    "length_reward",
    "make_length_reward",
    "parse_reward_spec",
    "parse_reward_specs",
    "reward_name",
    "score_batch",
    "unique_reward_names",
]


class RewardFunction(Protocol):
    def __call__(self, prompts: list[str], responses: list[str]) -> Sequence[float]: ...


class RewardError(RuntimeError):
    """A reward function raised, or returned the wrong number of values, a value that is not
    a number, or NaN / inf. ``name`` and ``index`` say which reward, ``step`` when, and
    ``prompt_index`` / ``prompt`` on which prompt of the batch (None when no single prompt
    is to blame, e.g. the wrong number of values)."""

    def __init__(
        self,
        message: str,
        *,
        name: str,
        index: int,
        step: int,
        prompt_index: int | None = None,
        prompt: str | None = None,
    ) -> None:
        super().__init__(message)
        self.name = name
        self.index = index
        self.step = step
        self.prompt_index = prompt_index
        self.prompt = prompt


def make_length_reward(
    scale: float = 140.0, lo: float = 0.0, hi: float = 1.0, unit: str = "chars"
) -> Callable[[list[str], list[str]], list[float]]:
    """The paper's length reward, ``r = clip(len(response) / scale, lo, hi)``.

    ``unit`` says how length is counted: ``"chars"`` (characters) or ``"words"``
    (whitespace-separated words).  The defaults (characters, 140, [0, 1]) are
    our reading of the paper; set them to match your experiment.
    """
    if unit not in ("chars", "words"):
        raise ValueError(f"unit must be 'chars' or 'words', got {unit!r}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if lo > hi:
        raise ValueError(f"lo ({lo}) must not exceed hi ({hi})")

    def length_reward(prompts: list[str], responses: list[str]) -> list[float]:
        del prompts  # the length reward looks at the response only
        out = []
        for text in responses:
            length = len(text) if unit == "chars" else len(text.split())
            out.append(min(max(length / scale, lo), hi))
        return out

    length_reward.__name__ = "length"
    length_reward.__qualname__ = "length"
    return length_reward


length_reward = make_length_reward()
"""``clip(len(response) / 140, 0, 1)`` in characters; see :func:`make_length_reward`."""


class RewardModelFunction(RewardHead):
    """A sequence-classification reward model used as a reward function.

    ``r = logits[label_index]`` of ``AutoModelForSequenceClassification`` on the exchange:
    through the reward model's own chat template for conversation prompts when its tokenizer
    has one, otherwise ``join(prompt, response)``. Loading is lazy (first call or
    :meth:`load`), through the ordinary ``from_pretrained(name_or_path)``; a local path that
    does not exist is refused here, before any hub call. The weights are shared: every
    reward function on the same path and dtype uses one loaded copy and one forward pass
    per batch (:class:`~.reward_models.RewardModel`).

    Args:
        separator: what goes between prompt and response. ``None`` (default): one space,
            unless the prompt ends or the response starts with whitespace (decoded
            responses of SentencePiece tokenizers, e.g. Llama's, drop their leading space,
            so plain concatenation would fuse the last prompt word with the first response
            word; GPT-2-style byte-level BPE keeps it). A string is used as given, e.g.
            ``""`` for plain concatenation or ``"\n"``.
        max_length: longer texts lose their beginning (the response, at the end, is what is
            judged; a decoder reward model reads its last token).
        token_inputs: read the rollout's token ids instead of re-tokenising the decoded text
            when this model's tokenizer is the policy's (``None``, the default: when it is and
            the ids decode to the text that would be scored; ``False``: never; ``True``:
            whenever the tokenizer is shared); see :class:`~.reward_models.RewardModel`.
    """

    def __init__(
        self,
        name_or_path: str,
        label_index: int = 0,
        *,
        name: str | None = None,
        tokenizer: Any = None,
        batch_size: int = 32,
        max_length: int | None = 512,
        separator: str | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        use_chat_template: bool = True,
        token_inputs: bool | None = None,
    ) -> None:
        from .models import check_model_source

        check_model_source(name_or_path, f"reward model {name or str(name_or_path)!r}:")
        model = shared_reward_model(
            name_or_path,
            tokenizer=tokenizer,
            batch_size=batch_size,
            max_length=max_length,
            separator=separator,
            dtype=dtype,
            use_chat_template=use_chat_template,
            token_inputs=token_inputs,
        )
        if device is not None:
            model.to(device)
        super().__init__(model, label_index, name=name)

    def __repr__(self) -> str:
        return (
            f"RewardModelFunction({self.name_or_path!r}, label_index={self.label_index}, "
            f"name={self.name!r})"
        )

    def join(self, prompt: str, response: str) -> str:
        """The text the reward model scores without a chat template (see ``separator``)."""
        return self.reward_model.join(prompt, response)


def reward_name(fn: Any, index: int) -> str:
    """A readable name for a reward function (``name`` attribute, else ``__name__``)."""
    name = getattr(fn, "name", None) or getattr(fn, "__name__", None)
    if not name or name == "<lambda>":
        name = f"reward{index}"
    return str(name)


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_callable_spec(target: str) -> bool:
    """``package.module:function`` (dotted identifiers on both sides of one colon)."""
    module, sep, attr = target.partition(":")
    return bool(sep) and bool(_DOTTED.match(module)) and bool(_DOTTED.match(attr))


class NamedReward:
    """A user's reward callable under the name given on the command line."""

    def __init__(self, fn: Callable[..., Any], name: str, target: str) -> None:
        self.fn = fn
        self.name = name
        self.target = target

    def __call__(self, prompts: list[str], responses: list[str], **kwargs: Any) -> Any:
        # ``prompt_texts`` arrives only when the wrapped function takes it
        # (:func:`accepts_prompt_texts` looks through this wrapper).
        return self.fn(prompts, responses, **kwargs)

    def __repr__(self) -> str:
        return f"NamedReward({self.name!r}, {self.target!r})"


def import_reward_function(target: str, name: str | None = None) -> NamedReward:
    """Import ``package.module:function`` (a callable ``(prompts, responses) -> floats``).

    Only the module named is imported (``importlib.import_module``; the current directory
    is searched first, as ``python -m`` would), then the attribute path is followed with
    ``getattr``: nothing is evaluated. Errors say which reward and what failed.
    """
    module_name, _, attr = target.partition(":")
    label = f"reward {name or target!r}"
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error raised by the module's own code
        raise ValueError(
            f"{label}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}); "
            "it must be importable from the current directory or the Python path"
        ) from exc
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ValueError(f"{label}: module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ValueError(
            f"{label}: {target} is a {type(fn).__name__}, not a callable "
            "(prompts, responses) -> floats"
        )
    return NamedReward(fn, name or attr.split(".")[-1], target)


def parse_reward_spec(spec: str) -> Callable[[list[str], list[str]], Sequence[float]]:
    """Turn a command-line reward spec into a reward function.

    - ``length`` -> :data:`length_reward`;
    - ``length:SCALE[:LO:HI[:UNIT]]`` -> :func:`make_length_reward`;
    - ``[NAME=]package.module:function`` -> that Python callable
      ``(prompts, responses) -> floats`` (:func:`import_reward_function`), named NAME or
      after the function;
    - ``NAME=NAME_OR_PATH[:LABEL]`` -> :class:`RewardModelFunction` named NAME;
    - ``NAME_OR_PATH[:LABEL]`` -> the same, named after the path.

    A spec is a callable when it is ``dotted.identifiers:identifier`` and no such file or
    folder exists; a model path never has that shape unless it exists.
    """
    spec = spec.strip()
    if spec == "length":
        return length_reward
    if spec.startswith("length:"):
        parts = spec.split(":")[1:]
        if not 1 <= len(parts) <= 4 or len(parts) == 2:
            raise ValueError(f"bad length reward spec {spec!r}: use length:SCALE[:LO:HI[:UNIT]]")
        scale = float(parts[0])
        lo, hi = (float(parts[1]), float(parts[2])) if len(parts) >= 3 else (0.0, 1.0)
        unit = parts[3] if len(parts) == 4 else "chars"
        return make_length_reward(scale, lo, hi, unit)
    name = None
    if "=" in spec:
        name, spec = spec.split("=", 1)
        if not name:
            raise ValueError("reward spec NAME=PATH needs a non-empty NAME")
    if is_callable_spec(spec) and not os.path.exists(spec.partition(":")[0]):
        return import_reward_function(spec, name)
    path, label = spec, 0
    head, sep, tail = spec.rpartition(":")
    if sep and tail.lstrip("-").isdigit():
        path, label = head, int(tail)
    if not path:
        raise ValueError(f"bad reward spec {spec!r}: no model name or path")
    return RewardModelFunction(path, label, name=name)


def accepts_prompt_texts(fn: Any) -> bool:
    """Whether a reward function takes the ``prompt_texts`` keyword (or ``**kwargs``); for a
    command-line :class:`~.rewards.NamedReward`, whether the function it wraps does."""
    import inspect

    if isinstance(fn, NamedReward):
        fn = fn.fn
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "prompt_texts" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


def bind_prompt_texts(
    fn: Any, prompt_texts: Sequence[str], tokens: ExchangeTokens | None = None
) -> Any:
    """``fn`` as a two-argument reward function that also receives ``prompt_texts`` (the
    prompts as the policy saw them) when it takes that keyword, and ``tokens`` (the same
    exchanges' ids) when given and it names that parameter; ``fn`` itself otherwise."""
    kwargs: dict[str, Any] = {}
    if accepts_prompt_texts(fn):
        kwargs["prompt_texts"] = list(prompt_texts)
    if tokens is not None and accepts_tokens(fn):
        kwargs["tokens"] = tokens
    if not kwargs:
        return fn

    def bound(prompts: Sequence[Any], responses: Sequence[str]) -> Any:
        return fn(prompts, responses, **kwargs)

    return bound


_MULTI_LABELS = re.compile(r".*:-?\d+(,-?\d+)+")


def parse_reward_specs(spec: str) -> list[Any]:
    """One command-line ``--reward`` spec -> its reward functions (one per objective).

    ``N1,N2=PATH:L1,L2`` (several names or labels) -> :func:`parse_reward_model_spec`;
    anything else -> ``[rewards.parse_reward_spec(spec)]``.
    """
    name, eq, body = spec.strip().partition("=")
    if (eq and "," in name) or _MULTI_LABELS.fullmatch(body if eq else name):
        return list(parse_reward_model_spec(spec))
    return [parse_reward_spec(spec)]


def unique_reward_names(fns: Sequence[Any], names: Sequence[str] | None) -> list[str]:
    """One metric name per reward function (given, or the functions' own), made unique by
    suffixes ``_1``, ``_2`` so that metric keys never collide."""
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


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(value: Any) -> str:
    """A prompt or response as the error shows it: quoted, at most 60 characters."""
    return repr(_cut(value if isinstance(value, str) else str(value)))


def score_batch(
    reward_fns: Sequence[Callable[..., Any]],
    names: Sequence[str],
    prompts: list[Any],
    responses: list[str],
    *,
    step: int,
    prompt_texts: Sequence[str] | None = None,
    tokens: ExchangeTokens | None = None,
    phase: str = "",
) -> torch.Tensor:
    """Call every reward function; return scores ``[n, B]`` (float32, CPU).

    ``prompt_texts`` and ``tokens`` go to the functions that take them
    (:func:`bind_prompt_texts`). Raises :class:`RewardError` naming the
    function, the step and, where one is to blame, the prompt (its index in the batch and
    its text) if a function raises, returns something other than one number per response,
    or returns NaN / inf. To find the prompt a function raised on, it is called again on
    each prompt alone, in order, until one raises; a function that fails only on whole
    batches is reported without a prompt.
    """
    batch = len(responses)
    texts = list(prompt_texts) if prompt_texts is not None else [str(p) for p in prompts]

    def bound(fn: Callable[..., Any], rows: list[int] | None = None) -> Callable[..., Any]:
        if prompt_texts is None and tokens is None:
            return fn
        if rows is None:
            return bind_prompt_texts(fn, texts, tokens)
        part = None
        if tokens is not None:
            part = dataclasses.replace(
                tokens,
                prompt_ids=[tokens.prompt_ids[r] for r in rows],
                response_ids=[tokens.response_ids[r] for r in rows],
            )
        return bind_prompt_texts(fn, [texts[r] for r in rows], part)

    def fail(
        name: str, index: int, problem: str, row: int | None, cause: BaseException | None = None
    ) -> NoReturn:
        if row is None:
            where = f"the batch of {batch} prompts"
        else:
            where = (
                f"prompt {row} of the batch of {batch} (prompt {_shown(texts[row])}, "
                f"response {_shown(responses[row])})"
            )
        raise RewardError(
            f"reward {name!r} (objective {index}) failed at step {step}{phase} on {where}: "
            f"{problem}",
            name=name,
            index=index,
            step=step,
            prompt_index=row,
            prompt=None if row is None else texts[row],
        ) from cause

    rows = []
    for index, (fn, name) in enumerate(zip(reward_fns, names, strict=True)):
        try:
            values = bound(fn)(prompts, responses)
        except Exception as exc:  # re-raised with the function, step and prompt named
            problem = f"raised {type(exc).__name__}: {exc}"
            culprit = None
            for row in range(batch):
                try:
                    bound(fn, [row])(prompts[row : row + 1], responses[row : row + 1])
                except Exception:  # this prompt alone fails as well
                    culprit = row
                    break
            if culprit is None and batch > 1:
                problem += " (no prompt raises when scored alone)"
            fail(name, index, problem, culprit, exc)
        if isinstance(values, torch.Tensor):
            values = values.detach().to("cpu", torch.float64).reshape(-1).tolist()
        try:
            if isinstance(values, (str, bytes, dict)):
                raise TypeError
            values = list(values)
        except TypeError:
            problem = f"returned {type(values).__name__}, expected a sequence of {batch} numbers"
            fail(name, index, problem, None)
        if len(values) != batch:
            fail(name, index, f"returned {len(values)} values for {batch} responses", None)
        flat = []
        for row, value in enumerate(values):
            try:
                if isinstance(value, (str, bytes)):
                    raise TypeError
                number = float(value)
            except (TypeError, ValueError, RuntimeError):
                problem = f"returned {_cut(repr(value))} ({type(value).__name__}), not a number"
                fail(name, index, problem, row)
            if not math.isfinite(number):
                fail(name, index, f"returned a non-finite value ({number})", row)
            flat.append(number)
        rows.append(flat)
    return torch.tensor(rows, dtype=torch.float32)
