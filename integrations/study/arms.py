"""The runs beside each task's main table: each method at its own best setting, the
transfer row (a task run at task 1's setting) and the paper's own set-up (task 1).

Each returns the analysed entry that ``results["tasks"][task]`` holds under ``own_best``,
``transfer`` or ``paper_setup``; their runs live in their own folders (the paper arm's and the
transfer row's) or beside the main runs (``kind == "own_best"``), so a study resumes them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import runner, stats
from .analysis import method_entry, task_results
from .protocol import CORE_METHODS, Hparams, StudyConfig
from .tuning import PAPER_METHODS


def _sft_job(task: str, hparams: dict[str, Any], arm: str | None = None) -> dict[str, Any]:
    job = {"task": task, "kind": "sft", "method": "sft", "seed": 0, "hparams": hparams}
    return {**job, "arm": arm} if arm else job


def own_best(
    config: StudyConfig,
    task: Any,
    per_method: dict[str, dict[str, Any]],
    shared_runs: Sequence[dict[str, Any]],
    main: dict[str, Any],
    raw_dir: Path,
    cache_dir: str | None,
    progress: bool = True,
) -> dict[str, Any]:
    """Every method of the main table at its own best tuning setting, ``own_best_seeds``
    seeds each; a method whose own best is the shared setting reuses its main runs."""
    shared = asdict(config.hparams_for(task.name))
    seeds = min(config.own_best_seeds, config.seeds[task.name])
    jobs = []
    for m in main["methods"]:
        if per_method[m] != shared:
            jobs += [
                {"task": task.name, "kind": "own_best", "method": m, "seed": s,
                 "hparams": per_method[m]}
                for s in range(seeds)
            ]  # fmt: skip
    runs = runner.run_jobs(jobs, config, raw_dir, cache_dir, progress, desc=f"{task.name} own best")
    objectives = main["objectives"]
    front = [p["per_seed"] for p in main["morlhf_front"]]
    methods = {}
    for m in main["methods"]:
        own = per_method[m] == shared
        mine = [
            r
            for r in (shared_runs if own else runs)
            if r["job"]["method"] == m and r["job"]["kind"] == ("study" if own else "own_best")
            and r["job"]["seed"] < seeds
        ]  # fmt: skip
        entry = method_entry(mine, objectives, main["sft"])
        entry.pop("curves")
        entry.pop("samples")
        points = [[p[o] for o in objectives] for p in entry["per_seed"]]
        entry["hparams"] = per_method[m]
        entry["shared_setting"] = own
        entry["dominated_by_front_ci"] = bool(front) and stats.dominated_beyond_ci(points, front)
        methods[m] = entry
    return {"seeds": seeds, "shared_hparams": shared, "methods": methods}


def transfer(
    config: StudyConfig,
    task: Any,
    hparams: dict[str, Any],
    raw_dir: Path,
    cache_dir: str | None,
    progress: bool = True,
) -> dict[str, Any]:
    """Round 1's core methods on ``task`` at another task's setting ``hparams`` (the
    transfer row: what the task gave when it inherited task 1's setting)."""
    methods = [m for m in CORE_METHODS if m in config.methods]
    jobs = [_sft_job(task.name, hparams)] + [
        {"task": task.name, "kind": "study", "method": m, "seed": s, "hparams": hparams}
        for s in range(config.seeds[task.name])
        for m in methods
    ]
    runs = runner.run_jobs(jobs, config, raw_dir, cache_dir, progress, desc=f"{task.name} transfer")
    out = task_results(task, runs, config.to_dict(), with_front=False)
    out["hparams"] = hparams
    return out


def paper_setup(
    config: StudyConfig,
    task: Any,
    hparams: dict[str, Any],
    raw_dir: Path,
    cache_dir: str | None,
    progress: bool = True,
) -> dict[str, Any]:
    """The paper's set-up on ``task``: ratio to the reference, Noon for PAMA and
    ``linear_noon``, the adaptive KL controller with target 3, at the arm's tuned setting."""
    Hparams(**hparams)  # a full setting, or a clear TypeError naming the field
    jobs = [_sft_job(task.name, hparams, "paper")] + [
        {"task": task.name, "kind": "study", "method": m, "seed": s, "hparams": hparams,
         "arm": "paper"}
        for s in range(config.paper_seeds)
        for m in PAPER_METHODS
    ]  # fmt: skip
    runs = runner.run_jobs(jobs, config, raw_dir, cache_dir, progress, desc=f"{task.name} paper")
    out = task_results(task, runs, config.to_dict(), with_front=False)
    out["hparams"] = hparams
    out["arm"] = {"ratio_to": "ref", "noon": "pama, linear_noon", "adaptive_kl_target": 3.0}
    return out
