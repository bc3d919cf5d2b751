"""From raw runs to the study's results: per-seed points, CIs, paired tests, the front.

Pure bookkeeping over the run dictionaries of :func:`.protocol.run_jobs` and the statistics
of :mod:`.stats`; nothing here trains or samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import stats
from .protocol import front_weights

#: Per-seed quantities besides the objectives, summarised like them.
EXTRA_KEYS = (
    "joint_success",
    "per_response_hv",
    "point_hv",
    "kl",
    "cut_off_rate",
    "response_words",
)
#: The methods PAMA (the paper's reading) is compared with in each task's table (the other
#: PAMA readings are judged by the pre-registered verdict, :mod:`.verdict`).
PAMA_BASELINES = ("pama_no_noon", "morlhf", "mgda_ub", "gdpo", "linear_noon")
#: Per-seed quantities that enter PAMA - baseline comparisons besides the objectives.
COMPARED_EXTRAS = ("joint_success", "per_response_hv", "point_hv", "kl")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adjusted[idx] = running
    return adjusted.tolist()


def _summary(values: Sequence[float], seed: int = 0) -> dict[str, Any]:
    lo, hi = stats.bootstrap_ci(values, seed=seed)
    return {"mean": float(np.mean(values)), "ci95": [lo, hi]}


def _final_step(runs: Sequence[dict[str, Any]]) -> str:
    steps = sorted({int(k) for r in runs for k in r["evals"]})
    return str(steps[-1])


def method_entry(
    runs: Sequence[dict[str, Any]], objectives: Sequence[str], sft: dict[str, Any]
) -> dict[str, Any]:
    """Per-seed points, means and CIs at the last checkpoint, and per checkpoint."""
    runs = sorted(runs, key=lambda r: r["job"]["seed"])
    final = _final_step(runs)
    keys = [*objectives, *EXTRA_KEYS]
    per_seed = [{"seed": r["job"]["seed"], **{k: r["evals"][final][k] for k in keys}} for r in runs]
    checkpoints: dict[str, Any] = {}
    for step in sorted({int(k) for r in runs for k in r["evals"]}):
        vals = {k: [r["evals"][str(step)][k] for r in runs] for k in keys}
        checkpoints[str(step)] = {k: _summary(v) for k, v in vals.items()}
    entry = {
        "seeds": [r["job"]["seed"] for r in runs],
        "final_step": int(final),
        "per_seed": per_seed,
        "mean": {k: float(np.mean([p[k] for p in per_seed])) for k in keys},
        "ci95": {k: list(stats.bootstrap_ci([p[k] for p in per_seed])) for k in keys},
        "checkpoints": checkpoints,
        "curves": mean_curves(runs),
        "samples": runs[0]["evals"][final].get("samples", []),
        "seconds_per_run": float(np.mean([r["seconds"] for r in runs])),
    }
    # The promise, measured: per seed, the worst objective's change from the SFT start.
    worst = [min(p[o] - sft[o] for o in objectives) for p in per_seed]
    entry["no_sacrifice_share"] = float(np.mean([w >= 0 for w in worst]))
    entry["worst_change"] = _summary(worst)
    # The KL path (SFT start at KL 0) for matched-KL comparisons.
    entry["kl_path"] = [0.0] + [checkpoints[s]["kl"]["mean"] for s in checkpoints]
    entry["reward_path"] = {
        o: [sft[o]] + [checkpoints[s][o]["mean"] for s in checkpoints] for o in objectives
    }
    return entry


def mean_curves(runs: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Each training metric's mean over seeds, per step (missing values skipped)."""
    keys = sorted({k for r in runs for row in r["curves"] for k in row})
    n = min(len(r["curves"]) for r in runs) if runs else 0
    out: dict[str, list[float]] = {}
    for k in keys:
        rows = []
        for t in range(n):
            vals = [r["curves"][t][k] for r in runs if k in r["curves"][t]]
            rows.append(round(float(np.mean(vals)), 5) if vals else float("nan"))
        out[k] = rows
    return out


def _seed_path(run: dict[str, Any], key: str, sft: dict[str, Any]) -> tuple[list, list]:
    steps = sorted(int(k) for k in run["evals"])
    kl = [0.0] + [run["evals"][str(s)]["kl"] for s in steps]
    val = [sft[key]] + [run["evals"][str(s)][key] for s in steps]
    return kl, val


def compare(
    a_runs: Sequence[dict[str, Any]],
    b_runs: Sequence[dict[str, Any]],
    objectives: Sequence[str],
    sft: dict[str, Any],
    front: Sequence[Sequence[float]],
) -> dict[str, Any]:
    """Method a (PAMA) against baseline b, seed by seed (seeds are paired)."""
    a_by = {r["job"]["seed"]: r for r in a_runs}
    b_by = {r["job"]["seed"]: r for r in b_runs}
    seeds = sorted(set(a_by) & set(b_by))
    fa, fb = _final_step(a_runs), _final_step(b_runs)
    out: dict[str, Any] = {
        "seeds": len(seeds),
        "mean_diff": {},
        "ci95_diff": {},
        "p_value": {},
        "matched_kl": {},
    }
    for k in [*objectives, *COMPARED_EXTRAS]:
        xa = [a_by[s]["evals"][fa][k] for s in seeds]
        xb = [b_by[s]["evals"][fb][k] for s in seeds]
        diff = np.subtract(xa, xb)
        out["mean_diff"][k] = float(diff.mean())
        out["ci95_diff"][k] = list(stats.bootstrap_ci(diff))
        out["p_value"][k] = stats.paired_wilcoxon(xa, xb)
    pa = [[a_by[s]["evals"][fa][o] for o in objectives] for s in seeds]
    pb = [[b_by[s]["evals"][fb][o] for o in objectives] for s in seeds]
    out["dominates_share"], out["dominated_share"] = stats.dominance_shares(pa, pb)
    mean_a = np.mean(pa, axis=0).tolist()
    out["dominated_by_front"] = bool(front) and stats.dominated_by_front(mean_a, front)
    # Matched KL, per seed: both runs read along their paths at the smaller final KL.
    for o in objectives:
        ra, rb = [], []
        for s in seeds:
            ka, va = _seed_path(a_by[s], o, sft)
            kb, vb = _seed_path(b_by[s], o, sft)
            target = stats.final_kl_target([ka, kb])
            ra.append(stats.reward_at_kl(ka, va, target))
            rb.append(stats.reward_at_kl(kb, vb, target))
        ok = [i for i in range(len(seeds)) if np.isfinite(ra[i]) and np.isfinite(rb[i])]
        xa, xb = [ra[i] for i in ok], [rb[i] for i in ok]
        out["matched_kl"][o] = {
            "mean_diff": float(np.mean(np.subtract(xa, xb))) if ok else float("nan"),
            "p_value": stats.paired_wilcoxon(xa, xb) if ok else float("nan"),
            "seeds": len(ok),
        }
    return out


def task_results(
    task: Any,
    runs: Sequence[dict[str, Any]],
    config: dict[str, Any],
    with_front: bool = True,
    *,
    front_method: str = "morlhf",
    reference: str = "pama",
    baselines: Sequence[str] = PAMA_BASELINES,
) -> dict[str, Any]:
    """``results["tasks"][task]``: methods, MORLHF front, comparisons, PAMA's rates.

    ``with_front=False`` (an arm without a weight sweep): no front, not even the uniform
    weight's point. Another engine names its own methods: ``front_method`` (whose uniform
    weight is a point of the front), ``reference`` (compared with each of ``baselines``; the
    methods whose names start with it have their rates reported)."""
    objectives = list(task.objectives)
    sft_run = next(r for r in runs if r["job"]["kind"] == "sft")
    sft = sft_run["evals"]["0"]
    study = [r for r in runs if r["job"]["kind"] == "study"]
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in study:
        by_method.setdefault(r["job"]["method"], []).append(r)
    methods = {m: method_entry(rs, objectives, sft) for m, rs in by_method.items()}

    # MORLHF front: one point per weight (mean over that weight's seeds).
    n = len(objectives)
    uniform = [round(1.0 / n, 6)] * n
    by_weight: dict[tuple[float, ...], list[dict[str, Any]]] = {}
    for r in runs:
        if r["job"]["kind"] == "front":
            by_weight.setdefault(tuple(r["job"]["weights"]), []).append(r)
    grid = front_weights(n, config["front_points"][task.name])
    has_uniform = any(np.allclose(w, uniform, atol=1e-5) for w in grid)
    if with_front and front_method in by_method and has_uniform:
        front_seeds = max(
            (len(v) for v in by_weight.values()), default=len(by_method[front_method])
        )
        same = sorted(by_method[front_method], key=lambda r: r["job"]["seed"])[:front_seeds]
        by_weight[tuple(uniform)] = same
    front = []
    front_seed_points = []  # per weight: [seeds, objectives], for the rule with uncertainty
    for w in sorted(by_weight, reverse=True):
        rs = by_weight[w]
        f = _final_step(rs)
        front_seed_points.append([[r["evals"][f][o] for o in objectives] for r in rs])
        point = {o: float(np.mean([r["evals"][f][o] for r in rs])) for o in objectives}
        extras = {k: float(np.mean([r["evals"][f][k] for r in rs])) for k in EXTRA_KEYS}
        front.append(
            {
                "weights": list(w),
                "seeds": len(rs),
                **point,
                **extras,
                "per_seed": front_seed_points[-1],
            }
        )
    front_points = [[p[o] for o in objectives] for p in front]

    comparisons = {}
    if reference in by_method:
        for b in by_method:
            if b in baselines:
                comparisons[b] = compare(
                    by_method[reference], by_method[b], objectives, sft, front_points
                )
        # Holm over every (baseline, objective) test of PAMA in this task.
        keys = [(b, o) for b in comparisons for o in objectives]
        adjusted = holm([comparisons[b]["p_value"][o] for b, o in keys])
        for (b, o), p in zip(keys, adjusted, strict=True):
            comparisons[b].setdefault("p_holm", {})[o] = p
    for entry in methods.values():
        mean_point = [entry["mean"][o] for o in objectives]
        entry["dominated_by_front"] = bool(front_points) and stats.dominated_by_front(
            mean_point, front_points
        )
        seed_points = [[p[o] for o in objectives] for p in entry["per_seed"]]
        entry["dominated_by_front_ci"] = bool(front_seed_points) and stats.dominated_beyond_ci(
            seed_points, front_seed_points
        )

    # Matched KL over means: every method's reward, read along its mean path in training
    # order, at the smallest final KL of all methods.
    kl_target = stats.final_kl_target([e["kl_path"] for e in methods.values()]) if methods else 0.0
    matched = {
        m: {o: stats.reward_at_kl(e["kl_path"], e["reward_path"][o], kl_target) for o in objectives}
        for m, e in methods.items()
    }

    pama_rates: dict[str, Any] = {}
    for m in methods:
        # Every PAMA variant: its zero, conflict and binding rates ("pama_ub" has none).
        if m.startswith(reference) and not m.startswith("pama_ub"):
            curves = methods[m]["curves"]
            pama_rates[m] = {
                k: v
                for k, v in curves.items()
                if k in ("zero_rate", "mean_s_star", "conflict_rate")
                or k.startswith("binding_rate/")
            }
    return {
        "objectives": objectives,
        "success_thresholds": task.success_thresholds,
        "hv_reference": task.hv_reference,
        "n_eval_prompts": (
            len(task.eval_prompts)
            if config.get("n_eval_prompts") is None
            else min(len(task.eval_prompts), config["n_eval_prompts"])
        ),
        "samples_per_prompt": config["samples_per_prompt"],
        "artefact_metrics": task.artefacts.metrics,
        "sft": {k: v for k, v in sft.items()},
        "methods": methods,
        "morlhf_front": front,
        "comparisons": comparisons,
        "matched_kl": {"kl": kl_target, "rewards": matched},
        "pama_rates": pama_rates,
    }
