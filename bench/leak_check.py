"""Long runs do not leak: resident memory and step time of both trainers, step by step.

Runs the RLHF trainer (``MOPPOTrainer``, a tiny GPT-2 policy, PAMA, two rewards, a checkpoint
every 50 steps) and the Trainer drop-in (``MultiObjectiveTrainer``, a tiny two-task BERT,
PAMA, a checkpoint every 100 steps) for ``--steps`` steps each, on the CPU with one thread,
each in a fresh Python process (memory one run freed could otherwise hide the other's
growth). After every step it records the process's resident set size (RSS) and the step's
wall time. After the warm-up (``--warmup`` steps) it fits a line to each: RSS growth in MiB
per 100 steps (least squares, and Theil-Sen, which a few outlying steps do not move) and the
step time's trend in ms per 100 steps (Theil-Sen). The verdict: RSS flat when both fits of
both runs stay below ``--bound`` MiB per 100 steps. Time is only reported (on a shared
machine it follows the load, not the code).

Writes ``OUT/leak_check.json`` and ``OUT/leak_check.png`` and prints the verdict::

    python bench/leak_check.py --steps 300 --out docs/reliability

Exit status 0 when flat, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

MIB = 2**20
BOUND = 20.0
"""MiB per 100 steps after the warm-up above which the RSS is called growing."""


class StepRecorder:
    """RSS (MiB) and wall time (s) of each step; ``mark()`` is called at the end of one."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.rss: list[float] = []
        self.seconds: list[float] = []
        self.last = time.perf_counter()

    def start(self) -> None:
        self.last = time.perf_counter()

    def mark(self) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self.last)
        self.rss.append(self.process.memory_info().rss / MIB)
        self.last = now


def history_size(history: list[dict[str, Any]]) -> dict[str, float]:
    """What a metric history (one dict per logged step) holds in memory: entries and MiB
    (dicts, keys and values; an upper bound where keys are shared)."""
    size = sum(
        sys.getsizeof(d) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in d.items())
        for d in history
    )
    return {"entries": len(history), "mib": size / MIB}


def run_moppo(steps: int, root: Path, recorder: StepRecorder) -> dict[str, Any]:
    """``MOPPOTrainer.train()`` for ``steps`` steps; the recorder marks each logged step."""
    from hf_fixtures import PROMPTS, make_tiny_lm
    from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer, make_length_reward

    def good_rate(prompts, responses):  # type: ignore[no-untyped-def]
        return [r.split().count("good") / max(1, len(r.split())) for r in responses]

    lm = make_tiny_lm(root / "tiny_lm")
    config = MOPPOConfig(
        steps=steps, batch_size=8, mini_batch_size=4, ppo_epochs=1, max_new_tokens=8,
        learning_rate=3e-3, kl_coef=0.05, save_every=50, output_dir=str(root / "moppo"),
        progress=False, cpu=True, seed=0,
    )  # fmt: skip
    trainer = MOPPOTrainer(
        config, str(lm), prompts=PROMPTS,
        rewards=[make_length_reward(scale=8, unit="words"), good_rate],
        reward_names=["length", "good"],
    )  # fmt: skip
    log = trainer.log

    def log_and_mark(metrics: dict[str, float]) -> None:
        log(metrics)
        recorder.mark()

    trainer.log = log_and_mark  # type: ignore[method-assign]
    recorder.start()
    trainer.train()
    described = {k: getattr(config, k) for k in ("combiner", "batch_size", "mini_batch_size",
                 "ppo_epochs", "max_new_tokens", "save_every")}  # fmt: skip
    params = sum(p.numel() for p in trainer.unwrapped.parameters())
    return {
        "model": f"GPT-2, 1 layer, {params} parameters with the value heads",
        **described,
        # Kept by design: train() returns it, each checkpoint holds it (trainer_state.json).
        "metric_history": {"what": "MOPPOTrainer.history", **history_size(trainer.history)},
    }


def run_multi_objective(steps: int, root: Path, recorder: StepRecorder) -> dict[str, Any]:
    """``MultiObjectiveTrainer.train()`` for ``steps`` steps; a callback marks each step."""
    from mo_fixtures import build_two_task, load_two_task, two_task_data
    from paretoopt.integrations.hf import MultiObjectiveTrainer, MultiObjectiveTrainingArguments
    from transformers import PrinterCallback, TrainerCallback

    class Mark(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            recorder.start()

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            recorder.mark()

    model_dir = build_two_task(root / "two_task")
    args = MultiObjectiveTrainingArguments(
        output_dir=str(root / "multi_objective"), combiner="pama",
        head_modules={"a": "head_a", "b": "head_b"}, per_device_train_batch_size=8,
        max_steps=steps, learning_rate=1e-3, logging_steps=10, save_strategy="steps",
        save_steps=100, report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
    )  # fmt: skip
    model = load_two_task(model_dir)
    trainer = MultiObjectiveTrainer(
        model, args, train_dataset=two_task_data(64), callbacks=[Mark()]
    )
    trainer.remove_callback(PrinterCallback)  # the logs stay in trainer.state.log_history
    trainer.train()
    params = sum(p.numel() for p in model.parameters())
    history = {"what": "Trainer.state.log_history", **history_size(trainer.state.log_history)}
    return {"model": f"two-task BERT, 1 layer, width 16, {params} parameters",
            "combiner": "pama", "batch_size": 8, "data_rows": 64, "logging_steps": 10,
            "save_steps": 100, "metric_history": history}  # fmt: skip


def theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope (the median of the pairwise slopes: robust to outlying steps) and intercept."""
    from scipy.stats import theilslopes

    fit = theilslopes(y, x)
    return float(fit[0]), float(fit[1])


def analyse(rss: list[float], seconds: list[float], warmup: int, bound: float) -> dict[str, Any]:
    """Slopes after the warm-up: RSS in MiB per 100 steps, step time in ms per 100 steps."""
    steps = np.arange(1, len(rss) + 1, dtype=float)
    after = steps > warmup
    x, r, ms = steps[after], np.asarray(rss)[after], 1e3 * np.asarray(seconds)[after]
    if len(x) < 3:
        raise ValueError(f"only {len(x)} steps after a warm-up of {warmup}: run more steps")
    ols = float(np.polyfit(x, r, 1)[0]) * 100
    robust, intercept = theil_sen(x, r)
    robust *= 100
    window = max(3, min(50, len(x) // 3))
    result = {
        "rss_mib_at_warmup_end": float(r[0]),
        "rss_mib_final": float(r[-1]),
        "rss_mib_max": float(r.max()),
        "rss_growth_after_warmup_mib": float(r[-1] - r[0]),
        "rss_slope_mib_per_100_steps": ols,
        "rss_theil_sen_mib_per_100_steps": robust,
        "rss_theil_sen_intercept_mib": intercept,
        "step_ms_median_first_window": float(np.median(ms[:window])),
        "step_ms_median_last_window": float(np.median(ms[-window:])),
        "step_ms_window": window,
        "time_slope_ms_per_100_steps": theil_sen(x, ms)[0] * 100,
        "rss_flat": bool(max(ols, robust) < bound),
    }
    return result


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    warmup = report["warmup"]
    fig, axes = plt.subplots(2, len(runs), figsize=(5.5 * len(runs), 6.5), squeeze=False)
    for col, (name, run) in enumerate(runs.items()):
        steps = np.arange(1, len(run["rss_mib"]) + 1)
        ax = axes[0][col]
        ax.plot(steps, run["rss_mib"], lw=1, color="C0", label="RSS")
        a = run["analysis"]
        x = steps[steps > warmup]
        slope = a["rss_theil_sen_mib_per_100_steps"]
        fitted = a["rss_theil_sen_intercept_mib"] + slope / 100 * x
        ax.plot(x, fitted, "--", color="C3", label=f"Theil-Sen fit: {slope:+.2f} MiB/100 steps")
        ax.axvspan(0, warmup, color="0.9", label="warm-up")
        ax.set_title(f"{name}: {run['setting']['model']}", fontsize=9)
        ax.set_ylabel("resident set size (MiB)")
        # At least 20 MiB of axis: a flat line looks flat, not like magnified noise.
        low, high = min(run["rss_mib"]), max(run["rss_mib"])
        pad = max(1.0, (20.0 - (high - low)) / 2)
        ax.set_ylim(low - pad, high + pad)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.legend(fontsize=8, loc="lower right")
        ax = axes[1][col]
        ms = 1e3 * np.asarray(run["step_seconds"])
        ax.plot(steps, ms, lw=0.6, color="0.6", label="step time")
        k = 15
        if len(ms) >= k:
            rolling = np.array([np.median(ms[max(0, i - k + 1) : i + 1]) for i in range(len(ms))])
            ax.plot(steps, rolling, color="C1", label=f"rolling median ({k} steps)")
        ax.axvspan(0, warmup, color="0.9")
        ax.set_ylim(0, float(np.percentile(ms, 99)) * 1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("wall time per step (ms)")
        ax.set_title(f"time trend {a['time_slope_ms_per_100_steps']:+.2f} ms/100 steps", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
    load = report["machine"]["loadavg_before"], report["machine"]["loadavg_after"]
    fig.suptitle(
        f"Leak check: {report['steps']} steps per trainer, CPU, 1 thread; "
        f"load average before/after {load[0]} / {load[1]} on {report['machine']['cpu_count']} CPUs",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


RUNS: dict[str, Callable[[int, Path, StepRecorder], dict[str, Any]]] = {
    "MOPPOTrainer": run_moppo,
    "MultiObjectiveTrainer": run_multi_objective,
}


def record_run(name: str, steps: int, raw_path: Path) -> None:
    """In the fresh process: one trainer's run, its per-step RSS and times into ``raw_path``."""
    torch.set_num_threads(1)
    recorder = StepRecorder()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        setting = RUNS[name](steps, Path(tmp), recorder)
    if len(recorder.rss) != steps:
        raise RuntimeError(f"{name}: recorded {len(recorder.rss)} of {steps} steps")
    raw = {
        "setting": setting,
        "wall_seconds": time.perf_counter() - began,
        "rss_mib": [round(v, 3) for v in recorder.rss],
        "step_seconds": [round(v, 6) for v in recorder.seconds],
    }
    raw_path.write_text(json.dumps(raw))


def run_in_fresh_process(name: str, steps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = Path(tmp) / "raw.json"
        cmd = [sys.executable, __file__, "--record", name, "--steps", str(steps),
               "--raw", str(raw_path)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the {name} run failed:\n{proc.stderr[-4000:]}")
        return json.loads(raw_path.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=50, help="steps left out of the fits")
    ap.add_argument("--bound", type=float, default=BOUND, help="MiB per 100 steps (verdict)")
    ap.add_argument("--out", type=Path, default=Path("docs/reliability"))
    ap.add_argument("--only", choices=sorted(RUNS), action="append", help="run only these")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--record", choices=sorted(RUNS), help=argparse.SUPPRESS)
    ap.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.record:  # the fresh process of one run
        record_run(a.record, a.steps, a.raw)
        return 0
    if a.warmup + 3 > a.steps:
        ap.error(f"--steps {a.steps} leaves fewer than 3 steps after --warmup {a.warmup}")
    import transformers
    from paretoopt.integrations.bench.lib import loadavg, machine_info

    a.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "what": "RSS and wall time after every step of a long CPU run, per trainer",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "steps": a.steps,
        "warmup": a.warmup,
        "bound_mib_per_100_steps": a.bound,
        "machine": {
            **machine_info(),
            "platform": platform.platform(),
            "transformers": transformers.__version__,
            "loadavg_before": loadavg(),
        },
        "runs": {},
    }
    for name in RUNS:
        if a.only and name not in a.only:
            continue
        raw = run_in_fresh_process(name, a.steps)
        report["runs"][name] = {
            **raw,
            "analysis": analyse(raw["rss_mib"], raw["step_seconds"], a.warmup, a.bound),
        }
    report["machine"]["loadavg_after"] = loadavg()
    flat = all(run["analysis"]["rss_flat"] for run in report["runs"].values())
    report["verdict"] = "flat" if flat else "growing"
    (a.out / "leak_check.json").write_text(json.dumps(report, indent=1) + "\n")
    if not a.no_plot:
        plot(report, a.out / "leak_check.png")
    for name, run in report["runs"].items():
        s = run["analysis"]
        h = run["setting"]["metric_history"]
        print(
            f"{name}: RSS {s['rss_mib_at_warmup_end']:.1f} -> {s['rss_mib_final']:.1f} MiB after "
            f"step {a.warmup}; slope {s['rss_slope_mib_per_100_steps']:+.2f} MiB/100 steps "
            f"(Theil-Sen {s['rss_theil_sen_mib_per_100_steps']:+.2f}); step time "
            f"{s['step_ms_median_first_window']:.1f} -> {s['step_ms_median_last_window']:.1f} ms "
            f"(median of {s['step_ms_window']} steps), trend "
            f"{s['time_slope_ms_per_100_steps']:+.2f} ms/100 steps; {h['what']} (kept by "
            f"design) holds {h['entries']} entries, {h['mib']:.2f} MiB"
        )
    load = report["machine"]["loadavg_before"], report["machine"]["loadavg_after"]
    print(
        f"verdict: RSS {report['verdict']} (bound {a.bound:g} MiB per 100 steps after step "
        f"{a.warmup}); load average before/after {load[0]} / {load[1]}; "
        f"wrote {a.out / 'leak_check.json'}"
    )
    return 0 if flat else 1


if __name__ == "__main__":
    raise SystemExit(main())
