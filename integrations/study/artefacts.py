"""The study's tiny artefacts (tokenizer, SFT policy, task 1's graded classifier), cached.

The training loops and the caching scheme are the demo's
(:mod:`paretoopt.integrations.demo.artefacts`): word-level tokenizer, GPT-2-shaped models,
``save_pretrained`` (safetensors) into ``<cache>/study-<task>-<key>/`` written atomically,
reloaded through ``from_pretrained(path)``. What is new is the classifier's objective: a soft
label ``sigmoid(target log-odds)`` instead of a hard one, so that the score is graded (see
:mod:`.task_sentiment`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from paretoopt.integrations.demo import artefacts as demo_art
from paretoopt.integrations.hf.checkpoint import atomic_write_dir

from . import task_sentiment as ts
from . import task_support as tsup

#: Bumped whenever the training code changes what a given configuration produces.
STUDY_ARTEFACT_FORMAT = 1


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class StudyArtefactConfig:
    """Model sizes and training budgets of one task's artefacts (all in the cache key)."""

    task: str = "sentiment_length"
    task_config: dict[str, Any] = field(default_factory=dict)
    n_embd: int = 32
    n_layer: int = 2
    n_head: int = 2
    n_positions: int = 64
    sft_steps: int = 500
    rm_steps: int = 800
    batch_size: int = 64
    learning_rate: float = 3e-3
    logit_centering: float = 0.1
    seed: int = 0

    def cache_key(self) -> str:
        payload = json.dumps({"format": STUDY_ARTEFACT_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def as_demo_config(self) -> demo_art.ArtefactConfig:
        """The demo's training settings with this config's sizes and budgets."""
        return demo_art.ArtefactConfig(
            n_embd=self.n_embd,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_positions=self.n_positions,
            sft_steps=self.sft_steps,
            rm_steps=self.rm_steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            seed=self.seed,
        )


@dataclass(frozen=True)
class StudyArtefacts:
    root: Path
    tokenizer: Path
    policy: Path
    reward_model: Path | None
    metrics: dict[str, float]


def train_graded_classifier(
    config: StudyArtefactConfig,
    tokenizer: Any,
    examples: Sequence[tuple[str, float]],
    progress: bool = False,
):
    """GPT-2 sequence classifier fit to soft labels ``sigmoid(target log-odds)``.

    The loss is the binary cross-entropy of ``logit_pos - logit_neg`` against the soft label
    plus ``logit_centering * (logit_pos + logit_neg)^2``, whose optimum puts the POSITIVE
    logit at half the target log-odds.
    """
    from tqdm.auto import tqdm
    from transformers import GPT2ForSequenceClassification

    dcfg = config.as_demo_config()
    torch.manual_seed(config.seed + 1)
    model = GPT2ForSequenceClassification(
        demo_art._gpt2_config(
            dcfg,
            tokenizer,
            num_labels=2,
            id2label={0: "NEGATIVE", 1: "POSITIVE"},
            label2id={"NEGATIVE": 0, "POSITIVE": 1},
        )
    )
    ids, mask = demo_art._encode(tokenizer, [t for t, _ in examples], eos=False)
    soft = torch.sigmoid(torch.tensor([y for _, y in examples], dtype=torch.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / config.rm_steps)
    gen = torch.Generator().manual_seed(config.seed + 1)
    model.train()
    batches = demo_art._batches(len(examples), config.batch_size, config.rm_steps, gen)
    for idx in tqdm(batches, total=config.rm_steps, desc="classifier", disable=not progress):
        logits = model(input_ids=ids[idx], attention_mask=mask[idx]).logits
        loss = F.binary_cross_entropy_with_logits(logits[:, 1] - logits[:, 0], soft[idx])
        loss = loss + config.logit_centering * logits.sum(-1).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    return model


@torch.no_grad()
def positive_logits(model: Any, tokenizer: Any, texts: Sequence[str]) -> list[float]:
    ids, mask = demo_art._encode(tokenizer, list(texts), eos=False)
    return model(input_ids=ids, attention_mask=mask).logits[:, 1].tolist()


def _sentiment_artefacts(config: StudyArtefactConfig, tokenizer: Any, progress: bool):
    cfg = ts.SentimentLengthConfig(**config.task_config)
    train_prompts, held_prompts = ts.split_prompts(cfg)
    texts = ts.sft_texts(cfg, train_prompts)
    policy, sft_loss = demo_art.train_sft_policy(
        config.as_demo_config(), tokenizer, [_Text(t) for t in texts], progress
    )
    labelled = ts.labelled_texts(cfg, train_prompts)
    classifier = train_graded_classifier(config, tokenizer, labelled, progress)
    # Held-out check of the grading: mean score per number of positive clauses out of 4.
    metrics: dict[str, float] = {"sft_final_loss": sft_loss}
    for k in range(5):
        probes = ts.graded_probe_texts(held_prompts, 4, k, 40, seed=1)
        scores = positive_logits(classifier, tokenizer, probes)
        metrics[f"heldout_score_{k}_of_4_positive"] = float(sum(scores) / len(scores))
    held = ts.labelled_texts(cfg, held_prompts, seed="heldout")[:400]
    pred = torch.tensor(positive_logits(classifier, tokenizer, [t for t, _ in held])) * 2
    target = torch.tensor([y for _, y in held])
    metrics["heldout_logodds_rmse"] = float((pred - target).pow(2).mean().sqrt())
    return policy, classifier, metrics


def load_or_train(
    config: StudyArtefactConfig,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> StudyArtefacts:
    """The cached artefacts of ``config``, trained and saved first if absent."""
    root = Path(cache_dir) if cache_dir is not None else demo_art.default_cache_dir()
    final = root / f"study-{config.task}-{config.cache_key()}"
    has_rm = config.task == "sentiment_length"

    def result(metrics: dict[str, float]) -> StudyArtefacts:
        return StudyArtefacts(
            root=final,
            tokenizer=final / "tokenizer",
            policy=final / "policy",
            reward_model=final / "reward_model" if has_rm else None,
            metrics=metrics,
        )

    meta_path = final / "meta.json"
    if meta_path.exists():
        return result(json.loads(meta_path.read_text())["metrics"])
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if config.task == "sentiment_length":
        tokenizer = demo_art.build_tokenizer(ts.words())
        policy, classifier, metrics = _sentiment_artefacts(config, tokenizer, progress)
    elif config.task == "support_replies":
        tokenizer = demo_art.build_tokenizer(tsup.words())
        cfg = tsup.SupportRepliesConfig(**config.task_config)
        texts = tsup.sft_texts(cfg, tsup.split_prompts(cfg)[0])
        policy, sft_loss = demo_art.train_sft_policy(
            config.as_demo_config(), tokenizer, [_Text(t) for t in texts], progress
        )
        classifier, metrics = None, {"sft_final_loss": sft_loss}
    else:
        raise ValueError(f"unknown task {config.task!r}")
    metrics["train_seconds"] = time.perf_counter() - start

    def write(tmp: Path) -> None:
        tokenizer.save_pretrained(tmp / "tokenizer")
        policy.save_pretrained(tmp / "policy", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "policy")
        if classifier is not None:
            classifier.save_pretrained(tmp / "reward_model", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "reward_model")
        meta = {"config": asdict(config), "metrics": metrics}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    atomic_write_dir(final, write)
    return result(metrics)
