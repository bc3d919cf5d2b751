"""The study protocol in code: methods, hyper-parameters, jobs, the process pool, tuning.

One *job* is one (task, method, seed) PPO run of ``steps`` steps, evaluated at fixed
checkpoints on the held-out prompts with ``samples_per_prompt`` sampled responses each and a
fixed sampling seed. Every method gets the same PPO settings (:class:`Hparams` plus the
schedule in :class:`StudyConfig`); only the combiner fields differ (:func:`method_fields`).
Seed ``s`` of every method starts from the same SFT policy, samples the same prompt order
and is evaluated with the same sampling seed, so seeds are *paired* across methods.

Hyper-parameters are chosen by :mod:`.tuning` on *tuning seeds* (900+, never reported) and
on the *training* prompts (never the held-out ones), for each task on its own, by a criterion
fixed before any run and blind to the method: the mean, over round 1's core methods and the
tuning seeds, of the per-response hypervolume at the last tuning checkpoint. The same runs
give each method's own best setting. Two *arms* exist: the standard one (ratio to the
rollout policy, fixed KL coefficient) and ``paper`` (ratio to the reference, the adaptive KL
controller with target 3: the paper's set-up), marked by ``job["arm"]``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from paretoopt.zoo import ZOO

#: Round 1's methods: the tuning criterion averages over them.
CORE_METHODS = ("pama", "pama_no_noon", "morlhf", "mgda_ub")
#: The PAMA readings of round 2 (pre-registered in docs/study_preregistration.md).
PAMA_VARIANTS = (
    "pama",
    "pama_no_noon",
    "pama_sample",
    "pama_sample_no_noon",
    "pama_batch",
    "pama_batch_no_noon",
    "pama_ub",
    "pama_ub_no_noon",
)
#: The reported study's methods: the variants and the baselines.
FULL_METHODS = (*PAMA_VARIANTS[:2], "morlhf", "mgda_ub", "gdpo", *PAMA_VARIANTS[2:])
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


#: The values ``--tune`` chose (docs/study/tuning.json holds the tables that chose them):
#: the best of the 16 settings on the method-blind criterion, per task.
CHOSEN_HPARAMS = Hparams(
    learning_rate=3e-4, kl_coef=0.02, ratio_to="old", advantage_normalization="none"
)
CHOSEN_TASK_HPARAMS: dict[str, Hparams] = {
    "sentiment_length": CHOSEN_HPARAMS,
    "support_replies": Hparams(
        learning_rate=1e-4, kl_coef=0.1, ratio_to="old", advantage_normalization="whiten"
    ),
}
#: The paper's arm: these trainer settings on top of a run's hyper-parameters.
PAPER_ARM = {"adaptive_kl": True, "target_kl": 3.0}


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
    """The shared setting of a task not in ``task_hparams``."""
    task_hparams: dict[str, Hparams] = field(default_factory=lambda: dict(CHOSEN_TASK_HPARAMS))
    """Each task's shared setting (every method's, in the main table)."""
    own_best_seeds: int = 0
    """Seeds per method at its own best tuning setting (0: no own-best runs; needs tuning)."""
    paper_seeds: int = 0
    """Seeds per method in the paper's arm on task 1 (0: no such arm; needs tuning)."""
    artefact_size: str = "full"
    workers: int = 2
    # Tuning: seeds 900.. , fewer steps, evaluated on training prompts.
    tune_seeds: int = 1
    tune_steps: int = 100
    tune_samples_per_prompt: int = 4
    tune_n_prompts: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hparams_for(self, task: str) -> Hparams:
        """``task``'s shared setting."""
        return self.task_hparams.get(task, self.hparams)


def preset(name: str) -> StudyConfig:
    """``full`` (the reported study), ``quick`` (minutes; ``paretoopt demo``) or ``tiny``
    (the test suite)."""
    if name == "full":
        return StudyConfig(methods=FULL_METHODS, front_seeds=5, own_best_seeds=10, paper_seeds=20)
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
            own_best_seeds=2,
            paper_seeds=2,
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
    if job.get("arm"):
        name += f"-{job['arm']}"
    return name


def run_settings(job: dict[str, Any], config: StudyConfig) -> dict[str, Any]:
    """Every setting that shapes a run's result beyond its name (task, kind, method, seed,
    weights): saved in each run file and compared when the file is reused."""
    tune = job["kind"] == "tune"
    hp = Hparams(**job["hparams"]) if "hparams" in job else config.hparams_for(job["task"])
    settings = {
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
    if job.get("arm"):
        settings["arm"] = job["arm"]
    return settings


def load_run(
    path: Path, job: dict[str, Any], config: Any, settings_fn: Any = None
) -> dict[str, Any]:
    """A saved run, after checking it was made with this study's settings
    (``settings_fn(job, config)``, :func:`run_settings` by default)."""
    record = json.loads(path.read_text())
    want = (settings_fn or run_settings)(job, config)
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


def check_saved_runs(
    jobs: Sequence[dict[str, Any]], config: Any, raw_dir: Path, settings_fn: Any = None
) -> None:
    """Every saved run in ``raw_dir`` for ``jobs`` was made with this study's settings
    (:func:`load_run`); reads JSON only, so it can run before any artefact is loaded."""
    for job in jobs:
        path = raw_dir / f"{job_name(job)}.json"
        if path.exists():
            load_run(path, job, config, settings_fn)


def with_hparams(config: StudyConfig, chosen: dict[str, Any], task: str | None = None):
    """``config`` with ``chosen`` as the shared setting of ``task`` (of every task if None)."""
    hp = Hparams(**chosen)
    if task is None:
        return replace(config, hparams=hp, task_hparams={t: hp for t in config.task_hparams})
    return replace(config, task_hparams={**config.task_hparams, task: hp})


#: Fewer reported seeds per method than this leave the paired statistics undefined.
MIN_SEEDS = 2


def parse_seeds(text: str, seeds: dict[str, int]) -> dict[str, int]:
    """``--seeds``: ``N`` for every task or ``task=N,task=N``, over the preset's ``seeds``;
    a bad value exits naming it."""
    seeds = dict(seeds)
    for part in text.split(","):
        name, _, n = part.rpartition("=")
        for t in [name] if name else list(seeds):
            if t not in seeds:
                raise SystemExit(f"--seeds: unknown task {t!r}; tasks: {sorted(seeds)}")
            try:
                seeds[t] = int(n)
            except ValueError:
                raise SystemExit(f"--seeds: {n!r} is not a number (in {part!r})") from None
    return seeds


def check_min_seeds(seeds: dict[str, int], tasks: Sequence[str]) -> None:
    """Exit naming the first of ``tasks`` with fewer than :data:`MIN_SEEDS` seeds."""
    for t in tasks:
        n = seeds[t]
        if n < MIN_SEEDS:
            raise SystemExit(
                f"--seeds: task {t} has {n} seed{'s' if n != 1 else ''}; the paired statistics "
                f"(Wilcoxon tests, bootstrap intervals) need at least {MIN_SEEDS} per method"
            )
