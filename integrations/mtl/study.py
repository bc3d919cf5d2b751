"""Run the whole multi-task study (toy trajectories, digits over seeds, costs) into one dict.

Independent runs (a method from a start, a method on a seed) go to a pool of worker processes,
one torch thread each; the cost table runs alone in the parent afterwards so that its timings
are not shared with other work of this study.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .cost import measure_costs
from .digits import train_digits
from .methods import METHODS
from .toy import BATCHABLE, STARTS, TOY_LR, pareto_set, run_batched, run_toy

__all__ = ["PROFILES", "StudyConfig", "run_study"]


@dataclass(frozen=True)
class StudyConfig:
    seeds: int = 10
    digits_steps: int = 300
    toy_steps: int = 4000
    toy_lr: float = TOY_LR
    paper_lr_steps: int = 30000
    toy_starts: tuple[tuple[float, float], ...] = STARTS
    cost_sizes: tuple[tuple[int, int], ...] = ((32, 8), (512, 64))
    cost_rounds: int = 30
    methods: tuple[str, ...] = METHODS
    workers: int = 2


PROFILES: dict[str, StudyConfig] = {
    "full": StudyConfig(),
    "quick": StudyConfig(
        seeds=10, digits_steps=120, toy_steps=1500, toy_lr=0.02, paper_lr_steps=8000, cost_rounds=10
    ),
    # The smallest size that still runs every part (tests).
    "tiny": StudyConfig(
        seeds=2,
        digits_steps=8,
        toy_steps=20,
        paper_lr_steps=50,
        toy_starts=STARTS[:2],
        cost_sizes=((16, 4),),
        cost_rounds=2,
        workers=1,
    ),
}


def _init_worker() -> None:
    torch.set_num_threads(1)


def _toy_job(args: tuple[str, tuple[float, float], int, float]) -> dict[str, Any]:
    method, start, steps, lr = args
    (run,) = run_toy(methods=(method,), starts=(start,), steps=steps, lr=lr)
    keep = np.unique(np.linspace(0, len(run.points) - 1, 400).astype(int))
    return {
        "method": method,
        "start": list(start),
        "points": run.points[keep].tolist(),
        "losses": run.losses[keep].tolist(),
        "final": run.final.tolist(),
        "final_losses": run.losses[-1].tolist(),
        "finite": bool(np.isfinite(run.points).all()),
        "descent_rate": run.descent_rate,
    }


def _paper_lr_job(args: tuple[str, tuple[tuple[float, float], ...], int]) -> dict[str, Any]:
    method, starts, steps = args
    traj = run_batched(method, starts, steps=steps, lr=1e-3, record_every=max(1, steps // 300))
    return {"method": method, "lr": 1e-3, "steps": steps, "trajectory": traj.tolist()}


def _digits_job(args: tuple[str, int, int]) -> dict[str, Any]:
    method, seed, steps = args
    t0 = time.perf_counter()
    run = train_digits(method, seed, steps=steps)
    return {
        "method": method,
        "seed": seed,
        "metrics": run.metrics,
        "reference": list(run.reference),
        "grad_descent_rate": float(np.mean(run.grad_descent)),
        "step_descent_rate": float(np.mean(run.step_descent)),
        "median_min_cosine": float(np.median(run.min_cosine)),
        "wall_s": time.perf_counter() - t0,
    }


def _map(fn: Callable[[Any], Any], jobs: list[Any], workers: int) -> list[Any]:
    if workers <= 1:
        _init_worker()
        return [fn(j) for j in jobs]
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
        return list(pool.map(fn, jobs))


def run_study(cfg: StudyConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every table of docs/multitask.md from one configuration, as plain data (JSON-able)."""
    out: dict[str, Any] = {
        "config": asdict(cfg),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "wall_s": {},
    }
    t0 = time.perf_counter()
    xs, fs = pareto_set()
    out["pareto_set"] = {"x": xs.tolist(), "losses": fs.tolist()}
    toy_jobs = [(m, s, cfg.toy_steps, cfg.toy_lr) for m in cfg.methods for s in cfg.toy_starts]
    paper_jobs = [(m, cfg.toy_starts, cfg.paper_lr_steps) for m in BATCHABLE if m in cfg.methods]
    log(
        f"toy problem: {len(toy_jobs)} trajectories x {cfg.toy_steps} Adam steps, plus linear "
        f"and PAMA at lr 1e-3 for {cfg.paper_lr_steps} steps"
    )
    out["toy"] = _map(_toy_job, toy_jobs, cfg.workers)
    out["toy_paper_lr"] = _map(_paper_lr_job, paper_jobs, cfg.workers)
    out["wall_s"]["toy"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    digit_jobs = [(m, s, cfg.digits_steps) for s in range(cfg.seeds) for m in cfg.methods]
    log(f"digits: {len(cfg.methods)} methods x {cfg.seeds} seeds x {cfg.digits_steps} steps")
    out["digits"] = _map(_digits_job, digit_jobs, cfg.workers)
    out["wall_s"]["digits"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log(f"cost: {cfg.cost_rounds} interleaved rounds per size {list(cfg.cost_sizes)}")
    torch.set_num_threads(1)
    out["cost"] = measure_costs(cfg.cost_sizes, cfg.methods, rounds=cfg.cost_rounds)
    out["wall_s"]["cost"] = time.perf_counter() - t0
    return out
