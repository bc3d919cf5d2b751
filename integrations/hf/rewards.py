"""Reward functions: Python callables or sequence-classification reward models.

A reward function maps ``(prompts, responses)`` (two lists of strings of equal
length) to one float per response.  The trainer validates what comes back and
names the function and the step when it is wrong (:class:`RewardError`).
"""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from .reward_models import RewardHead, shared_reward_model

__all__ = [
    "NamedReward",
    "RewardError",
    "RewardFunction",
    "RewardModelFunction",
    "import_reward_function",
    "length_reward",
    "make_length_reward",
    "parse_reward_spec",
    "reward_name",
    "score_batch",
]


class RewardFunction(Protocol):
    def __call__(self, prompts: list[str], responses: list[str]) -> Sequence[float]: ...


class RewardError(RuntimeError):
    """A reward function raised, or returned the wrong number of values or a
    non-finite value.  ``name``, ``index`` and ``step`` say which and when."""

    def __init__(self, message: str, *, name: str, index: int, step: int) -> None:
        super().__init__(message)
        self.name = name
        self.index = index
        self.step = step


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
        # (:func:`.reward_models.accepts_prompt_texts` looks through this wrapper).
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


def score_batch(
    reward_fns: Sequence[Callable[..., Any]],
    names: Sequence[str],
    prompts: list[str],
    responses: list[str],
    *,
    step: int,
) -> torch.Tensor:
    """Call every reward function; return scores ``[n, B]`` (float32, CPU).

    Raises :class:`RewardError` naming the function and the step if one raises,
    returns the wrong number of values, or returns NaN / inf.
    """
    batch = len(responses)
    rows = []
    for index, (fn, name) in enumerate(zip(reward_fns, names, strict=True)):
        where = f"reward function {name!r} (objective {index}) at step {step}"
        try:
            values = fn(prompts, responses)
        except Exception as exc:  # re-raised with the function and step named
            raise RewardError(
                f"{where} raised {type(exc).__name__}: {exc}", name=name, index=index, step=step
            ) from exc
        try:
            if isinstance(values, torch.Tensor):
                flat = values.detach().to("cpu", torch.float64).reshape(-1).tolist()
            else:
                flat = [float(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise RewardError(
                f"{where} returned {type(values).__name__}, expected a sequence of {batch} floats",
                name=name,
                index=index,
                step=step,
            ) from exc
        if len(flat) != batch:
            raise RewardError(
                f"{where} returned {len(flat)} values for {batch} responses",
                name=name,
                index=index,
                step=step,
            )
        bad = [i for i, v in enumerate(flat) if not math.isfinite(v)]
        if bad:
            raise RewardError(
                f"{where} returned non-finite values at positions {bad[:8]} (e.g. {flat[bad[0]]})",
                name=name,
                index=index,
                step=step,
            )
        rows.append(flat)
    return torch.tensor(rows, dtype=torch.float32)
