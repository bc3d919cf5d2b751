"""grpo.md and the GRPO engine's plots, drawn from ``results.json["grpo"]`` alone.

The tables of the PPO report (:mod:`.report`) are reused with the GRPO methods' labels; the
sections of its own are the answer to "which aggregation should I pick in TRL", where PAMA
loses, and PAMA's zero rate against ``num_generations``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .grpo_engine import GRPO_LABELS, PAMA_METHODS, REFERENCE_METHOD
from .report import (
    _ci,
    _f,
    _p,
    _pyplot,
    _row,
    _save,
    comparisons_table,
    front_table,
    matched_kl_table,
    methods_table,
    plot_front,
    plot_reward_kl,
)

GRPO_COLORS = {
    "sft": "#7f7f7f",
    "grpo_sum": "#1f77b4",
    "grpo_gdpo": "#17becf",
    "grpo_pama": "#d62728",
    "grpo_pama_no_noon": "#ff9896",
}
#: Per-seed measures whose paired difference decides "where PAMA loses", besides objectives.
LOSS_KEYS = ("joint_success", "per_response_hv")


def _label(m: str) -> str:
    return GRPO_LABELS.get(m, m)


def _labelled(t: Mapping[str, Any]) -> dict[str, Any]:
    """``t`` with its method keys replaced by their labels (for the PPO report's tables)."""
    out = copy.deepcopy(dict(t))
    out["methods"] = {_label(m): e for m, e in t["methods"].items()}
    out["comparisons"] = {_label(m): c for m, c in t["comparisons"].items()}
    rewards = t["matched_kl"]["rewards"]
    out["matched_kl"] = {**t["matched_kl"], "rewards": {_label(m): r for m, r in rewards.items()}}
    return out


def setting(hp: Mapping[str, Any]) -> str:
    return (
        f"lr {hp['learning_rate']:g}, beta {hp['beta']:g}, num_generations {hp['num_generations']}"
    )


def answer_table(t: Mapping[str, Any]) -> list[str]:
    """One row per aggregation: held-out means [95% CI], whether the weighted-sum front
    dominates it beyond the uncertainty, and PAMA minus it per seed (Wilcoxon p)."""
    objs = t["objectives"]
    head = [
        "aggregation",
        *[f"{o} ↑" for o in objs],
        "joint success ↑",
        "per-response HV ↑",
        "KL",
        "below the sum front (CI)",
        "PAMA − it: joint success, p",
        "PAMA − it: HV, p",
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
                "0",
                "-",
                "-",
                "-",
            ]
        )
    )
    for m, e in t["methods"].items():
        mean, ci = e["mean"], e["ci95"]
        cells = [_label(m), *[_ci(mean[o], ci[o]) for o in objs]]
        cells += [_ci(mean[k], ci[k]) for k in LOSS_KEYS]
        cells += [_f(mean["kl"]), "yes" if e.get("dominated_by_front_ci") else "no"]
        c = t["comparisons"].get(m)
        for k in LOSS_KEYS:
            cells.append(f"{c['mean_diff'][k]:+.3f}, {_p(c['p_value'][k])}" if c else "-")
        lines.append(_row(cells))
    return lines


def pama_loss_lines(name: str, t: Mapping[str, Any]) -> list[str]:
    """Every measure on which PAMA's per-seed mean is below another method's, with the
    paired test (Holm-adjusted over the task's objectives and baselines where it applies)."""
    lines = []
    objs = t["objectives"]
    for b, c in t["comparisons"].items():
        for k in [*objs, *LOSS_KEYS]:
            d = c["mean_diff"][k]
            if not d < 0:
                continue
            p = c.get("p_holm", {}).get(k, c["p_value"][k])
            adjusted = " (Holm)" if k in c.get("p_holm", {}) else ""
            strength = "significant" if p == p and p < 0.05 else "not significant"
            lo, hi = c["ci95_diff"][k]
            lines.append(
                f"- `{name}`: below {_label(b)} on {k}: Δ {d:+.3f} [{_f(lo, 3)}, {_f(hi, 3)}], "
                f"p{adjusted} {_p(p)} ({strength})."
            )
        for o in objs:
            mk = c["matched_kl"][o]
            if mk["mean_diff"] < 0 and mk["p_value"] == mk["p_value"] and mk["p_value"] < 0.05:
                lines.append(
                    f"- `{name}`: at matched KL, below {_label(b)} on {o}: "
                    f"Δ {mk['mean_diff']:+.3f}, p {_p(mk['p_value'])}."
                )
    pama = t["methods"].get(REFERENCE_METHOD)
    if pama and pama.get("dominated_by_front_ci"):
        lines.append(
            f"- `{name}`: PAMA's mean point is dominated by the weighted-sum front beyond the "
            "uncertainty of both."
        )
    if not lines:
        lines.append(
            f"- `{name}`: PAMA's mean is below no other method's on any objective, joint "
            "success or per-response HV, and the weighted-sum front does not dominate it."
        )
    return lines


def zero_rate_lines(t: Mapping[str, Any]) -> list[str]:
    """PAMA's zero rate (completions with s* = 0) against num_generations."""
    z = t.get("zero_rate_by_generations", {})
    sizes = sorted({int(g) for part in ("sft_samples", "tuning", "main") for g in z.get(part, {})})
    if not sizes:
        return []
    head = [
        "num_generations",
        "SFT samples: Noon",
        "SFT samples: no Noon",
        "tuning runs: PAMA (Noon)",
        "tuning runs: no Noon",
        "main runs: PAMA (Noon), mean (first → last)",
        "main runs: no Noon",
    ]
    lines = [_row(head), _row(["---"] * len(head))]
    for g in sizes:
        sft = z.get("sft_samples", {}).get(str(g), {})
        tune = z.get("tuning", {}).get(str(g), {})
        main = z.get("main", {}).get(str(g), {})
        cells = [str(g), _f(sft.get("noon")), _f(sft.get("no_noon"))]
        cells += [_f(tune.get(m)) for m in PAMA_METHODS]
        for m in PAMA_METHODS:
            s = main.get(m)
            cells.append(f"{_f(s['mean'])} ({_f(s['first'])} → {_f(s['last'])})" if s else "-")
        lines.append(_row(cells))
    return lines


def tuning_table(table: Mapping[str, Any]) -> list[str]:
    methods = table["methods"]
    head = ["lr", "beta", "num_generations", "score", *[_label(m) for m in methods]]
    lines = [_row(head), _row(["---"] * len(head))]
    for r in table["table"]:
        chosen = all(r[k] == v for k, v in table["chosen"].items())
        lines.append(
            _row(
                [
                    f"{r['learning_rate']:g}",
                    f"{r['beta']:g}",
                    str(r["num_generations"]),
                    _f(r["score"], 3) + (" **chosen**" if chosen else ""),
                    *[_f(r["per_method"][m], 3) for m in methods],
                ]
            )
        )
    own = "; ".join(f"{_label(m)}: {setting(hp)}" for m, hp in table["per_method"].items())
    return [*lines, "", f"Each method's own best: {own}."]


def grpo_markdown(results: Mapping[str, Any]) -> str:
    cfg = results["config"]
    hparams = results["hparams"]
    out = [
        "# GRPO study: which aggregation of several rewards in TRL",
        "",
        f"Command: `{results['command']}` (TRL {results['trl_version']}). Every method is TRL's "
        "`GRPOTrainer` (PAMA: the `PAMAGRPOTrainer` subclass) with the same arguments; only the "
        "aggregation differs. Shared settings per task: "
        + "; ".join(f"{n}: {setting(hp)}" for n, hp in hparams.items())
        + f"; {cfg['batch_size']} completions per step, temperature {cfg['temperature']:g}, "
        f"group-scaled rewards, {cfg['steps']} steps, checkpoints {list(cfg['eval_steps'])}. "
        "Wall time: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in results["timings"].items())
        + f" on {cfg['workers']} worker processes.",
        "",
        "## In TRL today, which aggregation should I pick for several rewards?",
        "",
        "Held-out means [95% bootstrap CI] over paired seeds at the last checkpoint; "
        "'below the sum front (CI)': the weight sweep of `sum_then_normalize` dominates the "
        "method's mean point on every objective beyond the uncertainty of both; the last two "
        "columns: PAMA (Noon) minus the method, per seed (Wilcoxon signed-rank p).",
        "",
    ]
    for name, t in results["tasks"].items():
        out += [f"Task `{name}`:", "", *answer_table(t), ""]
    out += ["### Where PAMA loses", ""]
    for name, t in results["tasks"].items():
        out += pama_loss_lines(name, t)
    out.append("")
    for name, t in results["tasks"].items():
        lt = _labelled(t)
        out += [
            f"## Task `{name}`",
            "",
            f"Held-out prompts: {t['n_eval_prompts']} × {t['samples_per_prompt']} sampled "
            f"responses per seed and checkpoint (the PPO study's prompts, sampling seed and "
            f"metrics). Joint success: every reward above {t['success_thresholds']}; "
            f"hypervolume reference {t['hv_reference']}. KL: per response, to the SFT policy, "
            "measured on the held-out samples for every method (TRL's own training KL, per "
            "token, at the last step: "
            + ", ".join(f"{_label(m)} {_f(v, 3)}" for m, v in t["trl_kl"].items())
            + ").",
            "",
            *methods_table(lt),
            "",
            "### PAMA (Noon) against each other method (paired seeds, Wilcoxon signed-rank)",
            "",
            *comparisons_table(lt),
            "",
            "### At matched KL",
            "",
            *matched_kl_table(lt),
            "",
            "### The weighted-sum front (`sum_then_normalize` over `reward_weights`)",
            "",
            *front_table(lt),
            "",
            "### PAMA's zero rate against num_generations",
            "",
            "The share of completions with s* = 0 (not reinforced): at the SFT start (the "
            "held-out samples of each prompt cut into groups of G), and over training (mean "
            "over steps) in the tuning grid's runs (pooled over its other settings) and in "
            "the main runs.",
            "",
            *zero_rate_lines(t),
            "",
            f"![front](grpo_{name}_front.png)",
            f"![reward vs KL](grpo_{name}_reward_kl.png)",
            f"![zero rate](grpo_{name}_zero_rate.png)",
            "",
        ]
    tuning = results.get("tuning")
    if tuning and tuning.get("tasks"):
        out += [
            "## Tuning (seeds 900+, training prompts, never reported above)",
            "",
            f"Criterion: {tuning['criterion']}.",
            "",
        ]
        for name, table in tuning["tasks"].items():
            out += [f"Task `{name}` ({table['steps']} steps):", "", *tuning_table(table), ""]
    return "\n".join(out)


def plot_zero_rate(t: Mapping[str, Any], path: Path, title: str) -> None:
    """Left: PAMA's zero rate over training (main runs). Right: against num_generations."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.4, 3.8))
    for m, curves in t["pama_rates"].items():
        for key, style in (("zero_rate", "-"), ("conflict_rate", ":")):
            if curves.get(key):
                left.plot(
                    range(1, len(curves[key]) + 1),
                    curves[key],
                    style,
                    color=GRPO_COLORS.get(m, "k"),
                    label=f"{_label(m)}: {key}",
                )
    left.set_xlabel("GRPO step")
    left.set_ylabel("share of completions")
    left.set_ylim(0, 1)
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    z = t.get("zero_rate_by_generations", {})
    sft = z.get("sft_samples", {})
    if sft:
        gs = sorted(int(g) for g in sft)
        for key, style in (("noon", "o-"), ("no_noon", "o--")):
            right.plot(
                gs,
                [sft[str(g)][key] for g in gs],
                style,
                color=GRPO_COLORS["sft"],
                label=f"SFT samples, {key.replace('_', ' ')}",
            )
    for part, marker in (("tuning", "s"), ("main", "D")):
        for m in PAMA_METHODS:
            pts = [(int(g), v[m]) for g, v in z.get(part, {}).items() if v.get(m) is not None]
            vals = [(g, v["mean"] if isinstance(v, dict) else v) for g, v in sorted(pts)]
            if vals:
                right.plot(
                    [g for g, _ in vals],
                    [v for _, v in vals],
                    marker + ":",
                    color=GRPO_COLORS[m],
                    label=f"{_label(m)}, {part} runs",
                )
    right.set_xscale("log", base=2)
    right.set_xlabel("num_generations (G)")
    right.set_ylabel("share of completions with s* = 0")
    right.set_ylim(0, 1)
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.suptitle(title)
    _save(plt, fig, path)


def write_grpo_report(results: Mapping[str, Any], out: Path) -> None:
    """grpo.md and three PNGs per task into ``out`` (results.json is merged by the caller)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "grpo.md").write_text(grpo_markdown(results))
    for name, t in results["tasks"].items():
        plot_front(
            t,
            out / f"grpo_{name}_front.png",
            f"{name} (GRPO): held-out means, 95% CIs",
            GRPO_COLORS,
            GRPO_LABELS,
            ("grpo_sum", "sum_then_normalize sweep"),
        )
        plot_reward_kl(
            t,
            out / f"grpo_{name}_reward_kl.png",
            f"{name} (GRPO): reward vs KL",
            GRPO_COLORS,
            GRPO_LABELS,
            "the SFT policy",
        )
        plot_zero_rate(t, out / f"grpo_{name}_zero_rate.png", f"{name} (GRPO): PAMA's zero rate")
