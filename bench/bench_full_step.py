"""Suite 2: one full training update per combiner, under pytest-benchmark.

The cases and the measurement live in :mod:`paretoopt.integrations.bench.full_step` (shipped with
the package, run by ``paretoopt bench``); this file only hands them to pytest-benchmark.
"""

from __future__ import annotations

from typing import Any

from paretoopt.integrations.bench import full_step as suite
from paretoopt.integrations.bench.lib import Profile

bench_cases = suite.bench_cases
case_id = suite.case_id


def test_full_step(benchmark: Any, case: tuple[str, int], profile: Profile) -> None:
    benchmark.extra_info.update(suite.measure(case, profile, benchmark=benchmark))
