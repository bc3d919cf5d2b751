"""Turn the benchmark JSON into ``benchmarks.md`` and ``img/bench_*.png``.

The JSON is what ``paretoopt bench`` (:mod:`..runner`) or the repository's pytest-benchmark
suites (``bench/``, ``--benchmark-json``) write. Every number in the page comes from it; the
cost model section is calibrated from it and labels its assumptions. One module per section:

* :mod:`.weight_selection` (1), :mod:`.full_step` (2), :mod:`.min_norm` (3),
  :mod:`.cost_model` (4): each returns its Markdown and the facts the verdicts need;
* :mod:`.claims`: the claims table and "Where we lose", from those facts;
* :mod:`.common`: formats, tables, fits and figures.

Usage: ``python -m paretoopt.integrations.bench.report --json bench.json --out docs``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .claims import claims_section, where_we_lose_section
from .common import fit_exponent
from .cost_model import cost_model_section
from .full_step import full_step_section
from .min_norm import min_norm_section
from .weight_selection import weight_selection_section

__all__ = ["build_report", "by_suite", "fit_exponent", "load", "main"]


def load(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def by_suite(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "suite" in info:
            out[info["suite"]].append(info)
    return out


def load_line(pb: dict[str, Any]) -> str:
    """How loaded the machine was: 1-minute load averages read after each case."""
    samples = [float(x) for x in pb.get("loadavg_1min_per_case") or []]
    if not samples:
        return "- Load: not recorded in this run's JSON."
    cores = pb.get("cpu_count") or "?"
    return (
        f"- Load: the 1-minute load average (`/proc/loadavg`, read after each of the "
        f"{len(samples)} cases) was median {statistics.median(samples):.2f}, min "
        f"{min(samples):.2f}, max {max(samples):.2f} on {cores} cores; the benchmark's own "
        "thread accounts for about 1 of it, and other jobs shared the machine. Absolute times "
        "are inflated when they do; the variants of a case are interleaved within each "
        "round, so the ratios, on which every claim is judged, are not."
    )


def closed_form_path(status: str | None) -> str:
    if status is None:
        return "not recorded (before the compiled kernel)"
    if status.startswith("compiled kernel"):
        return "the compiled kernel (`paretoopt/_closed_form.c`)"
    return f"the torch formulas ({status})"


def machine_section(data: dict[str, Any]) -> str:
    mi = data.get("machine_info", {})
    pb = mi.get("paretoopt_bench", {})
    when = data.get("datetime", "?")
    gpu = pb.get("cuda")
    return "\n".join(
        [
            "## Machine and method\n",
            f"- Run: {when}, profile `{pb.get('profile', '?')}`.",
            f"- CPU: {pb.get('cpu_model', '?')}, {pb.get('cpu_count', '?')} cores, shared with "
            f"other jobs; torch {pb.get('torch_version', '?')}, {pb.get('torch_threads', '?')} "
            f"intra-op thread(s), BLAS threads {pb.get('blas_threads_env', '?')}; Python "
            f"{pb.get('python', '?')}.",
            f"- The closed form on the CPU: {closed_form_path(pb.get('closed_form_cpu'))}.",
            f"- GPU: {gpu if gpu else 'none available in this run: every figure is CPU-only; the GPU rows of section 4 are a model with stated assumptions, not measurements'}.",  # noqa: E501
            "- The variants compared in a case are timed in the same rounds, in a fresh random "
            "order each round, after a warm-up round; tables give medians, ratios are medians of "
            "per-round ratios. One thread: on this shared 2-core machine a second intra-op thread "
            "that gets descheduled makes every parallel op wait for it (~16 ms per op measured).",
            load_line(pb),
            "- Peak memory is read from torch's CPU allocator: every tensor allocation and free "
            "recorded by `torch.profiler` with `profile_memory=True`, summed in time order; the "
            "peak is the maximum above what was live when the update started (`tracemalloc` "
            "does not see torch's allocations).",
            "",
        ]
    )


def build_report(data: dict[str, Any], out_dir: Path, img_dirname: str = "img") -> Path:
    """Write ``out_dir/benchmarks.md`` and ``out_dir/img/bench_*.png``; return the page path."""
    out_dir = Path(out_dir)
    img = out_dir / img_dirname
    img.mkdir(parents=True, exist_ok=True)
    suites = by_suite(data)
    ws_md, ws = weight_selection_section(suites.get("weight_selection", []), img, img_dirname)
    st_md, st = full_step_section(suites.get("full_step", []), img, img_dirname)
    mn_md, mn = min_norm_section(suites.get("min_norm", []), img, img_dirname)
    cm_md, _ = cost_model_section(st, ws) if st else ("", {})
    page = "\n".join(
        [
            "# Benchmarks\n",
            "What PAMA, linear scalarization, MGDA-UB and exact MGDA cost per training update, "
            "measured. Regenerate with `make bench` (the full suites under pytest-benchmark, "
            "tens of minutes), `paretoopt bench --out docs` (the same suites without pytest) or "
            "`paretoopt bench --quick` (under 2 minutes, from a wheel too); the raw "
            "pytest-benchmark JSON sits next to the page (`bench.json`). Suites: "
            "`paretoopt.integrations.bench` (under pytest-benchmark: `bench/bench_*.py`); "
            "report: `paretoopt.integrations.bench.report`.\n",
            machine_section(data),
            claims_section(ws, st, mn),
            where_we_lose_section(ws, st, mn),
            ws_md,
            st_md,
            mn_md,
            cm_md,
        ]
    )
    path = out_dir / "benchmarks.md"
    kept = kept_sections(path)
    path.write_text(page.rstrip() + "\n" + ("\n" + kept if kept else ""))
    return path


KEPT_HEADING = "## The RLHF trainer's phases"
"""Sections from this heading on are measured by other scripts (``bench/hf_ppo_phases.py``,
``bench/zoo_step.py``) and written by hand: a regenerated page keeps them as they are."""


def kept_sections(path: Path) -> str:
    """The hand-written tail of an existing page (from :data:`KEPT_HEADING`), or ``""``."""
    if not path.exists():
        return ""
    text = path.read_text()
    at = text.find("\n" + KEPT_HEADING)
    return text[at + 1 :] if at >= 0 else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Turn the benchmark JSON into benchmarks.md and img/bench_*.png."
    )
    parser.add_argument("--json", required=True, help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--out", default="docs", help="folder for benchmarks.md and img/")
    args = parser.parse_args(argv)
    path = build_report(load(args.json), Path(args.out))
    print(f"wrote {path}")
    return 0
