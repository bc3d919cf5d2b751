"""Section 1 of the report: choosing the weights alone (suite ``weight_selection``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import figure, fit_exponent, fmt_s, fmt_x, series, table

WS_LABELS = {
    "copy": "memory copy of n x N (roofline)",
    "pama_s_star": "PAMA s* (core formula, no weights)",
    "pama_s_star_chunked": "PAMA s*, 64K-column blocks",
    "pama_advantages": "PAMA `pama_advantages` (core, no weights)",
    "pama_closed_form": "PAMA `pama_closed_form` (s* + weights)",
    "mgda_gram_solve": "MGDA Gram (float64) + exact solve",
    "mgda_solve": "MGDA solve alone",
}


def _x(point: tuple[int, dict[str, float]]) -> float:
    return point[0]


def _y(point: tuple[int, dict[str, float]], key: str) -> float | None:
    return point[1].get(key)


def _core_s(m: dict[str, float]) -> float:
    """Time of the library's s* path; the suite's formula in JSON written before it was timed."""
    return m.get("pama_advantages", m["pama_s_star"])


def weight_selection_section(
    cases: list[dict[str, Any]], img: Path, img_rel: str
) -> tuple[str, dict[str, Any]]:
    facts: dict[str, Any] = {}
    if not cases:
        return "", facts
    med = {(c["n"], c["size"]): c["median_s"] for c in cases}
    ns = sorted({c["n"] for c in cases})
    sizes = sorted({c["size"] for c in cases})
    rows = []
    for size in sizes:
        for n in ns:
            m = med.get((n, size))
            if m is None:
                continue
            rows.append(
                [
                    str(n),
                    f"{size:.0e}",
                    fmt_s(m["copy"]),
                    fmt_s(m["pama_s_star"]),
                    fmt_s(m["pama_s_star_chunked"]),
                    fmt_s(m.get("pama_advantages")),
                    fmt_s(m.get("pama_closed_form")),
                    fmt_s(m["mgda_gram_solve"]),
                    fmt_s(m["mgda_solve"]),
                    fmt_x(m["mgda_gram_solve"] / _core_s(m)),
                    fmt_x(m["pama_s_star"] / m["copy"]),
                    fmt_x(m["pama_s_star_chunked"] / m["copy"]),
                    fmt_x(_core_s(m) / m["copy"]),
                ]
            )
    parts = [
        "## 1. Choosing the weights alone\n",
        "PAMA's closed form over an n x N matrix of per-element coefficients (N = tokens in "
        "RL) against MGDA's Gram matrix and min-norm solve over an n x d matrix of gradients "
        "(d = parameters), both float32 inputs, here with N = d. The roofline is a copy of the "
        "n x N input measured in the same rounds. Times are medians of interleaved rounds. "
        "`PAMA s*` is the formula relu(min_i a_i) - relu(-max_i a_i) written out in the "
        "suite; `pama_advantages` is the library's own s* path (token granularity, "
        "`return_weights=False`, `noon=False` so that it computes the same s*), which the "
        "MGDA / PAMA column and the claims use.\n",
        table(
            [
                "n",
                "N = d",
                "copy",
                "PAMA s*",
                "PAMA s* (blocks)",
                "pama_advantages",
                "closed form + weights",
                "MGDA Gram+solve",
                "MGDA solve",
                "MGDA / pama_advantages",
                "s* / copy",
                "s* blocks / copy",
                "pama_advantages / copy",
            ],
            rows,
        ),
        "",
    ]
    # Growth exponents: in d at the largest n measured at >= 3 sizes from 1e5, in n at the
    # largest size measured for >= 3 values of n. Small sizes are overhead-bound, so excluded.
    n_fit = max(
        (n for n in ns if sum(1 for s in sizes if s >= 1e5 and (n, s) in med) >= 2),
        default=None,
    )
    size_fit = max((s for s in sizes if sum(1 for n in ns if (n, s) in med) >= 3), default=None)

    def exponent(points: list[tuple[int, float | None]]) -> float | None:
        measured = [p for p in points if p[1] is not None]
        return fit_exponent([p[0] for p in measured], [p[1] for p in measured])

    exps = []
    for key in WS_LABELS:
        d_exp = None
        if n_fit is not None:
            d_exp = exponent(
                [(s, med[(n_fit, s)].get(key)) for s in sizes if s >= 1e5 and (n_fit, s) in med]
            )
        n_exp = None
        if size_fit is not None:
            n_exp = exponent([(n, med[(n, size_fit)].get(key)) for n in ns if (n, size_fit) in med])
        exps.append(
            [
                WS_LABELS[key],
                "–" if n_exp is None else f"{n_exp:.2f} (at N=d={size_fit:.0e})",
                "–" if d_exp is None else f"{d_exp:.2f} (at n={n_fit}, N=d >= 1e5)",
            ]
        )
        facts[f"exp_n/{key}"] = n_exp
        facts[f"exp_d/{key}"] = d_exp
    parts += [
        "Fitted growth exponents (slope of log time; the Gram matrix is O(n^2 d) in "
        "arithmetic, but at these n it streams the n x d matrix once, so memory traffic, "
        "linear in n, dominates):\n",
        table(["variant", "exponent in n", "exponent in d (or N)"], exps),
        "",
    ]
    # Headline: d = 1e6, n = 8, with N = d and with N = a batch of tokens.
    m = med.get((8, 10**6))
    tok = med.get((8, 10**4))
    if m is not None:
        facts["ws_ratio_equal"] = m["mgda_gram_solve"] / _core_s(m)
        facts["ws_ratio_equal_formula"] = m["mgda_gram_solve"] / m["pama_s_star"]
        facts["ws_ratio_equal_cf"] = (
            m["mgda_gram_solve"] / m["pama_closed_form"] if "pama_closed_form" in m else None
        )
        facts["roofline_core"] = _core_s(m) / m["copy"]
        facts["roofline_s_star"] = m["pama_s_star"] / m["copy"]
        facts["roofline_chunked"] = m["pama_s_star_chunked"] / m["copy"]
        if "pama_advantages" in m:
            facts["core_over_formula"] = m["pama_advantages"] / m["pama_s_star"]
        if tok is not None:
            if "pama_advantages" in tok:
                facts["core_over_formula_tokens"] = tok["pama_advantages"] / tok["pama_s_star"]
            facts["ws_ratio_tokens"] = m["mgda_gram_solve"] / _core_s(tok)
            facts["ws_ratio_tokens_formula"] = m["mgda_gram_solve"] / tok["pama_s_star"]
            facts["ws_ratio_tokens_cf"] = m["mgda_gram_solve"] / tok["pama_closed_form"]
    big = [c for c in cases if c["n"] * c["size"] >= 10**6]
    if big:
        worst_core = max(big, key=lambda c: _core_s(c["median_s"]) / c["median_s"]["copy"])
        facts["roofline_core_worst"] = (
            _core_s(worst_core["median_s"]) / worst_core["median_s"]["copy"]
        )
        facts["roofline_core_worst_at"] = (worst_core["n"], worst_core["size"])
        facts["roofline_s_star_worst"] = max(
            c["median_s"]["pama_s_star"] / c["median_s"]["copy"] for c in big
        )
        facts["roofline_chunked_worst"] = max(
            c["median_s"]["pama_s_star_chunked"] / c["median_s"]["copy"] for c in big
        )
        cf = [c for c in big if "pama_closed_form" in c["median_s"]]
        if cf:
            facts["roofline_cf_worst"] = max(
                c["median_s"]["pama_closed_form"] / c["median_s"]["copy"] for c in cf
            )
    # Plots.
    size_plot = max((s for s in sizes if sum(1 for n in ns if (n, s) in med) >= 2), default=None)
    n_plot = 8 if any((8, s) in med for s in sizes) else ns[-1]
    if size_plot is not None:
        at_size = [(n, med[(n, size_plot)]) for n in ns if (n, size_plot) in med]
        parts.append(
            figure(
                img,
                img_rel,
                "weight_selection_vs_n",
                "weight selection vs n",
                [
                    (
                        f"weight selection vs n (N = d = {size_plot:.0e})",
                        series(at_size, WS_LABELS, _x, _y, WS_LABELS),
                    )
                ],
                "n (objectives)",
                "seconds",
            )
        )
    at_n = [(s, med[(n_plot, s)]) for s in sizes if (n_plot, s) in med]
    parts += [
        figure(
            img,
            img_rel,
            "weight_selection_vs_d",
            "weight selection vs d",
            [
                (
                    f"weight selection vs N = d (n = {n_plot})",
                    series(at_n, WS_LABELS, _x, _y, WS_LABELS),
                )
            ],
            "N = d (elements / parameters)",
            "seconds",
        ),
        "",
    ]
    return "\n".join(parts), facts
