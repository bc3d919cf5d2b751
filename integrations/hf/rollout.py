"""Rollout: batched generation with the KV cache, response masks, decoding."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .data import is_conversation, render_prompts

__all__ = [
    "ExchangeTokens",
    "Rollout",
    "check_prompts_fit",
    "generate_rollout",
    "prompts_as_seen",
    "response_mask",
    "tokenize_prompts",
    "warn_processed_sampling",
]


@dataclass
class Rollout:
    """One batch of prompts and sampled responses (tensors on the model's device).

    ``prompts`` are the prompts as the policy saw them: a prompt cut to
    ``max_prompt_length`` tokens is the decoded kept tokens, so reward functions score
    what the response continues (other prompts are unchanged).
    ``input_ids[B, P + T]`` is the left-padded prompt followed by the response;
    ``attention_mask`` covers real prompt tokens and response tokens up to the
    first EOS; ``mask[B, T]`` marks those response tokens.
    """

    prompts: list[str]
    responses: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor
    response_start: int
    conversations: list[Any] | None = None
    """The prompts as given when they are conversations (``prompts`` holds their rendering)."""

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.response_start :]

    def exchange_tokens(self, tokenizer: Any) -> ExchangeTokens:
        """The prompt and response ids of each row, padding removed (``tokenizer`` made them).

        Conversations were tokenized without adding special tokens (their rendering holds
        them); string prompts with them.
        """
        start = self.response_start
        ids = self.input_ids.tolist()
        keep = self.attention_mask.tolist()
        lengths = self.mask.sum(dim=1).tolist()
        prompt_ids = [
            [t for t, v in zip(row[:start], valid[:start], strict=True) if v]
            for row, valid in zip(ids, keep, strict=True)
        ]
        response_ids = [row[start : start + n] for row, n in zip(ids, lengths, strict=True)]
        return ExchangeTokens(
            prompt_ids, response_ids, tokenizer, add_special_tokens=self.conversations is None
        )


@dataclass
class ExchangeTokens:
    """Token ids of a batch of exchanges, as the policy saw and produced them.

    ``prompt_ids`` are each prompt's tokens without padding (the special tokens the tokenizer
    added, e.g. a BOS, included when ``add_special_tokens``); ``response_ids`` each response's
    tokens up to and including its first EOS. A reward model that shares ``tokenizer`` can
    read these ids instead of re-tokenising the decoded text
    (:meth:`.reward_models.RewardModel.token_rows`).
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    tokenizer: Any
    add_special_tokens: bool = True


def tokenize_prompts(
    tokenizer: Any,
    prompts: list[str],
    device: torch.device,
    max_length: int | None = None,
    add_special_tokens: bool = True,
) -> dict[str, torch.Tensor]:
    """Left-padded prompt batch (generation appends on the right).

    ``add_special_tokens=False`` for text rendered by a chat template, which already holds
    the model's BOS (adding it again would give two). Prompts longer than ``max_length``
    tokens lose their *beginning*: the end of a prompt (a chat template's assistant header,
    the question) is what the response continues. The tokenizer's own ``truncation_side``
    is restored afterwards.
    """
    side = getattr(tokenizer, "truncation_side", None)
    if max_length is not None:
        tokenizer.truncation_side = "left"
    try:
        enc = tokenizer(
            prompts,
            add_special_tokens=add_special_tokens,
            padding=True,
            padding_side="left",
            truncation=max_length is not None,
            max_length=max_length,
            return_tensors="pt",
        )
    finally:
        if max_length is not None:
            tokenizer.truncation_side = side
    if enc["input_ids"].shape[1] == 0:
        raise ValueError("every prompt tokenized to zero tokens; give non-empty prompts")
    counts = enc["attention_mask"].sum(dim=1).tolist()
    if 0 in counts:
        empty = [p for p, m in zip(prompts, counts, strict=True) if m == 0]
        raise ValueError(f"prompts tokenized to zero tokens: {empty[:3]!r}")
    return {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}


def check_prompts_fit(
    tokenizer: Any,
    texts: list[str],
    context: int | None,
    max_new_tokens: int,
    max_prompt_length: int | None = None,
    add_special_tokens: bool = True,
    what: str = "prompt",
) -> None:
    """Refuse a prompt whose tokens (cut to ``max_prompt_length``) plus ``max_new_tokens``
    exceed the policy's ``context``: generation would run past its positions. ``texts`` are
    the rendered prompts, tokenized as :func:`tokenize_prompts` does; the error names the
    first such row, its length and the sizes."""
    if context is None:
        return
    room = context - max_new_tokens
    if room < 1:
        raise ValueError(
            f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the policy's "
            f"context of {context} positions; lower max_new_tokens"
        )
    if max_prompt_length is not None and max_prompt_length <= room:
        return  # every prompt is cut short enough
    chunk = 1024
    for lo in range(0, len(texts), chunk):
        ids = tokenizer(texts[lo : lo + chunk], add_special_tokens=add_special_tokens)["input_ids"]
        for k, row in enumerate(ids):
            n = len(row)
            if n <= room:
                continue
            if max_prompt_length is not None and n > max_prompt_length:
                raise ValueError(
                    f"{what} row {lo + k} has {n} tokens, cut to max_prompt_length "
                    f"{max_prompt_length}: max_prompt_length {max_prompt_length} + max_new_tokens "
                    f"{max_new_tokens} = {max_prompt_length + max_new_tokens} > the policy's "
                    f"context of {context} positions; set max_prompt_length to at most {room}"
                )
            raise ValueError(
                f"{what} row {lo + k} has {n} tokens: {n} + max_new_tokens {max_new_tokens} = "
                f"{n + max_new_tokens} > the policy's context of {context} positions; shorten "
                f"it, or set max_prompt_length (at most {room}) to cut prompts from the left"
            )


def response_mask(response_ids: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """1 on tokens up to and including the first EOS, 0 after.

    Works when pad == eos: the position of the first EOS decides, not the pad id.
    The EOS token itself is kept: stopping is an action the policy is trained on.
    """
    if not eos_token_ids:
        return torch.ones_like(response_ids, dtype=torch.long)
    is_eos = torch.zeros_like(response_ids, dtype=torch.bool)
    for eos in eos_token_ids:
        is_eos |= response_ids == eos
    # Number of EOS tokens strictly before t: zero means t is at or before the first EOS.
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (eos_before == 0).long()


@torch.no_grad()
def generate_rollout(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    generation_config: Any,
    *,
    device: torch.device,
    max_prompt_length: int | None = None,
    add_special_tokens: bool = True,
) -> Rollout:
    """Sample one response per prompt with ``model.generate`` (KV cache on).

    ``generation_config`` is a ``transformers.GenerationConfig``; its EOS ids
    define where responses end.
    """
    enc = tokenize_prompts(tokenizer, prompts, device, max_prompt_length, add_special_tokens)
    seen = prompts_as_seen(tokenizer, prompts, enc, max_prompt_length, add_special_tokens)
    out = model.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        generation_config=generation_config,
    )
    start = enc["input_ids"].shape[1]
    response_ids = out[:, start:]
    if response_ids.shape[1] == 0:
        raise RuntimeError("generate() returned no new tokens; check max_new_tokens")
    eos = generation_config.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    mask = response_mask(response_ids, eos_ids)
    pad = generation_config.pad_token_id
    # Tokens after the first EOS are padding whatever generate() wrote there.
    response_ids = response_ids.masked_fill(mask == 0, pad if pad is not None else 0)
    input_ids = torch.cat([enc["input_ids"], response_ids], dim=1)
    attention_mask = torch.cat([enc["attention_mask"], mask], dim=1)
    responses = decode_responses(tokenizer, response_ids, mask)
    return Rollout(
        prompts=seen,
        responses=responses,
        input_ids=input_ids,
        attention_mask=attention_mask,
        mask=mask,
        response_start=start,
    )


def decode_responses(tokenizer: Any, response_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Text of each response (special tokens, e.g. the final EOS, removed)."""
    lengths = mask.sum(dim=1).tolist()
    ids = response_ids.tolist()
    return tokenizer.batch_decode(
        [row[:n] for row, n in zip(ids, lengths, strict=True)], skip_special_tokens=True
    )


def prompts_as_seen(
    tokenizer: Any,
    prompts: list[str],
    enc: dict[str, torch.Tensor],
    max_length: int | None,
    add_special_tokens: bool = True,
) -> list[str]:
    """The prompt text the policy was conditioned on.

    Unchanged where nothing was cut; where truncation cut a prompt, the decoded kept tokens
    (special tokens of a chat template kept, a leading BOS the tokenizer adds itself
    dropped, since a reward model's tokenizer adds its own).
    """
    out = list(prompts)
    if max_length is None:
        return out
    full = tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]
    ids = enc["input_ids"].tolist()
    keep = enc["attention_mask"].tolist()
    bos = getattr(tokenizer, "bos_token_id", None)
    for b, (row, valid) in enumerate(zip(ids, keep, strict=True)):
        if len(full[b]) <= max_length:
            continue
        kept = [t for t, v in zip(row, valid, strict=True) if v]
        if bos is not None and kept and kept[0] == bos and full[b][:1] == [bos]:
            kept = kept[1:]
        out[b] = tokenizer.decode(kept, skip_special_tokens=False)
    return out


def warn_processed_sampling(config: Any) -> None:
    """Warn when responses come from a processed distribution the update does not use.

    The ratio and the KL penalty are computed from ``softmax(logits / temperature)``;
    ``top_k > 0``, ``top_p < 1`` and ``min_new_tokens > 0`` (which forbids EOS at first)
    sample from a truncated or reshaped distribution instead, so the rollout is off-policy
    by an amount nothing corrects, and a sampled token can have a tiny probability under
    the policy the ratio uses.
    """
    changed = []
    if config.top_k > 0:
        changed.append(f"top_k={config.top_k}")
    if config.top_p < 1.0:
        changed.append(f"top_p={config.top_p}")
    if config.min_new_tokens > 0:
        changed.append(f"min_new_tokens={config.min_new_tokens}")
    if changed:
        warnings.warn(
            f"sampling with {', '.join(changed)}: responses come from a processed "
            "distribution, but the PPO ratio and the KL penalty use the unprocessed policy "
            "softmax(logits / temperature); the rollout is off-policy by the difference. "
            "Leave top_k=0, top_p=1.0 and min_new_tokens=0 for on-policy PPO.",
            UserWarning,
            stacklevel=3,
        )


def check_prompt_pools(
    tokenizer: Any,
    context: int | None,
    pools: list[tuple[str, list[Any], int]],
    max_prompt_length: int | None,
) -> None:
    """Every prompt of each pool ``(what, prompts, new_tokens)``, with its new tokens, fits
    ``context`` (the policy's context length; None: unknown, nothing checked)."""
    if context is None:
        return
    for what, prompts, new_tokens in pools:
        chat = is_conversation(prompts[0])
        check_prompts_fit(
            tokenizer,
            render_prompts(tokenizer, prompts),
            context,
            new_tokens,
            max_prompt_length,
            add_special_tokens=not chat,
            what=what,
        )
