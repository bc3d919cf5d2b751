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
