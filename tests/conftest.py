"""Shared test configuration: deterministic hypothesis in CI, float64 helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hf_fixtures import make_tiny_lm
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Tests run on the CPU; keep each worker to one thread so two workers share 2 cores fairly.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_leftover_mixed_precision():
    """accelerate keeps one process-wide state and refuses an ``Accelerator`` with another
    mixed precision; a test that trained under bf16/fp16 (a transformers ``Trainer``) would
    break every later test of the same worker, so its state is cleared afterwards."""
    yield
    module = sys.modules.get("accelerate.state")
    if module is None:
        return
    state = module.AcceleratorState
    shared = state._shared_state
    if shared and shared.get("_mixed_precision", "no") != "no":
        state._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 policy and its word-level tokenizer saved to disk (:mod:`hf_fixtures`),
    built once per session (per worker): tests load it by path and never write into it."""
    return make_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


#: Test modules that start several processes (gloo rendezvous on a free port, a process
#: group's teardown): run on one xdist worker, one after another (``--dist loadgroup``),
#: since two such modules at once on the same host can abort a rendezvous or a teardown.
MULTI_PROCESS_MODULES = ("test_distributed_", "test_hf_multi_objective_ddp")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name.startswith(MULTI_PROCESS_MODULES):
            item.add_marker(pytest.mark.xdist_group("processes"))
