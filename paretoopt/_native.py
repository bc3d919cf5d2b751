"""The closed form's compiled CPU kernel: ``_closed_form.c``, built at first use.

Each torch operation is one pass over its operands, so the closed form written in torch
operations reads the input several times (the min and the max are two reductions, the weights
a handful of masks); on the CPU over a short objective dimension those passes, not memory,
set the time. The C kernel folds the rows into the extrema in one pass from memory and
computes the weights from the block while it is in cache.

When a C compiler is found (``$CC``, Python's own compiler, ``cc``, ``gcc`` or ``clang``) the
kernel is compiled once into ``$PARETOOPT_CACHE_DIR`` (default ``~/.cache/paretoopt``),
checked against the torch formulas on a fixed example, and loaded with ctypes. Without a
compiler, on any failure, or with ``PARETOOPT_NATIVE=0``, the torch formulas compute the same
values. :func:`status` says which path is in use and why.

Nothing from a configuration or from the user is compiled or executed: only the C file that
ships inside the package, into a directory owned by the user and not writable by others.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["Kernels", "kernels", "status"]

log = logging.getLogger("paretoopt")

ENV_SWITCH = "PARETOOPT_NATIVE"
ENV_CACHE = "PARETOOPT_CACHE_DIR"
SOURCE = Path(__file__).with_name("_closed_form.c")
ABI_VERSION = 1
# No contraction into fused multiply-adds and no fast-math: every value is one IEEE operation
# of the torch formula, so the results agree to the bit.
FLAGS = (
    "-O3",
    "-std=c99",
    "-fPIC",
    "-shared",
    "-ffp-contract=off",
    "-fno-strict-aliasing",
    # Lets the branch-free selects of a column vectorise; floating-point exceptions are never
    # trapped here, and no value changes.
    "-fno-trapping-math",
)
COMPILE_TIMEOUT_S = 120
# The C side's per-block scratch holds at most this many columns.
MAX_COLS = 4096
# Below this many elements a call runs on one thread: a worker hand-off costs more.
PARALLEL_MIN_ELEMS = 1 << 20

_state: dict[str, str] = {"status": "not loaded yet"}
_lock = threading.Lock()


def status() -> str:
    """Which closed-form path the CPU uses: ``"compiled kernel: PATH"`` or why not."""
    kernels()
    return _state["status"]


def _compiler() -> list[str] | None:
    candidates = [os.environ.get("CC", ""), sysconfig.get_config_var("CC") or ""]
    candidates += ["cc", "gcc", "clang"]
    for cand in candidates:
        parts = shlex.split(cand)
        if parts and shutil.which(parts[0]):
            return [shutil.which(parts[0]) or parts[0], *parts[1:]]
    return None


def _cache_dir() -> Path:
    root = os.environ.get(ENV_CACHE)
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "paretoopt" if xdg else Path.home() / ".cache" / "paretoopt"


def _private_dir(path: Path) -> str | None:
    """Create ``path`` (mode 0700); the reason it cannot hold a library we load, or None."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{path} belongs to another user"
    if st.st_mode & 0o022:
        return f"{path} is writable by other users"
    return None


def _build(cc: list[str], target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        cmd = [*cc, *FLAGS, "-o", tmp, str(SOURCE.resolve())]
        done = subprocess.run(  # a fixed argument list, no shell
            cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"{shlex.join(cmd)} failed: {' | '.join(tail)}")
        os.replace(tmp, target)  # atomic: another process sees the old file or the whole new one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.lru_cache(maxsize=1)
def kernels() -> Kernels | None:
    """The loaded kernels, or None (then :func:`status` says why)."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        _state["status"] = f"off: {ENV_SWITCH}={os.environ[ENV_SWITCH]}"
        return None
    try:
        return _load()
    except Exception as exc:  # any failure leaves the torch formulas, which are always right
        _state["status"] = f"off: {exc}"
        log.debug("paretoopt: closed-form kernel unavailable: %s", exc)
        return None


def _library_path(cc: list[str], cache: Path) -> Path:
    """The library's name: a hash of the source, the compiler and the flags."""
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), repr((cc, FLAGS, sys.platform, platform.machine()))):
        key.update(part if isinstance(part, bytes) else part.encode())
    return cache / f"closed_form-{key.hexdigest()[:16]}.so"


def _load() -> Kernels:
    if not SOURCE.is_file():
        raise RuntimeError(f"{SOURCE.name} is missing from the installed package")
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found ($CC, cc, gcc, clang)")
    cache = _cache_dir()
    refusal = _private_dir(cache)
    if refusal:
        raise RuntimeError(refusal)
    lib_path = _library_path(cc, cache)
    with _lock:
        if not lib_path.is_file():
            _build(cc, lib_path)
    try:
        lib = ctypes.CDLL(str(lib_path))
    except OSError:
        # A damaged cached library (a full disk, an interrupted copy): built again, once.
        with _lock:
            _build(cc, lib_path)
        lib = ctypes.CDLL(str(lib_path))
    loaded = Kernels(lib)
    _self_test(loaded)
    _state["status"] = f"compiled kernel: {lib_path}"
    return loaded


_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p


@dataclass
class Kernels:
    """ctypes bindings of the kernels; the calls release the GIL, so large inputs are split
    over ``torch.get_num_threads()`` threads by columns."""

    lib: ctypes.CDLL

    def __post_init__(self) -> None:
        if self.lib.paretoopt_abi_version() != ABI_VERSION:
            raise RuntimeError("the compiled kernel has another ABI version")
        self._fns = {}
        for dtype, sfx in ((torch.float32, "f32"), (torch.float64, "f64")):
            s_star = getattr(self.lib, f"paretoopt_s_star_{sfx}")
            s_star.argtypes = [_PTR, _I64, _I64, _I64, _I64, _I64, _PTR, ctypes.c_int]
            s_star.restype = ctypes.c_int
            closed = getattr(self.lib, f"paretoopt_closed_form_{sfx}")
            closed.argtypes = [_PTR, _I64, _I64, _I64, _I64, _I64, _PTR, _PTR, _I64, ctypes.c_int]
            closed.restype = ctypes.c_int
            self._fns[dtype] = (s_star, closed)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_key: tuple[int, int] = (0, 0)

    @staticmethod
    def supports(a: Tensor) -> bool:
        """``a`` ``[n, N]``: a CPU float32/float64 tensor with contiguous rows and no autograd."""
        return (
            a.device.type == "cpu"
            and a.dtype in (torch.float32, torch.float64)
            and a.dim() == 2
            and (a.shape[1] <= 1 or a.stride(1) == 1)
            and not a.requires_grad
            and not a.is_neg()
        )

    def _spans(self, n: int, size: int, cols: int) -> list[tuple[int, int]]:
        threads = torch.get_num_threads()
        if threads <= 1 or n * size < PARALLEL_MIN_ELEMS:
            return [(0, size)]
        # Whole blocks per thread, the same number of spans on every call of this thread count.
        per = -(-size // threads)
        per = -(-per // cols) * cols
        return [(b, min(b + per, size)) for b in range(0, size, per)]

    def _run(self, calls: list) -> int:
        if len(calls) == 1:
            return calls[0]()
        # One pool per process (threads do not survive a fork) and thread count; _spans
        # makes at most that many calls.
        key = (os.getpid(), max(torch.get_num_threads(), len(calls)))
        if self._pool is None or self._pool_key != key:
            if self._pool is not None and self._pool_key[0] == key[0]:
                self._pool.shutdown(wait=False)
            self._pool = concurrent.futures.ThreadPoolExecutor(key[1], "paretoopt-cf")
            self._pool_key = key
        bad = 0
        for result in self._pool.map(lambda f: f(), calls):
            bad |= result
        return bad

    def s_star(self, a: Tensor, out: Tensor, noon: bool, cols: int) -> bool:
        """s* of ``a`` ``[n, N]`` into ``out`` ``[N]``; True if an input may be non-finite."""
        return self._launch(0, a, cols, (out.data_ptr(), int(noon)))

    def closed_form(self, a: Tensor, s_out: Tensor, weights: Tensor, noon: bool, cols: int) -> bool:
        """s* into ``s_out`` ``[N]`` and the weights into ``weights`` ``[n, N]`` (contiguous,
        ``a``'s dtype); True if an input may be non-finite."""
        outs = (s_out.data_ptr(), weights.data_ptr(), weights.stride(0), int(noon))
        return self._launch(1, a, cols, outs)

    def _launch(self, which: int, a: Tensor, cols: int, outs: tuple[int, ...]) -> bool:
        """Kernel ``which`` (0: s*, 1: with weights) over ``a``'s columns, split by _spans;
        both take (a, n, row stride, begin, end, cols, *outs)."""
        n, size = a.shape
        fn = self._fns[a.dtype][which]
        cols = max(1, min(cols, MAX_COLS))
        args = (a.data_ptr(), n, a.stride(0))
        calls = [
            functools.partial(fn, *args, b, e, cols, *outs) for b, e in self._spans(n, size, cols)
        ]
        code = self._run(calls)
        if code < 0:
            raise RuntimeError("closed-form kernel: block size out of range")
        return code != 0


def _self_test(k: Kernels) -> None:
    """The kernel against the formulas on a fixed example (ties, zeros, mixed signs, all
    positive and all negative columns): a miscompiled library is never used."""
    a = torch.tensor(
        [
            [3.0, -1.0, 0.0, 2.0, -2.0, 1.5, -0.5],
            [1.0, 2.0, 5.0, 2.0, -1.0, -1.5, -0.5],
            [1.0, -1.0, -3.0, 4.0, -2.0, 0.5, -0.25],
        ],
        dtype=torch.float64,
    )
    for dtype in (torch.float32, torch.float64):
        x = a.to(dtype)
        mn, mx = x.amin(0), x.amax(0)
        expect = mn.clamp_min(0) + mx.clamp_max(0)
        s = torch.empty_like(expect)
        s2 = torch.empty_like(expect)
        w = torch.empty_like(x)
        if k.s_star(x, s, False, 3) or k.closed_form(x, s2, w, False, 3):
            raise RuntimeError("the compiled kernel flagged finite input")
        ok = torch.equal(s, expect) and torch.equal(s2, expect)
        ok = ok and torch.allclose(w.sum(0), torch.ones_like(expect))
        ok = ok and torch.allclose((w * x).sum(0), expect, atol=1e-6)
        if not ok:
            raise RuntimeError("the compiled kernel disagrees with the formulas; not used")
