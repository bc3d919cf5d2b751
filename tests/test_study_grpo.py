"""``paretoopt study --engine grpo``: TRL's GRPOTrainer with its aggregations and the PAMA
plug-in, end to end at the smallest size (hidden ``--tiny``), offline; the protocol's pieces."""

from __future__ import annotations

import contextlib
import io
import json
from argparse import Namespace
from dataclasses import asdict

import numpy as np
import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("matplotlib")

from paretoopt.integrations.study import grpo_engine, grpo_study, protocol, report, runner
from paretoopt.integrations.study.grpo_engine import (
    GRPO_GRID,
    GRPO_METHODS,
    GRPOHparams,
    grpo_args,
    grpo_preset,
    grpo_run_settings,
    make_grpo_jobs,
    run_grpo_job,
)
from paretoopt.integrations.trl import pama_advantages_from_rewards
from paretoopt.integrations.verl import compute_pama_outcome_advantage

from paretoopt import pama_advantages
from paretoopt.cli import main as paretoopt_main

#: The fields of a method's entry in the PPO study's results (analysis.task_results).
METHOD_FIELDS = {
    "seeds",
    "final_step",
    "per_seed",
    "mean",
    "ci95",
    "checkpoints",
    "curves",
    "samples",
    "seconds_per_run",
    "no_sacrifice_share",
    "worst_change",
    "kl_path",
    "reward_path",
    "dominated_by_front",
    "dominated_by_front_ci",
}


@pytest.fixture(scope="module")
def tiny_grpo(tmp_path_factory):
    """``paretoopt study --engine grpo --tiny`` into a folder that already holds another
    study's results.json: (out folder, artefact cache, what it printed)."""
    root = tmp_path_factory.mktemp("grpo")
    out, cache = root / "out", root / "cache"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"tasks": {"ppo": 1}, "command": "ppo"}))
    argv = [
        "study",
        "--engine",
        "grpo",
        "--tiny",
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--no-progress",
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert paretoopt_main(argv) == 0
    return out, cache, printed.getvalue()


def test_tiny_grpo_study_writes_every_method_beside_the_other_results(tiny_grpo) -> None:
    out, _, printed = tiny_grpo
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"] == {"ppo": 1} and results["command"] == "ppo"  # kept as they were
    grpo = results["grpo"]
    assert grpo["command"].startswith("paretoopt study --engine grpo --tiny")
    t = grpo["tasks"]["sentiment_length"]
    assert set(t["methods"]) == set(GRPO_METHODS)
    for entry in t["methods"].values():
        assert set(entry) >= METHOD_FIELDS
        assert [p["seed"] for p in entry["per_seed"]] == [0, 1]
        assert set(entry["checkpoints"]) == {"1", "2"}
        for o in t["objectives"]:
            lo, hi = entry["ci95"][o]
            assert lo <= entry["mean"][o] <= hi
    # The front: one point per weight, the uniform one from grpo_sum's own runs.
    assert len(t["morlhf_front"]) == 3
    assert set(t["comparisons"]) == {"grpo_sum", "grpo_gdpo", "grpo_pama_no_noon"}
    assert "zero_rate" in t["pama_rates"]["grpo_pama"]
    z = t["zero_rate_by_generations"]
    assert set(z["sft_samples"]) == {"2"} and 0 <= z["sft_samples"]["2"]["noon"] <= 1
    assert set(z["main"]["2"]) == {"grpo_pama", "grpo_pama_no_noon"}
    md = (out / "grpo.md").read_text()
    assert "## In TRL today, which aggregation should I pick" in md
    assert "### Where PAMA loses" in md and "PAMA plug-in (Noon)" in md
    for kind in ("front", "reward_kl", "zero_rate"):
        assert (out / f"grpo_sentiment_length_{kind}.png").read_bytes()[:4] == b"\x89PNG"
    assert "TRL normalize_then_sum (GDPO)" in printed and "grpo.md" in printed
    assert "{'loss'" not in printed  # TRL's own log printing is off


def test_grpo_runs_are_paired_and_resume_from_their_files(tiny_grpo) -> None:
    out, cache, _ = tiny_grpo
    raw = out / "runs_grpo" / "sentiment_length"
    runs = {p.name: json.loads(p.read_text()) for p in raw.glob("*.json")}
    sft = runs["sentiment_length-sft-sft-0.json"]
    pama = runs["sentiment_length-study-grpo_pama-0.json"]
    summ = runs["sentiment_length-study-grpo_sum-0.json"]
    assert [s["prompt"] for s in pama["evals"]["2"]["samples"]] == [
        s["prompt"] for s in summ["evals"]["2"]["samples"]
    ]
    # TRL's logs, under the study's curve names; PAMA's rates only where the plug-in runs.
    assert len(pama["curves"]) == 2 and "zero_rate" in pama["curves"][0]
    assert "reward/sentiment" in summ["curves"][0] and "zero_rate" not in summ["curves"][0]
    assert sft["evals"]["0"]["kl"] == 0.0
    config = grpo_preset("tiny")
    jobs = make_grpo_jobs(config, "sentiment_length", 2)
    again = runner.run_jobs(
        jobs,
        config,
        raw,
        str(cache),
        progress=False,
        run_fn=run_grpo_job,
        settings_fn=grpo_run_settings,
    )
    assert again[1] == runs[protocol.job_name(jobs[1]) + ".json"]  # read back, not rerun
    other = grpo_engine.with_grpo_hparams(
        config, {**asdict(config.hparams), "beta": 0.0}, "sentiment_length"
    )
    with pytest.raises(ValueError, match=r"beta.*fresh --out"):
        runner.run_jobs(
            jobs[1:2],
            other,
            raw,
            str(cache),
            progress=False,
            run_fn=run_grpo_job,
            settings_fn=grpo_run_settings,
        )


def test_the_ppo_report_keeps_the_grpo_results(tmp_path, monkeypatch) -> None:
    (tmp_path / "results.json").write_text(json.dumps({"grpo": {"tasks": {"x": 1}}}))
    monkeypatch.setattr(report, "study_markdown", lambda results: "")
    report.write_report({"tasks": {}, "command": "ppo"}, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == {"tasks": {}, "command": "ppo", "grpo": {"tasks": {"x": 1}}}


def test_methods_differ_only_in_the_aggregation(tmp_path) -> None:
    config = grpo_preset("full")
    hp = GRPOHparams(learning_rate=1e-4, beta=0.04, num_generations=8)

    def args(method, weights=None):
        a = grpo_args(
            method, 2, 32, hp, config, seed=3, steps=10, output_dir=str(tmp_path), weights=weights
        )
        return a.to_dict()

    made = {m: args(m) for m in GRPO_METHODS}
    aggregation = {"multi_objective_aggregation", "pama_noon", "pama_log_completion_advantages"}
    shared = {k: v for k, v in made["grpo_sum"].items() if k not in aggregation}
    for m, d in made.items():
        assert {k: v for k, v in d.items() if k not in aggregation} == shared, m
        assert d["reward_weights"] == [0.5, 0.5]
    assert made["grpo_sum"]["multi_objective_aggregation"] == "sum_then_normalize"
    assert made["grpo_gdpo"]["multi_objective_aggregation"] == "normalize_then_sum"
    assert made["grpo_pama"]["pama_noon"] and not made["grpo_pama_no_noon"]["pama_noon"]
    assert (shared["num_generations"], shared["beta"], shared["seed"]) == (8, 0.04, 3)
    assert args("grpo_sum", [0.25, 0.75])["reward_weights"] == [0.25, 0.75]
    with pytest.raises(ValueError, match="only grpo_sum takes weights"):
        args("grpo_gdpo", [0.25, 0.75])
    with pytest.raises(ValueError, match="unknown method 'morlhf' for the GRPO engine"):
        grpo_engine.method_args("morlhf", 2)


def _options(**kw) -> Namespace:
    base = dict(
        tiny=False,
        quick=False,
        task=None,
        seeds=None,
        steps=None,
        methods=None,
        tune_seeds=None,
        workers=None,
        tune=False,
        tune_only=False,
        tuning=None,
    )
    return Namespace(**{**base, **kw})


def test_bad_options_exit_naming_them() -> None:
    with pytest.raises(SystemExit, match="unknown method 'pama' for --engine grpo"):
        grpo_study.configure_grpo(_options(methods="grpo_sum,pama"))
    with pytest.raises(SystemExit, match=r"task sentiment_length has 1 seed; .* at least 2"):
        grpo_study.configure_grpo(_options(seeds="sentiment_length=1"))
    with pytest.raises(SystemExit, match="unknown task 'nope'"):
        grpo_study.configure_grpo(_options(seeds="nope=3"))
    quick = grpo_study.configure_grpo(_options(quick=True))
    assert quick.tasks == ("sentiment_length",) and quick.methods == GRPO_METHODS
    assert not quick.tune and grpo_study.configure_grpo(_options()).tune
    assert not grpo_study.configure_grpo(_options(tuning="t.json")).tune


def test_the_full_size_meets_the_protocol() -> None:
    full = grpo_preset("full")
    assert full.seeds["sentiment_length"] >= 20 and full.seeds["support_replies"] >= 10
    assert full.front_seeds >= 3 and full.methods == GRPO_METHODS and full.tune
    assert full.eval_steps[-1] == full.steps
    # Every setting of the grid trains on the same number of completions per step.
    assert all(full.batch_size % g == 0 for g in GRPO_GRID["num_generations"])
    jobs = make_grpo_jobs(full, "support_replies", 3)
    fronts = [j for j in jobs if j["kind"] == "front"]
    assert len({tuple(j["weights"]) for j in fronts}) == len(protocol.front_weights(3, 6))


def test_tuning_picks_the_best_mean_over_the_four_methods(tmp_path, monkeypatch) -> None:
    def fake_run_jobs(jobs, config, raw_dir, cache_dir, progress, desc, **kwargs):
        assert kwargs["run_fn"] is run_grpo_job
        out = []
        for j in jobs:
            hv = j["hparams"]["learning_rate"] * 1e4 + (j["method"] == "grpo_gdpo") * 5 * (
                j["hparams"]["beta"] == 0
            )
            g = j["hparams"]["num_generations"]
            curves = [{"zero_rate": 1 - 1 / g}] * 4 if "pama" in j["method"] else [{}] * 4
            out.append(
                {"job": j, "evals": {str(j["steps"]): {"per_response_hv": hv}}, "curves": curves}
            )
        return out

    monkeypatch.setattr(runner, "run_jobs", fake_run_jobs)
    config = grpo_preset("tiny")
    table = grpo_study.tune_task(config, "sentiment_length", tmp_path, None, progress=False)
    assert len(table["table"]) == 8
    for row in table["table"]:
        assert row["score"] == pytest.approx(np.mean(list(row["per_method"].values())))
    best = max(table["table"], key=lambda r: r["score"])
    assert table["chosen"] == {k: best[k] for k in ("learning_rate", "beta", "num_generations")}
    assert table["per_method"]["grpo_gdpo"]["beta"] == 0.0  # its own best
    z = grpo_study.zero_rate_by_generations(
        [{"job": {"kind": "sft"}, "group_zero_rates": {}}], table, GRPOHparams()
    )
    assert z["tuning"]["4"]["grpo_pama"] == pytest.approx(0.75)
    assert z["tuning"]["8"]["grpo_pama_no_noon"] == pytest.approx(0.875)


# ---------------------------------------------------------------------------------------------
# The same s* from the TRL plug-in, the verl estimator and paretoopt.pama_advantages
# ---------------------------------------------------------------------------------------------


def _group_normalised(rewards: torch.Tensor, group: int, eps: float) -> torch.Tensor:
    """[n, N] per-reward advantages within consecutive groups, written out directly."""
    r = rewards.t().reshape(rewards.shape[1], -1, group).double()
    adv = (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + eps)
    return adv.reshape(rewards.shape[1], -1)


@pytest.mark.parametrize("noon", [True, False])
@pytest.mark.parametrize(("group", "n_obj"), [(2, 2), (4, 3), (8, 2)])
def test_trl_plugin_verl_estimator_and_core_give_the_same_s_star(group, n_obj, noon) -> None:
    gen = torch.Generator().manual_seed(group * 10 + n_obj)
    n = 6 * group
    # Coarse rewards, so that ties (and groups of equal rewards, advantage 0) occur.
    rewards = torch.randint(0, 4, (n, n_obj), generator=gen).float() / 2
    rewards[:group, 0] = 1.0  # one group where objective 0 does not vary
    eps = 1e-4  # TRL's; verl's default is 1e-6 and is passed here as the same value
    trl_s = pama_advantages_from_rewards(rewards, group, "group", noon=noon)
    core_s = pama_advantages(
        _group_normalised(rewards, group, eps), granularity="sample", noon=noon
    )
    # verl: groups by uid in any order, the objectives as reward columns, s* on every token.
    order = torch.randperm(n, generator=gen)
    uids = np.array([f"prompt{int(i) // group}" for i in order], dtype=object)
    keys = [f"r{i}" for i in range(n_obj)]
    lengths = torch.randint(1, 5, (n,), generator=gen)
    mask = (torch.arange(5)[None, :] < lengths[:, None]).long()
    adv, _ = compute_pama_outcome_advantage(
        torch.zeros(n, 5),
        mask,
        index=uids,
        epsilon=eps,
        config={"pama_reward_keys": keys, "pama_noon": noon},
        non_tensor_batch={k: rewards[order, i].numpy() for i, k in enumerate(keys)},
    )
    verl_s = torch.empty(n)
    verl_s[order] = adv[:, 0]
    assert torch.equal(adv, adv[:, :1] * mask)
    torch.testing.assert_close(trl_s.double(), core_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(verl_s.double(), core_s, rtol=1e-5, atol=1e-5)
    assert torch.equal(trl_s == 0, verl_s == 0)
    assert (trl_s[:group] == 0).all()  # objective 0 does not vary there: no agreement


def test_a_three_objective_task_trains_through_the_plugin(tmp_path) -> None:
    config = grpo_preset("tiny")
    job = {"task": "support_replies", "kind": "study", "method": "grpo_pama", "seed": 0}
    run = run_grpo_job(job, config, str(tmp_path / "cache"), str(tmp_path / "work"))
    assert set(run["evals"]) == {"1", "2"}
    assert {"helpful", "polite", "brief", "kl", "joint_success"} <= set(run["evals"]["2"])
    rates = [
        row[f"binding_rate/{o}"] for o in ("helpful", "polite", "brief") for row in run["curves"]
    ]
    assert len(rates) == 6 and all(0 <= r <= 1 for r in rates)
    assert set(run["timing"]) == {"setup", "train", "eval"} and run["timing"]["eval"] > 0
