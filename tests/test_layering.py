"""The one-way import rule of docs/architecture.md, enforced.

The core (``paretoopt/``) needs torch, numpy and scipy alone: importing it, or any of its
modules, loads no Hugging Face library and none of ``paretoopt.integrations``; the CLI loads a
subcommand's module only when that subcommand runs. Checked in fresh interpreters, since this
test process has long imported everything.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "paretoopt"
FORBIDDEN = ("transformers", "peft", "accelerate", "trl", "paretoopt.integrations")


def core_modules() -> list[str]:
    return sorted(
        "paretoopt" if p.name == "__init__.py" else f"paretoopt.{p.stem}" for p in CORE.glob("*.py")
    )


def loaded_after(code: str) -> set[str]:
    """Names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def forbidden_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def test_core_modules_import_no_integration_or_hf_library() -> None:
    modules = core_modules()
    assert "paretoopt.combiners" in modules and "paretoopt.cli" in modules
    # Every core module, and the CLI run for a command that needs no integration.
    code = "\n".join(f"import {m}" for m in modules) + "\nparetoopt.cli.main(['--version'])"
    loaded = loaded_after(code)
    assert not forbidden_in(loaded), forbidden_in(loaded)


def test_core_source_has_no_import_of_them_anywhere() -> None:
    """Not even inside a function: a lazy import would dodge the runtime check above."""
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: within the core unless it climbs out of it
                    assert node.level == 1, f"{path.name}:{node.lineno} imports outside the core"
                    names = [f"paretoopt.{node.module or ''}"]
                else:
                    names = [node.module or ""]
            else:
                continue
            bad = forbidden_in(set(names))
            assert not bad, f"{path.name}:{node.lineno} imports {bad}"


def test_cli_loads_a_subcommand_module_only_when_it_runs() -> None:
    from paretoopt.cli import _COMMANDS

    commands = {name: module for name, (module, _, _) in _COMMANDS.items()}
    # `paretoopt bench --help` loads the bench command's module, and no other command's.
    ran = loaded_after(
        "from paretoopt.cli import main\n"
        "try:\n    main(['bench', '--help'])\nexcept SystemExit:\n    pass"
    )
    assert commands["bench"] in ran
    others = {m for name, m in commands.items() if name != "bench"}
    assert not others & ran, others & ran
    assert not forbidden_in(ran - {m for m in ran if m.startswith("paretoopt.integrations")})


# ------------------------------------------------- the package's import graph, statically

ROOT = CORE.parent
PACKAGE_DIRS = (ROOT / "paretoopt", ROOT / "integrations")
MAX_LINES = 500


def module_name(path: Path) -> str:
    """``integrations/hf/x.py`` -> ``paretoopt.integrations.hf.x`` (its installed name)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "integrations":
        parts = ["paretoopt", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for d in PACKAGE_DIRS for p in sorted(d.rglob("*.py"))}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules ``path`` imports anywhere: at the top, in a function, under
    ``TYPE_CHECKING`` (``from .x import name`` counts as importing ``.x``, and ``.x.name``
    when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(path, modules) for name, path in modules.items()}


def test_no_hf_module_imports_the_trainer() -> None:
    """The trainer's helpers take what they use; only the package's front door (``__init__``,
    which exports the trainer, and the CLI, which runs it) reach the trainer module."""
    trainer = "paretoopt.integrations.hf.trainer"
    front = {"paretoopt.integrations.hf", "paretoopt.integrations.hf.cli"}
    graph = import_graph()
    users = sorted(
        m
        for m, deps in graph.items()
        if m.startswith("paretoopt.integrations.hf.") and trainer in deps and m not in front
    )
    assert not users, users


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that reach one another."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [g for g in groups if len(g) > 1]


def test_no_import_cycles_among_the_package_modules() -> None:
    """No module reaches itself through imports (lazy and ``TYPE_CHECKING`` ones included).
    A package's ``__init__`` re-exporting its modules is left out: importing a module does
    not mean depending on the package's front door."""
    graph = import_graph()
    packages = {m for m, p in package_modules().items() if p.name == "__init__.py"}
    graph = {m: deps - packages for m, deps in graph.items() if m not in packages}
    cycles = [c for c in strongly_connected(graph) if c not in KNOWN_CYCLES]
    assert not cycles, cycles


KNOWN_CYCLES: list[list[str]] = []


def test_every_module_is_at_most_500_lines() -> None:
    """A module one reads at a sitting: split by concern before it grows past this."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in package_modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long
