"""What every section of the report shares: number formats, Markdown tables, fits, figures."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# A plot's series: label -> [(x, y)] points (y None where the variant was not run).
Series = dict[str, list[tuple[float, float | None]]]
Panel = tuple[str, Series]


def fmt_s(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "–"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def fmt_x(ratio: float | None, digits: int = 2) -> str:
    if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)):
        return "–"
    if ratio >= 100:
        return f"{ratio:.0f}x"
    return f"{ratio:.{digits}f}x"


def fmt_mb(nbytes: float | None) -> str:
    if nbytes is None:
        return "–"
    return f"{nbytes / 2**20:.1f} MiB"


def fmt_gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB"


def fmt_sci(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.1e}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Slope of log y against log x (least squares); None with fewer than two points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    lx, ly = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**holds**" if ok else "**fails**")


def fit_linear_in_n(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """ratio(n) = a + b n by least squares."""
    if len({p[0] for p in points}) < 2:
        return None
    b, a = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
    return float(a), float(b)


def mem_fit_text(fit: tuple[float, float] | None) -> str:
    """``(a, c)`` of an extra memory of (a n + c) d floats, as text."""
    if fit is None:
        return "not measured"
    return f"{fit[0]:.2f} n d + {fit[1]:.2f} d floats"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lines(
    path: Path,
    panels: list[Panel],
    xlabel: str,
    ylabel: str,
) -> None:
    plt = _plt()
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels, strict=False):
        for label, pts in series.items():
            pts = sorted(p for p in pts if p[1] is not None and p[1] > 0)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def series(
    points: Iterable[Any],
    keys: Iterable[str],
    x: Callable[[Any], float],
    y: Callable[[Any, str], float | None],
    labels: Mapping[str, str] | None = None,
) -> Series:
    """One line per key (labelled by ``labels``), through ``(x(p), y(p, key))`` of each point."""
    pts = list(points)
    return {(labels[k] if labels else k): [(x(p), y(p, k)) for p in pts] for k in keys}


def figure(
    img: Path,
    img_rel: str,
    name: str,
    alt: str,
    panels: list[Panel],
    xlabel: str,
    ylabel: str,
) -> str:
    """Plot ``panels`` into ``img/bench_{name}.png``; return the page's Markdown link to it."""
    plot_lines(img / f"bench_{name}.png", panels, xlabel, ylabel)
    return f"![{alt}]({img_rel}/bench_{name}.png)"
