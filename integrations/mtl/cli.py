"""``paretoopt mtl``: the multi-task study of docs/multitask.md, offline, in one run.

Writes ``OUT/mtl.json`` (every number), ``OUT/mtl_tables.md`` (the tables) and
``OUT/img/mtl_*.png`` (toy trajectories, toy front, digits scatter). Needs the ``bench`` extra
(torchjd with its quadprog solver, scikit-learn, matplotlib).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paretoopt mtl",
        description=(
            "Multi-task study: the CAGrad / Nash-MTL toy problem (trajectories from several "
            "starts), three tasks on scikit-learn's bundled digits over seeds with bootstrap "
            "CIs and hypervolume, how often each update is a common descent direction, and the "
            "cost of a step as ratios to linear scalarization; paretoopt's linear, MGDA-UB, "
            "MGDA and PAMA against torchjd's MGDA and UPGrad."
        ),
        epilog="Examples: `paretoopt mtl --quick --out mtl-results`; `paretoopt mtl --out docs`.",
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (profile 'quick')")
    parser.add_argument(
        "--profile",
        choices=("tiny", "quick", "full"),
        default=None,
        help="sizes (default: full, or quick with --quick; tiny is for tests)",
    )
    parser.add_argument("--out", default="mtl-results", help="output folder (default: mtl-results)")
    parser.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: the profile's, 2)"
    )
    parser.add_argument(
        "--from-json", default=None, help="skip the runs: rebuild tables and plots from this JSON"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .report import plot_all, tables_markdown
    from .study import PROFILES, run_study

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        cfg = PROFILES[args.profile or ("quick" if args.quick else "full")]
        changes = {}
        if args.seeds is not None:
            if args.seeds < 2:
                raise SystemExit("--seeds must be >= 2 (a confidence interval needs a spread)")
            changes["seeds"] = args.seeds
        if args.workers is not None:
            if args.workers < 1:
                raise SystemExit("--workers must be >= 1")
            changes["workers"] = args.workers
        cfg = dataclasses.replace(cfg, **changes)
        t0 = time.perf_counter()
        results = run_study(cfg, log=lambda s: print(s, flush=True))
        results["wall_s"]["total"] = time.perf_counter() - t0
        (out / "mtl.json").write_text(json.dumps(results, indent=1))
    tables = tables_markdown(results)
    (out / "mtl_tables.md").write_text(tables)
    paths = plot_all(results, out / "img")
    print(tables)
    print("wrote", out / "mtl_tables.md", *[str(p) for p in paths])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
