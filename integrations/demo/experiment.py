"""Run the sentiment + length experiment: methods x seeds with the HF trainer, then evaluate.

For every method (PAMA, MORLHF 0.5/0.5, MGDA-UB by default) and every seed, a fresh copy of
the SFT policy is aligned by :class:`paretoopt.integrations.hf.MOPPOTrainer` with two rewards:

* ``sentiment``: the POSITIVE logit of the sentiment classifier on ``prompt response``
  (:class:`paretoopt.integrations.hf.RewardModelFunction`, as the paper reads its IMDb classifier);
* ``length``: the paper's clipped length reward ``clip(len(response) / scale, 0, hi)``,
  rescaled to the synthetic corpus: counted in words, ``scale = 10``, ``hi = 2``. A short
  (positive) review has about 8 words (0.8) and a long (negative) one about 20 (2.0,
  the cap). The cap keeps the range (2) comparable to the sentiment reward's (about 3),
  as the two rewards are in the paper's table; with ``hi = 1`` sentiment dominated every
  method (see docs/demo.md).

Each aligned policy then samples ``samples_per_prompt`` responses for every held-out
prompt (a fixed sampling seed per evaluation), and both rewards are averaged. The SFT policy
is evaluated the same way, as the starting point. Hypervolume is measured from a fixed
reference point (:attr:`DemoConfig.hv_reference`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from paretoopt.integrations.demo.artefacts import ArtefactConfig

METHOD_LABELS = {
    "pama": "PAMA",
    "morlhf": "MORLHF (0.5/0.5)",
    "linear": "Linear (0.5/0.5)",
    "linear_noon": "Linear, Noon (0.5/0.5)",
    "mgda_ub": "MGDA-UB",
    "mgda": "MGDA (exact)",
    "sft": "SFT (start)",
}
RewardFn = Callable[[list[str], list[str]], Sequence[float]]


@dataclass
class DemoConfig:
    """Settings of one demo run (defaults: the full run; see :func:`quick_config`).

    PPO settings are shared by every method; only the combiner differs. The learning rate
    is larger than the paper's 1e-5 because the policy is tiny and trained from scratch.
    """

    methods: tuple[str, ...] = ("pama", "morlhf", "mgda_ub")
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 40
    batch_size: int = 16
    mini_batch_size: int = 8
    ppo_epochs: int = 2
    max_new_tokens: int = 24
    learning_rate: float = 3e-4
    kl_coef: float = 0.05
    target_kl: float = 6.0
    adaptive_kl: bool = False
    samples_per_prompt: int = 4
    n_eval_prompts: int | None = None
    """Held-out prompts used for evaluation (None: all of them)."""
    n_samples_shown: int = 4
    length_scale: float = 10.0
    length_max: float = 2.0
    length_unit: str = "words"
    eval_seed: int = 1234
    hv_reference: tuple[float, ...] | None = (-1.5, 0.0)
    """Hypervolume reference point, one value per reward. Default: the lowest value each
    demo reward can take (the classifier's POSITIVE logit is about -1.47 at worst, the
    length reward 0). None: the componentwise minimum of every evaluated point (SFT and
    all seeds) minus 10% of its range, for rewards whose bounds are unknown."""
    artefacts: ArtefactConfig = field(default_factory=ArtefactConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quick_config() -> DemoConfig:
    """``--quick``: the same task, fewer steps and seeds (a few minutes on 2 CPU cores)."""
    return DemoConfig(seeds=(0, 1), steps=20, samples_per_prompt=2)


def tiny_config() -> DemoConfig:
    """The smallest end-to-end run, for the test suite (tiny corpus and models)."""
    corpus = {"n_reviews": 400, "n_labelled": 300}
    from paretoopt.integrations.demo.corpus import CorpusConfig

    return DemoConfig(
        seeds=(0,),
        steps=2,
        batch_size=4,
        mini_batch_size=4,
        ppo_epochs=1,
        max_new_tokens=8,
        samples_per_prompt=1,
        n_eval_prompts=6,
        n_samples_shown=2,
        artefacts=ArtefactConfig(
            corpus=CorpusConfig(**corpus),
            n_embd=16,
            n_head=2,
            n_layer=1,
            sft_steps=60,
            rm_steps=60,
            rm_cut_lengths=(8,),  # this config's max_new_tokens
            batch_size=32,
        ),
    )


def combiner_settings(method: str) -> tuple[str, dict[str, Any]]:
    """Trainer combiner name and kwargs for a demo method name."""
    if method in ("morlhf", "linear", "linear_noon"):
        # "morlhf": PPO on the scalarised reward 0.5 r_1 + 0.5 r_2 (one advantage per token).
        return method, {"weights": [0.5, 0.5]}
    if method in ("pama", "mgda_ub", "mgda"):
        return method, {}
    raise ValueError(
        f"unknown method {method!r}; expected one of pama, morlhf, linear_noon, linear, "
        "mgda_ub, mgda"
    )


def moppo_config(config: DemoConfig, method: str, seed: int, output_dir: Path, progress: bool):
    """The trainer configuration of one (method, seed) run."""
    from paretoopt.integrations.hf import MOPPOConfig

    name, kwargs = combiner_settings(method)
    return MOPPOConfig(
        combiner=name,
        combiner_kwargs=kwargs,
        steps=config.steps,
        batch_size=config.batch_size,
        mini_batch_size=config.mini_batch_size,
        ppo_epochs=config.ppo_epochs,
        max_new_tokens=config.max_new_tokens,
        learning_rate=config.learning_rate,
        kl_coef=config.kl_coef,
        adaptive_kl=config.adaptive_kl,
        target_kl=config.target_kl,
        seed=seed,
        output_dir=str(output_dir),
        save_final=False,
        log_jsonl=False,
        progress=progress,
        cpu=True,
    )


def evaluate_responses(
    prompts: Sequence[str],
    responses: Sequence[str],
    rewards: Sequence[RewardFn],
    names: Sequence[str],
) -> dict[str, list[float]]:
    """Score responses with every reward: ``{name: [score per response]}``."""
    return {
        name: [float(v) for v in fn(list(prompts), list(responses))]
        for fn, name in zip(rewards, names, strict=True)
    }


def _summary(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std}


def hypervolume_reference(
    fixed: Sequence[float] | None, methods: dict[str, Any], names: Sequence[str]
) -> tuple[list[float], str]:
    """The reference point and a sentence that says where it comes from."""
    if fixed is not None:
        if len(fixed) != len(names):
            raise ValueError(f"hv_reference has {len(fixed)} values for {len(names)} rewards")
        return [float(v) for v in fixed], "the lowest value each reward can take"
    rows = []
    for entry in methods.values():
        rows.extend([[p[n] for n in names] for p in entry["per_seed"]])
        rows.append([entry["final"][n]["mean"] for n in names])
    pts = np.asarray(rows, dtype=float)
    lo, hi = pts.min(0), pts.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (
        lo - 0.1 * span
    ).tolist(), "the minimum over all evaluated points minus 10% of the range"


def _generate(trainer, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
    # A fixed sampling seed per evaluation makes the table reproducible for a run seed.
    torch.manual_seed(seed)
    return list(trainer.generate(prompts, max_new_tokens=max_new_tokens, do_sample=True))


def run_experiment(
    config: DemoConfig,
    *,
    policy: str | Path,
    tokenizer: Any,
    rewards: Sequence[RewardFn],
    reward_names: Sequence[str],
    train_prompts: Sequence[str],
    eval_prompts: Sequence[str],
    work_dir: Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Align ``policy`` with every method and seed, evaluate, return the results dict.

    ``results["methods"][m]`` holds ``final`` (mean/std over seeds of each reward's
    held-out mean), ``per_seed``, ``curves`` (training reward per step and seed),
    ``hypervolume`` and a few ``samples``; the SFT policy is entry ``"sft"``.
    """
    from paretoopt.integrations.hf import MOPPOTrainer

    from paretoopt.pareto import hypervolume

    names = list(reward_names)
    if config.n_eval_prompts is not None:
        eval_prompts = list(eval_prompts)[: config.n_eval_prompts]
    eval_batch = [p for p in eval_prompts for _ in range(config.samples_per_prompt)]
    methods: dict[str, Any] = {}
    timings: dict[str, float] = {}

    def evaluate(trainer, key: str) -> tuple[dict[str, float], list[dict[str, Any]]]:
        responses = _generate(trainer, eval_batch, config.max_new_tokens, config.eval_seed)
        scores = evaluate_responses(eval_batch, responses, rewards, names)
        means = {n: float(np.mean(scores[n])) for n in names}
        samples = [
            {"prompt": p, "response": r, **{n: scores[n][i] for n in names}}
            for i, (p, r) in enumerate(zip(eval_batch, responses, strict=True))
        ][:: config.samples_per_prompt][: config.n_samples_shown]
        return means, samples

    # Starting point: the SFT policy, evaluated without any update.
    start = time.perf_counter()
    sft_trainer = MOPPOTrainer(
        config=moppo_config(config, "morlhf", 0, work_dir / "sft", progress=False),
        policy=str(policy),
        tokenizer=tokenizer,
        prompts=list(train_prompts),
        rewards=list(rewards),
        reward_names=names,
    )
    sft_means, sft_samples = evaluate(sft_trainer, "sft")
    del sft_trainer
    timings["sft_eval_seconds"] = time.perf_counter() - start
    methods["sft"] = {
        "label": METHOD_LABELS["sft"],
        "seeds": [],
        "final": {n: {"mean": sft_means[n], "std": 0.0} for n in names},
        "per_seed": [],
        "samples": sft_samples,
    }

    for method in config.methods:
        per_seed, curves, samples = [], {n: [] for n in names}, []
        start = time.perf_counter()
        for seed in config.seeds:
            log(f"[demo] aligning with {METHOD_LABELS.get(method, method)}, seed {seed}")
            trainer = MOPPOTrainer(
                config=moppo_config(config, method, seed, work_dir / f"{method}-{seed}", progress),
                policy=str(policy),
                tokenizer=tokenizer,
                prompts=list(train_prompts),
                rewards=list(rewards),
                reward_names=names,
            )
            history = trainer.train()
            for n in names:
                curves[n].append([float(h.get(f"reward/{n}", math.nan)) for h in history])
            means, shown = evaluate(trainer, method)
            per_seed.append({"seed": seed, **means})
            if not samples:
                samples = shown
            del trainer
        timings[f"{method}_seconds"] = time.perf_counter() - start
        methods[method] = {
            "label": METHOD_LABELS.get(method, method),
            "seeds": list(config.seeds),
            "final": {n: _summary([p[n] for p in per_seed]) for n in names},
            "per_seed": per_seed,
            "curves": curves,
            "samples": samples,
        }

    reference, description = hypervolume_reference(config.hv_reference, methods, names)
    for entry in methods.values():
        if entry["per_seed"]:
            for p in entry["per_seed"]:
                p["hypervolume"] = hypervolume([[p[n] for n in names]], reference)
            entry["hypervolume"] = _summary([p["hypervolume"] for p in entry["per_seed"]])
            points = [[p[n] for n in names] for p in entry["per_seed"]]
            entry["hypervolume_of_seed_front"] = hypervolume(points, reference)
        else:
            point = [entry["final"][n]["mean"] for n in names]
            entry["hypervolume"] = {"mean": hypervolume([point], reference), "std": 0.0}

    return {
        "objectives": names,
        "reference_point": reference,
        "reference_description": description,
        "n_heldout_prompts": len(eval_prompts),
        "samples_per_prompt": config.samples_per_prompt,
        "config": config.to_dict(),
        "methods": methods,
        "timings": timings,
    }
