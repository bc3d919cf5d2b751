"""The closed form and the generic combiner against what they replaced, as ratios in one run.

Run from the repository root (one intra-op thread, as the suites)::

    OMP_NUM_THREADS=1 python bench/closed_form_passes.py

Part 1: s* (``pama_advantages``, ``noon=False``: into a fresh result, and into a caller's
``out=``), s* with the weights (``pama_closed_form``, no clipping, fresh and into ``out=``; and
``pama_advantages(..., return_weights=True)``, Noon clipping, the RL caller's path) over an
n x N float32 input, against a copy of that input into a preallocated buffer, each by the
compiled kernel (paretoopt/_closed_form.c, where it loads) and by the torch formulas
(``PARETOOPT_NATIVE=0``'s path), in the same interleaved rounds; then the kernel's calls split
over two threads against one (and against a copy on as many). Part 2: the full training
update of the suite ``full_step`` (gpt2-100k) with the generic PAMA combiner, its n gradients
batched or one backward each, as ratios to the linear update. docs/benchmarks.md quotes both.
"""

from __future__ import annotations

from collections.abc import Callable
from unittest import mock

import torch
from paretoopt.integrations.bench.full_step import StepBench
from paretoopt.integrations.bench.lib import run_interleaved

from paretoopt import PAMA, _native, pama_advantages, pama_closed_form


def torch_formulas(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with the compiled kernel switched off (the torch formulas' path)."""

    def run() -> object:
        with mock.patch.object(_native, "kernels", lambda: None):
            return fn()

    return run


def weight_selection_case(n: int, size: int) -> str:
    a = torch.randn(n, size, generator=torch.Generator().manual_seed(n))
    dst = torch.empty_like(a)
    out = torch.empty(size)
    variants = {
        "copy": lambda: dst.copy_(a),
        "s_star": lambda: pama_advantages(a, noon=False),
        "s_star_out": lambda: pama_advantages(a, noon=False, out=out),
        "s_star_torch": torch_formulas(lambda: pama_advantages(a, noon=False)),
    }
    if n * size <= 8 * 10**7:
        variants["weights"] = lambda: pama_closed_form(a)
        s_buf, w_buf = torch.empty(size), torch.empty(n, size)
        variants["weights_out"] = lambda: pama_closed_form(a, out=(s_buf, w_buf))
        variants["weights_noon"] = lambda: pama_advantages(a, return_weights=True)
        variants["weights_torch"] = torch_formulas(lambda: pama_closed_form(a))
        variants["weights_noon_torch"] = torch_formulas(
            lambda: pama_advantages(a, return_weights=True)
        )
    r = run_interleaved(variants, 5, baseline="copy", target_s=3.0)["ratio"]
    nan = float("nan")
    return (
        f"n={n} N={size:.0e}: s* {r['s_star']:.2f}x, into out= {r['s_star_out']:.2f}x "
        f"(torch {r['s_star_torch']:.2f}x); s* + weights {r.get('weights', nan):.2f}x, "
        f"into out= {r.get('weights_out', nan):.2f}x (torch {r.get('weights_torch', nan):.2f}x); "
        "Noon s* + weights "
        f"{r.get('weights_noon', nan):.2f}x (torch {r.get('weights_noon_torch', nan):.2f}x)"
    )


def threads_case(n: int, size: int, threads: int) -> str:
    """The kernel split over ``threads`` threads (by columns) against the same calls on one,
    and each against a copy on as many threads, in the same rounds."""
    a = torch.randn(n, size, generator=torch.Generator().manual_seed(n))
    dst, out = torch.empty_like(a), torch.empty(size)
    s_buf, w_buf = torch.empty(size), torch.empty(n, size)

    def on(k: int, fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            torch.set_num_threads(k)
            try:
                return fn()
            finally:
                torch.set_num_threads(1)

        return run

    variants = {}
    for k in (1, threads):
        variants[f"copy{k}"] = on(k, lambda: dst.copy_(a))
        variants[f"s{k}"] = on(k, lambda: pama_advantages(a, noon=False, out=out))
        variants[f"w{k}"] = on(k, lambda: pama_closed_form(a, out=(s_buf, w_buf)))
    r = run_interleaved(variants, 5, baseline="copy1", target_s=3.0)["ratio"]
    k = threads
    return (
        f"n={n} N={size:.0e}, {k} threads: s* {r[f's{k}'] / r[f'copy{k}']:.2f}x a copy on {k} "
        f"(one thread: {r['s1']:.2f}x), {r['s1'] / r[f's{k}']:.2f}x faster; s* + weights "
        f"{r[f'w{k}'] / r[f'copy{k}']:.2f}x (one thread: {r['w1']:.2f}x), "
        f"{r['w1'] / r[f'w{k}']:.2f}x faster"
    )


def generic_combiner_case(n: int) -> str:
    sb = StepBench("gpt2-100k", n, (4, 32))
    looped = PAMA()
    looped._batched[0] = False

    def loop_step() -> None:
        sb.opt.zero_grad(set_to_none=True)
        losses, u, _ = sb._losses()
        looped(losses, shared=u).loss.backward()
        sb.opt.step()

    variants = {
        "linear": lambda: sb.step("linear"),
        "batched": lambda: sb.step("pama"),
        "one_backward_each": loop_step,
    }
    r = run_interleaved(variants, 5, baseline="linear", target_s=4.0)["ratio"]
    return f"n={n}: batched {r['batched']:.3f}x, one backward each {r['one_backward_each']:.3f}x"


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"closed form on the CPU: {_native.status()}")
    print("n x N float32 input: time / copy of the input (same rounds)")
    for size in (10**6, 10**7):
        for n in (2, 4, 8, 16, 64):
            if n * size <= 16 * 10**7:
                print(weight_selection_case(n, size), flush=True)
    print("the kernel on two threads (into out=)")
    for n, size in ((2, 10**7), (8, 10**7), (8, 10**6)):
        print(threads_case(n, size, 2), flush=True)
    print("gpt2-100k, generic PAMA combiner: full update / linear update (same rounds)")
    for n in (2, 8, 32):
        print(generic_combiner_case(n), flush=True)
