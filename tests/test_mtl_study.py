"""The multi-task pattern, the methods on a shared-trunk model, and the ``paretoopt mtl`` study."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from paretoopt.integrations.mtl.example import run_example

from paretoopt.cli import _COMMANDS


def test_example_every_combiner_lowers_every_task_loss() -> None:
    lines: list[str] = []
    results = run_example(steps=40, out=lines.append)
    assert set(results) == {"linear", "mgda_ub", "mgda", "pama"}
    for name, r in results.items():
        assert all(b < a for a, b in zip(r["first"], r["last"], strict=True)), (name, r)
    assert len(lines) == 5


def test_mtl_command_is_registered_lazily_with_the_bench_extra() -> None:
    module, extra, _ = _COMMANDS["mtl"]
    assert (module, extra) == ("paretoopt.integrations.mtl.cli", "bench")


def _digits_grads(method: str, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    from paretoopt.integrations.mtl.digits import SharedTrunk, load_data, task_losses
    from paretoopt.integrations.mtl.methods import apply_method, make_method

    data = load_data(seed)
    torch.manual_seed(seed)
    model = SharedTrunk(hidden=16, width=4)
    z, losses = task_losses(model, data.x_train[:32], data.y_train[:32])
    trunk = list(model.trunk.parameters())
    heads = [list(h.parameters()) for h in model.heads]
    apply_method(make_method(method), losses, shared=z, trunk=trunk, heads=heads)
    return [p.grad.clone() for p in trunk], [p.grad.clone() for h in heads for p in h]


def test_torchjd_peers_and_ours_agree_where_they_should() -> None:
    pytest.importorskip("torchjd")
    pytest.importorskip("sklearn")
    trunk_ours, heads_ours = _digits_grads("mgda")
    trunk_jd, heads_jd = _digits_grads("torchjd_mgda")
    # Heads: the plain gradient of their own loss on both sides, exactly.
    for a, b in zip(heads_ours, heads_jd, strict=True):
        torch.testing.assert_close(a, b)
    # Trunk: the same min-norm problem; torchjd stops at a 1e-3 tolerance, ours is exact.
    ours = torch.cat([g.reshape(-1) for g in trunk_ours])
    jd = torch.cat([g.reshape(-1) for g in trunk_jd])
    assert float((ours - jd).norm() / ours.norm()) < 0.05
    # UPGrad's heads also get their own gradient; its trunk update conflicts with no task.
    _, heads_up = _digits_grads("torchjd_upgrad")
    for a, b in zip(heads_ours, heads_up, strict=True):
        torch.testing.assert_close(a, b)


def test_digits_training_records_metrics_and_descent() -> None:
    pytest.importorskip("torchjd")
    pytest.importorskip("sklearn")
    from paretoopt.integrations.mtl.digits import train_digits

    run = train_digits("mgda", seed=0, steps=6, hidden=16, width=4)
    assert set(run.metrics) >= {"digit_acc", "parity_acc", "recon_mse"}
    assert 0 <= run.metrics["digit_acc"] <= 1 and run.metrics["recon_mse"] > 0
    assert len(run.grad_descent) == len(run.step_descent) == 6
    # Exact MGDA over the trunk's parameters: every combined gradient is a common descent one.
    assert all(run.grad_descent)
    assert run.reference[:2] == (0.1, 0.5) and run.reference[2] < 0
    with pytest.raises(ValueError, match="unknown method"):
        train_digits("sgd", seed=0, steps=1)


@pytest.mark.slow
def test_mtl_command_tiny_profile_end_to_end(tmp_path) -> None:
    pytest.importorskip("torchjd")
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from paretoopt.cli import main

    assert main(["mtl", "--profile", "tiny", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "mtl.json").read_text())
    methods = results["config"]["methods"]
    assert len(results["digits"]) == 2 * len(methods)
    assert len(results["toy"]) == 2 * len(methods)
    for r in results["digits"]:
        assert 0 <= r["grad_descent_rate"] <= 1
    for c in results["cost"]:
        assert c["time_ratio"]["linear"] == 1.0 and c["memory_ratio"]["linear"] == 1.0
        assert all(v > 0 for v in c["peak_bytes"].values())
    tables = (tmp_path / "mtl_tables.md").read_text()
    for heading in ("Toy problem", "Digits: test metrics", "common descent", "Cost of one"):
        assert heading in tables
    for name in ("mtl_toy_paths", "mtl_toy_paper_lr", "mtl_toy_front", "mtl_digits"):
        assert (tmp_path / "img" / f"{name}.png").stat().st_size > 1000
    # The report can be rebuilt from the JSON alone.
    again = tmp_path / "again"
    assert main(["mtl", "--from-json", str(tmp_path / "mtl.json"), "--out", str(again)]) == 0
    assert (again / "mtl_tables.md").read_text() == tables
    assert np.isfinite([t["final"] for t in results["toy"]]).all()
