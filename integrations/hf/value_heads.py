"""n value heads on the policy's last hidden states, and their clipped loss."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

__all__ = ["PolicyWithValueHeads", "ValueHeads", "clipped_value_loss"]


class ValueHeads(nn.Module):
    """One linear value head per objective: ``V_i(s_t) = w_i . h_t + b_i``.

    Stored as a single ``Linear(hidden, n)`` (identical to n separate heads,
    one matmul instead of n).  Kept in float32 whatever the policy's dtype.
    """

    def __init__(self, hidden_size: int, n_objectives: int) -> None:
        super().__init__()
        if n_objectives < 1:
            raise ValueError(f"n_objectives must be >= 1, got {n_objectives}")
        self.hidden_size = hidden_size
        self.n_objectives = n_objectives
        self.linear = nn.Linear(hidden_size, n_objectives)
        # Small initial values: the first advantages are then close to the returns.
        nn.init.normal_(self.linear.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden[B, T, H] -> values[n, B, T]``."""
        return self.linear(hidden.float()).permute(2, 0, 1)


class PolicyWithValueHeads(nn.Module):
    """The trainable module: policy (maybe a peft model) plus value heads.

    One module so that ``accelerator.prepare`` wraps a single DDP model whose
    forward touches every trainable parameter.
    """

    def __init__(self, policy: nn.Module, value_heads: ValueHeads) -> None:
        super().__init__()
        self.policy = policy
        self.value_heads = value_heads

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_start: int,
        *,
        temperature: float = 1.0,
        detach_value_input: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Log-probs, values and last hidden states of the response tokens.

        Response token t sits at position ``response_start + t``; the state that
        emits it (and whose value is ``V(s_t)``) is at ``response_start + t - 1``.
        Returns ``logprobs[B, T]``, ``values[n, B, T]``, ``hidden[B, T, H]``.
        """
        out = response_forward(
            self.policy, input_ids, attention_mask, response_start, temperature=temperature
        )
        hidden = out["hidden"]
        out["values"] = self.value_heads(hidden.detach() if detach_value_input else hidden)
        return out


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` builds them."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def response_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    *,
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """One forward pass over prompt+response; per-token log-probs of the response.

    ``logprob_t = log softmax(logits_{start+t-1} / temperature)[token_{start+t}]``
    (the temperature the tokens were sampled with).
    """
    n_response = input_ids.shape[1] - response_start
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "output_hidden_states": True,
        "use_cache": False,
    }
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    keep_last = "logits_to_keep" in inspect.signature(base.forward).parameters
    if keep_last:
        # Only the logits that score response tokens: saves a [B, prompt, vocab] tensor.
        kwargs["logits_to_keep"] = n_response + 1
    out = model(**kwargs)
    logits = out.logits if keep_last else out.logits[:, response_start - 1 :, :]
    logits = logits[:, :-1, :].float()
    if temperature != 1.0:
        logits = logits / temperature
    tokens = input_ids[:, response_start:]
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    hidden = out.hidden_states[-1][:, response_start - 1 : -1, :]
    assert logprobs.shape[1] == n_response
    # hidden_full is on the graph of the logits (a slice of it is not): MGDA-UB's shared tensor.
    return {"logprobs": logprobs, "hidden": hidden, "hidden_full": out.hidden_states[-1]}


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> torch.Tensor:
    """Per-objective clipped value loss, summed over objectives.

    ``L_V = sum_i 0.5 * mean_t max((V_it - R_it)^2, (clip(V_it, V^old_it +- eps_v) - R_it)^2)``
    with inputs ``[n, B, T]`` and the mean over valid tokens.
    """
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    per_token = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    maskf = mask.to(per_token.dtype)
    per_objective = 0.5 * (per_token * maskf).sum(dim=(1, 2)) / maskf.sum().clamp_min(1.0)
    return per_objective.sum()


@torch.no_grad()
def forward_rollout(
    model: Any,
    reference_model: Any,
    reference_context: Any,
    rollout: Any,
    *,
    chunk_size: int,
    temperature: float,
    accelerator: Any,
) -> dict[str, torch.Tensor]:
    """Log-probs under the policy and the reference, and the n values, of a rollout's
    sequences, ``chunk_size`` at a time. ``model``: the policy with its value heads
    (unwrapped); ``reference_context()``: the context in which ``reference_model`` is the
    reference (LoRA: the adapter switched off)."""
    parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "values": [], "ref_logprobs": []}
    for lo in range(0, rollout.input_ids.shape[0], chunk_size):
        ids = rollout.input_ids[lo : lo + chunk_size]
        attn = rollout.attention_mask[lo : lo + chunk_size]
        # The same autocast as the prepared model's forward in the update: ratios start at 1.
        with accelerator.autocast():
            out = model(ids, attn, rollout.response_start, temperature=temperature)
            with reference_context():
                ref = response_forward(
                    reference_model, ids, attn, rollout.response_start, temperature=temperature
                )
        parts["logprobs"].append(out["logprobs"])
        parts["values"].append(out["values"])
        parts["ref_logprobs"].append(ref["logprobs"])
    return {
        "logprobs": torch.cat(parts["logprobs"], dim=0),
        "ref_logprobs": torch.cat(parts["ref_logprobs"], dim=0),
        "values": torch.cat(parts["values"], dim=1),
    }
