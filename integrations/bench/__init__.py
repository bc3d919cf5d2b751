"""Cost benchmarks that ship with the package: ``paretoopt bench`` runs them anywhere.

Three suites, one module each, every one exposing ``bench_cases(profile)``, ``case_id(case)``
and ``measure(case, profile, benchmark=None) -> dict`` (the case's record for the report):

* :mod:`.weight_selection`: choosing the weights alone (PAMA's closed form vs MGDA's Gram and
  min-norm solve);
* :mod:`.full_step`: one full training update of a GPT-2-shaped model per combiner;
* :mod:`.min_norm`: min-norm solvers against torchjd's MGDA weighting.

:mod:`.runner` runs them without pytest (what ``paretoopt bench`` does, from a wheel as from a
checkout); the repository's ``bench/bench_*.py`` run the same ``measure`` functions under
pytest-benchmark for ``make bench``. :mod:`.report` turns either JSON into ``benchmarks.md``.
"""

from __future__ import annotations

SUITES: tuple[str, ...] = ("weight_selection", "full_step", "min_norm")

__all__ = ["SUITES"]
