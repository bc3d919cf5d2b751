"""Suite 3: min-norm solvers against torchjd, under pytest-benchmark.

The cases and the measurement live in :mod:`paretoopt.integrations.bench.min_norm` (shipped with
the package, run by ``paretoopt bench``); this file only hands them to pytest-benchmark.
"""

from __future__ import annotations

from typing import Any

from paretoopt.integrations.bench import min_norm as suite
from paretoopt.integrations.bench.lib import Profile

bench_cases = suite.bench_cases
case_id = suite.case_id


def test_min_norm(benchmark: Any, case: tuple[int, str], profile: Profile) -> None:
    benchmark.extra_info.update(suite.measure(case, profile, benchmark=benchmark))
