"""Suite 2 (``full_step``): one full training update (forward, combine, backward, optimiser step).

A GPT-2-shaped decoder (``lib.GPT2_SHAPES``) computes per-token log-probs of a batch;
n objectives are Noon PPO losses with their own advantages on the ratio to a fixed anchor
policy. Per combiner, one update is: ``zero_grad``, forward, n losses, combine, backward,
``AdamW.step``. Combiners, timed in the same interleaved rounds:

* ``linear``: :class:`paretoopt.LinearScalarization` (uniform weights), one backward;
* ``pama``: :class:`paretoopt.PAMA` on ``shared = u`` (the ratio), one backward;
* ``pama_fast``: :func:`paretoopt.pama_ppo_loss`, the advantage fast path for RL code;
* ``mgda_ub``: :class:`paretoopt.MGDA` ``mode="shared"`` on the last hidden states;
* ``mgda``: :class:`paretoopt.MGDA` ``mode="params"`` (exact), where n d fits the budget;
* ``mgda_reference``: :func:`..mgda_reference.mgda_reference_step` (n backwards);
* ``forward``: the forward pass alone (for the cost model).

Peak memory per combiner: one extra step each, with the allocator peak above the memory live
before the step (parameters, AdamW state), see :func:`.lib.peak_allocated_bytes`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from paretoopt import MGDA, PAMA, LinearScalarization, pama_ppo_loss, ppo_losses_from_ratio

from ..mgda_reference import mgda_reference_step
from .lib import GPT2_SHAPES, GPT2_VOCAB, Profile, peak_allocated_bytes, run_interleaved


def bench_cases(profile: Profile) -> list[tuple[str, int]]:
    return [(m, n) for m in profile.step_models for n in profile.step_n]


def case_id(case: tuple[str, int]) -> str:
    return f"{case[0]}-n{case[1]}"


def build_model(name: str, seq_len: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    layers, heads, width = GPT2_SHAPES[name]
    config = GPT2Config(
        vocab_size=GPT2_VOCAB,
        n_positions=max(seq_len, 64),
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)


class StepBench:
    """Everything one case needs: model, optimiser, fixed batch, anchor log-probs, advantages."""

    def __init__(self, name: str, n: int, batch: tuple[int, int]) -> None:
        b, t = batch
        self.model = build_model(name, t)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.d = sum(p.numel() for p in self.params)
        self.opt = torch.optim.AdamW(self.params, lr=1e-7)
        gen = torch.Generator().manual_seed(n)
        self.ids = torch.randint(0, GPT2_VOCAB, (b, t), generator=gen)
        with torch.no_grad():
            logp, _ = self.forward()
        # The anchor differs a little from the policy so that some ratios leave the clip range.
        self.anchor = logp + 0.3 * torch.randn(logp.shape, generator=gen)
        self.adv = torch.randn((n, *logp.shape), generator=gen)
        self.n = n
        self.tokens = logp.numel()
        self.last_phases: dict[str, float] = {}

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs ``[B, T-1]`` of the next token, and the last hidden states."""
        hidden = self.model.transformer(input_ids=self.ids).last_hidden_state
        logits = self.model.lm_head(hidden[:, :-1])
        logp = torch.log_softmax(logits.float(), -1).gather(-1, self.ids[:, 1:, None])[..., 0]
        return logp, hidden

    def _losses(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logp, hidden = self.forward()
        u = torch.exp(logp - self.anchor)
        return ppo_losses_from_ratio(u, self.adv), u, hidden

    def step(self, combiner: str) -> None:
        self.opt.zero_grad(set_to_none=True)
        if combiner == "forward":
            self.forward()
            return
        if combiner == "pama_fast":
            logp, _ = self.forward()
            pama_ppo_loss(logp, self.anchor, self.adv).backward()
        else:
            losses, u, hidden = self._losses()
            if combiner == "linear":
                LinearScalarization()(losses).loss.backward()
            elif combiner == "pama":
                PAMA()(losses, shared=u).loss.backward()
            elif combiner == "mgda_ub":
                MGDA(mode="shared")(losses, shared=hidden).loss.backward()
            elif combiner == "mgda":
                MGDA(mode="params")(losses, params=self.params).loss.backward()
            elif combiner == "mgda_reference":
                self.last_phases = mgda_reference_step(losses, self.params).seconds
            else:
                raise ValueError(f"unknown combiner {combiner!r}")
        self.opt.step()


def measure(
    case: tuple[str, int], profile: Profile, benchmark: Any | None = None
) -> dict[str, Any]:
    """Time one case's combiners in the same rounds, then each one's peak memory."""
    name, n = case
    sb = StepBench(name, n, profile.step_batch)
    combiners = ["linear", "pama", "pama_fast", "mgda_ub", "forward"]
    if n * sb.d <= profile.step_mgda_max_nd:
        combiners += ["mgda", "mgda_reference"]
    phases: list[dict[str, float]] = []

    def runner(c: str) -> Callable[[], None]:
        def run() -> None:
            sb.step(c)
            if c == "mgda_reference":
                phases.append(dict(sb.last_phases))

        return run

    info: dict[str, Any] = {
        "suite": "full_step",
        "model": name,
        "params": sb.d,
        "n": n,
        "tokens": sb.tokens,
        "batch": list(profile.step_batch),
        "combiners": combiners,
    }
    info.update(
        run_interleaved(
            {c: runner(c) for c in combiners},
            profile.rounds,
            baseline="linear",
            target_s=profile.target_s,
            benchmark=benchmark,
        )
    )
    if phases:
        info["mgda_reference_phases_s"] = {
            k: statistics.median(p[k] for p in phases) for k in phases[0]
        }
    peaks = {}
    for c in combiners:
        # Same starting point for every combiner: no gradients held, AdamW state allocated.
        sb.opt.zero_grad(set_to_none=True)
        peaks[c] = peak_allocated_bytes(lambda c=c: sb.step(c))
    info["peak_bytes"] = peaks
    info["param_bytes"] = sb.d * 4
    return info
