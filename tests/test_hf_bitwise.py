"""Behaviour kept to the bit: short trainings of every main combiner against a stored record.

:mod:`bitwise_reference` runs the arms (pama fast and generic, mgda_ub, mgda, morlhf, gdpo)
and ``tests/data/bitwise_reference.json`` holds what the code gave when the record was made:
every metric of the warm-up, the steps and the evaluations as exact floats (``time/*`` left
out) and the sha256 of each final parameter tensor. A refactor must leave all of it equal.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from bitwise_reference import ARMS, REFERENCE, run_all

pytestmark = pytest.mark.hf


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> dict:
    threads = torch.get_num_threads()
    try:
        return run_all(tmp_path_factory.mktemp("bitwise"))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("arm", list(ARMS))
def test_training_is_bit_for_bit_the_reference(record: dict, arm: str) -> None:
    reference = json.loads(REFERENCE.read_text())[arm]
    got = record[arm]
    assert got["params"] == reference["params"]
    for part in ("warmup", "history", "eval"):
        assert got[part] == reference[part], part
