"""``paretoopt bench``: run the benchmark suites and write the report.

Runs ``bench/bench_*.py`` under pytest-benchmark in a child process (so that thread settings
apply before torch loads), shows one progress line per finished case, then turns the JSON into
``OUT/benchmarks.md`` and ``OUT/img/bench_*.png`` with ``bench/report.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "bench"
SUITES = {
    "weight_selection": "bench_weight_selection.py",
    "full_step": "bench_full_step.py",
    "min_norm": "bench_min_norm.py",
}
_RESULT = re.compile(r"^(?P<node>\S+::\S+)\s+(?P<status>PASSED|FAILED|ERROR|SKIPPED)")
_COLLECTED = re.compile(r"collected (\d+) items?")


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
        choices=sorted(SUITES),
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
        help="skip the runs and only write the report from this pytest-benchmark JSON",
    )
    return parser


def load_report_module() -> ModuleType:
    """``bench/report.py`` by path: the bench folder is not an installed package."""
    spec = importlib.util.spec_from_file_location("paretoopt_bench_report", BENCH_DIR / "report.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(BENCH_DIR / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_suites(profile: str, suites: Sequence[str], json_path: Path, threads: int) -> int:
    """Run the suites in a child pytest; print one progress line per case; return its code."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *[str(BENCH_DIR / SUITES[s]) for s in suites],
        f"--bench-profile={profile}",
        f"--bench-threads={threads}",
        f"--benchmark-json={json_path}",
        "--benchmark-columns=median,rounds",
        "-p",
        "no:cacheprovider",
        "-v",
        "--no-header",
    ]
    # A run started from inside pytest (the test suite, under xdist) must not look like an
    # xdist worker to the child pytest, or pytest-benchmark skips writing the JSON.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PARETOOPT_BENCH_THREADS"] = str(threads)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    # The repository root first on the path, so that `integrations` and `paretoopt` resolve.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    start = time.perf_counter()
    total, done = 0, 0
    tail: list[str] = []
    print(f"paretoopt bench: profile {profile}, suites {', '.join(suites)}", flush=True)
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = [*tail, line.rstrip("\n")][-80:]
        m = _COLLECTED.search(line)
        if m:
            total = int(m.group(1))
            print(f"  {total} cases", flush=True)
            continue
        m = _RESULT.match(line.strip())
        if m:
            done += 1
            node = m.group("node").split("/")[-1]
            print(
                f"  [{done:>3}/{total}] {node} {m.group('status')} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
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
        if not BENCH_DIR.is_dir():
            print(
                f"paretoopt bench: the suites live in the source tree ({BENCH_DIR} is missing); "
                "run from a checkout of the repository",
                file=sys.stderr,
            )
            return 2
        profile = args.profile or ("quick" if args.quick else "full")
        json_path = out / "bench.json"
        code = run_suites(profile, args.suite or list(SUITES), json_path, args.threads)
        if code != 0:
            print(f"paretoopt bench: the suites failed (pytest exit code {code})", file=sys.stderr)
            return 1
    report = load_report_module()
    page = report.build_report(report.load(json_path), out)
    print(f"paretoopt bench: wrote {page} and {out / 'img'}/bench_*.png", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
