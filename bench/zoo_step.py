"""Cost of one training update with each torchjd zoo combiner, against MGDA-UB and linear.

The full-update suite's set-up (``paretoopt.integrations.bench.full_step.StepBench``: a
GPT-2-shaped decoder, n Noon PPO losses on the ratio to a fixed anchor, AdamW): per
combiner, one update is ``zero_grad``, forward, n losses, combine, backward, step. The zoo
members work in ``mode="shared"`` on the last hidden states, as MGDA-UB does (ExcessMTL, which
refuses a shared tensor, over the parameters). Every combiner of a case is built once and timed
in the same rounds, in a fresh random order each round, after a warm-up round (stateful ones
carry their state from round to round, as in training); ratios are medians of per-round
ratios, so load from other jobs hits all of them alike.

CPU, one thread. Usage::

    OMP_NUM_THREADS=1 python bench/zoo_step.py [--model gpt2-100k --n 2 4 8 --rounds 7]

prints a Markdown table (docs/benchmarks.md, "The torchjd zoo") and writes the raw samples to
``--json`` (default docs/zoo_step.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import warnings
from pathlib import Path

import torch
from paretoopt.integrations.bench.full_step import StepBench
from paretoopt.integrations.bench.lib import machine_info, run_interleaved

from paretoopt import MGDA, LinearScalarization, make_combiner
from paretoopt.zoo import ZOO


def combiners_for(n: int, params: list[torch.Tensor]) -> dict[str, object]:
    out: dict[str, object] = {
        "linear": LinearScalarization(),
        "mgda_ub": MGDA(mode="shared", normalization="l2"),
    }
    for name, spec in ZOO.items():
        if n < spec.min_objectives:
            continue
        out[name] = make_combiner(name, mode="shared" if "shared" in spec.modes else "params")
    return out


def measure(model: str, n: int, rounds: int, batch: tuple[int, int]) -> dict:
    sb = StepBench(model, n, batch)
    combiners = combiners_for(n, sb.params)

    def runner(combiner) -> object:
        def run() -> None:
            sb.opt.zero_grad(set_to_none=True)
            losses, _, hidden = sb._losses()
            combiner(list(losses.unbind(0)), shared=hidden, params=sb.params).loss.backward()
            sb.opt.step()

        return run

    torch.manual_seed(0)
    info = run_interleaved({k: runner(c) for k, c in combiners.items()}, rounds, "linear")
    samples = info["samples_s"]
    to_ub = {
        k: statistics.median(a / b for a, b in zip(v, samples["mgda_ub"], strict=True))
        for k, v in samples.items()
    }
    return {"model": model, "params": sb.d, "n": n, "tokens": sb.tokens,
            "median_s": info["median_s"], "ratio_to_linear": info["ratio"],
            "ratio_to_mgda_ub": to_ub, "samples_s": samples}  # fmt: skip


def table(results: list[dict]) -> str:
    ns = [r["n"] for r in results]
    names = list(results[-1]["median_s"])
    head = "| combiner | torchjd class | " + " | ".join(
        f"n={n}: ms | / MGDA-UB | / linear" for n in ns
    )
    lines = [head + " |", "|" + "---|" * (2 + 3 * len(ns))]
    for name in names:
        cls = ZOO[name].torchjd_class if name in ZOO else "–"
        label = name + (" (params)" if name in ZOO and "shared" not in ZOO[name].modes else "")
        cells = []
        for r in results:
            if name not in r["median_s"]:
                cells += ["–", "–", "–"]
                continue
            cells += [
                f"{1e3 * r['median_s'][name]:.1f}",
                f"{r['ratio_to_mgda_ub'][name]:.2f}x",
                f"{r['ratio_to_linear'][name]:.2f}x",
            ]
        lines.append(f"| {label} | {cls} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt2-100k")
    p.add_argument("--n", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch", type=int, nargs=2, default=[4, 32], metavar=("SEQS", "TOKENS"))
    p.add_argument("--json", type=Path, default=Path("docs/zoo_step.json"))
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warnings.filterwarnings("ignore", message=".*not DPP.*")  # cvxpy, inside Nash-MTL
    results = [measure(a.model, n, a.rounds, tuple(a.batch)) for n in a.n]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    a.json.write_text(json.dumps({"machine": machine_info(), "loadavg_1min_end": load,
                                  "rounds": a.rounds, "results": results}, indent=1))  # fmt: skip
    print(f"model {a.model} ({results[0]['params']} parameters), {results[0]['tokens']} tokens, "
          f"rounds {a.rounds}, load average at the end {load:.2f}")  # fmt: skip
    print(table(results))


if __name__ == "__main__":
    main()
