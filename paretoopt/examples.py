"""A runnable tour of the combiners on a toy policy (core only: needs torch alone).

``paretoopt example`` trains a tiny softmax policy over a vocabulary against three
objectives with per-token advantages, once with each combiner, and prints the weights each
combiner chose and how every objective's surrogate moved.
"""

from __future__ import annotations

import time

import torch

from .combiners import MGDA, PAMA, Combiner, LinearScalarization
from .functional import pama_stats
from .losses import ppo_losses_from_ratio, ratio


def _toy_batch(seed: int, n: int = 3, batch: int = 8, length: int = 12, vocab: int = 16):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, length), generator=gen)
    # Objectives that partly conflict: shared signal plus objective-specific noise.
    common = torch.randn(batch, length, generator=gen)
    adv = torch.stack([common + 1.5 * torch.randn(batch, length, generator=gen) for _ in range(n)])
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[:, -3:] = torch.rand(batch, 3, generator=gen) > 0.5
    return tokens, adv, mask


def _policy(vocab: int = 16, hidden: int = 32, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Embedding(vocab, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, vocab)
    )


def _logprobs(policy: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = policy(tokens)
    return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def run_example(steps: int = 20, seed: int = 0, out=print) -> dict[str, dict[str, float]]:
    """Train the toy policy with each combiner; return final weights and losses per combiner."""
    tokens, adv, mask = _toy_batch(seed)
    n = adv.shape[0]
    stats = pama_stats(adv, mask)
    out(
        f"toy RL batch: {n} objectives, {int(mask.sum())} tokens, "
        f"objectives disagree in sign on {100 * stats['conflict_rate']:.0f}% of tokens"
    )
    combiners: dict[str, Combiner] = {
        "PAMA": PAMA(),
        "MORLHF (uniform)": LinearScalarization(),
        "MGDA-UB": MGDA(mode="shared"),
        "MGDA (exact)": MGDA(mode="params"),
    }
    results: dict[str, dict[str, float]] = {}
    out(f"{'combiner':<18}{'weights':<30}{'loss change per objective':<36}{'ms/step':>8}")
    for name, combiner in combiners.items():
        policy = _policy(seed=seed)
        ref = _logprobs(policy, tokens).detach()
        opt = torch.optim.SGD(policy.parameters(), lr=0.5)
        first = last = None
        elapsed = 0.0
        weights = torch.zeros(n)
        for _ in range(steps):
            u = ratio(_logprobs(policy, tokens), ref)
            losses = ppo_losses_from_ratio(u, adv, mask)
            t0 = time.perf_counter()
            res = combiner(list(losses), shared=u, params=policy.parameters())
            opt.zero_grad()
            res.loss.backward()
            elapsed += time.perf_counter() - t0
            opt.step()
            first = losses.detach() if first is None else first
            last = losses.detach()
            weights = res.weights
        assert first is not None and last is not None
        delta = last - first
        w = " ".join(f"{float(x):.2f}" for x in weights)
        d = " ".join(f"{float(x):+.4f}" for x in delta)
        out(f"{name:<18}{w:<30}{d:<36}{1000 * elapsed / steps:>8.2f}")
        results[name] = {f"weight/{i}": float(weights[i]) for i in range(n)}
        results[name].update({f"delta_loss/{i}": float(delta[i]) for i in range(n)})
    improved = [k for k, r in results.items() if all(r[f"delta_loss/{i}"] < 0 for i in range(n))]
    out(
        f"\nLowered every objective's surrogate: {', '.join(improved) or 'none'}. PAMA picks "
        "per-token weights (shown: their mean) at O(n) per token with one backward pass; "
        "MGDA needs n backward passes and a Gram matrix."
    )
    return results


if __name__ == "__main__":
    run_example()
