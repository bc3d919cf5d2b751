#!/usr/bin/env bash
# Install the built wheel into a fresh virtual environment outside the checkout and use it as
# a new user would: `paretoopt example`, `paretoopt bench --quick`, the CLI's help pages and
# the integrations' imports. Called by `make wheel-check` (which sets PY, PIP_FLAGS and
# TORCH_VERSION the way the Makefile installs the development environment).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
read -r -a PIP_FLAGS <<<"${PIP_FLAGS:-}"
# The committed lock as constraints (set by the Makefile), so CI resolves what the tests did.
if [[ -n "${LOCK:-}" ]]; then PIP_FLAGS+=(-c "$(cd "$(dirname "$LOCK")" && pwd)/$(basename "$LOCK")"); fi
TMP=$(mktemp -d "${TMPDIR:-/tmp}/paretoopt-wheel-check.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
start=$SECONDS
phase() { echo "wheel-check: $1 ($((SECONDS - start)) s)"; }

# A stale build/ can carry deleted modules into the wheel: build from a clean one.
rm -rf build
if ! "$PY" -m pip wheel . --no-deps --no-build-isolation -q -w "$TMP/dist" >"$TMP/build.log" 2>&1; then
    cat "$TMP/build.log"
    echo "wheel-check: building the wheel failed" >&2
    exit 1
fi
rm -rf build
WHEEL=$(ls "$TMP"/dist/paretoopt-*.whl)
phase "built $(basename "$WHEEL")"

# The same interpreter as the development environment; torch first, as the Makefile does.
BASE=$("$PY" -c 'import sys; print(sys._base_executable)')
"$BASE" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
"$VPY" -m pip install -q --no-compile "${PIP_FLAGS[@]}" "torch==$TORCH_VERSION"
phase "fresh venv with torch $TORCH_VERSION"
"$VPY" -m pip install -q --no-compile "${PIP_FLAGS[@]}" "$WHEEL[hf,trl,bench,zoo]"
phase "installed the wheel with [hf,trl,bench,zoo]"

# The C kernel compiled from the installed source, into a cache of its own.
export PARETOOPT_CACHE_DIR="$TMP/cache"

# Outside the checkout, with nothing of it on the path.
mkdir "$TMP/user" && cd "$TMP/user"
unset PYTHONPATH
"$VPY" - "$TMP/venv" <<'PY'
import importlib.util
import sys
from pathlib import Path

import paretoopt
import paretoopt.integrations.hf
import paretoopt.integrations.trl
from paretoopt.integrations.hf import MOPPOTrainer  # noqa: F401
from paretoopt.integrations.trl import PAMAGRPOTrainer  # noqa: F401

venv = Path(sys.argv[1]).resolve()
assert venv in Path(paretoopt.__file__).resolve().parents, paretoopt.__file__
assert importlib.util.find_spec("integrations") is None, "a top-level 'integrations' is installed"
print("wheel-check: imports from", Path(paretoopt.__file__).parent)

# The closed form's C kernel builds from the installed source (this machine has a compiler).
from paretoopt import _native

assert _native.status().startswith("compiled kernel"), _native.status()
print("wheel-check: closed form:", _native.status())

# The torchjd zoo from the installed extra: a name builds and combines two losses.
import torch
from paretoopt import combine_and_backward, make_combiner

layer = torch.nn.Linear(3, 4)
z = layer(torch.randn(5, 3))
losses = [(z**2).mean(), (z - 1).abs().mean()]
result = combine_and_backward(losses, make_combiner("upgrad"), shared=z)
assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all(), result
print("wheel-check: zoo combiner", result.stats.get("torchjd"))
PY
"$TMP/venv/bin/paretoopt" example
"$TMP/venv/bin/paretoopt" train --help >/dev/null
# `paretoopt demo` is the study's quick form: its help says so, and no separate demo package ships.
"$TMP/venv/bin/paretoopt" demo --help >"$TMP/demo-help.txt"
grep -q "paretoopt study --quick" "$TMP/demo-help.txt"
"$VPY" -c 'import importlib.util as u; assert u.find_spec("paretoopt.integrations.demo") is None'
phase "example, train --help, demo --help"
"$TMP/venv/bin/paretoopt" bench --quick --out "$TMP/user/bench"
test -s "$TMP/user/bench/benchmarks.md"
phase "bench --quick wrote benchmarks.md"
echo "wheel-check: passed in $((SECONDS - start)) s"
