"""Choosing the hyper-parameters on tuning seeds: each task's shared setting, each method's
own best, and the paper arm's setting.

Every tuning run is a (task, method, seed, setting) run on *tuning seeds* (900+, never
reported), evaluated on *training* prompts (never the held-out ones) with its own sampling
seed. The score of a setting, fixed before any run and blind to the method, is the mean over
the criterion methods (round 1's core methods, or the paper arm's four) and the tuning seeds
of the per-response hypervolume at the last tuning step. A method's *own best* setting is the
one with the best score restricted to that method. Ties break toward the earlier setting.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from . import runner
from .protocol import CORE_METHODS, TUNING_SEED_OFFSET, Hparams, StudyConfig

#: The standard arm's grid (full factorial, 16 settings), the same for every task.
TUNING_GRID: dict[str, tuple[Any, ...]] = {
    "learning_rate": (1e-4, 3e-4),
    "kl_coef": (0.02, 0.1),
    "ratio_to": ("ref", "old"),
    "advantage_normalization": ("none", "whiten"),
}
#: The paper arm's grid: its structure fixed (ratio to the reference; the adaptive KL
#: controller starts from ``kl_coef`` and aims at KL 3), the rest tuned (8 settings).
PAPER_GRID: dict[str, tuple[Any, ...]] = {
    "learning_rate": (1e-4, 3e-4),
    "kl_coef": (0.02, 0.1),
    "ratio_to": ("ref",),
    "advantage_normalization": ("none", "whiten"),
}
#: The paper arm's methods: PAMA and both readings of its MORLHF, and MGDA-UB.
PAPER_METHODS = ("pama", "linear_noon", "morlhf", "mgda_ub")
#: The task whose shared setting the transfer row of the other tasks uses (task 1).
TUNING_TASK = "sentiment_length"
CRITERION = (
    "mean over the criterion methods and tuning seeds of the per-response hypervolume at the "
    "last tuning step, on training prompts"
)


def grid_settings(grid: dict[str, Sequence[Any]] | None = None, cls: type = Hparams) -> list[Any]:
    """Every setting of ``grid`` (full factorial, in order), each a ``cls`` (the PPO
    :class:`Hparams` unless another engine's settings class is given)."""
    grid = grid or TUNING_GRID
    keys = list(grid)
    return [
        cls(**dict(zip(keys, values, strict=True)))
        for values in itertools.product(*(grid[k] for k in keys))
    ]


def best_index(scores: Sequence[float]) -> int:
    """The index of the best score, ties toward the earlier setting."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def tune(
    config: StudyConfig,
    raw_dir: Path,
    cache_dir: str | None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    *,
    task: str = TUNING_TASK,
    methods: Sequence[str] | None = None,
    criterion_methods: Sequence[str] = CORE_METHODS,
    grid: dict[str, Sequence[Any]] | None = None,
    arm: str | None = None,
) -> dict[str, Any]:
    """Run the grid on ``task``'s tuning seeds for ``methods`` (default: the study's);
    return the table, the shared choice and each method's own best."""
    from .tasks import load_task

    methods = list(dict.fromkeys(methods if methods is not None else config.methods))
    scored = [m for m in methods if m in criterion_methods] or methods
    load_task(task, config.artefact_size, cache_dir, progress)
    settings = grid_settings(grid)
    jobs = [
        {
            "task": task,
            "kind": "tune",
            "method": m,
            "seed": s,
            "hparams": asdict(hp),
            "hparams_index": i,
            "steps": config.tune_steps,
            "eval_steps": [config.tune_steps],
            **({"arm": arm} if arm else {}),
        }
        for i, hp in enumerate(settings)
        for m in methods
        for s in range(config.tune_seeds)
    ]
    log(
        f"[study] tuning {task}{f' ({arm} arm)' if arm else ''}: {len(settings)} settings x "
        f"{len(methods)} methods x {config.tune_seeds} seeds x {config.tune_steps} steps"
    )
    runs = runner.run_jobs(jobs, config, raw_dir, cache_dir, progress, desc=f"tuning {task}")
    table = []
    for i, hp in enumerate(settings):
        per_method = {}
        for m in methods:
            vals = [
                r["evals"][str(config.tune_steps)]["per_response_hv"]
                for r in runs
                if r["job"]["hparams_index"] == i and r["job"]["method"] == m
            ]
            per_method[m] = float(np.mean(vals))
        score = float(np.mean([per_method[m] for m in scored]))
        table.append({**asdict(hp), "score": score, "per_method": per_method})
    best = best_index([row["score"] for row in table])
    own = {m: best_index([row["per_method"][m] for row in table]) for m in methods}
    keys = list(asdict(settings[0]))
    return {
        "criterion": CRITERION,
        "criterion_methods": scored,
        "task": task,
        "arm": arm or "standard",
        "seeds": [TUNING_SEED_OFFSET + s for s in range(config.tune_seeds)],
        "steps": config.tune_steps,
        "methods": methods,
        "table": table,
        "chosen": {k: table[best][k] for k in keys},
        "per_method": {m: {k: table[i][k] for k in keys} for m, i in own.items()},
    }


def tune_study(
    config: StudyConfig,
    raw_dir: Path,
    cache_dir: str | None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Tune every task of ``config`` on its own tuning seeds, and the paper arm (task 1,
    when ``config.paper_seeds``). ``chosen`` and ``per_method`` are keyed by task."""
    out: dict[str, Any] = {"criterion": CRITERION, "tasks": {}, "chosen": {}, "per_method": {}}
    for task in config.tasks:
        table = tune(config, raw_dir, cache_dir, progress, log, task=task)
        out["tasks"][task] = table
        out["chosen"][task] = table["chosen"]
        out["per_method"][task] = table["per_method"]
    if config.paper_seeds and TUNING_TASK in config.tasks:
        out["paper"] = tune(
            config,
            raw_dir,
            cache_dir,
            progress,
            log,
            task=TUNING_TASK,
            methods=PAPER_METHODS,
            criterion_methods=PAPER_METHODS,
            grid=PAPER_GRID,
            arm="paper",
        )
    return out


def chosen_for(tuning: dict[str, Any], task: str) -> dict[str, Any]:
    """``task``'s shared setting in a tuning record (one setting for all tasks in records
    written before tasks were tuned separately)."""
    chosen = tuning["chosen"]
    if all(isinstance(v, dict) for v in chosen.values()):
        if task not in chosen:
            raise ValueError(f"the tuning record has no setting for task {task!r}")
        return chosen[task]
    return chosen
