"""pytest configuration of the benchmark suites (``bench/bench_*.py``).

Run: ``python -m pytest bench/ --benchmark-json=out.json [--bench-profile quick|full|tiny]``
(``make bench`` does, then writes the report from the JSON). The suites themselves live in
:mod:`paretoopt.integrations.bench`; ``paretoopt bench`` runs them without pytest. The default
test run (``testpaths = ["tests"]``) never collects this folder.
"""

from __future__ import annotations

import os

# BLAS threads are fixed when the library loads, so before numpy/torch are imported: one
# thread, for the same reason as --bench-threads (see pytest_configure).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, os.environ.get("PARETOOPT_BENCH_THREADS", "1"))
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from paretoopt.integrations.bench.lib import (  # noqa: E402
    PROFILES,
    THREADS_ENV,
    current_profile,
    loadavg,
)
from paretoopt.integrations.bench.lib import machine_info as bench_machine_info  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-profile",
        choices=PROFILES,
        default=None,
        help="benchmark sizes: tiny (seconds, for tests), quick (< 2 min) or full (default; "
        "also settable with PARETOOPT_BENCH_PROFILE)",
    )
    parser.addoption(
        "--bench-threads",
        type=int,
        default=None,
        help="torch intra-op threads (default 1, or PARETOOPT_BENCH_THREADS): on a shared "
        "machine a second thread that is descheduled makes every parallel op wait for it",
    )


def pytest_configure(config: pytest.Config) -> None:
    threads = config.getoption("--bench-threads") or int(os.environ.get(THREADS_ENV, "1"))
    torch.set_num_threads(threads)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # Suites are named bench_*.py so that a plain test run never picks them up by accident.
    # Files named on the command line are collected by pytest itself.
    if parent.session.isinitpath(file_path):
        return None
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


# 1-minute load average after each case: the report states how loaded the machine was, since
# absolute times (not the interleaved ratios) move with load from other jobs.
_LOAD_SAMPLES: list[float] = []


def pytest_runtest_logfinish(nodeid: str, location: tuple) -> None:
    load = loadavg()
    if load is not None:
        _LOAD_SAMPLES.append(load[0])


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    load_end = loadavg()
    machine_info["paretoopt_bench"] = {
        **bench_machine_info(),
        "profile": current_profile(config).name,
        "loadavg_1min_per_case": list(_LOAD_SAMPLES),
        "loadavg_end": load_end,
    }


@pytest.fixture(scope="session")
def profile(request: pytest.FixtureRequest) -> Any:
    return current_profile(request.config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Each suite declares ``bench_cases(profile) -> list`` and takes a ``case`` argument.
    if "case" in metafunc.fixturenames:
        module = metafunc.module
        cases = module.bench_cases(current_profile(metafunc.config))
        metafunc.parametrize("case", cases, ids=[module.case_id(c) for c in cases])
