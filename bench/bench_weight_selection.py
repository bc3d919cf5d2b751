"""Suite 1: choosing the weights alone, under pytest-benchmark.

The cases and the measurement live in :mod:`paretoopt.integrations.bench.weight_selection`
(shipped with the package, run by ``paretoopt bench``); this file only hands them to
pytest-benchmark.
"""

from __future__ import annotations

from typing import Any

from paretoopt.integrations.bench import weight_selection as suite
from paretoopt.integrations.bench.lib import Profile

bench_cases = suite.bench_cases
case_id = suite.case_id


def test_weight_selection(benchmark: Any, case: tuple[int, int], profile: Profile) -> None:
    benchmark.extra_info.update(suite.measure(case, profile, benchmark=benchmark))
