"""``paretoopt study --engine grpo``: tuning, the runs, the analysis and ``results.json["grpo"]``.

The GRPO engine's runs live in ``<out>/runs_grpo/<task>/`` (tuning: ``runs_grpo/tuning/``),
one JSON per run, so an interrupted study resumes; its report is ``<out>/grpo.md`` with plots
``<out>/grpo_<task>_*.png``, and its results are merged into ``<out>/results.json`` under the
key ``"grpo"`` (the rest of the file, the PPO study's, is kept).

Tuning follows the PPO study's protocol: tuning seeds 900+, training prompts, each task on its
own, and a criterion fixed before any run and blind to the method: the mean over the four
methods and the tuning seeds of the per-response hypervolume at the last tuning step.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import runner
from .grpo_engine import (
    FRONT_METHOD,
    GRPO_GRID,
    GRPO_METHODS,
    PAMA_METHODS,
    REFERENCE_METHOD,
    GRPOHparams,
    GRPOStudyConfig,
    grpo_preset,
    grpo_run_settings,
    make_grpo_jobs,
    run_grpo_job,
    with_grpo_hparams,
)
from .protocol import TUNING_SEED_OFFSET, check_min_seeds, parse_seeds
from .tuning import best_index, grid_settings

#: Fewer reported seeds per method than this leave the paired statistics undefined.
CRITERION = (
    "mean over the four methods and the tuning seeds of the per-response hypervolume at the "
    "last tuning step, on training prompts"
)


def configure_grpo(args: argparse.Namespace) -> GRPOStudyConfig:
    """The GRPO study's configuration from ``paretoopt study``'s options; a bad value exits
    naming it, before any artefact is loaded or any run starts."""
    config = grpo_preset("tiny" if args.tiny else "quick" if args.quick else "full")
    if args.task:
        config = replace(config, tasks=(args.task,))
    if args.seeds is not None:
        config = replace(config, seeds=parse_seeds(args.seeds, config.seeds))
    if not args.tune_only:
        check_min_seeds(config.seeds, config.tasks)
    if args.steps is not None:
        s = args.steps
        if s < 1:
            raise SystemExit(f"--steps: {s} is not a positive number of GRPO steps")
        config = replace(
            config, steps=s, eval_steps=tuple(sorted({max(1, s // 5), max(1, s // 2), s}))
        )
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(","))
        for method in methods:
            if method not in GRPO_METHODS:
                raise SystemExit(
                    f"--methods: unknown method {method!r} for --engine grpo; expected one of "
                    f"{list(GRPO_METHODS)}"
                )
        config = replace(config, methods=methods)
    if args.tune_seeds is not None:
        config = replace(config, tune_seeds=args.tune_seeds)
    if args.workers is not None:
        config = replace(config, workers=args.workers)
    if args.tune or args.tune_only:
        config = replace(config, tune=True)
    if args.tuning:
        config = replace(config, tune=False)
    return config


# ---------------------------------------------------------------------------- tuning


def _run_jobs(jobs, config, raw_dir, cache_dir, progress, desc):
    return runner.run_jobs(
        jobs,
        config,
        raw_dir,
        cache_dir,
        progress,
        desc,
        run_fn=run_grpo_job,
        settings_fn=grpo_run_settings,
    )


def tune_task(
    config: GRPOStudyConfig,
    task: str,
    raw_dir: Path,
    cache_dir: str | None,
    progress: bool = True,
    grid: dict[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """The grid on ``task``'s tuning seeds for the study's methods: the table, the shared
    choice (best on the method-blind criterion) and each method's own best."""
    methods = list(config.methods)
    settings = grid_settings(grid or GRPO_GRID, GRPOHparams)
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
        }
        for i, hp in enumerate(settings)
        for s in range(config.tune_seeds)
        for m in methods
    ]
    runs = _run_jobs(jobs, config, raw_dir, cache_dir, progress, f"tuning {task}")
    table = []
    for i, hp in enumerate(settings):
        mine = [r for r in runs if r["job"]["hparams_index"] == i]
        last = str(config.tune_steps)
        per_method = {
            m: float(
                np.mean(
                    [r["evals"][last]["per_response_hv"] for r in mine if r["job"]["method"] == m]
                )
            )
            for m in methods
        }
        table.append(
            {
                **asdict(hp),
                "score": float(np.mean(list(per_method.values()))),
                "per_method": per_method,
                "zero_rate": {
                    m: _zero_rate_summary([r for r in mine if r["job"]["method"] == m])
                    for m in methods
                    if m in PAMA_METHODS
                },
            }
        )
    best = best_index([row["score"] for row in table])
    own = {m: best_index([row["per_method"][m] for row in table]) for m in methods}
    keys = list(asdict(settings[0]))
    return {
        "criterion": CRITERION,
        "task": task,
        "seeds": [TUNING_SEED_OFFSET + s for s in range(config.tune_seeds)],
        "steps": config.tune_steps,
        "methods": methods,
        "grid": {k: list(v) for k, v in (grid or GRPO_GRID).items()},
        "table": table,
        "chosen": {k: table[best][k] for k in keys},
        "per_method": {m: {k: table[i][k] for k in keys} for m, i in own.items()},
    }


# ---------------------------------------------------------------------------- analysis


def _zero_rate_summary(runs: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """Mean share of completions with s* = 0 over training (and its first / last tenth)."""
    curves = [[row["zero_rate"] for row in r["curves"] if "zero_rate" in row] for r in runs]
    curves = [c for c in curves if c]
    if not curves:
        return None
    k = max(1, min(len(c) for c in curves) // 10)
    return {
        "mean": float(np.mean([np.mean(c) for c in curves])),
        "first": float(np.mean([np.mean(c[:k]) for c in curves])),
        "last": float(np.mean([np.mean(c[-k:]) for c in curves])),
        "runs": len(curves),
    }


def zero_rate_by_generations(
    runs: Sequence[dict[str, Any]], tuning: dict[str, Any] | None, hparams: GRPOHparams
) -> dict[str, Any]:
    """PAMA's zero rate in the GRPO form (share of completions with s* = 0) against
    ``num_generations``: at the SFT start (the held-out samples cut into groups of G), over
    training in the tuning grid's runs (pooled over the other settings) and in the main runs."""
    sft = next(r for r in runs if r["job"]["kind"] == "sft")
    out: dict[str, Any] = {"sft_samples": sft.get("group_zero_rates", {}), "tuning": {}}
    if tuning:
        for g in sorted({row["num_generations"] for row in tuning["table"]}):
            rows = [row for row in tuning["table"] if row["num_generations"] == g]
            out["tuning"][str(g)] = {
                m: float(np.mean([row["zero_rate"][m]["mean"] for row in rows]))
                for m in PAMA_METHODS
                if all(row["zero_rate"].get(m) for row in rows)
            }
    main = [r for r in runs if r["job"]["kind"] == "study"]
    out["main"] = {
        str(hparams.num_generations): {
            m: s
            for m in PAMA_METHODS
            if (s := _zero_rate_summary([r for r in main if r["job"]["method"] == m]))
        }
    }
    return out


def grpo_task_results(task: Any, runs, config: GRPOStudyConfig, tuning=None) -> dict[str, Any]:
    """``results["grpo"]["tasks"][task]``: the PPO study's fields (:func:`.task_results`)
    with the GRPO methods, plus PAMA's zero rate against ``num_generations``."""
    from .analysis import task_results

    baselines = [m for m in config.methods if m != REFERENCE_METHOD]
    t = task_results(
        task,
        runs,
        config.to_dict(),
        front_method=FRONT_METHOD,
        reference=REFERENCE_METHOD,
        baselines=baselines,
    )
    hp = config.hparams_for(task.name)
    t["hparams"] = asdict(hp)
    t["zero_rate_by_generations"] = zero_rate_by_generations(runs, tuning, hp)
    t["trl_kl"] = {
        m: (e["curves"].get("kl") or [None])[-1] for m, e in t["methods"].items()
    }  # TRL's own per-token KL at the last step (reported when beta > 0)
    return t


def merge_results(out: Path, grpo: dict[str, Any]) -> Path:
    """Write ``grpo`` as ``results.json["grpo"]`` in ``out``, keeping every other key; the
    file is replaced atomically."""
    path = out / "results.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data["grpo"] = grpo
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------- the command


def main(args: argparse.Namespace, argv: list[str] | None, prog: str = "paretoopt study") -> int:
    """``paretoopt study --engine grpo`` with ``args`` parsed by the study's parser."""
    from transformers.utils import logging as hf_logging

    from .grpo_report import answer_table, write_grpo_report
    from .protocol import check_saved_runs, job_name
    from .tasks import TASK_OBJECTIVES, load_task

    wall = time.perf_counter()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    config = configure_grpo(args)
    out = Path(args.out)
    raw = out / "runs_grpo"
    progress = not args.no_progress
    previous = out / "results.json"
    old = json.loads(previous.read_text()).get("grpo") if previous.exists() else None
    old_timings = (old or {}).get("timings", {})
    timings: dict[str, float] = {}

    record = json.loads(Path(args.tuning).read_text()) if args.tuning else None
    if record is not None:
        record = (record.get("grpo") or {}).get("tuning") or record  # results.json or table
        for name in config.tasks:
            if name not in record.get("chosen", {}):
                raise SystemExit(f"--tuning: {args.tuning} holds no setting for task {name}")
            config = with_grpo_hparams(config, record["chosen"][name], name)
    if not config.tune:
        # Saved runs of another study in --out: refused before any artefact is loaded.
        try:
            for name in config.tasks:
                jobs = make_grpo_jobs(config, name, len(TASK_OBJECTIVES[name]))
                check_saved_runs(jobs, config, raw / name, grpo_run_settings)
        except ValueError as exc:
            raise SystemExit(f"{prog}: {exc}") from None

    tuning = record
    if config.tune:
        start = time.perf_counter()
        tuning = {"criterion": CRITERION, "tasks": {}, "chosen": {}, "per_method": {}}
        for name in config.tasks:
            load_task(name, config.artefact_size, args.cache_dir, progress)
            table = tune_task(config, name, raw / "tuning", args.cache_dir, progress)
            tuning["tasks"][name] = table
            tuning["chosen"][name] = table["chosen"]
            tuning["per_method"][name] = table["per_method"]
            config = with_grpo_hparams(config, table["chosen"], name)
            print(f"[grpo] {name}: chosen {table['chosen']}")
        seconds = time.perf_counter() - start
        old_tuning = (old or {}).get("tuning") or {}
        if seconds < 60 and "seconds" in old_tuning:
            seconds = old_tuning["seconds"]  # re-analysed from saved runs: keep the measured time
        tuning["seconds"] = timings["tuning"] = seconds
        out.mkdir(parents=True, exist_ok=True)
        (out / "grpo_tuning.json").write_text(json.dumps(tuning, indent=1))
        if args.tune_only:
            return 0
    import trl

    results: dict[str, Any] = {
        "engine": "grpo",
        "command": " ".join(
            [prog, *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))]
        ),
        "trl_version": trl.__version__,
        "config": config.to_dict(),
        "hparams": {t: asdict(config.hparams_for(t)) for t in config.tasks},
        "tuning": tuning,
        "timings": timings,
        "tasks": {},
    }
    for name in config.tasks:
        start = time.perf_counter()
        task = load_task(name, config.artefact_size, args.cache_dir, progress)
        jobs = make_grpo_jobs(config, name, len(task.objectives))
        pending = [j for j in jobs if not (raw / name / f"{job_name(j)}.json").exists()]
        runs = _run_jobs(jobs, config, raw / name, args.cache_dir, progress, f"grpo {name}")
        table = (tuning or {}).get("tasks", {}).get(name)
        results["tasks"][name] = grpo_task_results(task, runs, config, table)
        seconds = time.perf_counter() - start
        timings[name] = seconds if pending or name not in old_timings else old_timings[name]
        print(f"[grpo] {name}: {len(jobs)} runs, in all {timings[name] / 60:.1f} min")
    write_grpo_report(results, out)
    merge_results(out, results)
    for name, t in results["tasks"].items():
        print(f"\n{name}: held-out means [95% CI] over seeds at step {max(config.eval_steps)}\n")
        print("\n".join(answer_table(t)))
    print(f"\nreport: {out / 'grpo.md'} (all numbers: {out / 'results.json'} under 'grpo')")
    for name in results["tasks"]:
        print(f"front plot: {out / f'grpo_{name}_front.png'}")
    print(f"wall time: {time.perf_counter() - wall:.0f} s")
    return 0
