"""``paretoopt study`` end to end at its smallest size (hidden ``--tiny``), offline.

The end-to-end run goes through ``paretoopt demo``, the study's friendly name: the same
code path as ``paretoopt study`` (only the preset and the default folder differ).
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import asdict

import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from paretoopt.integrations.hf import MOPPOConfig
from paretoopt.integrations.study import protocol, runner, tuning
from paretoopt.integrations.study.cli import build_parser, configure

from paretoopt.cli import main as paretoopt_main


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """``paretoopt demo --tiny``: (out folder, artefact cache, what it printed)."""
    root = tmp_path_factory.mktemp("study")
    out, cache = root / "out", root / "cache"
    argv = ["demo", "--tiny", "--out", str(out), "--cache-dir", str(cache), "--no-progress"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert paretoopt_main(argv) == 0
    return out, cache, printed.getvalue()


def test_tiny_study_writes_the_promised_results(tiny_study) -> None:
    out, _, _ = tiny_study
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"sentiment_length", "support_replies"}
    for name, n_obj, n_front in (("sentiment_length", 2, 3), ("support_replies", 3, 3)):
        t = results["tasks"][name]
        assert len(t["objectives"]) == n_obj
        assert {"pama", "morlhf", "mgda_ub", "gdpo"} <= set(t["methods"])
        for entry in t["methods"].values():
            assert [p["seed"] for p in entry["per_seed"]] == [0, 1]
            assert 0 <= entry["no_sacrifice_share"] <= 1
            worst = entry["worst_change"]
            assert worst["ci95"][0] <= worst["mean"] <= worst["ci95"][1]
            for o in t["objectives"]:
                lo, hi = entry["ci95"][o]
                assert lo <= entry["mean"][o] <= hi
            assert set(entry["checkpoints"]) == {"1", "2"}
        # One front point per weight; the uniform weight reuses morlhf's own runs.
        assert len(t["morlhf_front"]) == len(protocol.front_weights(n_obj, n_front))
        for b in ("morlhf", "mgda_ub", "gdpo"):
            c = t["comparisons"][b]
            assert set(c["p_value"]) >= set(t["objectives"])
            assert 0 <= c["dominates_share"] + c["dominated_share"] <= 1
            assert isinstance(c["dominated_by_front"], bool)
        assert "zero_rate" in t["pama_rates"]["pama"]
    md = (out / "study.md").read_text()
    assert "## Task `sentiment_length`" in md and "PAMA − baseline" in md
    for name in results["tasks"]:
        for kind in ("front", "reward_kl", "rates"):
            assert (out / f"{name}_{kind}.png").read_bytes()[:4] == b"\x89PNG"


def test_seeds_are_paired_and_an_interrupted_study_resumes(tiny_study) -> None:
    out, cache, _ = tiny_study
    raw = out / "runs" / "sentiment_length"
    runs = {p.name: json.loads(p.read_text()) for p in raw.glob("*.json")}
    pama = runs["sentiment_length-study-pama-0.json"]
    morlhf = runs["sentiment_length-study-morlhf-0.json"]
    # Same seed: the same held-out prompts were sampled for both methods.
    assert [s["prompt"] for s in pama["evals"]["2"]["samples"]] == [
        s["prompt"] for s in morlhf["evals"]["2"]["samples"]
    ]
    config = protocol.preset("tiny")
    jobs = protocol.make_jobs(config, "sentiment_length", 2)
    again = runner.run_jobs(jobs, config, raw, str(cache), progress=False)
    assert again[1] == runs[protocol.job_name(jobs[1]) + ".json"]  # read back, not rerun


def test_tuning_picks_the_best_mean_over_methods(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(
        tuning,
        "TUNING_GRID",
        {
            "learning_rate": (1e-4, 3e-3),
            "kl_coef": (0.05,),
            "ratio_to": ("old",),
            "advantage_normalization": ("whiten",),
        },
    )
    config = protocol.preset("tiny")
    table = tuning.tune(config, tmp_path / "tuning", str(tmp_path / "cache"), progress=False)
    assert len(table["table"]) == 2
    scores = [row["score"] for row in table["table"]]
    best = table["table"][scores.index(max(scores))]
    assert table["chosen"]["learning_rate"] == best["learning_rate"]
    # The criterion averages round 1's core methods only (gdpo is tuned, not scored).
    assert table["criterion_methods"] == ["pama", "morlhf", "mgda_ub"]
    assert "gdpo" in table["methods"]
    for row in table["table"]:
        assert row["score"] == pytest.approx(
            sum(row["per_method"][m] for m in table["criterion_methods"]) / 3
        )
    # Each method's own best: the setting with its own best score.
    for m in table["methods"]:
        own = max(table["table"], key=lambda row: row["per_method"][m])
        assert table["per_method"][m]["learning_rate"] == own["learning_rate"]
    assert table["seeds"] == [900]


def test_every_task_is_tuned_on_its_own_and_the_paper_arm_on_task_1(tmp_path, monkeypatch) -> None:
    from dataclasses import replace

    from paretoopt.integrations.study import tasks

    seen: list[tuple] = []
    monkeypatch.setattr(tasks, "load_task", lambda name, *a, **k: None)
    hv = {"sentiment_length": 1.0, "support_replies": 2.0}

    def fake_run_jobs(jobs, config, raw_dir, cache_dir, progress, desc=""):
        seen.extend((j["task"], j.get("arm"), j["method"]) for j in jobs)
        # Task 2 prefers the grid's first setting, task 1 its last.
        return [
            {
                "job": j,
                "evals": {
                    str(j["steps"]): {
                        "per_response_hv": hv[j["task"]]
                        * (-j["hparams_index"] if j["task"] == "support_replies" else 1)
                        * (j["hparams_index"] + 1 if j["task"] == "sentiment_length" else 1)
                    }
                },
            }
            for j in jobs
        ]

    monkeypatch.setattr(runner, "run_jobs", fake_run_jobs)
    config = replace(protocol.preset("tiny"), tasks=("support_replies", "sentiment_length"))
    record = tuning.tune_study(config, tmp_path / "t", None, progress=False, log=lambda s: None)
    assert set(record["tasks"]) == {"sentiment_length", "support_replies"}
    grid = tuning.grid_settings()
    assert record["chosen"]["support_replies"] == asdict(grid[0])
    assert record["chosen"]["sentiment_length"] == asdict(grid[-1])
    assert tuning.chosen_for(record, "support_replies") == asdict(grid[0])
    assert set(record["per_method"]["support_replies"]) == set(config.methods)
    assert record["paper"]["task"] == "sentiment_length"
    assert {m for t, arm, m in seen if arm == "paper"} == set(tuning.PAPER_METHODS)
    assert {r["ratio_to"] for r in record["paper"]["table"]} == {"ref"}
    # A record from before per-task tuning: one setting for every task.
    assert tuning.chosen_for({"chosen": asdict(grid[3])}, "support_replies") == asdict(grid[3])


def test_method_definitions_differ_only_in_the_combiner() -> None:
    labelled = [m for m in protocol.METHOD_LABELS if m != "sft"]
    for m in protocol.available_methods(labelled):
        fields = protocol.method_fields(m, 2)
        assert set(fields) <= {
            "combiner",
            "noon",
            "combiner_weights",
            "combiner_kwargs",
            "mgda_normalization",
            "pama_granularity",
        }
        MOPPOConfig(**fields)  # each a valid trainer set-up
    assert protocol.method_fields("gdpo", 2) == {"combiner": "gdpo", "combiner_weights": [0.5, 0.5]}
    assert protocol.method_fields("pama_ub", 3) == {"combiner": "pama_ub", "noon": True}
    assert protocol.method_fields("pama_ub_no_noon", 2) == {"combiner": "pama_ub", "noon": False}
    assert protocol.method_fields("pama_batch_no_noon", 2) == {
        "combiner": "pama", "noon": False, "pama_granularity": "batch"
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown method"):
        protocol.method_fields("ppo", 2)


def test_a_saved_run_with_other_settings_is_refused(tmp_path) -> None:
    from dataclasses import replace

    config = protocol.preset("tiny")
    job = protocol.make_jobs(config, "sentiment_length", 2)[1]
    path = tmp_path / f"{protocol.job_name(job)}.json"
    record = {"job": job, "settings": protocol.run_settings(job, config), "evals": {}}
    path.write_text(json.dumps(record))
    # Same settings: read back without running anything.
    assert runner.run_jobs([job], config, tmp_path, None, progress=False) == [record]
    changed = replace(
        protocol.with_hparams(config, {**asdict(config.hparams), "kl_coef": 0.5}),
        samples_per_prompt=3,
    )
    with pytest.raises(ValueError, match=r"kl_coef.*samples_per_prompt.*fresh --out") as err:
        runner.run_jobs([job], changed, tmp_path, None, progress=False)
    assert path.name in str(err.value)
    with pytest.raises(ValueError, match="steps: saved 2, now 5"):
        runner.run_jobs([job], replace(config, steps=5), tmp_path, None, progress=False)
    path.write_text(json.dumps({"job": job, "evals": {}}))  # a file from before the check
    with pytest.raises(ValueError, match=r"without its settings.*delete the file"):
        runner.run_jobs([job], config, tmp_path, None, progress=False)


def test_the_demo_prints_the_table_with_cis_and_where_the_report_is(tiny_study) -> None:
    out, _, printed = tiny_study
    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith("paretoopt demo --tiny --out ")
    from paretoopt.integrations.study.report import headline_table

    for name, t in results["tasks"].items():
        assert headline_table(t) in printed  # the task's table, as the README shows it
        for kind in ("front", "rates", "reward_kl"):
            assert str(out / f"{name}_{kind}.png") in printed
    assert "| PAMA (Noon) | " in printed and "| GDPO (uniform) | " in printed
    assert f"report: {out / 'study.md'}" in printed
    assert "wall time: " in printed


def test_demo_is_the_quick_study_with_a_default_folder() -> None:
    demo = build_parser(demo=True).parse_args([])
    assert demo.out == "demo_out" and demo.quick
    config = configure(demo)
    assert config == protocol.preset("quick")
    # The quick preset: task 1, the core methods and GDPO, enough paired seeds for CIs.
    assert config.tasks == ("sentiment_length",)
    assert config.methods == (*protocol.CORE_METHODS, "gdpo")
    assert config.seeds["sentiment_length"] >= 3 and config.steps < protocol.StudyConfig().steps
    # `paretoopt demo --quick` (an older command line) is the same run.
    assert configure(build_parser(demo=True).parse_args(["--quick"])) == config
    assert configure(build_parser().parse_args(["--quick", "--out", "x"])) == config
    # The study's options apply to the demo too.
    fewer = build_parser(demo=True).parse_args(["--seeds", "2", "--methods", "pama,gdpo"])
    assert configure(fewer).seeds["sentiment_length"] == 2
    assert configure(fewer).methods == ("pama", "gdpo")


def test_demo_help_names_the_outputs(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        paretoopt_main(["demo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: paretoopt demo")
    for word in ("--out", "demo_out", "study.md", "_front.png", "_rates.png", "GDPO", "--seeds"):
        assert word in text, word
    assert "--tiny" not in text
    with pytest.raises(SystemExit) as exc:
        paretoopt_main(["study", "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: paretoopt study")


def test_a_tuning_record_runs_own_best_transfer_and_the_paper_arm(tmp_path) -> None:
    """`paretoopt study --tuning FILE`: each task at its own shared setting, each method at
    its own best, task 2's transfer row (at task 1's setting) and the paper arm on task 1;
    every result under the keys other tools read, the verdicts computed from them."""
    grid = [asdict(h) for h in tuning.grid_settings()]
    methods = protocol.preset("tiny").methods
    record = {
        "criterion": tuning.CRITERION,
        "tasks": {"sentiment_length": {}, "support_replies": {}},
        "chosen": {"sentiment_length": grid[5], "support_replies": grid[1]},
        "per_method": {
            "sentiment_length": {m: grid[5 if m != "gdpo" else 0] for m in methods},
            "support_replies": {m: grid[1] for m in methods},
        },
        "paper": {"chosen": asdict(tuning.grid_settings(tuning.PAPER_GRID)[2]), "table": []},
    }
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps(record))
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["study", "--tiny", "--tuning", str(path), "--out", str(out), "--cache-dir",
            str(cache), "--no-progress"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        assert paretoopt_main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    t1, t2 = results["tasks"]["sentiment_length"], results["tasks"]["support_replies"]
    assert t1["hparams"] == grid[5] and t2["hparams"] == grid[1]
    assert results["tuning"]["per_method"]["support_replies"]["pama"] == grid[1]
    # Own best: gdpo ran at its own setting, the rest reuse the main runs.
    own = t1["own_best"]["methods"]
    assert own["gdpo"]["shared_setting"] is False and own["gdpo"]["hparams"] == grid[0]
    assert own["pama"]["shared_setting"] is True
    assert own["pama"]["per_seed"] == t1["methods"]["pama"]["per_seed"][:2]
    assert (out / "runs/sentiment_length/sentiment_length-own_best-gdpo-1.json").exists()
    assert all(e["shared_setting"] for e in t2["own_best"]["methods"].values())
    # Transfer: task 2 at task 1's setting, its own folder; task 1 has none.
    assert "transfer" not in t1 and t2["transfer"]["hparams"] == grid[5]
    assert set(t2["transfer"]["methods"]) == {"pama", "morlhf", "mgda_ub"}
    assert t2["transfer"]["morlhf_front"] == []
    # The paper arm: its four methods, ratio to the reference and the adaptive controller.
    paper = t1["paper_setup"]
    assert set(paper["methods"]) == {"pama", "linear_noon", "morlhf", "mgda_ub"}
    assert paper["hparams"]["ratio_to"] == "ref"
    assert set(paper["ordering"]["pairs"]) == {"linear_noon", "morlhf", "mgda_ub"}
    run = json.loads(
        (out / "runs/sentiment_length_paper/sentiment_length-study-pama-0-paper.json").read_text()
    )
    assert run["settings"]["arm"] == "paper"
    # The pre-registered verdict: per task and overall.
    for t in (t1, t2):
        v = t["verdict"]["variants"]["pama"]
        assert set(v["joint_success_vs"]) == {"morlhf", "gdpo"}
        assert isinstance(v["passes"], bool)
    assert results["verdict"]["tasks"] == ["sentiment_length", "support_replies"]
    md = (out / "study.md").read_text()
    for heading in ("own best", "paper's own set-up", "transfer", "pre-registered verdict"):
        assert heading in md.lower()


def test_the_stored_choice_is_the_committed_tuning_record() -> None:
    """`paretoopt study` without --tune runs each task at the setting docs/study/tuning.json
    chose; the paper arm and each method's own best need the record itself (--tuning)."""
    from pathlib import Path

    record = json.loads((Path(__file__).parents[1] / "docs/study/tuning.json").read_text())
    for task, hp in protocol.CHOSEN_TASK_HPARAMS.items():
        assert asdict(hp) == tuning.chosen_for(record, task)
    assert set(record["per_method"]["sentiment_length"]) == set(protocol.FULL_METHODS)
    assert record["paper"]["chosen"]["ratio_to"] == "ref"
