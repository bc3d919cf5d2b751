"""Per-step metrics of multi-objective PPO and the clock that times each phase of a step.

Metric names (docs/trainer.md lists them): ``reward/<name>``, ``kl``, ``kl_coef``,
``response_length``, ``advantage/<name>``, PAMA's ``binding_rate/<name>``, ``conflict_rate``,
``zero_rate``, ``mean_s_star`` and ``weights/<name>``, "pama_ub"'s ``pama_ub/min_norm``,
``value/error/<name>`` and
``value/explained_variance/<name>``, the update's loss statistics and
``time/<phase>``. Under data parallelism every metric is a mean over all processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from .advantages import masked_mean

if TYPE_CHECKING:
    from .batch import RolloutBatch

__all__ = ["PhaseClock", "step_metrics", "value_error_metrics"]


def now(device: torch.device) -> float:
    # Kernels are asynchronous on GPUs: synchronise so each phase is charged its own time.
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class PhaseClock:
    """Wall time of each phase of a step, in seconds, as ``time/<phase>`` entries."""

    def __init__(self, device: torch.device, timings: dict[str, float] | None = None) -> None:
        self.device = device
        self.timings: dict[str, float] = {} if timings is None else timings

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one phase (its entry is set to the elapsed time)."""
        t0 = now(self.device)
        yield
        self.timings[f"time/{name}"] = now(self.device) - t0

    @contextmanager
    def add(self, name: str) -> Iterator[None]:
        """Add the elapsed time to a phase timed in several pieces."""
        t0 = now(self.device)
        yield
        key = f"time/{name}"
        self.timings[key] = self.timings.get(key, 0.0) + now(self.device) - t0


def step_metrics(
    step: int,
    batch: RolloutBatch,
    update_stats: dict[str, float],
    timings: dict[str, float],
    *,
    reward_names: list[str],
    kl_coef: float,
    log_pama_weights: bool,
    accelerator: Any,
) -> dict[str, float]:
    """Per-step metrics, averaged over all processes.

    ``kl_coef``: the KL coefficient the batch was trained with; ``log_pama_weights``: the
    batch carries PAMA's per-token weights (the fast path), logged as ``weights/<name>``;
    ``accelerator``: gathers over the processes.
    """
    gather = accelerator.gather
    names = reward_names
    n = len(names)
    device = accelerator.device
    mask = batch.mask.to(torch.float32)
    lengths = mask.sum(dim=1)
    seq_kl = batch.kl.sum(dim=1)
    per_sample = torch.cat([batch.scores.T, seq_kl[:, None], lengths[:, None]], dim=1)
    per_sample = gather(per_sample.float().contiguous())
    metrics: dict[str, float] = {"step": float(step)}
    for i, name in enumerate(names):
        metrics[f"reward/{name}"] = float(per_sample[:, i].mean())
    metrics["kl"] = float(per_sample[:, n].mean())
    metrics["kl_coef"] = kl_coef
    metrics["response_length"] = float(per_sample[:, n + 1].mean())
    # Token-level metrics: means over this process's valid tokens ...
    token_means: dict[str, float] = {}
    for i, name in enumerate(names):
        token_means[f"advantage/{name}"] = float(masked_mean(batch.raw_advantages[i], batch.mask))
    stats = batch.pama_stats
    for i, name in enumerate(names):
        rate = stats.get(f"binding_rate/{i}")
        if rate is not None:
            token_means[f"binding_rate/{name}"] = float(rate)
    for key in ("conflict_rate", "zero_rate", "mean_s_star"):
        if key in stats:
            token_means[key] = float(stats[key])
    if log_pama_weights:
        assert batch.pama_weights is not None
        for i, name in enumerate(names):
            w = batch.pama_weights[i]
            if w.shape == batch.mask.shape:
                token_means[f"weights/{name}"] = float(masked_mean(w.float(), batch.mask))
            else:
                token_means[f"weights/{name}"] = float(w.float().mean())
    if accelerator.num_processes > 1 and token_means:
        # ... and over all processes, each weighted by its number of valid tokens.
        keys = sorted(token_means)
        count = float(batch.mask.sum())
        local = torch.tensor(
            [[token_means[k] * count for k in keys] + [count]],
            dtype=torch.float64,
            device=device,
        )
        total = gather(local).sum(dim=0)
        token_means = {k: float(total[j] / total[-1].clamp_min(1.0)) for j, k in enumerate(keys)}
    metrics.update(token_means)
    metrics.update(value_error_metrics(batch.values, batch.returns, batch.mask, names, gather))
    # Loss statistics are per process; average them across processes.
    keys = sorted(update_stats)
    if keys:
        local = torch.tensor([[update_stats[k] for k in keys]], device=device)
        averaged = gather(local).mean(dim=0).tolist()
        metrics.update(dict(zip(keys, averaged, strict=True)))
    if batch.scalar_weights is not None:
        # Weights chosen once per batch from the global Gram ("pama_ub"): the same on every
        # process, logged as solved.
        for i, name in enumerate(names):
            metrics[f"weights/{name}"] = float(batch.scalar_weights[i])
    metrics.update(batch.combine_stats)
    metrics.update(timings)
    return metrics


def value_error_metrics(
    values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    names: list[str],
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """``value/error/<name>``: masked mean of ``(V_i - R_i)^2``; and the explained variance.

    ``value/explained_variance/<name>`` = ``1 - Var(R_i - V_i) / Var(R_i)`` over valid tokens
    (1: perfect, 0: no better than a constant, < 0: worse); left out when the returns are
    constant. ``values`` are the heads' outputs at rollout time, i.e. before this step's
    update. Sums are gathered over processes, so the numbers are global.
    """
    maskf = mask.to(torch.float64).unsqueeze(0)
    v = values.to(torch.float64)
    r = returns.to(torch.float64)
    res = (r - v) * maskf
    rm = r * maskf
    count = maskf.sum(dim=(1, 2)).expand(v.shape[0])
    local = torch.stack(
        [
            (res * res).sum(dim=(1, 2)),
            res.sum(dim=(1, 2)),
            rm.sum(dim=(1, 2)),
            (rm * rm).sum(dim=(1, 2)),
            count,
        ],
        dim=1,
    )  # [n, 5]
    total = gather(local.unsqueeze(0).contiguous()).sum(dim=0) if gather is not None else local
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        sq, s_res, s_r, sq_r, c = (float(x) for x in total[i])
        c = max(c, 1.0)
        mse = sq / c
        out[f"value/error/{name}"] = mse
        var_r = sq_r / c - (s_r / c) ** 2
        var_res = mse - (s_res / c) ** 2
        if var_r > 1e-12:
            out[f"value/explained_variance/{name}"] = 1.0 - var_res / var_r
    return out
