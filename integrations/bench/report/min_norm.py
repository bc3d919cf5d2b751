"""Section 3 of the report: min-norm solvers against torchjd (suite ``min_norm``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import figure, fmt_s, fmt_sci, fmt_x, series, table

MN_ORDER = ["exact", "frank_wolfe", "projected_gradient", "torchjd_mgda"]


def min_norm_section(
    cases: list[dict[str, Any]], img: Path, img_rel: str
) -> tuple[str, dict[str, Any]]:
    facts: dict[str, Any] = {}
    if not cases:
        return "", facts
    cases = sorted(cases, key=lambda c: (c["n"], c["family"]))
    rows = []
    for c in cases:
        m, r = c["median_s"], c["ratio"]
        rows.append(
            [str(c["n"]), c["family"]]
            + [f"{fmt_s(m[k] / c['grams'])} ({fmt_x(r[k])})" for k in MN_ORDER]
            + [fmt_sci(c["kkt_residual_max"][k]) for k in MN_ORDER]
            + [fmt_sci(c["gap_max"][k]) for k in MN_ORDER if k != "exact"]
        )
    losses = [c for c in cases if c["ratio"]["exact"] > 1.0]
    facts["exact_vs_torchjd_worst"] = max(cases, key=lambda c: c["ratio"]["exact"])
    facts["exact_losses"] = losses
    facts["exact_kkt_max"] = max(c["kkt_residual_max"]["exact"] for c in cases)
    facts["torchjd_kkt_max"] = max(c["kkt_residual_max"]["torchjd_mgda"] for c in cases)
    facts["torchjd_gap_max"] = max(c["gap_max"]["torchjd_mgda"] for c in cases)
    parts = [
        "## 3. Min-norm solvers\n",
        "The same seeded Gram matrices (families in `paretoopt.integrations.bench.min_norm`) "
        "solved by "
        "`paretoopt.min_norm_weights` and by torchjd's `MGDAWeighting` (its defaults: "
        "Frank-Wolfe, stop when the step size falls below `epsilon=1e-3`, at most 100 "
        "iterations). Time per Gram matrix (median; ratio to torchjd in the same rounds), the "
        "worst KKT residual (scale-free, 0 at the optimum) and the worst gap of c^T G c to the "
        "exact optimum relative to max G_ii.\n",
        table(
            ["n", "family"]
            + [f"time {k}" for k in MN_ORDER]
            + [f"KKT {k}" for k in MN_ORDER]
            + [f"gap {k}" for k in MN_ORDER if k != "exact"],
            rows,
        ),
        "",
    ]
    parts += [
        figure(
            img,
            img_rel,
            "min_norm",
            "min-norm solvers",
            [
                (
                    f"min-norm solve, {fam}",
                    series(
                        [c for c in cases if c["family"] == fam],
                        MN_ORDER,
                        lambda c: c["n"],
                        lambda c, k: c["median_s"][k] / c["grams"],
                    ),
                )
                for fam in sorted({c["family"] for c in cases})
            ],
            "n (objectives)",
            "seconds per solve",
        ),
        "",
    ]
    return "\n".join(parts), facts
