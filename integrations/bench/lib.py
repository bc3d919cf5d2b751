"""What every benchmark suite shares: size profiles, interleaved timing, peak memory, machine.

Timing on a shared, noisy machine: the variants compared in one case are timed in the same
rounds, in a fresh random order each round, so that a burst of load from elsewhere hits all of
them alike; ratios are medians of per-round ratios.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from paretoopt import _native

PROFILE_ENV = "PARETOOPT_BENCH_PROFILE"
PROFILES = ("tiny", "quick", "full")
THREADS_ENV = "PARETOOPT_BENCH_THREADS"


@dataclass(frozen=True)
class Profile:
    """Sizes of one benchmark run."""

    name: str
    rounds: int
    # Suite 1: weight selection alone.
    ws_n: tuple[int, ...]
    ws_sizes: tuple[int, ...]
    ws_max_elems: int  # cap on n * size (memory and time)
    # Suite 2: one full training update.
    step_models: tuple[str, ...]
    step_n: tuple[int, ...]
    step_mgda_max_nd: int  # exact MGDA only where n * d fits this budget (time)
    step_batch: tuple[int, int]  # (sequences, tokens per sequence)
    target_s: float  # seconds of timing per case worth spending on extra rounds
    # Suite 3: min-norm solvers.
    mn_n: tuple[int, ...]
    mn_seeds: int


PROFILE_TABLE: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny",
        target_s=0.05,
        rounds=1,
        ws_n=(2, 8),
        ws_sizes=(1_000, 10_000),
        ws_max_elems=10**6,
        step_models=("gpt2-nano",),
        step_n=(2, 4),
        step_mgda_max_nd=10**8,
        step_batch=(2, 8),
        mn_n=(2, 8),
        mn_seeds=1,
    ),
    "quick": Profile(
        name="quick",
        target_s=0.5,
        rounds=3,
        ws_n=(2, 8, 32),
        ws_sizes=(10_000, 100_000, 1_000_000),
        ws_max_elems=8 * 10**6,
        step_models=("gpt2-100k", "gpt2-1m"),
        step_n=(2, 8),
        step_mgda_max_nd=10**7,
        step_batch=(4, 32),
        mn_n=(2, 8, 32),
        mn_seeds=2,
    ),
    "full": Profile(
        name="full",
        target_s=2.0,
        rounds=5,
        ws_n=(2, 4, 8, 16, 32, 64),
        ws_sizes=(1_000, 10_000, 100_000, 1_000_000, 10_000_000),
        ws_max_elems=8 * 10**7,
        step_models=("gpt2-100k", "gpt2-1m", "gpt2-5m", "gpt2-20m"),
        step_n=(2, 8, 32),
        step_mgda_max_nd=2 * 10**8,
        step_batch=(4, 32),
        mn_n=(2, 8, 32, 64, 128),
        mn_seeds=5,
    ),
}

# GPT-2-shaped models (pre-LayerNorm decoder, tied embeddings, GELU MLP of width 4h): layers,
# heads, width. The vocabulary is cut to 2048 so that the embedding does not dominate small
# models (GPT-2's own 50257 x 768 table alone is 3.9e7 parameters).
GPT2_SHAPES: dict[str, tuple[int, int, int]] = {
    "gpt2-nano": (1, 2, 16),
    "gpt2-100k": (2, 2, 32),
    "gpt2-1m": (4, 4, 128),
    "gpt2-5m": (6, 4, 256),
    "gpt2-20m": (6, 8, 512),
}
GPT2_VOCAB = 2048


def current_profile(config: Any | None = None, name: str | None = None) -> Profile:
    """The profile named, else chosen by ``--bench-profile`` or the environment (default full)."""
    if name is None and config is not None:
        name = config.getoption("--bench-profile", default=None)
    name = name or os.environ.get(PROFILE_ENV, "full")
    if name not in PROFILE_TABLE:
        raise ValueError(f"unknown benchmark profile {name!r}; choose one of {PROFILES}")
    return PROFILE_TABLE[name]


def loadavg() -> list[float] | None:
    """``/proc/loadavg``'s three load averages; None where the file does not exist."""
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge the numbers."""
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "closed_form_cpu": _native.status(),
    }


def summarize(samples: dict[str, list[float]], baseline: str | None = None) -> dict[str, Any]:
    """Medians, quartiles and (if ``baseline``) medians of per-round ratios to the baseline."""
    out: dict[str, Any] = {"median_s": {}, "q1_s": {}, "q3_s": {}, "samples_s": samples}
    for k, v in samples.items():
        qs = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0], v[0], v[0]]
        out["median_s"][k] = statistics.median(v)
        out["q1_s"][k] = qs[0]
        out["q3_s"][k] = qs[2]
    if baseline is not None:
        base = samples[baseline]
        out["ratio_to"] = baseline
        out["ratio"] = {
            k: statistics.median([a / b for a, b in zip(v, base, strict=True)])
            for k, v in samples.items()
        }
    return out


def peak_allocated_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes held by torch's CPU allocator during ``fn()``, above what was live before.

    Read from the allocation/free events that ``torch.profiler`` records with
    ``profile_memory=True`` (every tensor allocation through the c10 CPU allocator, signed
    sizes, in time order); the running sum's maximum is the peak. The suites run on the CPU
    even where a GPU is present (bench/gpu_step.py measures the GPU), so the CPU allocator
    is always the one to read.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return int(peak)


def run_interleaved(
    variants: dict[str, Callable[[], Any]],
    rounds: int,
    baseline: str | None = None,
    seed: int = 0,
    target_s: float = 0.0,
    max_rounds: int = 50,
    benchmark: Any | None = None,
) -> dict[str, Any]:
    """Time every variant once per round, in a fresh random order each round; summarise.

    ``rounds`` is a minimum: if a round is short, up to ``max_rounds`` rounds are run to fill
    ``target_s`` seconds. With a pytest-benchmark ``benchmark`` fixture, it drives the rounds
    (its own statistics then describe a whole round); without one they run in a plain loop.
    The per-variant samples, medians and per-round ratios are returned (see
    :func:`summarize`).
    """
    rng = random.Random(seed)
    names = list(variants)
    samples: dict[str, list[float]] = {k: [] for k in names}
    recording = [False]

    def one_round() -> None:
        order = names[:]
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            variants[name]()
            dt = time.perf_counter() - t0
            if recording[0]:
                samples[name].append(dt)

    t0 = time.perf_counter()
    one_round()  # warm-up: first calls pay for allocation and kernel selection
    round_s = time.perf_counter() - t0
    if target_s > 0:
        # Cheap cases get more rounds: medians of many short samples shrug off preemption.
        rounds = max(rounds, min(max_rounds, int(target_s / max(round_s, 1e-6))))
    recording[0] = True
    if benchmark is not None:
        benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    else:
        for _ in range(rounds):
            one_round()
    return summarize(samples, baseline)
