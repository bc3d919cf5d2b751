"""``paretoopt demo``: align a language model to sentiment + length with PAMA and baselines.

Offline and deterministic for a seed. Without options it reproduces, at toy scale, the
paper's GPT-2 / IMDb experiment on a synthetic corpus: tiny tokenizer, SFT policy and
sentiment classifier are trained once and cached, then PAMA, MORLHF (0.5/0.5) and MGDA-UB
align the policy over several seeds, and the run writes a table, plots and samples.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

DESCRIPTION = (
    __doc__.split("\n\n")[0]
    + """

Writes into --out: results.json (per method: mean and std over seeds of each reward on the
held-out prompts, hypervolume, seeds, training curves), results.md (the table),
samples.md (a few generations per method), demo_curves.png and demo_pareto.png.

Real models work too:
  paretoopt demo --policy gpt2 --reward sentiment=lvwerra/distilbert-imdb:1 \\
      --reward length --prompts prompts.txt --out runs/demo-gpt2
"""
)


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc


def _str_tuple(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="paretoopt demo",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    p.add_argument(
        "--quick", action="store_true", help="fewer steps and seeds: a few minutes on 2 CPU cores"
    )
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # test-suite size
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where the tiny artefacts are cached "
        "(default: $PARETOOPT_CACHE or ~/.cache/paretoopt/demo)",
    )
    p.add_argument("--retrain", action="store_true", help="retrain the cached artefacts")
    p.add_argument(
        "--methods",
        type=_str_tuple,
        default=None,
        help="comma-separated: pama, morlhf, linear_noon, linear, mgda_ub, mgda "
        "(default: pama,morlhf,mgda_ub)",
    )
    p.add_argument("--seeds", type=_int_tuple, default=None, help="comma-separated run seeds")
    p.add_argument("--steps", type=int, default=None, help="PPO steps per run")
    p.add_argument("--batch-size", type=int, default=None, help="prompts per PPO step")
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--kl-coef", type=float, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument(
        "--samples-per-prompt", type=int, default=None, help="responses per held-out prompt"
    )
    p.add_argument(
        "--policy",
        default=None,
        help="causal LM name or path (from_pretrained); default: the cached tiny SFT policy",
    )
    p.add_argument(
        "--reward",
        action="append",
        default=None,
        metavar="SPEC",
        help="repeatable: NAME=NAME_OR_PATH[:LABEL] (sequence classifier, logit LABEL), "
        "'length' (the paper's clip(chars/140, 0, 1)) or length:SCALE[:LO:HI[:UNIT]]; "
        "default: sentiment from the cached classifier + clip(words / 10, 0, 2)",
    )
    p.add_argument("--prompts", default=None, help="text file, one prompt per line")
    p.add_argument(
        "--eval-prompts",
        default=None,
        help="held-out prompts file; default: a fixed 25%% of --prompts",
    )
    p.add_argument(
        "--hv-reference",
        type=lambda t: tuple(float(v) for v in t.split(",")),
        default=None,
        metavar="R1,R2",
        help="hypervolume reference point, one value per reward; default: (-1.5, 0) for the "
        "demo rewards (their lowest values), else the evaluated points' minimum - 10%% range",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _read_lines(path: str) -> list[str]:
    lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
    prompts = [ln for ln in lines if ln]
    if not prompts:
        raise SystemExit(f"error: {path} has no prompts")
    return prompts


def _config_from_args(args: argparse.Namespace):
    from paretoopt.integrations.demo.experiment import DemoConfig, quick_config, tiny_config

    config: DemoConfig = (
        tiny_config() if args.tiny else quick_config() if args.quick else DemoConfig()
    )
    overrides = {
        "methods": args.methods,
        "seeds": args.seeds,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "kl_coef": args.kl_coef,
        "max_new_tokens": args.max_new_tokens,
        "samples_per_prompt": args.samples_per_prompt,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    if args.hv_reference is not None:
        config.hv_reference = args.hv_reference
    elif args.reward is not None:
        config.hv_reference = None  # unknown reward bounds: use the data's nadir
    if config.mini_batch_size > config.batch_size:
        config.mini_batch_size = config.batch_size
    return config


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``paretoopt demo``; returns the exit status."""
    args = build_parser().parse_args(argv)
    wall = time.perf_counter()
    config = _config_from_args(args)
    progress = not args.no_progress

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from paretoopt.integrations.demo.artefacts import load_or_train
    from paretoopt.integrations.demo.corpus import split_prompts
    from paretoopt.integrations.demo.experiment import run_experiment
    from paretoopt.integrations.demo.report import results_table, write_report
    from paretoopt.integrations.hf import RewardModelFunction, make_length_reward, parse_reward_spec

    artefacts = None
    if args.policy is None or args.reward is None:
        log(f"[demo] artefacts (cache key {config.artefacts.cache_key()})")
        artefacts = load_or_train(config.artefacts, args.cache_dir, progress, args.retrain)
        log(f"[demo] {'reloaded from' if artefacts.from_cache else 'trained and cached in'} "
            f"{artefacts.root}")  # fmt: skip

    if args.policy is not None:
        policy, tokenizer = args.policy, None
    else:
        from transformers import AutoTokenizer

        policy = str(artefacts.policy)
        tokenizer = AutoTokenizer.from_pretrained(str(artefacts.tokenizer))

    rewards: list[Any]
    if args.reward is None:
        rewards = [
            RewardModelFunction(str(artefacts.reward_model), 1, name="sentiment", separator=" "),
            make_length_reward(config.length_scale, 0.0, config.length_max, config.length_unit),
        ]
    else:
        rewards = [parse_reward_spec(spec) for spec in args.reward]
    names = [getattr(fn, "name", None) or getattr(fn, "__name__", f"reward{i}")
             for i, fn in enumerate(rewards)]  # fmt: skip
    if len(set(names)) != len(names):
        raise SystemExit(f"error: reward names must differ, got {names}")

    if args.prompts is not None:
        prompts = _read_lines(args.prompts)
        if args.eval_prompts is not None:
            train_prompts, eval_prompts = prompts, _read_lines(args.eval_prompts)
        else:
            shuffled = prompts[:]
            random.Random(0).shuffle(shuffled)
            n_eval = max(1, len(shuffled) // 4)
            train_prompts, eval_prompts = shuffled[n_eval:], shuffled[:n_eval]
            if not train_prompts:
                raise SystemExit("error: need at least 2 prompts to split train / held-out")
    else:
        train_prompts, eval_prompts = split_prompts(config.artefacts.corpus)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_experiment(
        config,
        policy=policy,
        tokenizer=tokenizer,
        rewards=rewards,
        reward_names=names,
        train_prompts=train_prompts,
        eval_prompts=eval_prompts,
        work_dir=out / "runs",
        progress=progress,
        log=log,
    )
    results["artefacts"] = (
        {"cache_dir": str(artefacts.root), "from_cache": artefacts.from_cache, **artefacts.metrics}
        if artefacts is not None
        else None
    )
    results["timings"]["wall_seconds"] = time.perf_counter() - wall
    paths = write_report(results, out)
    print(results_table(results))
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"wall time: {results['timings']['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
