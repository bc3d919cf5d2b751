"""The pre-registered verdicts (docs/study_preregistration.md), computed from results alone.

* :func:`task_verdict`: per PAMA reading, on one task, (1) its mean point is not dominated by
  the MORLHF front beyond the uncertainty of both, and (2) its joint success is above uniform
  MORLHF's and GDPO's: positive mean paired difference, Wilcoxon p < 0.05 after Holm over the
  (reading, baseline) pairs of the task.
* :func:`overall_verdict`: the readings that pass on every task; the recommended one has the
  highest mean joint success over the tasks.
* :func:`ordering`: does PAMA beat each baseline on every reward (positive mean difference,
  Holm-adjusted p < 0.05 over the (baseline, reward) tests)? The paper's claim, tested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import stats
from .analysis import holm
from .protocol import PAMA_VARIANTS

VERDICT_BASELINES = ("morlhf", "gdpo")
ALPHA = 0.05


def paired_difference(a: Mapping[str, Any], b: Mapping[str, Any], key: str) -> dict[str, Any]:
    """Method entry ``a`` minus ``b`` on ``key`` over their common seeds."""
    xa = {p["seed"]: p[key] for p in a["per_seed"]}
    xb = {p["seed"]: p[key] for p in b["per_seed"]}
    seeds = sorted(set(xa) & set(xb))
    if len(seeds) < 2:
        raise ValueError(f"{key}: {len(seeds)} common seeds; a paired test needs at least 2")
    va, vb = [xa[s] for s in seeds], [xb[s] for s in seeds]
    diff = np.subtract(va, vb)
    return {
        "mean_diff": float(diff.mean()),
        "ci95": list(stats.bootstrap_ci(diff)),
        "p": stats.paired_wilcoxon(va, vb),
        "seeds": len(seeds),
    }


def _late_zero_rate(entry: Mapping[str, Any], k: int = 10) -> float | None:
    z = entry.get("curves", {}).get("zero_rate")
    return float(np.mean(z[-k:])) if z else None


def task_verdict(
    t: Mapping[str, Any],
    variants: Sequence[str] = PAMA_VARIANTS,
    baselines: Sequence[str] = VERDICT_BASELINES,
) -> dict[str, Any]:
    methods = t["methods"]
    present = [v for v in variants if v in methods]
    bases = [b for b in baselines if b in methods]
    tests = [(v, b) for v in present for b in bases]
    diffs = {(v, b): paired_difference(methods[v], methods[b], "joint_success") for v, b in tests}
    adjusted = holm([diffs[k]["p"] for k in tests]) if tests else []
    for k, p in zip(tests, adjusted, strict=True):
        diffs[k]["p_holm"] = p
    out: dict[str, Any] = {"baselines": bases, "variants": {}}
    for v in present:
        js = {b: diffs[(v, b)] for b in bases}
        not_dominated = not methods[v].get("dominated_by_front_ci", False)
        beats = bool(bases) and all(d["mean_diff"] > 0 and d["p_holm"] < ALPHA for d in js.values())
        out["variants"][v] = {
            "dominated_by_front_ci": not not_dominated,
            "joint_success_vs": js,
            "late_zero_rate": _late_zero_rate(methods[v]),
            "passes": not_dominated and beats,
        }
    return out


def overall_verdict(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    verdicts = {n: t["verdict"] for n, t in tasks.items() if "verdict" in t}
    if not verdicts:
        return {"tasks": [], "passing": [], "recommended": None}
    names = set.intersection(*(set(v["variants"]) for v in verdicts.values()))
    passing = [
        v for v in PAMA_VARIANTS
        if v in names and all(d["variants"][v]["passes"] for d in verdicts.values())
    ]  # fmt: skip
    mean_js = {
        v: float(np.mean([tasks[n]["methods"][v]["mean"]["joint_success"] for n in verdicts]))
        for v in passing
    }
    return {
        "tasks": list(verdicts),
        "passing": passing,
        "recommended": max(passing, key=lambda v: mean_js[v]) if passing else None,
        "mean_joint_success": mean_js,
    }


def ordering(
    t: Mapping[str, Any], first: str = "pama", baselines: Sequence[str] = ("morlhf", "mgda_ub")
) -> dict[str, Any]:
    """``first`` against each baseline on every objective (Holm over all those tests)."""
    methods, objectives = t["methods"], t["objectives"]
    if first not in methods:
        return {"baselines": [], "pairs": {}, "appears": False}
    bases = [b for b in baselines if b in methods]
    tests = [(b, o) for b in bases for o in objectives]
    pairs: dict[str, dict[str, Any]] = {b: {} for b in bases}
    for b, o in tests:
        pairs[b][o] = paired_difference(methods[first], methods[b], o)
    adjusted = holm([pairs[b][o]["p"] for b, o in tests]) if tests else []
    for (b, o), p in zip(tests, adjusted, strict=True):
        pairs[b][o]["p_holm"] = p
    appears = bool(tests) and all(
        pairs[b][o]["mean_diff"] > 0 and pairs[b][o]["p_holm"] < ALPHA for b, o in tests
    )
    return {"first": first, "baselines": bases, "pairs": pairs, "appears": appears}
