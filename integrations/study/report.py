"""study.md and the plots, drawn from ``results.json`` alone (:func:`write_report`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .protocol import METHOD_LABELS
from .report_arms import (
    ordering_lines,
    own_best_lines,
    setting,
    tuning_lines,
    verdict_lines,
)

COLORS = {
    "sft": "#7f7f7f",
    "pama": "#d62728",
    "pama_no_noon": "#ff9896",
    "morlhf": "#1f77b4",
    "mgda_ub": "#2ca02c",
    "linear_noon": "#9467bd",
    "gdpo": "#17becf",
    "pama_sample": "#8c564b",
    "pama_sample_no_noon": "#c49c94",
    "pama_batch": "#e377c2",
    "pama_batch_no_noon": "#f7b6d2",
    "pama_ub": "#bcbd22",
    "pama_ub_no_noon": "#dbdb8d",
}


def _f(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(mean: float, ci: list[float], digits: int = 2) -> str:
    return f"{_f(mean, digits)} [{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def _p(p: float) -> str:
    return "n/a" if p is None or math.isnan(p) else ("<0.001" if p < 1e-3 else f"{p:.3f}")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _sacrifice_cells(e: Mapping[str, Any]) -> list[str]:
    """Share of seeds with no objective below the SFT start; the worst objective's change."""
    if "worst_change" not in e:
        return ["n/a", "n/a"]
    w = e["worst_change"]
    return [_f(e["no_sacrifice_share"]), _ci(w["mean"], w["ci95"])]


def methods_table(t: Mapping[str, Any]) -> list[str]:
    objs = t["objectives"]
    head = [
        "method",
        *[f"{o} ↑" for o in objs],
        "joint success ↑",
        "per-response HV ↑",
        "mean-point HV ↑",
        "no sacrifice ↑",
        "worst Δ ↑",
        "KL",
        "cut off",
        "seeds",
    ]
    lines = [_row(head), _row(["---"] * len(head))]
    sft = t["sft"]
    lines.append(
        _row(
            [
                "SFT (start)",
                *[_f(sft[o]) for o in objs],
                _f(sft["joint_success"]),
                _f(sft["per_response_hv"]),
                _f(sft["point_hv"]),
                "-",
                "0",
                "0",
                _f(sft["cut_off_rate"]),
                "-",
            ]
        )
    )
    for m, e in t["methods"].items():
        mean, ci = e["mean"], e["ci95"]
        cells = [METHOD_LABELS.get(m, m), *[_ci(mean[o], ci[o]) for o in objs]]
        cells += [_ci(mean[k], ci[k]) for k in ("joint_success", "per_response_hv", "point_hv")]
        cells += _sacrifice_cells(e)
        cells += [_f(mean["kl"]), _f(mean["cut_off_rate"]), str(len(e["seeds"]))]
        lines.append(_row(cells))
    return lines


def comparisons_table(t: Mapping[str, Any]) -> list[str]:
    objs = t["objectives"]
    head = [
        "PAMA − baseline",
        *[f"Δ {o} [CI], p (Holm)" for o in objs],
        "Δ joint success, p",
        "Δ per-response HV, p",
        "PAMA dominates",
        "PAMA dominated",
        "PAMA's mean point dominated by the MORLHF front",
    ]
    lines = [_row(head), _row(["---"] * len(head))]
    for b, c in t["comparisons"].items():
        cells = [METHOD_LABELS.get(b, b)]
        for o in objs:
            cells.append(
                f"{_ci(c['mean_diff'][o], c['ci95_diff'][o])}, "
                f"{_p(c['p_value'][o])} ({_p(c['p_holm'][o])})"
            )
        for k in ("joint_success", "per_response_hv"):
            cells.append(f"{_f(c['mean_diff'][k], 3)}, {_p(c['p_value'][k])}")
        cells += [
            f"{c['dominates_share']:.0%}",
            f"{c['dominated_share']:.0%}",
            "yes" if c["dominated_by_front"] else "no",
        ]
        lines.append(_row(cells))
    return lines


def matched_kl_table(t: Mapping[str, Any]) -> list[str]:
    objs = t["objectives"]
    lines = [
        f"Rewards at the matched KL {_f(t['matched_kl']['kl'])} (the smallest final mean "
        "KL of all methods). Each method's mean path SFT → checkpoints is walked in training "
        "order and read on the latest segment that reaches that KL, linearly interpolated "
        "(a method whose final KL it is: its final rewards):",
        "",
        _row(["method", *objs]),
        _row(["---"] * (len(objs) + 1)),
    ]
    for m, r in t["matched_kl"]["rewards"].items():
        lines.append(_row([METHOD_LABELS.get(m, m), *[_f(r[o]) for o in objs]]))
    lines += [
        "",
        "Per seed, PAMA and each baseline read along their paths, in training order, at the "
        "smaller of their two final KLs:",
        "",
        _row(["PAMA − baseline", *[f"Δ {o}, p" for o in objs]]),
        _row(["---"] * (len(objs) + 1)),
    ]
    for b, c in t["comparisons"].items():
        mk = c["matched_kl"]
        lines.append(
            _row(
                [
                    METHOD_LABELS.get(b, b),
                    *[f"{_f(mk[o]['mean_diff'])}, {_p(mk[o]['p_value'])}" for o in objs],
                ]
            )
        )
    return lines


def front_table(t: Mapping[str, Any]) -> list[str]:
    objs = t["objectives"]
    head = ["weights", *objs, "joint success", "per-response HV", "KL", "seeds"]
    lines = [_row(head), _row(["---"] * len(head))]
    for p in t["morlhf_front"]:
        lines.append(
            _row(
                [
                    "/".join(f"{w:.3g}" for w in p["weights"]),
                    *[_f(p[o]) for o in objs],
                    _f(p["joint_success"]),
                    _f(p["per_response_hv"]),
                    _f(p["kl"]),
                    str(p["seeds"]),
                ]
            )
        )
    readings = [
        f"{METHOD_LABELS.get(m, m)}: "
        f"{'yes' if e['dominated_by_front'] else 'no'} / "
        f"{'yes' if e.get('dominated_by_front_ci') else 'no'}"
        for m, e in t["methods"].items()
    ]
    lines += [
        "",
        "Each method's mean point dominated by a front point (means / beyond the uncertainty "
        "of both: on every objective the 95% bootstrap interval of front − method above 0): "
        + "; ".join(readings)
        + ".",
    ]
    return lines


def rates_lines(t: Mapping[str, Any]) -> list[str]:
    lines = []
    for m, curves in t["pama_rates"].items():
        z = curves.get("zero_rate", [])
        if not z:
            continue
        k = max(1, min(10, len(z) // 5))
        parts = [
            f"zero rate {_f(sum(z[:k]) / k)} over the first {k} steps, "
            f"{_f(sum(z[-k:]) / k)} over the last {k}"
        ]
        for key, v in curves.items():
            if key.startswith("binding_rate/") and v:
                parts.append(f"{key} {_f(sum(v[:k]) / k)} → {_f(sum(v[-k:]) / k)}")
        lines.append(f"- {METHOD_LABELS.get(m, m)}: " + "; ".join(parts) + ".")
    return lines


def study_markdown(results: Mapping[str, Any]) -> str:
    cfg = results["config"]
    hparams = results.get("hparams", {})
    if hparams and not all(isinstance(v, dict) for v in hparams.values()):
        hparams = {n: hparams for n in results["tasks"]}  # one setting for every task
    out = [
        "# Study: PAMA against the standard baselines",
        "",
        f"Command: `{results['command']}`. Shared hyper-parameters (identical for every "
        "method of a task): "
        + "; ".join(f"{n}: {setting(hp)}" for n, hp in hparams.items())
        + f"; batch {cfg['batch_size']}, mini-batch {cfg['mini_batch_size']}, "
        f"{cfg['ppo_epochs']} PPO epochs, fixed KL coefficient, {cfg['steps']} steps, "
        f"checkpoints {cfg['eval_steps']}. Wall time: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in results["timings"].items())
        + f" on {cfg['workers']} worker processes.",
        "",
    ]
    verdict = verdict_lines(results)
    if verdict:
        out += [
            "## The pre-registered verdict (docs/study_preregistration.md)",
            "",
            "A PAMA reading passes on a task if its mean point is not dominated by the MORLHF "
            "front beyond the uncertainty of both, and its per-response joint success is above "
            "uniform MORLHF's and GDPO's (positive mean paired difference, Wilcoxon p < 0.05 "
            "after Holm over the task's (reading, baseline) pairs).",
            "",
            *verdict,
            "",
        ]
    for name, t in results["tasks"].items():
        out += [
            f"## Task `{name}`",
            "",
            f"Held-out prompts: {t['n_eval_prompts']} × {t['samples_per_prompt']} sampled "
            f"responses per seed and checkpoint (fixed sampling seed). Means over seeds with "
            f"95% percentile-bootstrap CIs at the last checkpoint. Joint success: every "
            f"reward above {t['success_thresholds']}; hypervolume reference "
            f"{t['hv_reference']}. No sacrifice: the share of seeds in which no objective "
            "ends below the SFT start; worst Δ: per seed, the change from the start of the "
            "objective that gained least (lost most), mean and CI over seeds.",
            "",
            *methods_table(t),
            "",
            "### PAMA against each baseline (paired seeds, Wilcoxon signed-rank)",
            "",
            *comparisons_table(t),
            "",
            *ordering_lines(t.get("ordering", {}), t["objectives"], "under this set-up"),
            "",
            "### At matched KL",
            "",
            *matched_kl_table(t),
            "",
            "### MORLHF front (weight sweep)",
            "",
            *front_table(t),
            "",
            "### PAMA's zero and binding rates over training",
            "",
            *rates_lines(t),
            "",
            f"![front]({name}_front.png)",
            f"![reward vs KL]({name}_reward_kl.png)",
            f"![zero rate]({name}_rates.png)",
            "",
        ]
        if t.get("own_best"):
            out += [f"### Each method at its own best setting ({name})", "",
                    *own_best_lines(t), ""]  # fmt: skip
        if t.get("transfer"):
            tr = t["transfer"]
            out += [
                f"### The transfer row ({name} at task 1's setting: {setting(tr['hparams'])})",
                "",
                *methods_table(tr),
                "",
            ]
        if t.get("paper_setup"):
            ps = t["paper_setup"]
            out += [
                f"### The paper's own set-up ({name}: ratio to the reference, Noon for PAMA "
                f"and linear_noon, adaptive KL controller with target 3; {setting(ps['hparams'])})",
                "",
                *methods_table(ps),
                "",
                *ordering_lines(ps["ordering"], t["objectives"], "under the paper's set-up"),
                "",
            ]
    tuning = results.get("tuning")
    if tuning:
        out += ["## Tuning (seeds 900+, never reported above)", "", *tuning_lines(tuning)]
    return "\n".join(out)


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_front(
    t: Mapping[str, Any],
    path: Path,
    title: str,
    colors: Mapping[str, str] = COLORS,
    labels: Mapping[str, str] = METHOD_LABELS,
    front: tuple[str, str] = ("morlhf", "MORLHF weight sweep"),
) -> None:
    """Each method's mean point (95% CIs) and seeds against the weight sweep ``front`` (the
    sweep's method key, for its colour, and its legend label)."""
    plt = _pyplot()
    objs = t["objectives"]
    pairs = [(0, 1)] if len(objs) == 2 else [(0, 1), (0, 2), (1, 2)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 4.4), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs, strict=True):
        oi, oj = objs[i], objs[j]
        fx = [p[oi] for p in t["morlhf_front"]]
        fy = [p[oj] for p in t["morlhf_front"]]
        # Joined in weight order on 2 objectives; on 3 a projection of a 2-D grid: points only.
        style = "s--" if len(objs) == 2 else "s"
        ax.plot(fx, fy, style, color=colors[front[0]], alpha=0.5, label=front[1])
        ax.plot(t["sft"][oi], t["sft"][oj], "o", color=colors["sft"], label="SFT")
        for m, e in t["methods"].items():
            mx, my = e["mean"][oi], e["mean"][oj]
            cx, cy = e["ci95"][oi], e["ci95"][oj]
            ax.errorbar(
                mx,
                my,
                xerr=[[mx - cx[0]], [cx[1] - mx]],
                yerr=[[my - cy[0]], [cy[1] - my]],
                fmt="o",
                color=colors.get(m, "k"),
                capsize=3,
                label=labels.get(m, m),
            )
            ax.scatter(
                [p[oi] for p in e["per_seed"]],
                [p[oj] for p in e["per_seed"]],
                s=6,
                color=colors.get(m, "k"),
                alpha=0.25,
            )
        ax.set_xlabel(f"{oi} ↑")
        ax.set_ylabel(f"{oj} ↑")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    _save(plt, fig, path)


def plot_reward_kl(
    t: Mapping[str, Any],
    path: Path,
    title: str,
    colors: Mapping[str, str] = COLORS,
    labels: Mapping[str, str] = METHOD_LABELS,
    kl_to: str = "the reference",
) -> None:
    plt = _pyplot()
    objs = t["objectives"]
    fig, axes = plt.subplots(1, len(objs), figsize=(4.6 * len(objs), 3.8), squeeze=False)
    for ax, o in zip(axes[0], objs, strict=True):
        for m, e in t["methods"].items():
            ax.plot(
                e["kl_path"],
                e["reward_path"][o],
                "o-",
                color=colors.get(m, "k"),
                label=labels.get(m, m),
            )
        ax.axvline(t["matched_kl"]["kl"], color="k", lw=0.8, ls=":")
        ax.set_xlabel(f"KL to {kl_to} (per response)")
        ax.set_ylabel(f"{o} ↑")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    _save(plt, fig, path)


def plot_rates(t: Mapping[str, Any], path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for m, curves in t["pama_rates"].items():
        for key, style in (("zero_rate", "-"), ("conflict_rate", ":")):
            if curves.get(key):
                ax.plot(
                    range(1, len(curves[key]) + 1),
                    curves[key],
                    style,
                    color=COLORS.get(m, "k"),
                    label=f"{METHOD_LABELS.get(m, m)}: {key}",
                )
        for key, v in curves.items():
            if key.startswith("binding_rate/") and m == "pama":
                ax.plot(range(1, len(v) + 1), v, "--", lw=0.8, label=f"PAMA: {key}")
    ax.set_xlabel("PPO step")
    ax.set_ylabel("share of response tokens")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    _save(plt, fig, path)


def write_report(results: Mapping[str, Any], out: Path) -> None:
    """results.json, study.md and three PNGs per task into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "results.json"
    if "grpo" not in results and previous.exists():  # the GRPO engine's results are kept
        grpo = json.loads(previous.read_text()).get("grpo")
        results = results if grpo is None else {**results, "grpo": grpo}
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=False))
    (out / "study.md").write_text(study_markdown(results))
    for name, t in results["tasks"].items():
        plot_front(t, out / f"{name}_front.png", f"{name}: held-out means, 95% CIs")
        plot_reward_kl(t, out / f"{name}_reward_kl.png", f"{name}: reward against KL")
        plot_rates(t, out / f"{name}_rates.png", f"{name}: PAMA's zero / conflict rates")


def headline_table(t: Mapping[str, Any]) -> str:
    """The README's compact table of one task: means with 95% CIs at the last checkpoint."""
    objs = t["objectives"]
    head = ["method", *[f"{o} ↑" for o in objs], "joint success ↑", "per-response HV ↑",
            "no sacrifice ↑", "worst Δ ↑", "KL"]  # fmt: skip
    lines = [_row(head), _row(["---"] * len(head))]
    sft = t["sft"]
    lines.append(
        _row(
            [
                "SFT (start)",
                *[_f(sft[o]) for o in objs],
                _f(sft["joint_success"]),
                _f(sft["per_response_hv"]),
                "-",
                "0",
                "0",
            ]
        )
    )
    for m, e in t["methods"].items():
        mean, ci = e["mean"], e["ci95"]
        cells = [METHOD_LABELS.get(m, m), *[_ci(mean[o], ci[o]) for o in objs]]
        cells += [_ci(mean[k], ci[k]) for k in ("joint_success", "per_response_hv")]
        cells += _sacrifice_cells(e)
        lines.append(_row([*cells, _f(mean["kl"], 1)]))
    return "\n".join(lines) + "\n"
