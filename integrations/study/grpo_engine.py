"""The study's GRPO engine: the same tasks, seeds and evaluation, trained by TRL's GRPOTrainer.

A GRPO user of TRL picks one of three aggregations of several rewards on the same
``GRPOTrainer``; this engine runs them side by side:

* ``grpo_sum``: TRL's ``multi_objective_aggregation="sum_then_normalize"`` (the weighted-sum
  reward, normalised in its group: MORLHF in GRPO form), uniform ``reward_weights``;
* ``grpo_gdpo``: TRL's ``"normalize_then_sum"`` (GDPO: each reward normalised in its group,
  then the weighted sum normalised over the batch), uniform ``reward_weights``;
* ``grpo_pama`` / ``grpo_pama_no_noon``: :class:`~paretoopt.integrations.trl.PAMAGRPOTrainer`
  (per-reward group normalisation, Noon clipping or not, ``s* = min_i A_ij`` per completion).

Every run is TRL's trainer built with the same arguments (:func:`grpo_args`); only the
aggregation fields differ (:func:`method_args`). The weighted-sum front is ``grpo_sum`` over a
sweep of ``reward_weights``. Evaluation is the PPO study's own (:func:`.runner.evaluate`): the
same held-out prompts, samples per prompt, sampling seed, sampling settings and metrics, with
the KL per response to the SFT policy; :class:`PolicySampler` gives it a policy to sample from.
Checkpoint evaluations run inside training (a ``TrainerCallback``) under a forked RNG, so they
do not change what training samples.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .protocol import TUNING_SEED_OFFSET, front_weights

GRPO_METHODS = ("grpo_sum", "grpo_gdpo", "grpo_pama", "grpo_pama_no_noon")
GRPO_LABELS = {
    "sft": "SFT (start)",
    "grpo_sum": "TRL sum_then_normalize (uniform)",
    "grpo_gdpo": "TRL normalize_then_sum (GDPO)",
    "grpo_pama": "PAMA plug-in (Noon)",
    "grpo_pama_no_noon": "PAMA plug-in, no Noon",
}
#: The method whose ``reward_weights`` sweep traces the front (its uniform weight is itself).
FRONT_METHOD = "grpo_sum"
#: The method the others are compared with, seed by seed.
REFERENCE_METHOD = "grpo_pama"
PAMA_METHODS = ("grpo_pama", "grpo_pama_no_noon")
#: TRL's per-step log keys kept in the run files, under the PPO study's curve names.
CURVE_MAP = {
    "kl": "kl",
    "completions/mean_length": "response_length",
    "completions/clipped_ratio": "cut_off_rate",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "entropy": "entropy",
    "pama/zero_rate": "zero_rate",
    "pama/advantage/mean": "mean_s_star",
    "pama/conflict_rate": "conflict_rate",
}


@dataclass(frozen=True)
class GRPOHparams:
    """The settings under tuning, identical for every method of a task."""

    learning_rate: float = 3e-4
    beta: float = 0.04
    num_generations: int = 4


#: The setting of the quick and tiny sizes (no tuning); the full size tunes first.
DEFAULT_GRPO_HPARAMS = GRPOHparams()
#: The tuning grid (full factorial, 8 settings), the same for every task.
GRPO_GRID: dict[str, tuple[Any, ...]] = {
    "learning_rate": (1e-4, 3e-4),
    "beta": (0.0, 0.04),
    "num_generations": (4, 8),
}


@dataclass
class GRPOStudyConfig:
    """One GRPO study's size and schedule (see :func:`grpo_preset`).

    ``batch_size`` completions per step (``num_generations`` of each of
    ``batch_size / num_generations`` prompts), so every setting of the grid trains on the
    same number of completions; ``temperature`` is fixed (1.0, the PPO study's sampling)."""

    tasks: tuple[str, ...] = ("sentiment_length", "support_replies")
    methods: tuple[str, ...] = GRPO_METHODS
    seeds: dict[str, int] = field(
        default_factory=lambda: {"sentiment_length": 20, "support_replies": 10}
    )
    steps: int = 150
    eval_steps: tuple[int, ...] = (30, 75, 150)
    front_seeds: int = 3
    front_points: dict[str, int] = field(
        default_factory=lambda: {"sentiment_length": 5, "support_replies": 6}
    )
    samples_per_prompt: int = 16
    n_eval_prompts: int | None = None
    eval_seed: int = 1234
    batch_size: int = 16
    temperature: float = 1.0
    hparams: GRPOHparams = field(default_factory=lambda: DEFAULT_GRPO_HPARAMS)
    task_hparams: dict[str, GRPOHparams] = field(default_factory=dict)
    tune: bool = True
    """Run the grid on tuning seeds first (unless a tuning record is given)."""
    artefact_size: str = "full"
    workers: int = 2
    tune_seeds: int = 1
    tune_steps: int = 75
    tune_samples_per_prompt: int = 4
    tune_n_prompts: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hparams_for(self, task: str) -> GRPOHparams:
        return self.task_hparams.get(task, self.hparams)


def grpo_preset(name: str) -> GRPOStudyConfig:
    """``full`` (tuned first, both tasks), ``quick`` (task 1, minutes) or ``tiny`` (tests)."""
    if name == "full":
        return GRPOStudyConfig()
    if name == "quick":
        return GRPOStudyConfig(
            tasks=("sentiment_length",),
            seeds={"sentiment_length": 3, "support_replies": 2},
            steps=40,
            eval_steps=(20, 40),
            front_seeds=1,
            front_points={"sentiment_length": 3, "support_replies": 3},
            samples_per_prompt=4,
            n_eval_prompts=16,
            tune=False,
            tune_steps=20,
        )
    if name == "tiny":
        return GRPOStudyConfig(
            tasks=("sentiment_length",),
            seeds={"sentiment_length": 2, "support_replies": 2},
            steps=2,
            eval_steps=(1, 2),
            front_seeds=1,
            front_points={"sentiment_length": 3, "support_replies": 3},
            samples_per_prompt=2,
            n_eval_prompts=3,
            batch_size=4,
            hparams=GRPOHparams(learning_rate=3e-4, beta=0.04, num_generations=2),
            tune=False,
            artefact_size="tiny",
            workers=1,
            tune_steps=2,
            tune_samples_per_prompt=1,
            tune_n_prompts=3,
        )
    raise ValueError(f"unknown preset {name!r}; expected 'full', 'quick' or 'tiny'")


def with_grpo_hparams(config: GRPOStudyConfig, chosen: dict[str, Any], task: str):
    """``config`` with ``chosen`` as ``task``'s shared setting."""
    return replace(config, task_hparams={**config.task_hparams, task: GRPOHparams(**chosen)})


def method_args(method: str, n_objectives: int, weights: Sequence[float] | None = None):
    """The GRPOConfig fields that define ``method``; every other argument is shared.

    ``reward_weights`` are uniform for every method (``weights`` only for the front's
    ``grpo_sum`` runs); PAMA needs none and TRL then uses them for its logged ``reward`` only.
    The PAMA methods keep TRL's default aggregation: the plug-in replaces its advantage.
    """
    uniform = [round(1.0 / n_objectives, 6)] * n_objectives
    w = [float(v) for v in (weights if weights is not None else uniform)]
    if weights is not None and method != FRONT_METHOD:
        raise ValueError(f"only {FRONT_METHOD} takes weights (the front); got {method!r}")
    if method == "grpo_sum":
        return {"multi_objective_aggregation": "sum_then_normalize", "reward_weights": w}
    if method == "grpo_gdpo":
        return {"multi_objective_aggregation": "normalize_then_sum", "reward_weights": w}
    if method in PAMA_METHODS:
        return {
            "multi_objective_aggregation": "sum_then_normalize",
            "reward_weights": w,
            "pama_noon": method == "grpo_pama",
        }
    raise ValueError(
        f"unknown method {method!r} for the GRPO engine; expected one of {list(GRPO_METHODS)}"
    )


def grpo_args(
    method: str,
    n_objectives: int,
    max_new_tokens: int,
    hparams: GRPOHparams,
    config: GRPOStudyConfig,
    *,
    seed: int,
    steps: int,
    output_dir: str,
    weights: Sequence[float] | None = None,
):
    """The trainer's arguments: a ``GRPOConfig`` (a ``PAMAGRPOConfig`` for PAMA), identical
    for every method but for :func:`method_args`."""
    fields = method_args(method, n_objectives, weights)
    if "pama_noon" in fields:
        from paretoopt.integrations.trl import PAMAGRPOConfig as cls
    else:
        from trl import GRPOConfig as cls
    return cls(
        **fields,
        output_dir=output_dir,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=1,
        num_generations=hparams.num_generations,
        max_completion_length=max_new_tokens,
        max_steps=steps,
        learning_rate=hparams.learning_rate,
        beta=hparams.beta,
        temperature=config.temperature,
        top_k=0,
        top_p=1.0,
        scale_rewards="group",
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        seed=seed,
    )


# ---------------------------------------------------------------------------- jobs


def make_grpo_jobs(config: GRPOStudyConfig, task: str, n_objectives: int) -> list[dict[str, Any]]:
    """The SFT evaluation, methods x seeds, the ``grpo_sum`` weight sweep; seed-major order,
    so that a run stopped early has complete paired seeds."""
    jobs: list[dict[str, Any]] = [{"task": task, "kind": "sft", "method": "sft", "seed": 0}]
    uniform = [round(1.0 / n_objectives, 6)] * n_objectives
    weights = [
        w
        for w in front_weights(n_objectives, config.front_points[task])
        if not (np.allclose(w, uniform, atol=1e-5) and FRONT_METHOD in config.methods)
    ]  # the uniform weight's runs are grpo_sum's own seeds
    for seed in range(max(config.seeds[task], config.front_seeds)):
        if seed < config.seeds[task]:
            for method in config.methods:
                jobs.append({"task": task, "kind": "study", "method": method, "seed": seed})
        if seed < config.front_seeds:
            for w in weights:
                jobs.append(
                    {
                        "task": task,
                        "kind": "front",
                        "method": FRONT_METHOD,
                        "seed": seed,
                        "weights": w,
                    }
                )
    return jobs


def grpo_run_settings(job: dict[str, Any], config: GRPOStudyConfig) -> dict[str, Any]:
    """Every setting that shapes a run beyond its name: saved in each run file and compared
    when the file is reused (:func:`.protocol.load_run`)."""
    tune = job["kind"] == "tune"
    hp = GRPOHparams(**job["hparams"]) if "hparams" in job else config.hparams_for(job["task"])
    return {
        "engine": "grpo",
        "hparams": asdict(hp),
        "steps": job.get("steps", config.steps),
        "eval_steps": sorted(job.get("eval_steps", config.eval_steps)),
        "batch_size": config.batch_size,
        "temperature": config.temperature,
        "artefact_size": config.artefact_size,
        "n_eval_prompts": config.tune_n_prompts if tune else config.n_eval_prompts,
        "samples_per_prompt": config.tune_samples_per_prompt if tune else config.samples_per_prompt,
        "eval_seed": config.eval_seed,
    }


# ---------------------------------------------------------------------------- running


@dataclass
class PolicySampler:
    """What :func:`.runner.evaluate` samples from: a policy, the reference it measures KL
    to, and the PPO study's sampling settings (temperature, top_k 0, top_p 1)."""

    policy: Any
    reference_model: Any
    tokenizer: Any
    max_new_tokens: int
    temperature: float = 1.0

    @property
    def config(self) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(temperature=self.temperature)

    def reference_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def generation_config(self) -> Any:
        from transformers import GenerationConfig

        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=0,
            do_sample=True,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            use_cache=True,
            temperature=self.temperature,
            top_k=0,
            top_p=1.0,
        )

    def rollout(self, prompts: list[str]) -> Any:
        import torch
        from paretoopt.integrations.hf.rollout import generate_rollout

        was_training = self.policy.training
        self.policy.eval()
        try:
            return generate_rollout(
                self.policy,
                self.tokenizer,
                prompts,
                self.generation_config(),
                device=torch.device("cpu"),
            )
        finally:
            self.policy.train(was_training)


def trl_reward_funcs(task: Any) -> list[Any]:
    """The task's reward functions in TRL's shape, named after the objectives."""
    funcs = []
    for name, fn in zip(task.objectives, task.reward_fns(), strict=True):

        def reward(prompts, completions, _fn=fn, **kwargs) -> list[float]:
            return [float(v) for v in _fn(list(prompts), list(completions))]

        reward.__name__ = name
        funcs.append(reward)
    return funcs


def group_zero_rates(
    sampler: PolicySampler, task: Any, prompts: Sequence[str], samples: int, seed: int
) -> dict[str, dict[str, float]]:
    """PAMA's zero rate (share of completions with ``s* = 0``) if the held-out samples were
    GRPO groups of each size that divides ``samples``: the same samples as the evaluation's."""
    import torch
    from paretoopt.integrations.trl import pama_advantages_from_rewards

    batch = [p for p in prompts for _ in range(samples)]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rollout = sampler.rollout(batch)
    fns = task.reward_fns()
    scores = torch.tensor([list(fn(rollout.prompts, rollout.responses)) for fn in fns]).T
    out = {}
    for g in [g for g in (2, 4, 8, 16, 32) if g <= samples and samples % g == 0]:
        out[str(g)] = {
            noon: float((pama_advantages_from_rewards(scores, g, noon=flag) == 0).float().mean())
            for noon, flag in (("noon", True), ("no_noon", False))
        }
    return out


def _curves(log_history: Sequence[dict[str, Any]], objectives: Sequence[str]):
    rows = []
    for h in log_history:
        if f"rewards/{objectives[0]}/mean" not in h:
            continue
        row = {new: h[old] for old, new in CURVE_MAP.items() if old in h}
        for o in objectives:
            row[f"reward/{o}"] = h[f"rewards/{o}/mean"]
            if f"pama/binding_rate/{o}" in h:
                row[f"binding_rate/{o}"] = h[f"pama/binding_rate/{o}"]
        rows.append({k: round(float(v), 5) for k, v in row.items()})
    return rows


def run_grpo_job(job: dict[str, Any], config: GRPOStudyConfig, cache_dir: str | None, work: str):
    """One GRPO run (or the SFT evaluation); returns its evaluations and training curves."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .protocol import job_name
    from .runner import evaluate
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
    tokenizer = AutoTokenizer.from_pretrained(task.artefacts.policy)
    reference = AutoModelForCausalLM.from_pretrained(task.artefacts.policy).eval()
    record: dict[str, Any] = {"job": job, "settings": grpo_run_settings(job, config)}
    evals: dict[str, Any] = {}
    curves: list[dict[str, float]] = []
    timing = {"setup": 0.0, "train": 0.0, "eval": 0.0}  # seconds: the budget's parts
    if job["kind"] == "sft":
        sampler = PolicySampler(reference, reference, tokenizer, task.max_new_tokens)
        evals["0"] = evaluate(sampler, task, prompts, samples, eval_seed)
        record["group_zero_rates"] = group_zero_rates(sampler, task, prompts, samples, eval_seed)
    else:
        hp = GRPOHparams(**job["hparams"]) if "hparams" in job else config.hparams_for(job["task"])
        steps = job.get("steps", config.steps)
        checkpoints = set(job.get("eval_steps", config.eval_steps))
        with warnings.catch_warnings():
            # GRPOConfig's own defaults reach transformers' renamed gradient checkpointing
            warnings.filterwarnings("ignore", ".*checkpointing.*deprecated", FutureWarning)
            args = grpo_args(
                job["method"],
                len(task.objectives),
                task.max_new_tokens,
                hp,
                config,
                seed=(TUNING_SEED_OFFSET if tune else 0) + job["seed"],
                steps=steps,
                output_dir=str(Path(work) / job_name(job)),
                weights=job.get("weights"),
            )
        if job["method"] in PAMA_METHODS:
            from paretoopt.integrations.trl import PAMAGRPOTrainer as trainer_cls
        else:
            trainer_cls = trl.GRPOTrainer

        class CheckpointEvaluation(TrainerCallback):
            """The held-out evaluation at each checkpoint, under a forked RNG."""

            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step in checkpoints:
                    began = time.perf_counter()
                    sampler = PolicySampler(model, reference, tokenizer, task.max_new_tokens)
                    with torch.random.fork_rng():
                        evals[str(state.global_step)] = evaluate(
                            sampler, task, prompts, samples, eval_seed
                        )
                    timing["eval"] += time.perf_counter() - began

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*checkpointing.*deprecated", FutureWarning)
            trainer = trainer_cls(
                model=str(task.artefacts.policy),
                reward_funcs=trl_reward_funcs(task),
                args=args,
                train_dataset=Dataset.from_dict({"prompt": list(task.train_prompts)}),
                processing_class=tokenizer,
                callbacks=[CheckpointEvaluation()],
            )
        for printer in (PrinterCallback, ProgressCallback):  # the study prints its own progress
            trainer.remove_callback(printer)
        timing["setup"] = time.perf_counter() - start
        with warnings.catch_warnings():
            # transformers' renaming of gradient checkpointing, reached through TRL's trainer
            warnings.filterwarnings("ignore", ".*checkpointing.*deprecated", FutureWarning)
            trainer.train()
        curves = _curves(trainer.state.log_history, task.objectives)
        shutil.rmtree(args.output_dir, ignore_errors=True)  # TRL saved nothing worth keeping
        timing["train"] = time.perf_counter() - start - timing["setup"] - timing["eval"]
    record.update(
        evals=evals,
        curves=curves,
        trl_version=trl.__version__,
        seconds=time.perf_counter() - start,
        timing={k: round(v, 3) for k, v in timing.items()},
    )
    return record
