"""Section 2 of the report: one full training update per combiner (suite ``full_step``)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .common import figure, fit_linear_in_n, fmt_mb, fmt_s, fmt_x, series, table

STEP_ORDER = ["linear", "pama", "pama_fast", "mgda_ub", "mgda", "mgda_reference", "forward"]
STEP_LABELS = {
    "linear": "linear scalarization",
    "pama": "PAMA (combiner, shared=u)",
    "pama_fast": "PAMA fast path (pama_ppo_loss)",
    "mgda_ub": "MGDA-UB (hidden states)",
    "mgda": "MGDA exact (core)",
    "mgda_reference": "MGDA exact (textbook reference)",
    "forward": "forward only",
}


def _median(case: dict[str, Any], key: str) -> float | None:
    return case["median_s"].get(key)


def _peak_ratio(case: dict[str, Any], key: str) -> float:
    """Peak memory of ``key``'s update over the linear update's."""
    base = case["peak_bytes"]["linear"]
    return case["peak_bytes"][key] / base if base > 0 else float("nan")


def _extra_floats(case: dict[str, Any], key: str) -> float:
    """Peak memory of ``key``'s update above the linear update's, in float32 entries."""
    return (case["peak_bytes"][key] - case["peak_bytes"]["linear"]) / 4


def full_step_section(
    cases: list[dict[str, Any]], img: Path, img_rel: str
) -> tuple[str, dict[str, Any]]:
    facts: dict[str, Any] = {}
    if not cases:
        return "", facts
    cases = sorted(cases, key=lambda c: (c["params"], c["n"]))
    header = ["model (params)", "n"] + [STEP_LABELS[c] for c in STEP_ORDER]
    rows, ratio_rows, mem_rows = [], [], []
    for c in cases:
        m, r, pk = c["median_s"], c["ratio"], c.get("peak_bytes", {})
        label = f"{c['model']} ({c['params']:.2e})"
        rows.append([label, str(c["n"])] + [fmt_s(m.get(k)) for k in STEP_ORDER])
        ratio_rows.append(
            [label, str(c["n"])] + [fmt_x(r.get(k), 3) for k in STEP_ORDER if k != "forward"]
        )
        base = pk.get("linear")
        mem_rows.append(
            [label, str(c["n"])]
            + [
                f"{fmt_mb(pk.get(k))} ({fmt_x(pk[k] / base)})" if k in pk and base else "–"
                for k in STEP_ORDER
                if k != "forward"
            ]
            + [fmt_mb(c["n"] * c["params"] * 4)]
        )
    pama_ratios = [c["ratio"]["pama"] for c in cases]
    fast_ratios = [c["ratio"]["pama_fast"] for c in cases]
    facts["pama_ratio_max"] = max(pama_ratios)
    facts["pama_fast_ratio_max"] = max(fast_ratios)
    facts["pama_ratio_worst_case"] = max(cases, key=lambda c: c["ratio"]["pama"])
    facts["pama_fast_ratio_worst_case"] = max(cases, key=lambda c: c["ratio"]["pama_fast"])
    # Flat in n: PAMA time at the largest n over PAMA time at the smallest n, per model.
    flat = []
    models = sorted({(c["params"], c["model"]) for c in cases})
    for _, model in models:
        mc = {c["n"]: c for c in cases if c["model"] == model}
        lo, hi = min(mc), max(mc)
        if lo == hi:
            continue
        for key in ("pama", "pama_fast", "linear"):
            # Normalised by the same-round linear step at each n, so load changes cancel.
            flat.append(
                (
                    model,
                    key,
                    lo,
                    hi,
                    mc[hi]["median_s"][key] / mc[lo]["median_s"][key],
                    mc[hi]["ratio"][key] / mc[lo]["ratio"][key],
                )
            )
    facts["flat"] = flat
    measured = [c for c in cases if "peak_bytes" in c]
    facts["pama_mem_ratio_max"] = max((_peak_ratio(c, "pama") for c in measured), default=None)
    facts["pama_fast_mem_ratio_max"] = max(
        (_peak_ratio(c, "pama_fast") for c in measured), default=None
    )
    big_mgda = [c for c in cases if "mgda" in c.get("peak_bytes", {})]
    if big_mgda:
        top = max(c["params"] for c in big_mgda)
        sel = [c for c in big_mgda if c["params"] == top]
        # Extra memory in units of n d float32: the Jacobian exact MGDA holds.
        facts["mgda_extra_nd"] = statistics.median(
            _extra_floats(c, "mgda") / (c["n"] * c["params"]) for c in sel
        )
        facts["mgda_ref_extra_nd"] = statistics.median(
            _extra_floats(c, "mgda_reference") / (c["n"] * c["params"]) for c in sel
        )
        # Extra memory in units of d, fitted as a n + c: the Jacobian is a n d (a ~ 1), the
        # rest is transient gradient buffers whose size does not grow with n.
        for key, name in (("mgda", "mgda_mem_fit"), ("mgda_reference", "mgda_ref_mem_fit")):
            pts = [(c["n"], _extra_floats(c, key) / c["params"]) for c in sel]
            fit = fit_linear_in_n(pts)
            facts[name] = (fit[1], fit[0]) if fit else (pts[0][1] / pts[0][0], 0.0)
    facts["step_cases"] = cases

    parts = [
        "## 2. One full training update\n",
        "Per combiner: `zero_grad`, forward of a GPT-2-shaped decoder on a fixed batch, n "
        "Noon PPO losses (ratio to a fixed anchor policy, random advantages per objective), "
        "combine, backward, `AdamW.step`. The ratio columns are medians of per-round ratios "
        "to the linear step timed in the same round; they are what the claims are judged on. "
        "Exact MGDA is run only where n x d fits the time budget of the profile.\n",
        "Median time per update:\n",
        table(header, rows),
        "",
        "Time per update / linear scalarization's (same rounds):\n",
        table(
            ["model (params)", "n"] + [STEP_LABELS[c] for c in STEP_ORDER if c != "forward"],
            ratio_rows,
        ),
        "",
        "Peak memory of one update above what is live before it (parameters and AdamW state; "
        "gradients included), and the ratio to linear scalarization's; the last column is "
        "n x d float32, the Jacobian exact MGDA must hold:\n",
        table(
            ["model (params)", "n"]
            + [STEP_LABELS[c] for c in STEP_ORDER if c != "forward"]
            + ["n x d x 4 B"],
            mem_rows,
        ),
        "",
    ]
    phase_rows = []
    for c in cases:
        ph = c.get("mgda_reference_phases_s")
        if ph:
            total = sum(ph.values())
            phase_rows.append(
                [f"{c['model']} ({c['params']:.2e})", str(c["n"])]
                + [
                    f"{fmt_s(ph[k])} ({100 * ph[k] / total:.0f}%)"
                    for k in ("backward", "flatten", "gram", "solve", "combine")
                ]
                + [
                    fmt_s(ph["backward"] / c["n"]),
                    fmt_x(ph["backward"] / c["n"] / c["median_s"]["linear"]),
                ]
            )
    if phase_rows:
        parts += [
            "Where the textbook MGDA step spends its time (medians; backward = all n passes):\n",
            table(
                [
                    "model",
                    "n",
                    "backward",
                    "flatten",
                    "Gram",
                    "solve",
                    "combine",
                    "one backward",
                    "one backward / linear step",
                ],
                phase_rows,
            ),
            "",
        ]
    # Plots: time vs n per model, time vs params at each n.
    timed = [k for k in STEP_ORDER if k != "forward"]
    by_model = [[c for c in cases if c["model"] == model] for _, model in models]
    by_n = [(n, [c for c in cases if c["n"] == n]) for n in sorted({c["n"] for c in cases})]
    parts += [
        figure(
            img,
            img_rel,
            "full_step_vs_n",
            "full step vs n",
            [
                (
                    f"{mc[0]['model']} ({mc[0]['params']:.1e} params)",
                    series(mc, timed, lambda c: c["n"], _median, STEP_LABELS),
                )
                for mc in by_model
            ],
            "n (objectives)",
            "seconds per update",
        ),
        figure(
            img,
            img_rel,
            "full_step_vs_d",
            "full step vs d",
            [
                (f"n = {n}", series(nc, timed, lambda c: c["params"], _median, STEP_LABELS))
                for n, nc in by_n
            ],
            "d (parameters)",
            "seconds per update",
        ),
        "",
    ]
    return "\n".join(parts), facts
