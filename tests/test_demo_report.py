"""Report of the demo: table, JSON, samples and plots from a results dictionary."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from paretoopt.integrations.demo.report import results_table, samples_markdown, write_report


def _results() -> dict:
    def entry(label, s, s_std, length, seeds, hv):
        return {
            "label": label,
            "seeds": seeds,
            "final": {
                "sentiment": {"mean": s, "std": s_std},
                "length": {"mean": length, "std": 0.1},
            },
            "per_seed": [
                {
                    "seed": k,
                    "sentiment": s + 0.1 * k,
                    "length": length - 0.05 * k,
                    "hypervolume": hv,
                }
                for k in seeds
            ],
            "hypervolume": {"mean": hv, "std": 0.0},
            "curves": {
                "sentiment": [[0.1 * t + k for t in range(12)] for k in seeds],
                "length": [[0.5 - 0.01 * t for t in range(12)] for _ in seeds],
            },
            "samples": [
                {
                    "prompt": "the plot",
                    "response": "was great | fun .",
                    "sentiment": s,
                    "length": length,
                }
            ],
        }

    return {
        "objectives": ["sentiment", "length"],
        "reference_point": [0.0, 0.5],
        "reference_description": "the SFT policy's mean",
        "n_heldout_prompts": 33,
        "samples_per_prompt": 4,
        "methods": {
            "sft": entry("SFT (start)", 0.0, 0.0, 0.5, [], 0.0) | {"seeds": []},
            "pama": entry("PAMA", 1.25, 0.2, 0.7, [0, 1, 2], 0.25),
            "morlhf": entry("MORLHF (0.5/0.5)", -0.5, 0.3, 0.9, [0, 1, 2], 0.0),
        },
        "timings": {"wall_seconds": 12.0},
    }


def test_table_has_one_row_per_method_with_mean_std_and_hypervolume() -> None:
    table = results_table(_results())
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "method" not in ln]
    assert len(rows) == 3
    pama = next(r for r in rows if r.startswith("| PAMA"))
    assert "1.25 ± 0.20" in pama and "0.70 ± 0.10" in pama and "0.250 ± 0.000" in pama
    assert pama.rstrip(" |").endswith("3")
    assert "sentiment=0.00, length=0.50" in table
    assert "wall" not in table  # timings stay out of the table: same seed, same bytes


def test_samples_escape_table_separators() -> None:
    md = samples_markdown(_results())
    assert "was great \\| fun ." in md
    assert md.count("## ") == 3


def test_write_report_writes_json_table_samples_and_pngs(tmp_path) -> None:
    results = _results()
    paths = write_report(results, tmp_path)
    assert json.loads(paths["json"].read_text()) == results
    assert paths["table"].read_text() == results_table(results)
    for key in ("curves", "pareto"):
        data = paths[key].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
