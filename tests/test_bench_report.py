"""`paretoopt bench` end to end on the tiny profile: suites run, JSON and report are written.

The same suites under pytest-benchmark (the repository's bench/, `make bench`) feed the same
report: one suite of it runs here too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from paretoopt.integrations.bench import cli as bench_cli
from paretoopt.integrations.bench import report

REPO = Path(__file__).resolve().parents[1]


def test_bench_cli_tiny_profile_writes_report(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = bench_cli.main(["--profile", "tiny", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    # One progress line per case, numbered.
    assert "[  1/" in out and "PASSED" in out

    data = json.loads((tmp_path / "bench.json").read_text())
    suites = {b["extra_info"]["suite"] for b in data["benchmarks"]}
    assert suites == {"weight_selection", "full_step", "min_norm"}
    assert data["machine_info"]["paretoopt_bench"]["profile"] == "tiny"
    assert data["machine_info"]["paretoopt_bench"]["torch_threads"] == 1
    # The load is sampled after every case, so the page can say how busy the machine was.
    loads = data["machine_info"]["paretoopt_bench"]["loadavg_1min_per_case"]
    assert len(loads) == len(data["benchmarks"]) and all(x >= 0 for x in loads)
    for b in data["benchmarks"]:
        info = b["extra_info"]
        assert all(t > 0 for t in info["median_s"].values())
        if info["suite"] == "weight_selection":
            # The library's own s* path is timed next to the formula written out.
            assert {"pama_advantages", "pama_s_star", "copy"} <= set(info["median_s"])
        if info["suite"] == "full_step":
            # Every compared combiner was timed in the same rounds and its peak measured.
            assert set(info["median_s"]) == set(info["combiners"]) == set(info["peak_bytes"])
            assert len({len(v) for v in info["samples_s"].values()}) == 1
            # Exact MGDA holds an n x d Jacobian: its peak exceeds the linear step's.
            assert info["peak_bytes"]["mgda"] > info["peak_bytes"]["linear"]

    page = (tmp_path / "benchmarks.md").read_text()
    for heading in (
        "## Claims, as measured",
        "## 1. Choosing",
        "## 2. One full",
        "## 3. Min-norm",
        "## 4. Cost model",
    ):
        assert heading in page
    assert "AMD" in page or "Intel" in page or "CPU:" in page
    assert f"read after each of the {len(loads)} cases" in page
    for name in (
        "weight_selection_vs_n",
        "weight_selection_vs_d",
        "full_step_vs_n",
        "full_step_vs_d",
        "min_norm",
    ):
        png = tmp_path / "img" / f"bench_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"img/bench_{name}.png" in page


def test_report_only_from_existing_json(tmp_path: Path) -> None:
    data = {
        "datetime": "now",
        "machine_info": {"paretoopt_bench": {"profile": "tiny", "cpu_model": "test cpu"}},
        "benchmarks": [
            {
                "extra_info": {
                    "suite": "min_norm",
                    "n": n,
                    "family": "general",
                    "grams": 1,
                    "median_s": {
                        "exact": 1e-4 * n,
                        "frank_wolfe": 2e-4,
                        "projected_gradient": 1e-3,
                        "torchjd_mgda": 5e-4,
                    },
                    "ratio": {
                        "exact": 0.2 * n,
                        "frank_wolfe": 0.4,
                        "projected_gradient": 2.0,
                        "torchjd_mgda": 1.0,
                    },
                    "kkt_residual_max": {
                        "exact": 1e-16,
                        "frank_wolfe": 1e-11,
                        "projected_gradient": 1e-12,
                        "torchjd_mgda": 1e-3,
                    },
                    "gap_max": {
                        "exact": 0.0,
                        "frank_wolfe": 0.0,
                        "projected_gradient": 0.0,
                        "torchjd_mgda": 1e-3,
                    },
                }
            }
            for n in (2, 8)
        ],
    }
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    # A page being regenerated keeps its hand-written sections (from KEPT_HEADING on), once.
    old_page = f"# Old\n\n## 2. stale table\n\n{report.KEPT_HEADING}\n\nhand-measured table\n"
    (tmp_path / "benchmarks.md").write_text(old_page)
    for _ in range(2):
        assert bench_cli.main(["--from-json", str(path), "--out", str(tmp_path)]) == 0
    page = (tmp_path / "benchmarks.md").read_text()
    assert "stale table" not in page and page.count(report.KEPT_HEADING) == 1
    assert page.endswith(f"\n{report.KEPT_HEADING}\n\nhand-measured table\n")
    assert "test cpu" in page
    assert "Load: not recorded" in page
    # n = 8: exact takes 1.6x torchjd's time, and the page must say so.
    assert "n=8 general: 1.60x" in page
    assert "speed **fails**" in page
    assert report.fit_exponent([1, 10, 100], [2, 20, 200]) == pytest.approx(1.0)


def test_pytest_benchmark_suite_feeds_the_same_report(tmp_path: Path) -> None:
    """bench/bench_min_norm.py under pytest-benchmark: its JSON makes the report's section 3."""
    json_path = tmp_path / "mn.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(REPO / "bench" / "bench_min_norm.py"),
            "--bench-profile=tiny",
            f"--benchmark-json={json_path}",
            "-p",
            "no:cacheprovider",
            "-q",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = report.load(json_path)
    infos = [b["extra_info"] for b in data["benchmarks"]]
    assert {i["suite"] for i in infos} == {"min_norm"} and len(infos) == 6
    assert data["machine_info"]["paretoopt_bench"]["profile"] == "tiny"
    page = report.build_report(data, tmp_path).read_text()
    assert "## 3. Min-norm" in page and "## Claims, as measured" in page
