"""``paretoopt study``: PAMA against MORLHF, MGDA-UB and variants, as a powered, paired study.

Offline: the tiny artefacts of both tasks are trained once and cached. ``paretoopt demo`` is
the same command with ``--quick`` implied and ``--out demo_out`` by default.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

DESCRIPTION = (
    __doc__.split("\n\n")[0]
    + """

Without --tune each task's shared hyper-parameters are the ones a previous `--tune` chose
(protocol.py's CHOSEN_TASK_HPARAMS; docs/study/tuning.json holds the tables); with --tune
the grid is run first on tuning seeds (900+) and training prompts, each task on its own, and
the study then uses what it chose. A tuning record (--tune, or --tuning FILE) also gives each
method's own best setting, task 2's transfer row (run at task 1's setting, when the two
differ) and, on task 1, the paper's own set-up (ratio to the reference, Noon, adaptive KL
with target 3): the full preset runs them beside the main table.
Writes into --out: results.json, study.md, <task>_front.png, <task>_reward_kl.png,
<task>_rates.png, tuning.json (with --tune) and runs/ (one JSON per run; an interrupted
study resumes from them). Prints each task's table (means with 95% CIs) and these paths.
"""
)

DEMO_DESCRIPTION = """\
The study's quick form (`paretoopt study --quick`): task 1 (sentiment against length), PAMA,
PAMA without Noon, MORLHF, MGDA-UB and GDPO over 3 paired seeds, a short MORLHF weight sweep,
all offline on a tiny GPT-2-shaped policy trained once and cached. About 20 s on 2 CPU
cores once the artefacts are cached; the first run trains them too (under a minute when the
cores are free).

Prints the table (held-out means with 95% bootstrap CIs) and writes into --out (default
demo_out): study.md (the full report), results.json, sentiment_length_front.png (each
method's mean point against the MORLHF front), sentiment_length_rates.png (PAMA's zero and
conflict rates over training), sentiment_length_reward_kl.png and runs/. Every option of
`paretoopt study` applies (--seeds, --steps, --methods, --workers, --cache-dir, ...).
"""


def build_parser(demo: bool = False) -> argparse.ArgumentParser:
    """The parser of ``paretoopt study``, or of ``paretoopt demo`` (``--quick`` implied)."""
    p = argparse.ArgumentParser(
        prog="paretoopt demo" if demo else "paretoopt study",
        description=DEMO_DESCRIPTION if demo else DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if demo:
        p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
        # Always the quick preset; the flag is accepted so that older command lines still run.
        p.add_argument("--quick", action="store_true", default=True, help=argparse.SUPPRESS)
    else:
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument(
            "--quick",
            action="store_true",
            help="task 1, 5 core methods x 3 seeds x 40 steps (what `paretoopt demo` runs)",
        )
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # test-suite size
    p.add_argument(
        "--engine",
        choices=("ppo", "grpo"),
        default="ppo",
        help="ppo: the study's PPO trainer (default); grpo: TRL's GRPOTrainer with its two "
        "aggregations and the PAMA plug-in (writes runs_grpo/, grpo.md and results.json's "
        "'grpo' key; see docs/study.md)",
    )
    p.add_argument(
        "--task",
        choices=("sentiment_length", "support_replies"),
        default=None,
        help="run one task only (default: "
        + ("sentiment_length)" if demo else "both; --quick: sentiment_length)"),
    )
    p.add_argument(
        "--seeds",
        default=None,
        help="reported seeds per method: N for every task, or task=N,task=N",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="PPO steps per run (checkpoints scale to 1/5, 1/2 and 1 of it)",
    )
    p.add_argument("--methods", default=None, help="comma-separated method names")
    p.add_argument("--workers", type=int, default=None, help="processes (default 2)")
    p.add_argument("--tune", action="store_true", help="choose the hyper-parameters first")
    p.add_argument("--tune-only", action="store_true", help="stop after tuning")
    p.add_argument("--tune-seeds", type=int, default=None, help="tuning seeds (default 1)")
    p.add_argument("--tuning", default=None, help="a tuning.json whose choice to use")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="artefact cache (default: $PARETOOPT_CACHE or ~/.cache/paretoopt/demo)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def configure(args: argparse.Namespace) -> Any:
    """The study's configuration from the command line; a bad value exits naming it, before
    any artefact is loaded or any run starts."""
    from .protocol import METHOD_LABELS, check_min_seeds, parse_seeds, preset

    config = preset("tiny" if args.tiny else "quick" if args.quick else "full")
    if args.task:
        config = replace(config, tasks=(args.task,))
    if args.seeds is not None:
        config = replace(config, seeds=parse_seeds(args.seeds, config.seeds))
    if not args.tune_only:
        check_min_seeds(config.seeds, config.tasks)
    if args.steps is not None:
        s = args.steps
        config = replace(
            config, steps=s, eval_steps=tuple(sorted({max(1, s // 5), max(1, s // 2), s}))
        )
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(","))
        known = [m for m in METHOD_LABELS if m != "sft"]
        for method in methods:
            if method not in known:
                raise SystemExit(f"--methods: unknown method {method!r}; expected one of {known}")
        config = replace(config, methods=methods)
    if args.tune_seeds is not None:
        config = replace(config, tune_seeds=args.tune_seeds)
    if args.workers is not None:
        config = replace(config, workers=args.workers)
    return config


def _arms(config, task, tuning, runs, main, raw, cache_dir, progress) -> dict[str, Any]:
    """The runs beside a task's main table that a tuning record allows: each method at its
    own best, the transfer row (task 1's setting on another task) and the paper's arm."""
    from . import arms, verdict
    from .tuning import TUNING_TASK, chosen_for

    out: dict[str, Any] = {}
    if tuning is None:
        return out
    name = task.name
    per_method = tuning.get("per_method", {}).get(name)
    if config.own_best_seeds and per_method and all(m in per_method for m in main["methods"]):
        out["own_best"] = arms.own_best(
            config, task, per_method, runs, main, raw / name, cache_dir, progress
        )
    if name != TUNING_TASK and TUNING_TASK in tuning.get("tasks", {}):
        first = chosen_for(tuning, TUNING_TASK)
        if first != chosen_for(tuning, name):
            out["transfer"] = arms.transfer(
                config, task, first, raw / f"{name}_transfer", cache_dir, progress
            )
    if config.paper_seeds and name == TUNING_TASK and tuning.get("paper"):
        paper = arms.paper_setup(
            config, task, tuning["paper"]["chosen"], raw / f"{name}_paper", cache_dir, progress
        )
        paper["ordering"] = verdict.ordering(paper, baselines=("linear_noon", "morlhf", "mgda_ub"))
        out["paper_setup"] = paper
    return out


def main(argv: list[str] | None = None, demo: bool = False) -> int:
    """Entry point of ``paretoopt study`` (of ``paretoopt demo`` with ``demo``)."""
    parser = build_parser(demo)
    args = parser.parse_args(argv)
    if args.engine == "grpo":
        from .grpo_study import main as grpo_main

        return grpo_main(args, argv, prog=parser.prog)
    wall = time.perf_counter()
    from transformers.utils import logging as hf_logging

    from . import protocol, runner, verdict
    from . import tuning as tuning_mod
    from .analysis import task_results
    from .report import headline_table, write_report
    from .tasks import TASK_OBJECTIVES, load_task

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    config = configure(args)
    out = Path(args.out)
    raw = out / "runs"
    progress = not args.no_progress
    timings: dict[str, float] = {}
    # Re-analysing finished runs keeps the wall times measured when they ran.
    previous = out / "results.json"
    old_timings = json.loads(previous.read_text()).get("timings", {}) if previous.exists() else {}

    if not (args.tune or args.tune_only):
        planned = config
        if args.tuning:
            record = json.loads(Path(args.tuning).read_text())
            for name in config.tasks:
                chosen = tuning_mod.chosen_for(record, name)
                planned = protocol.with_hparams(planned, chosen, name)
        # Saved runs of another study in --out: refused before any artefact is loaded or any
        # run starts. (With --tune the settings are known only once tuning chose them; the
        # runs are then checked after it, as each task's runs are read.)
        try:
            for name in config.tasks:
                jobs = protocol.make_jobs(planned, name, len(TASK_OBJECTIVES[name]))
                protocol.check_saved_runs(jobs, planned, raw / name)
        except ValueError as exc:
            raise SystemExit(f"paretoopt study: {exc}") from None

    tuning = None
    if args.tune or args.tune_only:
        start = time.perf_counter()
        tuning = tuning_mod.tune_study(config, raw / "tuning", args.cache_dir, progress)
        seconds = time.perf_counter() - start
        # Re-tuning from saved runs keeps the wall time measured when they ran.
        old_tuning = out / "tuning.json"
        if seconds < 60 and old_tuning.exists():
            seconds = json.loads(old_tuning.read_text()).get("seconds", seconds)
        tuning["seconds"] = seconds
        timings["tuning"] = seconds
        out.mkdir(parents=True, exist_ok=True)
        (out / "tuning.json").write_text(json.dumps(tuning, indent=1))
        print(f"[study] chosen: {tuning['chosen']}")
        if args.tune_only:
            return 0
    elif args.tuning:
        tuning = json.loads(Path(args.tuning).read_text())
    if tuning is not None:
        for name in config.tasks:
            config = protocol.with_hparams(config, tuning_mod.chosen_for(tuning, name), name)
    results: dict[str, Any] = {
        "command": " ".join(
            [parser.prog, *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))]
        ),
        "config": config.to_dict(),
        "hparams": {t: asdict(config.hparams_for(t)) for t in config.tasks},
        "tuning": tuning,
        "timings": timings,
        "tasks": {},
    }
    for name in config.tasks:
        start = time.perf_counter()
        task = load_task(name, config.artefact_size, args.cache_dir, progress)
        print(f"[study] {name}: artefacts in {task.artefacts.root}")
        jobs = protocol.make_jobs(config, name, len(task.objectives))
        pending = [j for j in jobs if not (raw / name / f"{protocol.job_name(j)}.json").exists()]
        runs = runner.run_jobs(jobs, config, raw / name, args.cache_dir, progress, desc=name)
        t = task_results(task, runs, config.to_dict())
        t["hparams"] = asdict(config.hparams_for(name))
        t.update(_arms(config, task, tuning, runs, t, raw, args.cache_dir, progress))
        t["verdict"] = verdict.task_verdict(t)
        t["ordering"] = verdict.ordering(t)
        results["tasks"][name] = t
        seconds = time.perf_counter() - start
        timings[name] = seconds if pending or name not in old_timings else old_timings[name]
        print(f"[study] {name}: {len(jobs)} main runs, in all {timings[name] / 60:.1f} min")
    results["verdict"] = verdict.overall_verdict(results["tasks"])
    write_report(results, out)
    for name, t in results["tasks"].items():
        print(f"\n{name}: held-out means [95% CI] over seeds at step {max(config.eval_steps)}\n")
        print(headline_table(t))
    print(f"report: {out / 'study.md'} (all numbers: {out / 'results.json'})")
    for name in results["tasks"]:
        print(f"front plot: {out / f'{name}_front.png'}")
        print(f"zero-rate plot: {out / f'{name}_rates.png'}")
        print(f"reward-KL plot: {out / f'{name}_reward_kl.png'}")
    print(f"wall time: {time.perf_counter() - wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
