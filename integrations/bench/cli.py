"""``paretoopt bench``: run the benchmark suites and write the report.

Runs the suites shipped in :mod:`paretoopt.integrations.bench` with its :mod:`.runner` in a
child process (so that thread settings apply before torch and BLAS load), relays one progress
line per finished case, then turns the JSON into ``OUT/benchmarks.md`` and
``OUT/img/bench_*.png`` with :mod:`.report`. Nothing here needs the source tree: it works the
same from a wheel. ``--from-json`` also accepts the JSON of the repository's pytest-benchmark
suites (``bench/``, ``make bench``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from . import SUITES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paretoopt bench",
        description=(
            "Measure what PAMA, linear scalarization, MGDA-UB and exact MGDA cost: weight "
            "selection alone (suite 1), one full training update on GPT-2-shaped models "
            "(suite 2) and min-norm solvers against torchjd (suite 3). Writes OUT/bench.json, "
            "OUT/benchmarks.md and OUT/img/bench_*.png."
        ),
        epilog=(
            "Examples: `paretoopt bench --quick` (under 2 minutes); "
            "`paretoopt bench --out docs` (full run, regenerates docs/benchmarks.md); "
            "`paretoopt bench --from-json docs/bench.json --out docs` (report only)."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, under 2 minutes (profile 'quick')"
    )
    parser.add_argument(
        "--profile",
        choices=("tiny", "quick", "full"),
        default=None,
        help="sizes to run (default: full, or quick with --quick; tiny is for tests)",
    )
    parser.add_argument(
        "--out",
        default="bench-results",
        help="folder for bench.json, benchmarks.md and img/ (default: bench-results)",
    )
    parser.add_argument(
        "--suite",
        action="append",
        choices=SUITES,
        help="run only this suite (repeatable; default: all three)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and BLAS threads (default 1: stable timings on a shared machine)",
    )
    parser.add_argument(
        "--from-json",
        default=None,
        help="skip the runs and only write the report from this JSON (this command's or "
        "pytest-benchmark's from bench/)",
    )
    return parser


def run_suites(profile: str, suites: Sequence[str], json_path: Path, threads: int) -> int:
    """Run the suites in a child process; relay its progress lines; return its exit code."""
    cmd = [
        sys.executable,
        "-m",
        f"{__package__}.runner",
        f"--profile={profile}",
        *[f"--suite={s}" for s in suites],
        f"--json={json_path}",
        f"--threads={threads}",
    ]
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    tail: list[str] = []
    print(f"paretoopt bench: profile {profile}, suites {', '.join(suites)}", flush=True)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if proc.stdout is None:  # pragma: no cover - PIPE always gives a stream
        raise RuntimeError("no output stream from the benchmark runner")
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail = [*tail, line][-80:]
        if line.startswith("  "):
            print(line, flush=True)
    code = proc.wait()
    if code != 0:
        print("\n".join(tail), file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        json_path = Path(args.from_json)
    else:
        profile = args.profile or ("quick" if args.quick else "full")
        json_path = out / "bench.json"
        code = run_suites(profile, args.suite or list(SUITES), json_path, args.threads)
        if code != 0:
            print(f"paretoopt bench: a case failed (runner exit code {code})", file=sys.stderr)
            return 1
    from . import report

    page = report.build_report(report.load(json_path), out)
    print(f"paretoopt bench: wrote {page} and {out / 'img'}/bench_*.png", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
