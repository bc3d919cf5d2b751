"""The closed form and the generic combiner against what they replaced, as ratios in one run.

Run from the repository root (one intra-op thread, as the suites)::

    OMP_NUM_THREADS=1 python bench/closed_form_passes.py

Part 1: s* (``pama_advantages``, ``noon=False``), s* with the weights (``pama_closed_form``,
no clipping; and ``pama_advantages(..., return_weights=True)``, Noon clipping, the RL caller's
path) over an n x N float32 input, against a copy of that input into a
preallocated buffer, and the whole-tensor formulas (``amin``/``amax``, three tie masks) in the
same interleaved rounds. Part 2: the full training update of the suite ``full_step``
(gpt2-100k) with the generic PAMA combiner, its n gradients batched or one backward each, as
ratios to the linear update. docs/benchmarks.md quotes both.
"""

from __future__ import annotations

import torch
from paretoopt.integrations.bench.full_step import StepBench
from paretoopt.integrations.bench.lib import run_interleaved

from paretoopt import PAMA, pama_advantages, pama_closed_form


def whole_tensor_s_star(a: torch.Tensor) -> torch.Tensor:
    mn, mx = a.amin(0), a.amax(0)
    torch.dot(mn, mx)  # the finiteness probe
    return mn.clamp_min_(0).add_(mx.clamp_max_(0))


def whole_tensor_weights(a: torch.Tensor) -> torch.Tensor:
    mn, mx = a.amin(0), a.amax(0)
    is_min, is_max, is_zero = (a == mn).float(), (a == mx).float(), (a == 0).float()
    n_min, n_max, n_zero = is_min.sum(0), is_max.sum(0), is_zero.sum(0)
    all_pos, all_neg, has_zero = mn > 0, mx < 0, n_zero > 0
    lam = (-mn / (mx - mn).clamp_min(torch.finfo(torch.float32).tiny)).clamp(0, 1)
    mixed = ~(all_pos | all_neg | has_zero)
    share_min = torch.where(all_pos, 1.0, torch.where(mixed, 1 - lam, 0.0))
    share_max = torch.where(all_neg, 1.0, torch.where(mixed, lam, 0.0))
    w = is_min * (share_min / n_min)
    w += is_max * (share_max / n_max)
    w += is_zero * (has_zero.float() / n_zero.clamp_min(1))
    return w


def weight_selection_case(n: int, size: int) -> str:
    a = torch.randn(n, size, generator=torch.Generator().manual_seed(n))
    dst = torch.empty_like(a)
    variants = {
        "copy": lambda: dst.copy_(a),
        "s_star": lambda: pama_advantages(a, noon=False),
        "s_star_was": lambda: whole_tensor_s_star(a),
    }
    if n * size <= 8 * 10**7:
        variants["weights"] = lambda: pama_closed_form(a)
        variants["weights_noon"] = lambda: pama_advantages(a, return_weights=True)
    if n * size <= 2 * 10**7:
        variants["weights_was"] = lambda: whole_tensor_weights(a)
    r = run_interleaved(variants, 5, baseline="copy", target_s=3.0)["ratio"]
    nan = float("nan")
    return (
        f"n={n} N={size:.0e}: s* {r['s_star']:.2f}x (was {r['s_star_was']:.2f}x), "
        f"s* + weights {r.get('weights', nan):.2f}x (was {r.get('weights_was', nan):.2f}x), "
        f"Noon s* + weights {r.get('weights_noon', nan):.2f}x"
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
    print("n x N float32 input: time / copy of the input (same rounds)")
    for size in (10**6, 10**7):
        for n in (2, 4, 8, 16, 64):
            if n * size <= 16 * 10**7:
                print(weight_selection_case(n, size), flush=True)
    print("gpt2-100k, generic PAMA combiner: full update / linear update (same rounds)")
    for n in (2, 8, 32):
        print(generic_combiner_case(n), flush=True)
