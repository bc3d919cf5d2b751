"""The closed form's compiled CPU kernel: found, checked, refused, and equal to the formulas.

The kernel's results against the torch formulas to the bit (every block size, ragged blocks,
two threads) are in tests/test_core_closed_form.py, parametrised over both paths.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from unittest import mock

import pytest
import torch
from test_core_closed_form import assert_same_bits, reference_closed_form, small_blocks

import paretoopt._closed_form as cf_impl
import paretoopt._native as native
from paretoopt import pama_advantages, pama_closed_form

needs_kernel = pytest.mark.skipif(
    native._compiler() is None, reason="no C compiler on this machine"
)


@pytest.fixture
def fresh_loader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """An empty cache and a loader that forgets what it loaded (restored afterwards)."""
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path / "cache"))
    native.kernels.cache_clear()
    yield tmp_path / "cache"
    native.kernels.cache_clear()


@needs_kernel
def test_a_compiler_here_means_the_kernel_is_used() -> None:
    assert native.kernels() is not None, native.status()
    assert native.status().startswith("compiled kernel: ")


@needs_kernel
def test_builds_into_a_private_cache_once(fresh_loader: Path) -> None:
    assert native.kernels() is not None, native.status()
    (lib,) = fresh_loader.glob("closed_form-*.so")
    assert stat.S_IMODE(fresh_loader.stat().st_mode) == 0o700
    assert not list(fresh_loader.glob("*.tmp")), "a temporary file was left behind"
    built = lib.stat().st_mtime_ns
    native.kernels.cache_clear()
    assert native.kernels() is not None
    assert lib.stat().st_mtime_ns == built, "the cached library was rebuilt"


def test_switched_off_by_the_environment(fresh_loader: Path, monkeypatch) -> None:
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert native.kernels() is None
    assert native.status() == f"off: {native.ENV_SWITCH}=0"
    a = torch.randn(3, 50)
    assert_same_bits(pama_closed_form(a)[0], reference_closed_form(a)[0])
    assert not fresh_loader.exists() or not list(fresh_loader.iterdir())


def test_without_a_compiler_the_formulas_run(fresh_loader: Path, monkeypatch) -> None:
    monkeypatch.setattr(native, "_compiler", lambda: None)
    assert native.kernels() is None
    assert "no C compiler" in native.status()
    a = torch.randn(4, 70, dtype=torch.float64)
    s_star, weights = pama_closed_form(a)
    s_ref, w_ref = reference_closed_form(a)
    assert_same_bits(s_star, s_ref)
    assert_same_bits(weights, w_ref)


def test_a_failing_compiler_is_reported_not_raised(fresh_loader: Path, monkeypatch) -> None:
    monkeypatch.setattr(native, "_compiler", lambda: ["false"])
    assert native.kernels() is None
    assert "failed" in native.status()
    assert not list(fresh_loader.glob("*")), "a failed build left files behind"
    a = torch.randn(2, 9)
    assert_same_bits(pama_advantages(a, noon=False), reference_closed_form(a)[0])


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_cache_writable_by_others_is_refused(fresh_loader: Path) -> None:
    fresh_loader.mkdir(parents=True)
    fresh_loader.chmod(0o777)
    assert native.kernels() is None
    assert "writable by other users" in native.status()


def test_a_kernel_that_disagrees_is_never_used() -> None:
    class Wrong:
        def s_star(self, a, out, noon, cols):
            out.zero_()
            return False

        def closed_form(self, a, s_out, weights, noon, cols):
            s_out.zero_()
            weights.fill_(1.0 / a.shape[0])
            return False

    with pytest.raises(RuntimeError, match="disagrees with the formulas"):
        native._self_test(Wrong())  # type: ignore[arg-type]


@needs_kernel
@pytest.mark.parametrize("path", ["torch", "kernel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 9, 13, 19])
def test_a_non_finite_value_in_any_row_is_named(path: str, dtype: torch.dtype, n: int) -> None:
    # Every row of every fold group (pairs, fours, eights and the rest) is checked.
    for row in range(n):
        for bad in (float("nan"), float("inf"), float("-inf")):
            a = torch.randn(n, 23, dtype=dtype)
            a[row, 17] = bad
            with small_blocks(path):
                for fn, kwargs in (
                    (pama_closed_form, {}),
                    (pama_advantages, {"noon": False}),
                    (pama_advantages, {"noon": True}),
                ):
                    with pytest.raises(ValueError, match=f"for objective {row} contains non-fin"):
                        fn(a, **kwargs)


@needs_kernel
def test_kernel_takes_rows_that_are_not_adjacent() -> None:
    # A slice of wider rows: contiguous rows with a row stride larger than the row.
    wide = torch.randn(6, 1000)
    a = wide[:, 123:900]
    assert a.stride(0) == 1000 and native.Kernels.supports(a)
    s_star, weights = pama_closed_form(a)
    s_ref, w_ref = reference_closed_form(a.contiguous())
    assert_same_bits(s_star, s_ref)
    assert_same_bits(weights, w_ref)


def test_autograd_and_half_inputs_keep_the_torch_path() -> None:
    k = mock.MagicMock()
    with mock.patch.object(native, "kernels", return_value=k):
        a = torch.randn(3, 40, requires_grad=True)
        cf_impl._s_star(a, "a")
        pama_closed_form(torch.randn(3, 40, dtype=torch.bfloat16))
    assert not k.s_star.called and not k.closed_form.called


def test_the_backend_is_reported_publicly(fresh_loader: Path, monkeypatch) -> None:
    from paretoopt.functional import closed_form_backend

    monkeypatch.setenv(native.ENV_SWITCH, "off")
    assert closed_form_backend() == f"off: {native.ENV_SWITCH}=off"


@needs_kernel
def test_a_damaged_cached_library_is_built_again(fresh_loader: Path) -> None:
    # A library file that does not load (never one this process has mapped: builds replace
    # the file, they do not write into it).
    fresh_loader.mkdir(mode=0o700, parents=True)
    lib = native._library_path(native._compiler(), fresh_loader)
    lib.write_bytes(b"not a shared library")
    assert native.kernels() is not None, native.status()
    assert lib.read_bytes() != b"not a shared library"
