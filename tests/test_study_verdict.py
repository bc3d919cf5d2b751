"""The pre-registered verdicts computed from results alone (integrations/study/verdict.py)."""

from __future__ import annotations

import numpy as np
import pytest
from paretoopt.integrations.study import verdict


def _entry(js, a=None, b=None, dominated=False, zero=None):
    n = len(js)
    a = a if a is not None else [0.0] * n
    b = b if b is not None else [0.0] * n
    per_seed = [{"seed": s, "joint_success": js[s], "a": a[s], "b": b[s]} for s in range(n)]
    return {
        "per_seed": per_seed,
        "mean": {"joint_success": float(np.mean(js))},
        "dominated_by_front_ci": dominated,
        "curves": {"zero_rate": zero} if zero is not None else {},
    }


def _task(**methods):
    return {"objectives": ["a", "b"], "methods": methods}


rng = np.random.default_rng(0)
BASE = list(rng.uniform(0.1, 0.2, 10))


def test_a_reading_above_both_baselines_and_off_the_front_passes() -> None:
    t = _task(
        pama_sample=_entry([x + 0.1 + 0.01 * i for i, x in enumerate(BASE)], zero=[0.1] * 12),
        pama=_entry(BASE, zero=[0.7] * 12),  # level with the baselines: fails
        pama_ub=_entry([x + 0.2 for x in BASE], dominated=True),  # above, but on the front
        morlhf=_entry(BASE),
        gdpo=_entry([x - 0.01 for x in BASE]),
    )
    v = verdict.task_verdict(t)
    assert v["baselines"] == ["morlhf", "gdpo"]
    assert list(v["variants"]) == ["pama", "pama_sample", "pama_ub"]  # pre-registered order
    assert v["variants"]["pama_sample"]["passes"] is True
    assert v["variants"]["pama"]["passes"] is False
    assert v["variants"]["pama_ub"]["passes"] is False
    assert v["variants"]["pama"]["late_zero_rate"] == pytest.approx(0.7)
    d = v["variants"]["pama_sample"]["joint_success_vs"]["morlhf"]
    # Holm over the 3 readings x 2 baselines: never below the raw p, and at most 6 times it.
    assert d["p"] <= d["p_holm"] <= min(1.0, 6 * d["p"])
    assert d["ci95"][0] <= d["mean_diff"] <= d["ci95"][1]


def test_the_overall_verdict_needs_every_task_and_recommends_the_best() -> None:
    good = _task(
        pama_sample=_entry([x + 0.1 for x in BASE]),
        pama_batch=_entry([x + 0.2 for x in BASE]),
        morlhf=_entry(BASE),
        gdpo=_entry(BASE),
    )
    mixed = _task(
        pama_sample=_entry([x + 0.1 for x in BASE]),
        pama_batch=_entry([x - 0.1 for x in BASE]),  # below on this task
        morlhf=_entry(BASE),
        gdpo=_entry(BASE),
    )
    tasks = {"t1": good, "t2": mixed}
    for t in tasks.values():
        t["verdict"] = verdict.task_verdict(t)
    overall = verdict.overall_verdict(tasks)
    assert overall["passing"] == ["pama_sample"] and overall["recommended"] == "pama_sample"
    good["verdict"]["variants"]["pama_sample"]["passes"] = False
    assert verdict.overall_verdict(tasks) == {
        "tasks": ["t1", "t2"], "passing": [], "recommended": None, "mean_joint_success": {}
    }  # fmt: skip


def test_the_ordering_appears_only_when_every_reward_beats_every_baseline() -> None:
    up = [x + 1.0 for x in BASE]
    t = _task(
        pama=_entry(BASE, a=up, b=up),
        morlhf=_entry(BASE, a=BASE, b=BASE),
        mgda_ub=_entry(BASE, a=BASE, b=BASE),
    )
    assert verdict.ordering(t)["appears"] is True
    t["methods"]["mgda_ub"] = _entry(BASE, a=BASE, b=[x + 2.0 for x in BASE])
    o = verdict.ordering(t)
    assert o["appears"] is False and o["pairs"]["mgda_ub"]["b"]["mean_diff"] < 0
    assert verdict.ordering(_task(morlhf=_entry(BASE)))["appears"] is False


def test_a_paired_difference_needs_common_seeds() -> None:
    a, b = _entry(BASE[:3]), _entry(BASE[:3])
    b["per_seed"] = [dict(p, seed=p["seed"] + 2) for p in b["per_seed"]]
    with pytest.raises(ValueError, match="1 common seeds"):
        verdict.paired_difference(a, b, "joint_success")
