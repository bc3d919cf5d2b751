"""The wheel holds the package, the whole package and nothing but the package.

Built with ``pip wheel --no-build-isolation`` from a copy of the checkout (a stale ``build/``
in the checkout would otherwise carry deleted modules into it); the copy keeps ``tests/`` and
``bench/`` so that a leak of them would show. ``make wheel-check`` installs the same wheel in a
fresh virtual environment and runs the CLI from it.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from paretoopt.cli import _COMMANDS

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
# Folder in the checkout -> import name once installed (pyproject's [tool.setuptools.package-dir]).
ROOTS = {"paretoopt": "paretoopt", "integrations": "paretoopt.integrations"}
_SKIP = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=_SKIP)
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*cmd, "--no-cache-dir", "-q", "-w", str(tmp / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = (tmp / "dist").glob("paretoopt-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def repo_packages() -> dict[str, Path]:
    """Every package folder of the checkout (one with ``__init__.py``), by its import name."""
    found = {}
    for folder, name in ROOTS.items():
        for init in sorted((REPO / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(REPO / folder)
            found[".".join([name, *rel.parts])] = init.parent
    return found


def wheel_path(module: str) -> str:
    """Where a module or package ``a.b.c`` lies in the wheel (as a package or a .py file)."""
    return module.replace(".", "/")


def test_only_top_level_name_is_paretoopt(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"paretoopt"}, tops
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["paretoopt"]


def test_every_package_folder_is_listed_and_shipped(wheel: zipfile.ZipFile) -> None:
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = repo_packages()
    assert set(found) == listed, (
        f"package folders not in pyproject's packages: {sorted(set(found) - listed)}; "
        f"listed without a folder: {sorted(listed - set(found))}"
    )
    names = set(wheel.namelist())
    for name, folder in found.items():
        for module in sorted(folder.glob("*.py")):
            shipped = f"{wheel_path(name)}/{module.name}"
            assert shipped in names, f"{module.relative_to(REPO)} is missing from the wheel"


def test_no_tests_bench_or_stray_files(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    shipped = {n.rsplit("/", 1)[-1] for n in names}
    for folder in ("tests", "bench", "docs"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert path.name not in shipped, f"{path.relative_to(REPO)} leaked into the wheel"
    for name in names:
        if ".dist-info/" not in name:
            assert name.endswith((".py", "py.typed", "_closed_form.c")), name
            assert "__pycache__" not in name, name


def test_cli_and_its_files_are_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert "paretoopt/py.typed" in names
    # The closed form's C source, compiled at first use where a compiler is present.
    assert "paretoopt/_closed_form.c" in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert parser["console_scripts"]["paretoopt"] == "paretoopt.cli:main"
    # Each subcommand's module, and for `bench` the suites and the report it runs.
    needed = [module for module, _, _ in _COMMANDS.values()]
    needed += [
        "paretoopt.integrations.bench.runner",
        "paretoopt.integrations.bench.weight_selection",
        "paretoopt.integrations.bench.full_step",
        "paretoopt.integrations.bench.min_norm",
        "paretoopt.integrations.bench.report.__init__",
        "paretoopt.examples",
    ]
    for module in needed:
        assert f"{wheel_path(module)}.py" in names, f"{module} is missing from the wheel"
    # `paretoopt demo` is the study's quick form: the old demo package is gone for good.
    assert _COMMANDS["demo"][0] == "paretoopt.integrations.study.demo"
    assert not [n for n in names if n.startswith("paretoopt/integrations/demo/")]


def _lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pkg, sep, version = line.partition("==")
        assert sep, f"requirements/{name}: {line!r} is not an exact pin"
        pins[pkg.lower().replace("_", "-")] = version
    return pins


def _requirement_name(req: str) -> str:
    import re

    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_the_lock_pins_every_dependency_the_makefile_installs() -> None:
    """make test installs `-e .[$(EXTRAS)]` with `-c requirements/lock.txt`: every
    requirement of those extras (and the core) must be pinned there, within pyproject's range,
    or a fresh machine would resolve it anew."""
    import re

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lock = _lock("lock.txt")
    reqs = list(project["dependencies"])
    extras = re.search(r"^EXTRAS := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert extras is not None
    assert set(extras.group(1).split(",")) == {"hf", "trl", "bench", "zoo", "dev"}
    # torchjd[full] (the zoo) brings the solvers of CAGrad and Nash-MTL: pinned too.
    assert {"cvxpy", "ecos", "clarabel", "quadprog"} <= set(lock)
    for extra in extras.group(1).split(","):
        reqs += [r for r in project["optional-dependencies"][extra] if "paretoopt" not in r]
    for req in reqs:
        parsed = Requirement(req)
        name = _requirement_name(req)
        assert name in lock, f"{name} (pyproject: {req!r}) is not in requirements/lock.txt"
        assert parsed.specifier.contains(lock[name], prereleases=True), (
            f"requirements/lock.txt pins {name}=={lock[name]}, outside pyproject's {req!r}"
        )
    assert "+" not in lock["torch"], "torch is locked with a local build label"
    verl = _lock("lock-verl.txt")
    assert "verl" in verl and verl["torch"] == lock["torch"]
    makefile = (REPO / "Makefile").read_text()
    assert "-c $(LOCK)" in makefile and "-c $(VERL_LOCK)" in makefile
