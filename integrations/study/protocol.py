"""The study protocol in code: methods, hyper-parameters, jobs, the process pool, tuning.

One *job* is one (task, method, seed) PPO run of ``steps`` steps, evaluated at fixed
checkpoints on the held-out prompts with ``samples_per_prompt`` sampled responses each and a
fixed sampling seed. Every method gets the same PPO settings (:class:`Hparams` plus the
schedule in :class:`StudyConfig`); only the combiner fields differ (:func:`method_fields`).
Seed ``s`` of every method starts from the same SFT policy, samples the same prompt order
and is evaluated with the same sampling seed, so seeds are *paired* across methods.

Hyper-parameters are chosen once by :func:`tune` on *tuning seeds* (900+, never reported)
and on the *training* prompts (never the held-out ones), by a criterion fixed before any
run and blind to the method: the mean, over all core methods and tuning seeds, of the
per-response hypervolume at the last tuning checkpoint. Task 2 reuses task 1's choice.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from paretoopt.zoo import ZOO

from . import stats

CORE_METHODS = ("pama", "pama_no_noon", "morlhf", "mgda_ub")
METHOD_LABELS = {
    "sft": "SFT (start)",
    "pama": "PAMA (Noon)",
    "pama_no_noon": "PAMA without Noon",
    "morlhf": "MORLHF (uniform)",
    "mgda_ub": "MGDA-UB (l2)",
    "gdpo": "GDPO (uniform)",
    "pama_sample": "PAMA per sample (Noon)",
    "pama_sample_no_noon": "PAMA per sample, no Noon",
    "pama_batch": "PAMA per batch (Noon)",
    "pama_batch_no_noon": "PAMA per batch, no Noon",
    "pama_ub": "PAMA-UB: min-norm of advantages (Noon)",
    "pama_ub_no_noon": "PAMA-UB, no Noon",
    "linear_noon": "Linear of Noon losses",
    # The torchjd zoo (paretoopt.zoo), over the last hidden states as MGDA-UB, no Noon.
    **{name: f"{spec.torchjd_class} (torchjd)" for name, spec in ZOO.items()},
}
TUNING_SEED_OFFSET = 900
#: Metrics of each training step kept in the raw run files.
CURVE_KEYS = ("kl", "zero_rate", "mean_s_star", "conflict_rate", "response_length")
CURVE_PREFIXES = ("reward/", "binding_rate/", "value/error/")


@dataclass(frozen=True)
class Hparams:
    """The hyper-parameters under tuning, identical for every method."""

    learning_rate: float = 3e-4
    kl_coef: float = 0.05
    ratio_to: str = "old"
    advantage_normalization: str = "whiten"


#: The grid searched by ``paretoopt study --tune`` (full factorial, 16 settings).
TUNING_GRID: dict[str, tuple[Any, ...]] = {
    "learning_rate": (1e-4, 3e-4),
    "kl_coef": (0.02, 0.1),
    "ratio_to": ("ref", "old"),
    "advantage_normalization": ("none", "whiten"),
}

#: The values ``--tune`` chose (docs/study/tuning.json holds the table that chose them):
#: the best of the 16 settings on the method-blind criterion, at the grid's larger
#: learning rate and smaller KL coefficient.
CHOSEN_HPARAMS = Hparams(
    learning_rate=3e-4, kl_coef=0.02, ratio_to="old", advantage_normalization="none"
)


@dataclass
class StudyConfig:
    """One study's size and schedule (see :func:`preset`)."""

    tasks: tuple[str, ...] = ("sentiment_length", "support_replies")
    methods: tuple[str, ...] = CORE_METHODS
    """``linear_noon`` is available (``--methods``) but not in the reported run's budget."""
    seeds: dict[str, int] = field(
        default_factory=lambda: {"sentiment_length": 20, "support_replies": 10}
    )
    steps: int = 200
    eval_steps: tuple[int, ...] = (40, 100, 200)
    front_seeds: int = 2
    front_points: dict[str, int] = field(
        default_factory=lambda: {"sentiment_length": 9, "support_replies": 10}
    )
    samples_per_prompt: int = 16
    n_eval_prompts: int | None = None
    eval_seed: int = 1234
    batch_size: int = 8
    mini_batch_size: int = 8
    ppo_epochs: int = 2
    hparams: Hparams = field(default_factory=lambda: CHOSEN_HPARAMS)
    artefact_size: str = "full"
    workers: int = 2
    # Tuning: seeds 900.. , fewer steps, evaluated on training prompts.
    tune_seeds: int = 1
    tune_steps: int = 100
    tune_samples_per_prompt: int = 4
    tune_n_prompts: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def preset(name: str) -> StudyConfig:
    """``full`` (the reported study), ``quick`` (minutes; ``paretoopt demo``) or ``tiny``
    (the test suite)."""
    if name == "full":
        return StudyConfig()
    if name == "quick":
        return StudyConfig(
            tasks=("sentiment_length",),
            methods=(*CORE_METHODS, "gdpo"),
            seeds={"sentiment_length": 3, "support_replies": 2},
            steps=40,
            eval_steps=(20, 40),
            front_seeds=1,
            front_points={"sentiment_length": 3, "support_replies": 3},
            samples_per_prompt=4,
            n_eval_prompts=16,
            tune_seeds=1,
            tune_steps=20,
        )
    if name == "tiny":
        return StudyConfig(
            tasks=("sentiment_length", "support_replies"),
            methods=("pama", "morlhf", "mgda_ub", "gdpo"),
            seeds={"sentiment_length": 2, "support_replies": 2},
            steps=2,
            eval_steps=(1, 2),
            front_seeds=1,
            front_points={"sentiment_length": 3, "support_replies": 3},
            samples_per_prompt=2,
            n_eval_prompts=3,
            batch_size=4,
            mini_batch_size=4,
            ppo_epochs=1,
            artefact_size="tiny",
            workers=1,
            tune_seeds=1,
            tune_steps=2,
            tune_samples_per_prompt=1,
            tune_n_prompts=3,
        )
    raise ValueError(f"unknown preset {name!r}; expected 'full', 'quick' or 'tiny'")


def front_weights(n_objectives: int, n_points: int) -> list[list[float]]:
    """Weights of the MORLHF sweep: ``n_points`` evenly spaced on 2 objectives, the
    smallest regular grid of the simplex with at least ``n_points`` points on 3."""
    if n_objectives == 2:
        return [
            [round(1 - k / (n_points - 1), 6), round(k / (n_points - 1), 6)]
            for k in range(n_points)
        ]
    if n_objectives != 3:
        raise ValueError(f"front weights for {n_objectives} objectives are not defined")
    h = 1
    while (h + 1) * (h + 2) // 2 < n_points:
        h += 1
    grid = [(a, b, h - a - b) for a in range(h + 1) for b in range(h + 1 - a)]
    return [[round(v / h, 6) for v in w] for w in grid]


def method_fields(method: str, n_objectives: int, weights: Sequence[float] | None = None):
    """The MOPPOConfig fields that define ``method``; every other field is shared.

    * ``pama``: the closed form on Noon-clipped advantages, token granularity (the paper);
    * ``pama_no_noon``: the closed form on unclipped advantages, standard PPO surrogate;
    * ``morlhf``: PPO on the scalarised reward, one advantage ``sum_i w_i A_i`` per token,
      standard clipping, no Noon (uniform weights unless ``weights``);
    * ``mgda_ub``: MGDA-UB (min-norm over the gradients at the policy's last hidden states,
      l2-normalised) of the n per-objective *standard* PPO losses (advantages not clipped);
    * ``gdpo``: each objective's advantages whitened on their own over the batch, then
      ``sum_i w_i A_i``, standard clipping, no Noon (GDPO's decoupled normalisation);
    * ``pama_sample`` / ``pama_batch`` (and ``*_no_noon``): PAMA with one weight vector per
      response (from its mean advantages) or per batch (from the batch-mean advantages);
    * ``pama_ub`` / ``pama_ub_no_noon``: MGDA-UB at the PPO ratio, one standard PPO surrogate
      on ``sum_i c_i A_i`` with ``c`` the min-norm point of the batch's advantage vectors
      (Noon-clipped, or not);
    * ``linear_noon``: ``sum_i w_i L_i`` of Noon-clipped per-objective PPO losses (the
      MORLHF of an earlier PPO set-up), a labelled variant;
    * a torchjd zoo name (``upgrad``, ``cagrad``, ...): that aggregator on the n standard PPO
      losses' gradients at the last hidden states, wired as ``mgda_ub``.
    """
    uniform = [1.0 / n_objectives] * n_objectives
    w = [float(v) for v in (weights if weights is not None else uniform)]
    if method == "pama":
        return {"combiner": "pama", "noon": True}
    if method == "pama_no_noon":
        return {"combiner": "pama", "noon": False}
    for granularity in ("sample", "batch"):
        if method in (f"pama_{granularity}", f"pama_{granularity}_no_noon"):
            noon = not method.endswith("_no_noon")
            return {"combiner": "pama", "noon": noon, "pama_granularity": granularity}
    if method in ("pama_ub", "pama_ub_no_noon"):
        return {"combiner": "pama_ub", "noon": method == "pama_ub"}
    if method == "gdpo":
        return {"combiner": "gdpo", "combiner_weights": w}
    if method == "morlhf":
        return {"combiner": "morlhf", "combiner_weights": w}
    if method == "linear_noon":
        return {"combiner": "linear_noon", "combiner_weights": w}
    if method == "mgda_ub":
        return {"combiner": "mgda_ub", "mgda_normalization": "l2", "noon": False}
    if method in ZOO:  # a torchjd aggregator on the standard PPO losses, as mgda_ub
        return {"combiner": method, "combiner_kwargs": {"mode": "shared"}, "noon": False}
    raise ValueError(f"unknown method {method!r}; expected one of {list(METHOD_LABELS)[1:]}")


def available_methods(methods: Sequence[str]) -> list[str]:
    """``methods`` in order (kept as a hook: every method runs on the installed trainer)."""
    return list(methods)


# ---------------------------------------------------------------------------- jobs


def make_jobs(config: StudyConfig, task: str, n_objectives: int) -> list[dict[str, Any]]:
    """Every run of one task: the SFT evaluation, methods x seeds, the MORLHF sweep.

    Seed-major order (seed 0 of every method and weight, then seed 1, ...), so that a run
    stopped early has complete *paired* seeds for every method.
    """
    jobs: list[dict[str, Any]] = [{"task": task, "kind": "sft", "method": "sft", "seed": 0}]
    uniform = [round(1.0 / n_objectives, 6)] * n_objectives
    weights = [
        w
        for w in front_weights(n_objectives, config.front_points[task])
        if not (np.allclose(w, uniform, atol=1e-5) and "morlhf" in config.methods)
    ]  # the uniform weight's runs are the morlhf method's own seeds
    for seed in range(max(config.seeds[task], config.front_seeds)):
        if seed < config.seeds[task]:
            for method in available_methods(config.methods):
                jobs.append({"task": task, "kind": "study", "method": method, "seed": seed})
        if seed < config.front_seeds:
            for w in weights:
                jobs.append(
                    {"task": task, "kind": "front", "method": "morlhf", "seed": seed, "weights": w}
                )
    return jobs


def job_name(job: dict[str, Any]) -> str:
    name = f"{job['task']}-{job['kind']}-{job['method']}-{job['seed']}"
    if job.get("weights") is not None:
        name += "-w" + "_".join(f"{v:.3f}" for v in job["weights"])
    if job.get("hparams_index") is not None:
        name += f"-h{job['hparams_index']}"
    return name


def run_settings(job: dict[str, Any], config: StudyConfig) -> dict[str, Any]:
    """Every setting that shapes a run's result beyond its name (task, kind, method, seed,
    weights): saved in each run file and compared when the file is reused."""
    tune = job["kind"] == "tune"
    hp = Hparams(**job["hparams"]) if "hparams" in job else config.hparams
    return {
        "hparams": asdict(hp),
        "steps": job.get("steps", config.steps),
        "eval_steps": sorted(job.get("eval_steps", config.eval_steps)),
        "batch_size": config.batch_size,
        "mini_batch_size": config.mini_batch_size,
        "ppo_epochs": config.ppo_epochs,
        "artefact_size": config.artefact_size,
        "n_eval_prompts": config.tune_n_prompts if tune else config.n_eval_prompts,
        "samples_per_prompt": config.tune_samples_per_prompt if tune else config.samples_per_prompt,
        "eval_seed": config.eval_seed,
    }


def load_run(path: Path, job: dict[str, Any], config: StudyConfig) -> dict[str, Any]:
    """A saved run, after checking it was made with this study's settings."""
    record = json.loads(path.read_text())
    want = run_settings(job, config)
    saved = record.get("settings")
    if saved is None:
        raise ValueError(
            f"{path} holds a run saved without its settings (hyper-parameters, steps, "
            "evaluation), so it cannot be checked against this study's; use a fresh --out or "
            "delete the file"
        )
    # JSON turns tuples into lists: compare in JSON form.
    want = json.loads(json.dumps(want))
    differ = [
        f"{k}: saved {saved.get(k)!r}, now {want.get(k)!r}"
        for k in sorted(set(want) | set(saved))
        if saved.get(k) != want.get(k)
    ]
    if differ:
        raise ValueError(
            f"{path.parent} holds runs of another study: {path.name} was run with other "
            f"settings than this study's ({'; '.join(differ)}); use a fresh --out or delete "
            "the file"
        )
    return record


def check_saved_runs(jobs: Sequence[dict[str, Any]], config: StudyConfig, raw_dir: Path) -> None:
    """Every saved run in ``raw_dir`` for ``jobs`` was made with this study's settings
    (:func:`load_run`); reads JSON only, so it can run before any artefact is loaded."""
    for job in jobs:
        path = raw_dir / f"{job_name(job)}.json"
        if path.exists():
            load_run(path, job, config)


def _trainer_config(config: StudyConfig, task: Any, job: dict[str, Any], out: Path):
    from paretoopt.integrations.hf import MOPPOConfig

    hp = Hparams(**job["hparams"]) if "hparams" in job else config.hparams
    steps = job.get("steps", config.steps)
    return MOPPOConfig(
        **method_fields(
            job["method"] if job["method"] != "sft" else "morlhf",
            len(task.objectives),
            job.get("weights"),
        ),
        steps=max(steps, 1),
        batch_size=config.batch_size,
        mini_batch_size=config.mini_batch_size,
        ppo_epochs=config.ppo_epochs,
        max_new_tokens=task.max_new_tokens,
        learning_rate=hp.learning_rate,
        kl_coef=hp.kl_coef,
        adaptive_kl=False,
        ratio_to=hp.ratio_to,
        advantage_normalization=hp.advantage_normalization,
        seed=(TUNING_SEED_OFFSET if job["kind"] == "tune" else 0) + job["seed"],
        output_dir=str(out),
        save_final=False,
        log_jsonl=False,
        progress=False,
        cpu=True,
    )


def sequence_kl(trainer: Any, rollout: Any, chunk: int = 128) -> Any:
    """Per-response KL to the reference, ``sum_t log pi(a_t) - log pi_ref(a_t)``, in chunks
    larger than the trainer's mini-batch (evaluation batches are hundreds of responses)."""
    import torch
    from paretoopt.integrations.hf.value_heads import response_forward

    out = []
    with torch.no_grad():
        for lo in range(0, rollout.input_ids.shape[0], chunk):
            ids = rollout.input_ids[lo : lo + chunk]
            attn = rollout.attention_mask[lo : lo + chunk]
            args = (ids, attn, rollout.response_start)
            lp = response_forward(trainer.policy, *args, temperature=trainer.config.temperature)
            with trainer.reference_context():
                ref = response_forward(
                    trainer.reference_model, *args, temperature=trainer.config.temperature
                )
            mask = rollout.mask[lo : lo + chunk].to(lp["logprobs"].dtype)
            out.append(((lp["logprobs"] - ref["logprobs"]) * mask).sum(1))
    return torch.cat(out)


def evaluate(trainer: Any, task: Any, prompts: Sequence[str], samples: int, seed: int):
    """Held-out evaluation: rewards, KL to the reference, per-response statistics."""
    import torch

    batch = [p for p in prompts for _ in range(samples)]
    torch.manual_seed(seed)
    rollout = trainer.rollout(batch)
    kl = sequence_kl(trainer, rollout)
    fns = task.reward_fns()
    scores = np.asarray([list(fn(rollout.prompts, rollout.responses)) for fn in fns]).T
    words = np.asarray([len(r.split()) for r in rollout.responses])
    out: dict[str, Any] = {o: float(scores[:, i].mean()) for i, o in enumerate(task.objectives)}
    out.update(
        kl=float(kl.mean()),
        joint_success=stats.joint_success(scores, task.success_thresholds),
        per_response_hv=stats.per_response_hypervolume(scores, task.hv_reference),
        point_hv=stats.point_hypervolume(scores.mean(0), task.hv_reference),
        cut_off_rate=float(np.mean(words >= task.max_new_tokens)),
        response_words=float(words.mean()),
        samples=[
            {
                "prompt": p,
                "response": r,
                **{o: float(s) for o, s in zip(task.objectives, row, strict=True)},
            }
            for p, r, row in list(zip(rollout.prompts, rollout.responses, scores, strict=True))[
                ::samples
            ][:4]
        ],
    )
    return out


def run_job(job: dict[str, Any], config: StudyConfig, cache_dir: str | None, work: str):
    """One PPO run (or the SFT evaluation); returns its evaluations and training curves."""
    import torch
    from paretoopt.integrations.hf import MOPPOTrainer

    from .tasks import load_task

    torch.set_num_threads(1)
    start = time.perf_counter()
    task = load_task(job["task"], config.artefact_size, cache_dir)
    tune = job["kind"] == "tune"
    prompts = task.train_prompts[: config.tune_n_prompts] if tune else task.eval_prompts
    if not tune and config.n_eval_prompts is not None:
        prompts = prompts[: config.n_eval_prompts]
    samples = config.tune_samples_per_prompt if tune else config.samples_per_prompt
    eval_seed = config.eval_seed + (7919 if tune else 0)
    trainer = MOPPOTrainer(
        config=_trainer_config(config, task, job, Path(work) / job_name(job)),
        policy=str(task.artefacts.policy),
        prompts=task.train_prompts,
        rewards=task.reward_fns(),
        reward_names=task.objectives,
    )
    evals: dict[str, Any] = {}
    curves: list[dict[str, float]] = []
    if job["kind"] == "sft":
        evals["0"] = evaluate(trainer, task, prompts, samples, eval_seed)
    else:
        steps = job.get("steps", config.steps)
        checkpoints = set(job.get("eval_steps", config.eval_steps))
        while trainer.global_step < steps:
            metrics = trainer.step()
            curves.append(
                {
                    k: round(float(v), 5)
                    for k, v in metrics.items()
                    if k in CURVE_KEYS or k.startswith(CURVE_PREFIXES)
                }
            )
            if trainer.global_step in checkpoints:
                evals[str(trainer.global_step)] = evaluate(
                    trainer, task, prompts, samples, eval_seed
                )
    return {
        "job": job,
        "settings": run_settings(job, config),
        "evals": evals,
        "curves": curves,
        "seconds": time.perf_counter() - start,
    }


def _init_worker() -> None:
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def run_jobs(
    jobs: Sequence[dict[str, Any]],
    config: StudyConfig,
    raw_dir: Path,
    cache_dir: str | None,
    progress: bool = True,
    desc: str = "runs",
) -> list[dict[str, Any]]:
    """Run ``jobs`` on ``config.workers`` processes (one torch thread each).

    Each finished run is written to ``raw_dir/<job>.json`` at once, and a run whose file
    exists is not run again, so an interrupted study resumes where it stopped; a file made
    with other settings (:func:`run_settings`) raises instead of being reused.
    """
    from tqdm.auto import tqdm

    raw_dir.mkdir(parents=True, exist_ok=True)
    work = str(raw_dir / "_work")
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        path = raw_dir / f"{job_name(job)}.json"
        if path.exists():
            results[job_name(job)] = load_run(path, job, config)
        else:
            todo.append(job)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, disable=not progress)

    def done(result: dict[str, Any]) -> None:
        name = job_name(result["job"])
        (raw_dir / f"{name}.json").write_text(json.dumps(result))
        results[name] = result
        bar.update(1)

    try:
        if config.workers <= 1:
            for job in todo:
                done(run_job(job, config, cache_dir, work))
        else:
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            ctx = get_context("spawn")
            with ProcessPoolExecutor(config.workers, ctx, initializer=_init_worker) as pool:
                futures = [pool.submit(run_job, j, config, cache_dir, work) for j in todo]
                for fut in as_completed(futures):
                    done(fut.result())
    finally:
        bar.close()
    return [results[job_name(j)] for j in jobs]


# -------------------------------------------------------------------------- tuning


def grid_settings(grid: dict[str, Sequence[Any]] | None = None) -> list[Hparams]:
    grid = grid or TUNING_GRID
    keys = list(grid)
    return [
        Hparams(**dict(zip(keys, values, strict=True)))
        for values in itertools.product(*(grid[k] for k in keys))
    ]


#: The task the hyper-parameters are tuned on (task 1), whatever ``--tasks`` lists first.
TUNING_TASK = "sentiment_length"


def tune(
    config: StudyConfig,
    raw_dir: Path,
    cache_dir: str | None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Choose the hyper-parameters on task 1's tuning seeds; return the whole table.

    Always task 1 (:data:`TUNING_TASK`), whatever the order or choice of ``config.tasks``.

    Score of a setting: the mean over the core methods and the tuning seeds of the
    per-response hypervolume at the last tuning step (training prompts, own sampling seed).
    Ties break toward the earlier setting of the grid.
    """
    from .tasks import load_task

    task_name = TUNING_TASK
    load_task(task_name, config.artefact_size, cache_dir, progress)
    settings = grid_settings()
    methods = available_methods(CORE_METHODS)
    jobs = [
        {
            "task": task_name,
            "kind": "tune",
            "method": m,
            "seed": s,
            "hparams": asdict(hp),
            "hparams_index": i,
            "steps": config.tune_steps,
            "eval_steps": [config.tune_steps],
        }
        for i, hp in enumerate(settings)
        for m in methods
        for s in range(config.tune_seeds)
    ]
    log(
        f"[study] tuning: {len(settings)} settings x {len(methods)} methods x "
        f"{config.tune_seeds} seeds x {config.tune_steps} steps"
    )
    runs = run_jobs(jobs, config, raw_dir, cache_dir, progress, desc="tuning")
    table = []
    for i, hp in enumerate(settings):
        per_method = {}
        for m in methods:
            vals = [
                r["evals"][str(config.tune_steps)]["per_response_hv"]
                for r in runs
                if r["job"]["hparams_index"] == i and r["job"]["method"] == m
            ]
            per_method[m] = float(np.mean(vals))
        table.append(
            {
                **asdict(hp),
                "score": float(np.mean(list(per_method.values()))),
                "per_method": per_method,
            }
        )
    best = max(range(len(table)), key=lambda i: (table[i]["score"], -i))
    return {
        "criterion": "mean over core methods and tuning seeds of the per-response "
        "hypervolume at the last tuning step, on training prompts",
        "task": task_name,
        "seeds": [TUNING_SEED_OFFSET + s for s in range(config.tune_seeds)],
        "steps": config.tune_steps,
        "methods": methods,
        "table": table,
        "chosen": {k: table[best][k] for k in asdict(settings[best])},
    }


def with_hparams(config: StudyConfig, chosen: dict[str, Any]) -> StudyConfig:
    return replace(config, hparams=Hparams(**chosen))
