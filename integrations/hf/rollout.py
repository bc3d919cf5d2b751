"""Rollout: batched generation with the KV cache, response masks, decoding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Rollout", "generate_rollout", "response_mask", "tokenize_prompts"]


@dataclass
class Rollout:
    """One batch of prompts and sampled responses (tensors on the model's device).

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


def tokenize_prompts(
    tokenizer: Any,
    prompts: list[str],
    device: torch.device,
    max_length: int | None = None,
    add_special_tokens: bool = True,
) -> dict[str, torch.Tensor]:
    """Left-padded prompt batch (generation appends on the right).

    ``add_special_tokens=False`` for text rendered by a chat template, which already holds
    the model's BOS (adding it again would give two).
    """
    enc = tokenizer(
        prompts,
        add_special_tokens=add_special_tokens,
        padding=True,
        padding_side="left",
        truncation=max_length is not None,
        max_length=max_length,
        return_tensors="pt",
    )
    if enc["input_ids"].shape[1] == 0:
        raise ValueError("every prompt tokenized to zero tokens; give non-empty prompts")
    counts = enc["attention_mask"].sum(dim=1).tolist()
    if 0 in counts:
        empty = [p for p, m in zip(prompts, counts, strict=True) if m == 0]
        raise ValueError(f"prompts tokenized to zero tokens: {empty[:3]!r}")
    return {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}


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
        prompts=list(prompts),
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
