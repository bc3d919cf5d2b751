"""study.md's sections for the pre-registered verdict, each method at its own best, the
transfer row and the paper's own set-up (drawn from ``results.json`` alone)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .protocol import METHOD_LABELS


def _f(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def _p(p: float | None) -> str:
    return "n/a" if p is None or p != p else ("<0.001" if p < 1e-3 else f"{p:.3f}")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _label(m: str) -> str:
    return METHOD_LABELS.get(m, m)


def setting(hp: Mapping[str, Any]) -> str:
    return (
        f"lr {hp['learning_rate']:g}, KL {hp['kl_coef']:g}, ratio to {hp['ratio_to']}, "
        f"advantages {hp['advantage_normalization']}"
    )


def verdict_lines(results: Mapping[str, Any]) -> list[str]:
    """The pre-registered verdict: per task, one row per PAMA reading; then the summary."""
    tasks = {n: t for n, t in results["tasks"].items() if "verdict" in t}
    if not tasks:
        return []
    lines: list[str] = []
    for n, t in tasks.items():
        bases = t["verdict"]["baselines"]
        head = ["PAMA reading", "dominated by the front (CI)"]
        head += [f"Δ joint success vs {_label(b)}, p (Holm)" for b in bases]
        head += ["zero rate, last 10 steps", "passes"]
        lines += [f"Task `{n}`:", "", _row(head), _row(["---"] * len(head))]
        for v, entry in t["verdict"]["variants"].items():
            cells = [_label(v), "yes" if entry["dominated_by_front_ci"] else "no"]
            for b in bases:
                d = entry["joint_success_vs"][b]
                cells.append(f"{d['mean_diff']:+.3f}, {_p(d['p'])} ({_p(d['p_holm'])})")
            cells += [_f(entry["late_zero_rate"]), "**yes**" if entry["passes"] else "no"]
            lines.append(_row(cells))
        lines.append("")
    overall = results.get("verdict", {})
    passing = overall.get("passing", [])
    if passing:
        lines.append(
            "Readings that pass on every task: "
            + ", ".join(_label(v) for v in passing)
            + f"; recommended (highest mean joint success): {_label(overall['recommended'])}."
        )
    else:
        lines.append(
            "No PAMA reading passes on every task: none is both off the MORLHF front beyond "
            "the uncertainty and above uniform MORLHF and GDPO in joint success."
        )
    return lines


def ordering_lines(o: Mapping[str, Any], objectives: list[str], where: str) -> list[str]:
    if not o.get("pairs"):
        return []
    head = ["PAMA − baseline", *[f"Δ {obj} [CI], p (Holm)" for obj in objectives]]
    lines = [_row(head), _row(["---"] * len(head))]
    for b, per in o["pairs"].items():
        cells = [_label(b)]
        for obj in objectives:
            d = per[obj]
            cells.append(
                f"{d['mean_diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}], "
                f"{_p(d['p'])} ({_p(d['p_holm'])})"
            )
        lines.append(_row(cells))
    lines += [
        "",
        f"The paper's ordering (PAMA above each baseline on every reward, Holm p < 0.05) "
        f"{'**appears**' if o['appears'] else 'does **not** appear'} {where}.",
    ]
    return lines


def own_best_lines(t: Mapping[str, Any]) -> list[str]:
    ob = t.get("own_best")
    if not ob:
        return []
    objs = t["objectives"]
    head = ["method", "its setting", *[f"{o} ↑" for o in objs], "joint success ↑",
            "per-response HV ↑", "no sacrifice ↑", "dominated by front (CI)"]  # fmt: skip
    lines = [
        f"Each method at the grid setting that maximised its own tuning score, first "
        f"{ob['seeds']} paired seeds (a method whose own best is the shared setting "
        f"({setting(ob['shared_hparams'])}) shows its main runs). Front: the shared setting's.",
        "",
        _row(head),
        _row(["---"] * len(head)),
    ]
    for m, e in ob["methods"].items():
        mean, ci = e["mean"], e["ci95"]
        cells = [_label(m), "shared" if e["shared_setting"] else setting(e["hparams"])]
        cells += [f"{_f(mean[k])} [{_f(ci[k][0])}, {_f(ci[k][1])}]"
                  for k in (*objs, "joint_success", "per_response_hv")]  # fmt: skip
        cells += [_f(e["no_sacrifice_share"]), "yes" if e["dominated_by_front_ci"] else "no"]
        lines.append(_row(cells))
    return lines


def tuning_table(tuning: Mapping[str, Any]) -> list[str]:
    methods = tuning["methods"]
    head = ["lr", "KL coef", "ratio to", "advantages", "score", *methods]
    lines = [_row(head), _row(["---"] * len(head))]
    for r in tuning["table"]:
        chosen = all(r[k] == v for k, v in tuning["chosen"].items())
        cells = [
            f"{r['learning_rate']:g}",
            f"{r['kl_coef']:g}",
            r["ratio_to"],
            r["advantage_normalization"],
            _f(r["score"], 3) + (" **chosen**" if chosen else ""),
            *[_f(r["per_method"][m], 3) for m in methods],
        ]
        lines.append(_row(cells))
    return lines


def tuning_lines(tuning: Mapping[str, Any]) -> list[str]:
    """Per tuned task (and the paper arm): the grid, each method's score, the choices."""
    tables = dict(tuning.get("tasks", {}))
    if tuning.get("paper"):
        tables["paper arm (sentiment_length)"] = tuning["paper"]
    if not tables:  # a record from before per-task tuning: one table
        tables = {tuning.get("task", "task 1"): tuning}
    out = []
    for name, table in tables.items():
        if not table.get("table"):
            continue
        out += [
            f"### Tuning: {name} (seeds {table['seeds']}, {table['steps']} steps)",
            "",
            f"Criterion, fixed in advance: {table['criterion']} (criterion methods: "
            f"{', '.join(table.get('criterion_methods', table['methods']))}).",
            "",
            *tuning_table(table),
            "",
        ]
        if "per_method" in table:
            out += [
                "Each method's own best: "
                + "; ".join(f"{_label(m)}: {setting(hp)}" for m, hp in table["per_method"].items())
                + ".",
                "",
            ]
    return out
