"""How the closed form is computed: the compiled CPU kernel, or torch formulas.

:func:`_s_star` and :func:`_closed_form` give s* and the simplex weights over the objective
dimension for :mod:`paretoopt.functional`: the C kernel (``_closed_form.c``, loaded by
:mod:`paretoopt._native`) where it takes the input, otherwise torch operations, blocked on the
CPU and whole-tensor elsewhere. Every path gives the same values to the bit (the sign of a zero
s* aside); tests/test_core_closed_form.py checks each against the formulas.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any

import torch
from torch import Tensor

from . import _native
from ._validation import check_finite


def _weight_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision weights lose the simplex (sum to 1) to rounding: use at least float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


# The torch formulas (where the compiled kernel does not run). On the CPU the extrema are
# folded over the objectives one block of columns at a time: the running min and max and the
# row being folded in stay in cache while the input streams from memory once, and no N-sized
# temporary is allocated (a fresh N-sized tensor costs page faults
# comparable to the reduction itself). ``amin(0)``/``amax(0)`` over a short leading dimension
# are far from bandwidth-bound there, and ``aminmax``/``argmin`` over dim 0 slower still. The
# weights of a block are computed from the block while it is in cache.
_S_STAR_BLOCK_COLS = 1 << 17
# Below this many columns (elements per objective) s* takes the whole-tensor reductions: on
# the CPU the blocked fold's fixed cost made it 1.1-1.2x slower at N = 4096 and 32768 (n = 2
# to 8), while at n = 2 the whole-tensor reductions reach 20x the copy from N = 262144.
_S_STAR_WHOLE_BELOW = 1 << 16
# The weights: blocks of at most 2^16 columns and 2^19 elements (fastest at n = 2 and 8; the
# per-operation cost of smaller blocks and the cache misses of larger ones both showed).
_WEIGHTS_BLOCK_ELEMS = 1 << 19
_WEIGHTS_BLOCK_COLS = 1 << 16
_FOLD_MIN_COLS = 1 << 10
# Fresh results at least this large are asked to be backed by transparent huge pages (Linux):
# past glibc's mmap threshold every fresh tensor is new memory, and faulting it in 4 KiB pages
# cost 5x the copy of the input (n = 2, N = 1e7), more than the closed form itself.
_HUGE_PAGE_MIN_BYTES = 1 << 23
_HUGE_PAGE = 1 << 21
_MADV_HUGEPAGE = 14


@functools.lru_cache(maxsize=1)
def _madvise() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _fresh(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``torch.empty``; on the CPU a large one advised to use huge pages before its first touch
    (as torch's own ``THP_MEM_ALLOC_ENABLE=1`` does): 512x fewer page faults. Advice only: the
    values are the same, and where the kernel has no huge pages nothing changes."""
    out = torch.empty(shape, dtype=dtype, device=device)
    nbytes = out.numel() * out.element_size()
    if out.device.type != "cpu" or nbytes < _HUGE_PAGE_MIN_BYTES:
        return out
    madvise = _madvise()
    if madvise is not None:
        # Only the whole huge pages inside the tensor's own allocation.
        first = (out.data_ptr() + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        last = (out.data_ptr() + nbytes) & ~(_HUGE_PAGE - 1)
        if last > first:
            madvise(first, last - first, _MADV_HUGEPAGE)
    return out


def _flat_objectives(a: Tensor) -> Tensor:
    """``[n, *shape]`` as ``[n, N]`` with contiguous rows (a copy only where no view has them)."""
    flat = a.reshape(a.shape[0], -1)
    return flat if flat.shape[1] <= 1 or flat.stride(1) == 1 else flat.contiguous()


# The compiled kernel (paretoopt/_closed_form.c), where it loads: s* in blocks of 4 KiB of each
# row up to 8 objectives and 16 KiB beyond; the weights in blocks of 512 bytes of each row
# (measured fastest by bench/closed_form_passes.py: longer runs of each row help s* over many
# objectives, while the running min and max of a few, and the weights' per-column scratch,
# must stay in L1).
_NATIVE_S_STAR_BYTES_FEW = 1 << 12
_NATIVE_S_STAR_BYTES_MANY = 1 << 14
_NATIVE_FEW_OBJECTIVES = 8
_NATIVE_WEIGHTS_ROW_BYTES = 1 << 9


def _native_flat(a: Tensor) -> tuple[_native.Kernels, Tensor] | None:
    """The compiled kernels and ``a`` as ``[n, N]`` if they take it (CPU, float32/64, no
    autograd), else None and the torch formulas run."""
    if (
        a.device.type != "cpu"
        or a.dtype not in (torch.float32, torch.float64)
        or a.requires_grad
        or a.numel() == 0
    ):
        return None
    kernels = _native.kernels()
    if kernels is None:
        return None
    flat = _flat_objectives(a)
    return (kernels, flat) if kernels.supports(flat) else None


def _span(t: Tensor) -> tuple[int, int]:
    """The bytes ``t`` can touch: [first, last) addresses."""
    if t.numel() == 0:
        return (t.data_ptr(), t.data_ptr())
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return (t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size())


def _overlap(x: Tensor, y: Tensor) -> bool:
    """Whether ``x`` and ``y`` may share memory (the kernel's pointers are ``restrict``: a
    caller's ``out=`` that overlaps the input is written by a copy instead)."""
    (a0, a1), (b0, b1) = _span(x), _span(y)
    return a0 < b1 and b0 < a1


def _native_s_star_cols(flat: Tensor) -> int:
    few = flat.shape[0] <= _NATIVE_FEW_OBJECTIVES
    return (_NATIVE_S_STAR_BYTES_FEW if few else _NATIVE_S_STAR_BYTES_MANY) // flat.element_size()


def _native_weights_cols(flat: Tensor) -> int:
    return max(1, _NATIVE_WEIGHTS_ROW_BYTES // flat.element_size())


def _block_extrema(block: Tensor, mn: Tensor, mx: Tensor) -> None:
    """Min and max of ``block`` ``[n, cols]`` over dim 0, written into ``mn`` and ``mx``."""
    if block.device.type != "cpu" or block.shape[1] < _FOLD_MIN_COLS:
        # Narrow blocks (the generic combiner on a small model): two reductions, not 2(n - 1)
        # operations whose fixed cost dominates.
        torch.amin(block, 0, out=mn)
        torch.amax(block, 0, out=mx)
        return
    rows = block.unbind(0)
    if len(rows) == 1:
        mn.copy_(rows[0])
        mx.copy_(rows[0])
        return
    torch.minimum(rows[0], rows[1], out=mn)
    torch.maximum(rows[0], rows[1], out=mx)
    for row in rows[2:]:
        torch.minimum(mn, row, out=mn)
        torch.maximum(mx, row, out=mx)


def _block_cols(a: Tensor, elems: int) -> int:
    n, size = a.shape
    return max(1, size if a.device.type != "cpu" else min(size, max(1, elems // n)))


def _probe(mn: Tensor, mx: Tensor) -> Tensor:
    # One dot product stands for both finiteness checks: NaN and inf survive it (inf * 0 and
    # inf - inf are NaN) and it costs a fraction of torch.isfinite(...).all(). NaN propagates
    # through the min and max and +-inf shows up in one of them, so a non-finite input always
    # gives a non-finite probe. An overflow only sends us to the exact element-wise scan.
    if mn.dtype in (torch.float32, torch.float64):
        return torch.dot(mn, mx)
    return torch.dot(mn.float(), mx.float())


def _check_probes(probes: list[Tensor], a: Tensor, name: str) -> None:
    if probes and not bool(torch.isfinite(torch.stack(probes).sum())):
        check_finite(a, name, objective_dim=0)


def _s_star(a: Tensor, name: str, noon: bool = False, dest: Tensor | None = None) -> Tensor:
    """s* over dim 0 of ``a`` ``[n, *shape]`` (with ``noon``: that of the clipped input,
    max(min_i a_i, 0)); checks finiteness. One pass over ``a``, one fresh ``shape`` tensor
    (the compiled kernel writes into a contiguous ``dest`` directly)."""
    native = _native_flat(a)
    if native is not None:
        kernels, flat = native
        direct = dest is not None and dest.is_contiguous() and not _overlap(dest, flat)
        out = dest.view(-1) if direct else _fresh((flat.shape[1],), a.dtype, a.device)
        if kernels.s_star(flat, out, noon, _native_s_star_cols(flat)):
            check_finite(a, name, objective_dim=0)
        return out.reshape(a.shape[1:])
    if a[0].numel() < _S_STAR_WHOLE_BELOW:
        # Small inputs (a batch of RLHF tokens): two whole-tensor reductions are fastest,
        # the blocked fold below costs more in per-call overhead than it saves.
        mn, mx = a.amin(dim=0), a.amax(dim=0)
        if not bool(torch.isfinite(_probe(mn.reshape(-1), mx.reshape(-1)))):
            check_finite(a, name, objective_dim=0)
        return mn.clamp_min_(0) if noon else mn.clamp_min_(0).add_(mx.clamp_max_(0))
    flat = _flat_objectives(a)
    size = flat.shape[1]
    out = _fresh((size,), a.dtype, a.device)
    cols = _block_cols(flat, _S_STAR_BLOCK_COLS * flat.shape[0])
    mn_buf = torch.empty(min(cols, size), dtype=a.dtype, device=a.device)
    mx_buf = torch.empty_like(mn_buf)
    two_rows = flat.shape[0] == 2 and a.device.type == "cpu"
    probes = []
    for start in range(0, size, cols):
        block = flat[:, start : start + cols]
        width = block.shape[1]
        mn, mx = mn_buf[:width], mx_buf[:width]
        s = out[start : start + width]
        if two_rows:
            # n = 2: s* = median(a, b, 0) = clamp(a, min(b, 0), max(b, 0)), three passes over
            # a column instead of five; the rows' dot product is the finiteness probe.
            a0, a1 = block
            probes.append(_probe(a0, a1))
            if noon:
                torch.minimum(a0, a1, out=s).clamp_min_(0)
            else:
                lo, hi = torch.clamp_max(a1, 0, out=mn), torch.clamp_min(a1, 0, out=mx)
                torch.clamp(a0, lo, hi, out=s)
            continue
        _block_extrema(block, mn, mx)
        probes.append(_probe(mn, mx))
        # relu(min) - relu(-max) = max(min, 0) + min(max, 0).
        torch.clamp_min(mn, 0, out=s)
        if not noon:
            s.add_(mx.clamp_max_(0))
    _check_probes(probes, a, name)
    return out.reshape(a.shape[1:])


def _closed_form(
    a: Tensor, name: str, noon: bool = False, dest: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """s* and the simplex weights attaining it (see :func:`pama_closed_form` for the choice)
    over dim 0 of ``a`` ``[n, *shape]``; with ``noon``, of the clipped input max(a, 0).

    Per block of columns, in cache: the min and max, s*, then the group that s* names: the
    objectives equal to s* (all > 0: those at the min; all < 0: at the max; some zero: the
    zeros), written as 0/1 in the weight dtype, counted and scaled by one over the count. Only
    where no objective equals s* (mixed strict signs, s* = 0 with no zero; never with
    ``noon``) are the min and max groups needed: their indicators, counts and shares
    (1 - lambda, lambda) are added for those columns alone, in blocks that have any. Every
    weight is one exact term (a group's share over its count) plus exact zeros. The compiled
    kernel writes into ``dest`` (s* ``[*shape]``, weights ``[n, *shape]``) where both are
    contiguous; the caller copies into it otherwise.
    """
    native = _native_flat(a)
    if native is not None:
        kernels, flat = native
        n, size = flat.shape
        if (
            dest is not None
            and all(d.is_contiguous() and not _overlap(d, flat) for d in dest)
            and not _overlap(dest[0], dest[1])
        ):
            s_out, weights = dest[0].view(size), dest[1].view(n, size)
        else:
            s_out = _fresh((size,), a.dtype, a.device)
            weights = _fresh((n, size), a.dtype, a.device)  # float32/64: the weight dtype
        if kernels.closed_form(flat, s_out, weights, noon, _native_weights_cols(flat)):
            check_finite(a, name, objective_dim=0)
        return s_out.reshape(a.shape[1:]), weights.reshape(a.shape)
    flat = _flat_objectives(a)
    n, size = flat.shape
    wd = _weight_dtype(a.dtype)
    tiny = torch.finfo(wd).tiny
    s_out = _fresh((size,), a.dtype, a.device)
    weights = _fresh((n, size), wd, a.device)
    cols = min(_block_cols(flat, _WEIGHTS_BLOCK_ELEMS), _WEIGHTS_BLOCK_COLS)
    width0 = min(cols, size)
    # Every temporary of the loop lives in these buffers: a fresh block-sized tensor per
    # operation would cost an allocation (and, past malloc's mmap threshold, page faults).
    ext = torch.empty(3, width0, dtype=a.dtype, device=a.device)
    col = torch.empty(6, width0, dtype=wd, device=a.device)
    at_buf = torch.empty(n, width0, dtype=wd, device=a.device)
    probes = []
    for start in range(0, size, cols):
        block = flat[:, start : start + cols]
        width = block.shape[1]
        mn, mx, mx_neg = ext[:, :width]
        count, mixed, lam, c_min, c_max, n_ext = col[:, :width]
        _block_extrema(block, mn, mx)
        s = s_out[start : start + width]
        w = weights[:, start : start + width]
        if noon:
            # The clipped block's min is max(min, 0), its max max(max, 0) (-inf clips to 0).
            torch.clamp_min(mn, 0, out=s)
            probes.append(_probe(s, mx.clamp_min_(0)))
            # Clipped entries are >= s*, so "clipped == s*" is "raw <= s*" (all <= 0 clip to 0).
            torch.le(block, s, out=w)
        else:
            probes.append(_probe(mn, mx))
            # relu(min) - relu(-max) = max(min, 0) + min(max, 0).
            torch.clamp_min(mn, 0, out=s).add_(torch.clamp_max(mx, 0, out=mx_neg))
            torch.eq(block, s, out=w)
        torch.sum(w, 0, out=count)
        torch.eq(count, 0, out=mixed)
        # One over the count of the group s* names; 0 / 1 where there is none (mixed).
        w.div_(count.clamp_min_(1))
        if noon or not bool(mixed.any()):
            continue
        # Mixed strict signs: lambda * max + (1 - lambda) * min = 0, lambda = -min / (max - min)
        # in [0, 1]; (-x) / y and -(x / y) round alike. Each group uniform over its ties.
        mnf, mxf = mn.to(wd), mx.to(wd)
        torch.sub(mxf, mnf, out=lam).clamp_min_(tiny)
        over = torch.isinf(lam)  # max - min overflowed: values near the dtype's max
        torch.div(mnf, lam, out=lam).neg_()
        if bool(over.any()):
            # -(min / 2) / (max / 2 - min / 2) is the same lambda, and computable there.
            halves = (mnf * 0.5).div_(mxf * 0.5 - mnf * 0.5).neg_()
            lam.copy_(torch.where(over, halves, lam))
        lam.clamp_(0, 1)
        at = at_buf[:, :width]
        torch.eq(block, mn, out=at)
        torch.sub(1, lam, out=c_min).div_(torch.sum(at, 0, out=n_ext)).mul_(mixed)
        w.addcmul_(at, c_min)
        torch.eq(block, mx, out=at)
        torch.div(lam, torch.sum(at, 0, out=n_ext), out=c_max).mul_(mixed)
        w.addcmul_(at, c_max)
    _check_probes(probes, a, name)
    return s_out.reshape(a.shape[1:]), weights.reshape(a.shape)
