"""The study's tiny artefacts (tokenizer, SFT policy, task 1's graded classifier), cached.

Each task's artefacts are trained once from its grammar and saved with ``save_pretrained``
(safetensors) into ``<cache>/study-<task>-<key>/``, where ``key`` hashes every setting that
changes what is trained; the folder is written atomically (an interrupted run leaves no
entry). Later runs reload them through the ordinary ``from_pretrained(path)`` route
(``trust_remote_code=False``), the route a user's real models take.

* tokenizer: word level over the task's vocabulary, wrapped in
  :class:`~transformers.PreTrainedTokenizerFast`;
* policy: a GPT-2-shaped causal LM, trained by next-token cross-entropy on the SFT corpus;
* classifier (task 1): a GPT-2-shaped sequence classifier fit to a soft label
  ``sigmoid(target log-odds)`` instead of a hard one, so that the score is graded (see
  :mod:`.task_sentiment`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from paretoopt.integrations.hf.checkpoint import atomic_write_dir

from . import task_sentiment as ts
from . import task_support as tsup

#: Bumped whenever the training code changes what a given configuration produces.
STUDY_ARTEFACT_FORMAT = 1
SPECIAL_TOKENS = ("<pad>", "<unk>", "<eos>")


def default_cache_dir() -> Path:
    """``$PARETOOPT_CACHE`` if set, else ``~/.cache/paretoopt/demo``."""
    env = os.environ.get("PARETOOPT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "paretoopt" / "demo"


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


@dataclass(frozen=True)
class StudyArtefacts:
    root: Path
    tokenizer: Path
    policy: Path
    reward_model: Path | None
    metrics: dict[str, float]


def build_tokenizer(words: Sequence[str]) -> Any:  # -> PreTrainedTokenizerFast
    """A word-level tokenizer over ``words`` plus ``<pad>``, ``<unk>`` and ``<eos>``.

    Padding is on the left, as decoder-only generation needs.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<eos>",
        bos_token="<eos>",
        padding_side="left",
        model_max_length=64,
    )


def gpt2_config(config: StudyArtefactConfig, tokenizer: Any, **extra: Any) -> Any:
    """The GPT-2 shape of both models (no dropout), sized by ``config``."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **extra,
    )


def encode(tokenizer: Any, texts: Sequence[str], eos: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``texts`` padded on the right (``<eos>`` appended)."""
    suffix = f" {tokenizer.eos_token}" if eos else ""
    enc = tokenizer(
        [t + suffix for t in texts], padding=True, return_tensors="pt", padding_side="right"
    )
    return enc["input_ids"], enc["attention_mask"]


def batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """``steps`` index batches, reshuffling each epoch."""
    order = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=generator), 0
        yield order[pos : pos + batch_size]
        pos += batch_size


def train_sft_policy(
    config: StudyArtefactConfig, tokenizer: Any, texts: Sequence[str], progress: bool = False
):
    """Next-token cross-entropy on ``text <eos>``; returns (model, final loss)."""
    from tqdm.auto import tqdm
    from transformers import GPT2LMHeadModel

    torch.manual_seed(config.seed)
    model = GPT2LMHeadModel(gpt2_config(config, tokenizer))
    ids, mask = encode(tokenizer, texts, eos=True)
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / config.sft_steps)
    gen = torch.Generator().manual_seed(config.seed)
    model.train()
    loss_value = float("nan")
    bar = tqdm(
        batches(len(texts), config.batch_size, config.sft_steps, gen),
        total=config.sft_steps,
        desc="SFT policy",
        disable=not progress,
    )
    for idx in bar:
        out = model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = float(out.loss.detach())
        bar.set_postfix(loss=f"{loss_value:.3f}")
    model.eval()
    return model, loss_value


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

    torch.manual_seed(config.seed + 1)
    model = GPT2ForSequenceClassification(
        gpt2_config(
            config,
            tokenizer,
            num_labels=2,
            id2label={0: "NEGATIVE", 1: "POSITIVE"},
            label2id={"NEGATIVE": 0, "POSITIVE": 1},
        )
    )
    ids, mask = encode(tokenizer, [t for t, _ in examples], eos=False)
    soft = torch.sigmoid(torch.tensor([y for _, y in examples], dtype=torch.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / config.rm_steps)
    gen = torch.Generator().manual_seed(config.seed + 1)
    model.train()
    order = batches(len(examples), config.batch_size, config.rm_steps, gen)
    for idx in tqdm(order, total=config.rm_steps, desc="classifier", disable=not progress):
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
    ids, mask = encode(tokenizer, list(texts), eos=False)
    return model(input_ids=ids, attention_mask=mask).logits[:, 1].tolist()


def _sentiment_artefacts(config: StudyArtefactConfig, tokenizer: Any, progress: bool):
    cfg = ts.SentimentLengthConfig(**config.task_config)
    train_prompts, held_prompts = ts.split_prompts(cfg)
    texts = ts.sft_texts(cfg, train_prompts)
    policy, sft_loss = train_sft_policy(config, tokenizer, texts, progress)
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
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
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
        tokenizer = build_tokenizer(ts.words())
        policy, classifier, metrics = _sentiment_artefacts(config, tokenizer, progress)
    elif config.task == "support_replies":
        tokenizer = build_tokenizer(tsup.words())
        cfg = tsup.SupportRepliesConfig(**config.task_config)
        texts = tsup.sft_texts(cfg, tsup.split_prompts(cfg)[0])
        policy, sft_loss = train_sft_policy(config, tokenizer, texts, progress)
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
