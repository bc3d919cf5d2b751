"""Turn the demo's results into a table (markdown + JSON), plots and sample generations.

Everything here reads the plain ``results`` dictionary that
:func:`paretoopt.integrations.demo.experiment.run_experiment` returns, so a report can be redrawn
from ``results.json`` alone (:func:`write_report`). The markdown table holds no timings,
so two runs with the same seed give byte-identical tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

METHOD_COLORS = {
    "sft": "#7f7f7f",
    "pama": "#d62728",
    "morlhf": "#1f77b4",
    "mgda_ub": "#2ca02c",
    "mgda": "#9467bd",
}


def _fmt(mean: float, std: float | None = None, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def results_table(results: Mapping[str, Any]) -> str:
    """Markdown table: one row per method, mean ± std over seeds of each held-out reward,
    hypervolume (mean ± std over seeds) and the number of seeds."""
    objectives: Sequence[str] = results["objectives"]
    header = ["method", *[f"{o} ↑" for o in objectives], "hypervolume ↑", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for key, entry in results["methods"].items():
        cells = [entry.get("label", key)]
        for obj in objectives:
            stats = entry["final"][obj]
            cells.append(_fmt(stats["mean"], stats["std"]))
        hv = entry.get("hypervolume")
        cells.append(_fmt(hv["mean"], hv["std"], digits=3) if hv else "n/a")
        cells.append(str(len(entry["seeds"])) if entry.get("seeds") else "-")
        lines.append("| " + " | ".join(cells) + " |")
    ref = ", ".join(
        f"{o}={v:.2f}" for o, v in zip(objectives, results["reference_point"], strict=True)
    )
    lines.append("")
    lines.append(
        f"Held-out prompts: {results['n_heldout_prompts']} × {results['samples_per_prompt']} "
        f"sampled responses per seed. Mean ± std over seeds of the per-seed mean reward. "
        f"Hypervolume of each seed's final point w.r.t. the reference point ({ref}), "
        f"{results['reference_description']}."
    )
    return "\n".join(lines) + "\n"


def samples_markdown(results: Mapping[str, Any], per_method: int = 4) -> str:
    """A few generations per method on held-out prompts (first seed, sampled)."""
    objectives: Sequence[str] = results["objectives"]
    out = ["# Sample generations on held-out prompts", ""]
    for key, entry in results["methods"].items():
        out.append(f"## {entry.get('label', key)}")
        out.append("")
        out.append("| prompt | response | " + " | ".join(objectives) + " |")
        out.append("|---|---|" + "|".join("---" for _ in objectives) + "|")
        for s in entry.get("samples", [])[:per_method]:
            scores = " | ".join(f"{s[o]:.2f}" for o in objectives)
            response = s["response"].replace("|", "\\|") or "(empty)"
            out.append(f"| {s['prompt']} | {response} | {scores} |")
        out.append("")
    return "\n".join(out)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.shape[-1] < window:
        return values
    kernel = np.ones(window) / window
    # 'valid' then left-pad with the running mean so the curve keeps its length.
    head = np.cumsum(values[..., : window - 1], axis=-1) / np.arange(1, window)
    body = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), -1, values)
    return np.concatenate([head, body], axis=-1)


def plot_curves(results: Mapping[str, Any], path: Path, smooth: int = 5) -> None:
    """Training reward per step, one panel per objective: mean over seeds, ±1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives: Sequence[str] = results["objectives"]
    fig, axes = plt.subplots(1, len(objectives), figsize=(5.2 * len(objectives), 3.8))
    axes = np.atleast_1d(axes)
    for ax, obj in zip(axes, objectives, strict=True):
        for key, entry in results["methods"].items():
            curves = entry.get("curves", {}).get(obj)
            if not curves:
                continue
            n = min(len(c) for c in curves)
            arr = _moving_average(np.array([c[:n] for c in curves], dtype=float), smooth)
            mean, std = arr.mean(0), arr.std(0)
            steps = np.arange(1, n + 1)
            color = METHOD_COLORS.get(key)
            ax.plot(steps, mean, label=entry.get("label", key), color=color)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=color)
        sft = results["methods"].get("sft")
        if sft is not None:
            ax.axhline(sft["final"][obj]["mean"], color=METHOD_COLORS["sft"], ls="--", lw=1,
                       label="SFT (held-out)")  # fmt: skip
        ax.set_xlabel("PPO step")
        ax.set_ylabel(f"{obj} reward (training batch)")
        ax.set_title(obj)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Reward during alignment (mean ± std over seeds, moving average {smooth})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pareto(results: Mapping[str, Any], path: Path) -> None:
    """Final held-out rewards: each seed (small), each method's mean ± std (large) and the
    Pareto front of the method means; the hypervolume reference is given in a corner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from paretoopt.pareto import pareto_mask

    objectives: Sequence[str] = results["objectives"]
    x_obj, y_obj = objectives[0], objectives[1]
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    means, keys = [], []
    for key, entry in results["methods"].items():
        color = METHOD_COLORS.get(key)
        per_seed = entry.get("per_seed", [])
        if per_seed:
            ax.scatter([p[x_obj] for p in per_seed], [p[y_obj] for p in per_seed],
                       color=color, alpha=0.35, s=18)  # fmt: skip
        fx, fy = entry["final"][x_obj], entry["final"][y_obj]
        ax.errorbar(fx["mean"], fy["mean"], xerr=fx["std"], yerr=fy["std"], fmt="o", ms=8,
                    color=color, capsize=3, label=entry.get("label", key))  # fmt: skip
        means.append((fx["mean"], fy["mean"]))
        keys.append(key)
    pts = np.array(means)
    mask = pareto_mask(pts, maximize=True)
    mask = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask, dtype=bool)
    front = pts[mask]
    front = front[np.argsort(front[:, 0])]
    ax.step(front[:, 0], front[:, 1], where="post", color="k", lw=1, alpha=0.6,
            label="Pareto front of means")  # fmt: skip
    ref = results["reference_point"]
    ax.text(0.01, 0.01, f"HV reference: ({ref[0]:.2f}, {ref[1]:.2f})", transform=ax.transAxes,
            fontsize=7, color="0.3")  # fmt: skip
    ax.set_xlabel(f"{x_obj} reward (held-out) →")
    ax.set_ylabel(f"{y_obj} reward (held-out) →")
    ax.set_title("Final points: small = one seed, large = mean ± std")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: Mapping[str, Any], out_dir: str | Path, plots: bool = True) -> dict:
    """Write results.json, results.md, samples.md and (if ``plots``) the two PNGs.

    Returns the paths written, by name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "results.json",
        "table": out / "results.md",
        "samples": out / "samples.md",
    }
    paths["json"].write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    paths["table"].write_text(results_table(results))
    paths["samples"].write_text(samples_markdown(results))
    if plots:
        paths["curves"] = out / "demo_curves.png"
        paths["pareto"] = out / "demo_pareto.png"
        plot_curves(results, paths["curves"])
        plot_pareto(results, paths["pareto"])
    return paths
