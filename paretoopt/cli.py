"""Command line: ``paretoopt demo | study | train | bench | mtl | example``.

The heavy commands live in the integrations (they need the ``hf`` / ``bench`` extras) and are
imported only when called, so the core stays importable with torch, numpy and scipy alone.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

_COMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (module, extra, help)
    "demo": (
        "paretoopt.integrations.study.demo",
        "hf",
        "the study's quick form (study --quick): task 1, core methods + GDPO, CIs, plots",
    ),
    "study": (
        "paretoopt.integrations.study.cli",
        "hf",
        "the study: PAMA vs MORLHF (front), MGDA-UB and variants; paired seeds, CIs, tests",
    ),
    "train": (
        "paretoopt.integrations.hf.cli",
        "hf",
        "multi-objective PPO on a causal LM with n reward functions",
    ),
    "bench": (
        "paretoopt.integrations.bench.cli",
        "bench",
        "cost benchmarks: PAMA vs MGDA vs linear scalarization; writes docs tables and plots",
    ),
    "mtl": (
        "paretoopt.integrations.mtl.cli",
        "bench",
        "multi-task study: toy problem, digits over seeds, torchjd peers, descent rate, cost",
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paretoopt",
        description="Pareto multi-objective optimisation: PAMA, MGDA, MGDA-UB, linear.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, text) in _COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    ex = sub.add_parser("example", help="toy tour of every combiner (needs only torch)")
    ex.add_argument("--steps", type=int, default=20, help="optimiser steps per combiner")
    ex.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in _COMMANDS:
        module_name, extra, _ = _COMMANDS[args_list[0]]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a missing extra (the hf package re-raises as ImportError)
            print(
                f"paretoopt {args_list[0]} needs the '{extra}' extra "
                f"(pip install 'paretoopt[{extra}]'): {exc}",
                file=sys.stderr,
            )
            return 2
        return int(module.main(args_list[1:]) or 0)
    args = _parser().parse_args(args_list)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if args.command == "example":
        from .examples import run_example

        run_example(steps=args.steps, seed=args.seed)
        return 0
    _parser().print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
