"""bench/gpu_trainer.py, the GPU table of the whole trainer, runs (on the CPU, at --tiny size).

The numbers it prints on a CPU mean nothing; what is checked is that the prepared script still
drives the trainer and TRL's GRPOTrainer through their public APIs and writes its report.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("trl")

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_trainer.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_trainer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_every_row(tmp_path: Path) -> None:
    module = _load()
    argv = ["--tiny", "--out", str(tmp_path), "--objectives", "2", "--combiners", "morlhf",
            "pama", "--steps", "1", "--warmup", "1"]  # fmt: skip
    assert module.main(argv) == 0
    report = json.loads((tmp_path / "gpu_trainer.json").read_text())
    rows = report["rows"]
    assert [(r["engine"], r["combiner"]) for r in rows] == [
        ("moppo", "morlhf"),
        ("moppo", "pama"),
        ("trl_grpo", "sum_then_normalize"),
        ("trl_grpo", "pama"),
    ]
    for r in rows:
        assert r["seconds_per_step"] > 0
    moppo = rows[0]
    assert any(k.startswith("time/") for k in moppo["phases"])
    assert moppo["generated_tokens_per_second"] > 0


def test_rewards_are_shares_of_disjoint_slices() -> None:
    module = _load()
    rewards = module.make_rewards(2, 12)  # 9 words w0..w8 in 3 slices of 3
    text = "w0 w1 w4 w8"
    assert [r(["p"], [text])[0] for r in rewards] == [0.5, 0.25]
    assert rewards[0](["p"], completions=[text]) == [0.5]  # TRL's keyword
