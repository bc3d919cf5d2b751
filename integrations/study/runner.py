"""Running the study's jobs: one PPO run per job, its held-out evaluations, the process pool.

Each finished run is written to its own JSON file at once, so an interrupted study resumes;
a saved file made with other settings is refused (:func:`.protocol.load_run`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from . import stats
from .protocol import (
    CURVE_KEYS,
    CURVE_PREFIXES,
    PAPER_ARM,
    TUNING_SEED_OFFSET,
    Hparams,
    StudyConfig,
    job_name,
    load_run,
    method_fields,
    run_settings,
)


def _trainer_config(config: StudyConfig, task: Any, job: dict[str, Any], out: Path):
    from paretoopt.integrations.hf import MOPPOConfig

    hp = Hparams(**job["hparams"]) if "hparams" in job else config.hparams_for(job["task"])
    steps = job.get("steps", config.steps)
    arm = PAPER_ARM if job.get("arm") == "paper" else {"adaptive_kl": False}
    return MOPPOConfig(
        **arm,
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
    *,
    run_fn: Any = None,
    settings_fn: Any = None,
) -> list[dict[str, Any]]:
    """Run ``jobs`` on ``config.workers`` processes (one torch thread each).

    ``run_fn(job, config, cache_dir, work)`` runs one job (:func:`run_job`, a PPO run, by
    default) and ``settings_fn(job, config)`` gives the settings its file is checked against
    (:func:`run_settings` by default): another engine passes its own.

    Each finished run is written to ``raw_dir/<job>.json`` at once, and a run whose file
    exists is not run again, so an interrupted study resumes where it stopped; a file made
    with other settings (:func:`run_settings`) raises instead of being reused.
    """
    from tqdm.auto import tqdm

    run_fn = run_fn or run_job
    raw_dir.mkdir(parents=True, exist_ok=True)
    work = str(raw_dir / "_work")
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        path = raw_dir / f"{job_name(job)}.json"
        if path.exists():
            results[job_name(job)] = load_run(path, job, config, settings_fn)
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
                done(run_fn(job, config, cache_dir, work))
        else:
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            ctx = get_context("spawn")
            with ProcessPoolExecutor(config.workers, ctx, initializer=_init_worker) as pool:
                futures = [pool.submit(run_fn, j, config, cache_dir, work) for j in todo]
                for fut in as_completed(futures):
                    done(fut.result())
    finally:
        bar.close()
    return [results[job_name(j)] for j in jobs]
