"""Tables and plots of the multi-task study from :func:`run_study`'s dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .methods import LABELS
from .stats import bootstrap_mean_ci, hypervolume_per_point

__all__ = ["digits_summary", "plot_all", "tables_markdown", "toy_end"]

_COLORS = {
    "linear": "tab:blue",
    "mgda_ub": "tab:orange",
    "mgda_ub_rescaled": "tab:olive",
    "mgda": "tab:green",
    "pama": "tab:red",
    "torchjd_mgda": "tab:purple",
    "torchjd_upgrad": "tab:brown",
}


def toy_end(final: list[float], pareto_x: np.ndarray, tol: float = 0.3) -> str:
    """Where a toy run ended: ``"left end"`` / ``"right end"`` of the Pareto set (within
    ``tol`` of x1 = -7 / 7 on it), ``"interior"`` (on it, between), or ``"off the set"``."""
    p = np.asarray(final)
    dist = float(np.min(np.linalg.norm(pareto_x - p, axis=1)))
    if dist > tol:
        return "off the set"
    if abs(p[0] + 7) <= tol:
        return "left end"
    if abs(p[0] - 7) <= tol:
        return "right end"
    return "interior"


def digits_summary(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method: mean and 95% bootstrap CI over seeds of every metric and hypervolume."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in results["digits"]:
        by_method.setdefault(r["method"], []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for m, runs in by_method.items():
        pts = np.array(
            [
                [r["metrics"]["digit_acc"], r["metrics"]["parity_acc"], -r["metrics"]["recon_mse"]]
                for r in runs
            ]
        )
        hv = np.array(
            [
                hypervolume_per_point(p[None, :], r["reference"])[0]
                for p, r in zip(pts, runs, strict=True)
            ]
        )
        out[m] = {
            "seeds": len(runs),
            "digit_acc": bootstrap_mean_ci(pts[:, 0]),
            "parity_acc": bootstrap_mean_ci(pts[:, 1]),
            "recon_mse": bootstrap_mean_ci(-pts[:, 2]),
            "hypervolume": bootstrap_mean_ci(hv),
            "grad_descent": bootstrap_mean_ci([r["grad_descent_rate"] for r in runs]),
            "step_descent": bootstrap_mean_ci([r["step_descent_rate"] for r in runs]),
        }
    return out


def tables_markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    pareto_x = np.array(results["pareto_set"]["x"])
    lines = [
        "### Toy problem: where each trajectory ends",
        "",
        f"Adam, lr {cfg['toy_lr']}, {cfg['toy_steps']} steps from each start. Final point "
        "(x1, x2), and whether it lies on the Pareto set (within 0.3 of the numerically traced "
        "set) at an end (x1 = ±7, one task's own minimum) or inside. Descent: share of steps "
        "whose combined gradient has a non-negative inner product with both task gradients.",
        "",
        "| method | " + " | ".join(str(tuple(s)) for s in cfg["toy_starts"]) + " | descent |",
        "|---|" + "---|" * (len(cfg["toy_starts"]) + 1),
    ]
    for m in cfg["methods"]:
        runs = [t for t in results["toy"] if t["method"] == m]
        cells = []
        for s in cfg["toy_starts"]:
            (t,) = [t for t in runs if tuple(t["start"]) == tuple(s)]
            x1, x2 = t["final"]
            where = toy_end(t["final"], pareto_x) if t["finite"] else "non-finite"
            cells.append(f"({x1:.2f}, {x2:.2f}) {where}")
        rate = np.mean([t["descent_rate"] for t in runs])
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + f" | {rate:.2f} |")

    paper = results.get("toy_paper_lr", [])
    if paper:
        steps = paper[0]["steps"]
        lines += [
            "",
            f"At the CAGrad paper's step (Adam, lr 1e-3), {steps} steps, element-wise rules only "
            "(all starts in one batched run, exact for these two):",
            "",
            "| method | " + " | ".join(str(tuple(s)) for s in cfg["toy_starts"]) + " |",
            "|---|" + "---|" * len(cfg["toy_starts"]),
        ]
        for t in paper:
            final = np.array(t["trajectory"])[-1]
            cells = [f"({p[0]:.2f}, {p[1]:.2f}) {toy_end(list(p), pareto_x)}" for p in final]
            lines.append(f"| {LABELS[t['method']]} | " + " | ".join(cells) + " |")

    summary = digits_summary(results)
    seeds = cfg["seeds"]
    lines += [
        "",
        "### Digits: test metrics over seeds",
        "",
        f"{seeds} seeds × {cfg['digits_steps']} Adam steps (lr 3e-3, batch 64); mean and 95% "
        "bootstrap CI over seeds. Hypervolume of each seed's final (digit acc, parity acc, "
        "−recon MSE) against (chance, chance, mean-image MSE).",
        "",
        "| method | digit acc ↑ | parity acc ↑ | recon MSE ↓ | hypervolume ↑ |",
        "|---|---|---|---|---|",
    ]
    for m in cfg["methods"]:
        s = summary[m]
        lines.append(
            f"| {LABELS[m]} | {s['digit_acc'].fmt(3)} | {s['parity_acc'].fmt(3)} | "
            f"{s['recon_mse'].fmt(4)} | {s['hypervolume'].fmt(4)} |"
        )
    lines += [
        "",
        "### Digits: how often the update is a common descent direction",
        "",
        "Share of steps whose trunk update has a non-negative inner product (cosine ≥ −1e-6) "
        "with every task's full gradient over the trunk's parameters; mean [95% CI] over seeds. "
        "*Combined gradient*: what the method writes into the trunk's `.grad`. *Adam step*: the "
        "parameter change Adam then applies (its per-coordinate scaling can turn a common "
        "descent direction into one that is not).",
        "",
        "| method | combined gradient | Adam step |",
        "|---|---|---|",
    ]
    for m in cfg["methods"]:
        s = summary[m]
        lines.append(f"| {LABELS[m]} | {s['grad_descent'].fmt(3)} | {s['step_descent'].fmt(3)} |")

    lines += [
        "",
        "### Cost of one training step, as ratios to linear scalarization",
        "",
        "Forward + the method's backward(s) + Adam step, batch 64, one thread; median over "
        f"{cfg['cost_rounds']} interleaved rounds of the per-round ratio. Peak: allocator peak "
        "above what was live before the step.",
        "",
        "| method | "
        + " | ".join(
            f"time, trunk {c['trunk_params']:,} params | peak memory, {c['trunk_params']:,}"
            for c in results["cost"]
        )
        + " |",
        "|---|" + "---|---|" * len(results["cost"]),
    ]
    for m in cfg["methods"]:
        cells = []
        for c in results["cost"]:
            cells.append(f"{c['time_ratio'][m]:.2f}x")
            cells.append(f"{c['memory_ratio'][m]:.2f}x")
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    base = [
        f"{c['median_s']['linear'] * 1e3:.2f} ms and {c['peak_bytes']['linear'] / 1024:.0f} KiB "
        f"(trunk {c['trunk_params']:,} params)"
        for c in results["cost"]
    ]
    lines += ["", "Linear scalarization itself: " + "; ".join(base) + "."]
    wall = results["wall_s"]
    lines += [
        "",
        f"Wall time of this run: toy {wall['toy']:.0f} s, digits {wall['digits']:.0f} s, "
        f"cost {wall['cost']:.0f} s ({cfg['workers']} worker processes; load average at start "
        f"{results['machine']['load_average_at_start']}).",
    ]
    return "\n".join(lines) + "\n"


def plot_all(results: dict[str, Any], img_dir: Path) -> list[Path]:
    """``mtl_toy_paths.png``, ``mtl_toy_front.png``, ``mtl_digits.png``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .toy import toy_losses

    img_dir.mkdir(parents=True, exist_ok=True)
    cfg = results["config"]
    methods = cfg["methods"]
    pareto_x = np.array(results["pareto_set"]["x"])
    pareto_f = np.array(results["pareto_set"]["losses"])
    paths = []

    grid = np.linspace(-10, 10, 201)
    gx, gy = np.meshgrid(grid, grid)
    pts = torch.tensor(np.stack([gx, gy], -1), dtype=torch.float64)
    mean_loss = toy_losses(pts).mean(-1).numpy()
    cols = 3
    rows = (len(methods) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax, m in zip(axes.flat, methods, strict=False):
        ax.contour(gx, gy, mean_loss, levels=20, cmap="viridis", linewidths=0.6)
        ax.plot(pareto_x[:, 0], pareto_x[:, 1], color="gray", lw=4, alpha=0.6, label="Pareto set")
        for t in results["toy"]:
            if t["method"] != m:
                continue
            p = np.array(t["points"])
            ax.plot(p[:, 0], p[:, 1], color=_COLORS[m], lw=1.2)
            ax.plot(*t["start"], "ko", ms=4)
            ax.plot(*p[-1], "*", color=_COLORS[m], ms=10, mec="k")
        ax.set_title(LABELS[m])
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.set_aspect("equal")
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    fig.suptitle(
        f"Toy problem (CAGrad / Nash-MTL): Adam lr {cfg['toy_lr']}, {cfg['toy_steps']} steps, "
        "over the mean loss"
    )
    fig.tight_layout()
    path = img_dir / "mtl_toy_paths.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)

    paper = results.get("toy_paper_lr", [])
    if paper:
        fig, axes = plt.subplots(1, len(paper), figsize=(4 * len(paper), 4), squeeze=False)
        for ax, t in zip(axes.flat, paper, strict=True):
            ax.contour(gx, gy, mean_loss, levels=20, cmap="viridis", linewidths=0.6)
            ax.plot(pareto_x[:, 0], pareto_x[:, 1], color="gray", lw=4, alpha=0.6)
            traj = np.array(t["trajectory"])
            for k in range(traj.shape[1]):
                ax.plot(traj[:, k, 0], traj[:, k, 1], color=_COLORS[t["method"]], lw=1.2)
                ax.plot(*traj[0, k], "ko", ms=4)
                ax.plot(*traj[-1, k], "*", color=_COLORS[t["method"]], ms=10, mec="k")
            ax.set_title(f"{LABELS[t['method']]}, lr 1e-3, {t['steps']} steps")
            ax.set_xlim(-10, 10)
            ax.set_ylim(-10, 10)
            ax.set_aspect("equal")
        fig.tight_layout()
        path = img_dir / "mtl_toy_paper_lr.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot(pareto_f[:, 0], pareto_f[:, 1], color="gray", lw=4, alpha=0.6, label="Pareto front")
    for m in methods:
        finals = np.array([t["final_losses"] for t in results["toy"] if t["method"] == m])
        ax.scatter(finals[:, 0], finals[:, 1], color=_COLORS[m], label=LABELS[m], s=40, alpha=0.8)
    ax.set_xlabel("L1")
    ax.set_ylabel("L2")
    ax.set_title("Toy problem: final losses of every start over the front")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = img_dir / "mtl_toy_front.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for m in methods:
        runs = [r for r in results["digits"] if r["method"] == m]
        acc = [r["metrics"]["digit_acc"] for r in runs]
        par = [r["metrics"]["parity_acc"] for r in runs]
        mse = [r["metrics"]["recon_mse"] for r in runs]
        axes[0].scatter(mse, acc, color=_COLORS[m], label=LABELS[m], s=25, alpha=0.8)
        axes[1].scatter(mse, par, color=_COLORS[m], label=LABELS[m], s=25, alpha=0.8)
    axes[0].set_xlabel("reconstruction test MSE ↓")
    axes[0].set_ylabel("digit test accuracy ↑")
    axes[1].set_xlabel("reconstruction test MSE ↓")
    axes[1].set_ylabel("parity test accuracy ↑")
    axes[0].legend(fontsize=8)
    fig.suptitle("Digits: final test metrics, one point per seed")
    fig.tight_layout()
    path = img_dir / "mtl_digits.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)
    return paths
