"""Run the benchmark suites without pytest and write their JSON.

``python -m paretoopt.integrations.bench.runner --profile quick --json out.json`` runs every
case of the chosen suites in this process, one after the other, and prints one progress line
per case. The JSON has the layout of pytest-benchmark's ``--benchmark-json`` that the report
reads (``benchmarks[i].extra_info`` per case, ``machine_info.paretoopt_bench``, ``datetime``),
so a run of ``bench/`` under pytest-benchmark and a run of this module feed the same report.

Thread counts are fixed when BLAS loads, before this module is imported: ``paretoopt bench``
starts it in a child process with ``OMP_NUM_THREADS`` and friends set (see :mod:`.cli`).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import SUITES
from .lib import PROFILES, current_profile, loadavg, machine_info


def run(profile_name: str, suites: Sequence[str], json_path: Path, threads: int) -> int:
    """Run every case of ``suites``; write ``json_path``; return 0, or 1 if a case failed."""
    torch.set_num_threads(threads)
    profile = current_profile(name=profile_name)
    modules = {s: importlib.import_module(f"{__package__}.{s}") for s in suites}
    cases = [(s, c) for s, m in modules.items() for c in m.bench_cases(profile)]
    print(f"  {len(cases)} cases", flush=True)
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    loads: list[float] = []
    failed = 0
    for i, (suite, case) in enumerate(cases, start=1):
        module = modules[suite]
        name = f"test_{suite}[{module.case_id(case)}]"
        try:
            info = module.measure(case, profile)
            if not all(t > 0 for t in info["median_s"].values()):
                raise RuntimeError(f"{name}: a median time is not positive: {info['median_s']}")
            status = "PASSED"
            records.append({"group": None, "name": name, "fullname": name, "extra_info": info})
        except Exception:
            status = "FAILED"
            failed += 1
            traceback.print_exc()
        load = loadavg()
        if load is not None:
            loads.append(load[0])
        print(
            f"  [{i:>3}/{len(cases)}] {name} {status} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    data = {
        "machine_info": {
            "paretoopt_bench": {
                **machine_info(),
                "profile": profile.name,
                "loadavg_1min_per_case": loads,
                "loadavg_end": loadavg(),
            }
        },
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "runner": __name__,
        "benchmarks": records,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paretoopt.integrations.bench.runner",
        description="Run the benchmark suites in this process and write their JSON.",
    )
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    parser.add_argument("--suite", action="append", choices=SUITES)
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    return run(args.profile, args.suite or list(SUITES), Path(args.json), args.threads)


if __name__ == "__main__":
    sys.exit(main())
