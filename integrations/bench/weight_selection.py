"""Suite 1 (``weight_selection``): choosing the weights alone.

PAMA's closed form over n x N per-element coefficients (N = tokens in RL) against MGDA's
Gram matrix + min-norm solve over n x d per-objective gradients (d = parameters), with a
same-run memory copy of the n x N input as the bandwidth roofline.

Variants, all timed in the same interleaved rounds:

* ``copy``: ``y.copy_(x)`` of the n x N float32 input: reads and writes n N floats, the
  roofline a single pass over the coefficients cannot beat by more than 2x.
* ``pama_s_star``: :math:`s^* = \\mathrm{relu}(\\min_i a_i) - \\mathrm{relu}(-\\max_i a_i)`,
  the core's formula without the weights (all an RL update needs).
* ``pama_s_star_chunked``: the same formula over 64K-column blocks (one pass from memory).
* ``pama_advantages``: :func:`paretoopt.pama_advantages` (``noon=False``, no weights), the
  core's own s* path: one ``amin``/``amax`` pass with finiteness checked on the reductions.
* ``pama_closed_form``: :func:`paretoopt.pama_closed_form`, s* and the simplex weights.
* ``mgda_gram_solve``: :func:`paretoopt.gram_matrix` (float64) + :func:`paretoopt.min_norm_weights`.
* ``mgda_solve``: the min-norm solve alone on that Gram matrix.
"""

from __future__ import annotations

from typing import Any

import torch

from paretoopt import gram_matrix, min_norm_weights, pama_advantages, pama_closed_form

from .lib import Profile, run_interleaved

CHUNK = 1 << 16
# pama_closed_form with weights holds ~10 n x N temporaries: keep it to what fits in memory.
CLOSED_FORM_WEIGHTS_MAX_ELEMS = 2 * 10**7


def bench_cases(profile: Profile) -> list[tuple[int, int]]:
    return [
        (n, size)
        for size in profile.ws_sizes
        for n in profile.ws_n
        if n * size <= profile.ws_max_elems
    ]


def case_id(case: tuple[int, int]) -> str:
    return f"n{case[0]}-size{case[1]:.0e}".replace("+0", "")


def s_star(a: torch.Tensor) -> torch.Tensor:
    return torch.relu(a.amin(0)) - torch.relu(-a.amax(0))


def s_star_chunked(a: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    # Each block of columns is read once from memory and then reduced twice from cache.
    out = torch.empty(a.shape[1], dtype=a.dtype)
    for start in range(0, a.shape[1], chunk):
        block = a[:, start : start + chunk]
        torch.sub(
            torch.relu(block.amin(0)), torch.relu(-block.amax(0)), out=out[start : start + chunk]
        )
    return out


def measure(
    case: tuple[int, int], profile: Profile, benchmark: Any | None = None
) -> dict[str, Any]:
    """Time one case's variants in the same rounds; return what the report reads of it."""
    n, size = case
    gen = torch.Generator().manual_seed(n * 1_000_003 + size)
    coefs = torch.randn(n, size, generator=gen)  # PAMA: n x N coefficients
    jac = torch.randn(n, size, generator=gen)  # MGDA: n x d gradients
    copy_dst = torch.empty_like(coefs)
    gram = gram_matrix(jac)

    # Sanity before timing: every variant computes the same s*.
    reference = s_star(coefs)
    checks = {
        "s_star_chunked": s_star_chunked(coefs),
        "pama_advantages": pama_advantages(coefs, noon=False),
    }
    if n * size <= 10**6:
        checks["pama_closed_form"] = pama_closed_form(coefs)[0]
    for name, value in checks.items():
        if not torch.equal(value, reference):
            raise RuntimeError(f"weight_selection {case_id(case)}: {name} differs from s*")

    variants = {
        "copy": lambda: copy_dst.copy_(coefs),
        "pama_s_star": lambda: s_star(coefs),
        "pama_s_star_chunked": lambda: s_star_chunked(coefs),
        "pama_advantages": lambda: pama_advantages(coefs, noon=False),
        "mgda_gram_solve": lambda: min_norm_weights(gram_matrix(jac)),
        "mgda_solve": lambda: min_norm_weights(gram),
    }
    if n * size <= CLOSED_FORM_WEIGHTS_MAX_ELEMS:
        variants["pama_closed_form"] = lambda: pama_closed_form(coefs)
    info: dict[str, Any] = {
        "suite": "weight_selection",
        "n": n,
        "size": size,
        "bytes_in": coefs.numel() * 4,
    }
    info.update(
        run_interleaved(
            variants,
            profile.rounds,
            baseline="copy",
            target_s=profile.target_s,
            benchmark=benchmark,
        )
    )
    return info
