"""``paretoopt demo`` end to end, at the test suite's size (hidden ``--tiny``) and --quick."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from paretoopt.integrations.demo.cli import build_parser, main
from paretoopt.integrations.demo.corpus import CorpusConfig, split_prompts

METHODS = ("pama", "morlhf", "mgda_ub")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The tiny demo twice with the same seed and cache: (cache, out1, out2, seconds)."""
    root = tmp_path_factory.mktemp("demo")
    cache = root / "cache"
    outs, seconds = [], []
    for name in ("first", "second"):
        out = root / name
        start = time.perf_counter()
        argv = ["--tiny", "--out", str(out), "--cache-dir", str(cache), "--no-progress"]
        assert main(argv) == 0
        seconds.append(time.perf_counter() - start)
        outs.append(out)
    return cache, outs[0], outs[1], seconds


def test_tiny_run_writes_table_json_samples_and_plots(two_runs) -> None:
    _, out, _, _ = two_runs
    results = json.loads((out / "results.json").read_text())
    assert results["objectives"] == ["sentiment", "length"]
    assert set(results["methods"]) == {"sft", *METHODS}
    for method in METHODS:
        entry = results["methods"][method]
        assert entry["seeds"] == [0]
        for obj in results["objectives"]:
            assert set(entry["final"][obj]) == {"mean", "std"}
            # The length reward is clip(words / 10, 0, 2); the classifier's logit ~ [-1.5, 1.5].
            assert -1.6 <= entry["final"]["sentiment"]["mean"] <= 1.6
            assert 0.0 <= entry["final"]["length"]["mean"] <= 2.0
        assert entry["hypervolume"]["mean"] >= 0.0
        assert len(entry["curves"]["sentiment"][0]) == results["config"]["steps"]
        assert entry["samples"]
    table = (out / "results.md").read_text()
    for label in ("PAMA", "MORLHF (0.5/0.5)", "MGDA-UB", "SFT (start)"):
        assert f"| {label} |" in table
    for png in ("demo_curves.png", "demo_pareto.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "## PAMA" in (out / "samples.md").read_text()


def test_second_run_reloads_artefacts_and_gives_the_same_table(two_runs) -> None:
    _, first, second, _ = two_runs
    r1 = json.loads((first / "results.json").read_text())
    r2 = json.loads((second / "results.json").read_text())
    assert r1["artefacts"]["from_cache"] is False
    assert r2["artefacts"]["from_cache"] is True
    assert (first / "results.md").read_text() == (second / "results.md").read_text()
    r1.pop("timings"), r2.pop("timings")
    r1.pop("artefacts"), r2.pop("artefacts")
    assert r1 == r2


def test_hypervolume_is_measured_from_the_documented_reference(two_runs) -> None:
    from paretoopt.pareto import hypervolume

    _, out, _, _ = two_runs
    results = json.loads((out / "results.json").read_text())
    assert results["reference_point"] == [-1.5, 0.0]
    seed = results["methods"]["pama"]["per_seed"][0]
    point = [seed["sentiment"], seed["length"]]
    assert seed["hypervolume"] == pytest.approx(hypervolume([point], [-1.5, 0.0]))
    assert seed["hypervolume"] == pytest.approx(max(point[0] + 1.5, 0.0) * max(point[1], 0.0))


def test_user_models_rewards_and_prompt_file(two_runs, tmp_path) -> None:
    """The real-model route: --policy PATH, --reward NAME=PATH:LABEL, --reward length, prompts."""
    cache, _, _, _ = two_runs
    (root,) = [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
    prompts = tmp_path / "prompts.txt"
    train, _ = split_prompts(CorpusConfig())
    prompts.write_text("\n".join(train[:12]) + "\n")
    out = tmp_path / "out"
    argv = [
        "--tiny", "--out", str(out), "--no-progress", "--methods", "pama,morlhf",
        "--cache-dir", str(tmp_path / "unused-cache"),
        "--policy", str(root / "policy"),
        "--reward", f"mood={root / 'reward_model'}:1",
        "--reward", "length",
        "--prompts", str(prompts),
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["objectives"] == ["mood", "length"]
    assert set(results["methods"]) == {"sft", "pama", "morlhf"}
    assert results["n_heldout_prompts"] == 3  # a fixed quarter of the 12 prompts
    assert results["artefacts"] is None
    assert not (tmp_path / "unused-cache").exists()  # nothing was trained
    # Unknown reward bounds: the reference sits below every evaluated point.
    ref = results["reference_point"]
    for entry in results["methods"].values():
        assert entry["final"]["mood"]["mean"] >= ref[0]
        assert entry["final"]["length"]["mean"] >= ref[1]


def test_help_mentions_the_outputs_and_real_model_options(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("--quick", "--out", "--policy", "--reward", "--prompts", "results.json"):
        assert word in text
    assert "--tiny" not in text


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path) -> None:
    out = tmp_path / "out"
    argv = ["--quick", "--out", str(out), "--cache-dir", str(tmp_path / "c"), "--no-progress"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"sft", *METHODS}
    assert all(results["methods"][m]["seeds"] == [0, 1] for m in METHODS)
