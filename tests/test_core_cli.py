"""The core command line and the runnable example."""

from __future__ import annotations

import subprocess
import sys

import pytest

from paretoopt.cli import main
from paretoopt.examples import run_example


def test_example_runs_and_every_combiner_improves_every_objective() -> None:
    lines: list[str] = []
    results = run_example(steps=5, out=lines.append)
    assert set(results) == {"PAMA", "MORLHF (uniform)", "MGDA-UB", "MGDA (exact)"}
    for name, row in results.items():
        weights = [row[f"weight/{i}"] for i in range(3)]
        assert sum(weights) == pytest.approx(1.0), name
        assert all(row[f"delta_loss/{i}"] < 0 for i in range(3)), name
    assert any("PAMA" in line for line in lines)


def test_cli_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "0.1.0"
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_cli_entry_point_runs_example() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "paretoopt.cli", "example", "--steps", "2"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "MGDA (exact)" in out


def test_cli_names_the_missing_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The hf package re-raises a missing dependency as a plain ImportError naming the extra.
    import importlib

    def missing(name: str):
        raise ImportError("paretoopt.integrations.hf needs the hf extra")

    monkeypatch.setattr(importlib, "import_module", missing)
    assert main(["train", "--help"]) == 2
    err = capsys.readouterr().err
    assert "needs the 'hf' extra" in err and "pip install 'paretoopt[hf]'" in err
