"""bench/leak_check.py: resident memory and step time of both trainers over a long run.

The default test runs the script for 30 steps (what it writes, not what it finds); the slow one
runs the documented 300 steps and asserts that the RSS grows by less than 20 MiB per 100
steps after the warm-up, for both trainers. Step times are reported, never asserted: on a
shared machine they follow the load.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
pytest.importorskip("psutil")

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "leak_check.py"
TRAINERS = ("MOPPOTrainer", "MultiObjectiveTrainer")
ANALYSIS = (
    "rss_mib_at_warmup_end", "rss_mib_final", "rss_mib_max", "rss_growth_after_warmup_mib",
    "rss_slope_mib_per_100_steps", "rss_theil_sen_mib_per_100_steps",
    "step_ms_median_first_window", "step_ms_median_last_window",
    "time_slope_ms_per_100_steps", "rss_flat",
)  # fmt: skip


def _load():
    spec = importlib.util.spec_from_file_location("leak_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _report(module, tmp_path: Path, steps: int, warmup: int) -> tuple[int, dict]:
    code = module.main(["--steps", str(steps), "--warmup", str(warmup), "--out", str(tmp_path)])
    return code, json.loads((tmp_path / "leak_check.json").read_text())


def test_the_fits_find_a_known_slope_and_ignore_a_spike() -> None:
    module = _load()
    steps = np.arange(1, 201)
    rss = 500 + 0.3 * steps  # 30 MiB per 100 steps: growing
    rss[120] += 80  # one outlying step (a checkpoint write's buffers, say)
    seconds = 0.02 + 1e-5 * steps
    a = module.analyse(list(rss), list(seconds), 50, 20.0)
    assert a["rss_theil_sen_mib_per_100_steps"] == pytest.approx(30, abs=1e-6)
    assert a["rss_slope_mib_per_100_steps"] == pytest.approx(30, abs=2)
    assert a["time_slope_ms_per_100_steps"] == pytest.approx(1.0, abs=1e-6)
    assert a["rss_flat"] is False
    flat = module.analyse([600.0] * 200, list(seconds), 50, 20.0)
    assert flat["rss_flat"] is True and flat["rss_slope_mib_per_100_steps"] == pytest.approx(0)


def test_a_short_run_writes_the_report_and_the_figure(tmp_path: Path) -> None:
    code, report = _report(_load(), tmp_path, steps=30, warmup=10)
    assert code in (0, 1)
    assert report["verdict"] == ("flat" if code == 0 else "growing")
    assert (report["steps"], report["warmup"], report["bound_mib_per_100_steps"]) == (30, 10, 20)
    assert len(report["machine"]["loadavg_before"]) == 3
    assert set(report["runs"]) == set(TRAINERS)
    for name, run in report["runs"].items():
        assert len(run["rss_mib"]) == len(run["step_seconds"]) == 30, name
        assert all(v > 0 for v in run["rss_mib"]) and all(v > 0 for v in run["step_seconds"])
        assert set(ANALYSIS) <= set(run["analysis"]), name
        assert run["setting"]["metric_history"]["entries"] >= 1
    png = (tmp_path / "leak_check.png").read_bytes()
    assert png.startswith(b"\x89PNG")


@pytest.mark.slow
def test_300_steps_of_either_trainer_do_not_grow_the_rss(tmp_path: Path) -> None:
    code, report = _report(_load(), tmp_path, steps=300, warmup=50)
    for name in TRAINERS:
        a = report["runs"][name]["analysis"]
        assert a["rss_slope_mib_per_100_steps"] < 20, (name, a)
        assert a["rss_theil_sen_mib_per_100_steps"] < 20, (name, a)
    assert code == 0 and report["verdict"] == "flat"
