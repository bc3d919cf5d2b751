"""The demo's tiny artefacts: tokenizer, SFT policy and sentiment reward model, cached.

Each artefact is trained once from the synthetic corpus and saved with ``save_pretrained``
(safetensors) under ``<cache>/<key>/``, where ``key`` hashes every setting that changes
what is trained. Later runs reload them through the ordinary
``from_pretrained(path)`` route (``trust_remote_code=False``), the same route a user's
real models take.

* tokenizer: word level over the grammar's vocabulary, wrapped in
  :class:`~transformers.PreTrainedTokenizerFast`;
* policy: a GPT-2-shaped causal LM, trained by next-token cross-entropy on the SFT corpus;
* reward model: a GPT-2-shaped sequence classifier (labels NEGATIVE / POSITIVE), trained
  with label smoothing on the balanced labelled split. Label smoothing ``eps`` bounds the
  optimal log-odds at ``log((1 - eps/2) / (eps/2))`` (2.94 for ``eps = 0.1``), which keeps
  the sentiment reward on the scale of the paper's (a few units), not saturating at 10+.
  A small penalty on ``(logit_neg + logit_pos)^2`` centres the logits, so the POSITIVE
  logit alone, the reward the demo reads, is half the log-odds: within about ±1.5.
  Besides the finished reviews it is trained on unfinished ones (prefixes cut at random
  and at the policy's ``max_new_tokens``, labelled with the full review's sentiment),
  because the policy's responses are cut at that limit: trained on finished reviews
  only, it scored cut-off negative reviews as strongly positive (+1.43), a reward the
  policy could hack by rambling negatively until the limit.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from paretoopt.integrations.demo.corpus import (
    CorpusConfig,
    Review,
    heldout_unfinished_reviews,
    labelled_reviews,
    sft_reviews,
    split_prompts,
    unfinished_reviews,
    vocabulary,
)
from paretoopt.integrations.hf.checkpoint import atomic_write_dir
from tqdm.auto import tqdm

#: Bumped whenever the training code changes what a given configuration produces.
#: 2: the reward model is also trained on unfinished (cut-off) reviews.
ARTEFACT_FORMAT = 2
SPECIAL_TOKENS = ("<pad>", "<unk>", "<eos>")


def default_cache_dir() -> Path:
    """``$PARETOOPT_CACHE`` if set, else ``~/.cache/paretoopt/demo``."""
    env = os.environ.get("PARETOOPT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "paretoopt" / "demo"


@dataclass(frozen=True)
class ArtefactConfig:
    """What is trained, and how (every field enters the cache key).

    :param corpus: the synthetic corpus settings.
    :param n_embd: width of both GPT-2-shaped models; ``n_layer`` / ``n_head`` their depth
        and heads; ``n_positions`` their context length.
    :param sft_steps: optimiser steps of the SFT policy (batch ``batch_size``).
    :param rm_steps: optimiser steps of the reward model.
    :param rm_random_cuts: unfinished copies of each labelled review, cut at a random word,
        added to the reward model's training set (0: finished reviews only, the old recipe).
    :param rm_cut_lengths: continuation lengths (in words = tokens) at which labelled
        reviews are also cut for the reward model: the policy's ``max_new_tokens``, where
        its unfinished responses stop.
    :param label_smoothing: of the reward model's cross-entropy (bounds its log-odds).
    :param logit_centering: weight of the penalty that keeps the two logits summing to 0.
    :param seed: seed of model initialisation and batch order.
    """

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_positions: int = 64
    sft_steps: int = 400
    rm_steps: int = 400
    rm_random_cuts: int = 1
    rm_cut_lengths: tuple[int, ...] = (24,)
    batch_size: int = 64
    learning_rate: float = 3e-3
    label_smoothing: float = 0.1
    logit_centering: float = 0.1
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def cache_key(self) -> str:
        payload = json.dumps({"format": ARTEFACT_FORMAT, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DemoArtefacts:
    """Paths of the cached artefacts, plus what training measured."""

    root: Path
    tokenizer: Path
    policy: Path
    reward_model: Path
    metrics: dict[str, float]
    from_cache: bool


def build_tokenizer(words: Sequence[str] | None = None):  # -> PreTrainedTokenizerFast
    """A word-level tokenizer over ``words`` (the grammar's vocabulary by default).

    Padding is on the left, as decoder-only generation needs.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *(words or vocabulary())])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<eos>",
        bos_token="<eos>",
        padding_side="left",
        model_max_length=64,
    )
    return tok


def _gpt2_config(config: ArtefactConfig, tokenizer, **extra):
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


def _encode(tokenizer, texts: Sequence[str], eos: bool) -> tuple[torch.Tensor, torch.Tensor]:
    suffix = f" {tokenizer.eos_token}" if eos else ""
    enc = tokenizer(
        [t + suffix for t in texts], padding=True, return_tensors="pt", padding_side="right"
    )
    return enc["input_ids"], enc["attention_mask"]


def _batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """``steps`` index batches, reshuffling each epoch."""
    order = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=generator), 0
        yield order[pos : pos + batch_size]
        pos += batch_size


def train_sft_policy(
    config: ArtefactConfig, tokenizer, reviews: Sequence[Review], progress: bool = True
):
    """Next-token cross-entropy on ``prompt continuation <eos>``; returns (model, final loss)."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(config.seed)
    model = GPT2LMHeadModel(_gpt2_config(config, tokenizer))
    ids, mask = _encode(tokenizer, [r.text for r in reviews], eos=True)
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / config.sft_steps)
    gen = torch.Generator().manual_seed(config.seed)
    model.train()
    loss_value = float("nan")
    bar = tqdm(
        _batches(len(reviews), config.batch_size, config.sft_steps, gen),
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


def train_reward_model(
    config: ArtefactConfig,
    tokenizer,
    reviews: Sequence[Review],
    heldout: Sequence[Review],
    progress: bool = True,
):
    """Sequence classifier NEGATIVE(0) / POSITIVE(1); returns (model, held-out accuracy).

    The training set is ``reviews`` plus their unfinished prefixes
    (:func:`~paretoopt.integrations.demo.corpus.unfinished_reviews` with ``config.rm_random_cuts``
    random cuts per review and the cuts at ``config.rm_cut_lengths``).
    """
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(config.seed + 1)
    model = GPT2ForSequenceClassification(
        _gpt2_config(
            config,
            tokenizer,
            num_labels=2,
            id2label={0: "NEGATIVE", 1: "POSITIVE"},
            label2id={"NEGATIVE": 0, "POSITIVE": 1},
        )
    )
    reviews = [
        *reviews,
        *unfinished_reviews(
            reviews, config.seed, config.rm_cut_lengths, random_cuts=config.rm_random_cuts
        ),
    ]
    ids, mask = _encode(tokenizer, [r.text for r in reviews], eos=False)
    labels = torch.tensor([r.label for r in reviews])
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    gen = torch.Generator().manual_seed(config.seed + 1)
    model.train()
    bar = tqdm(
        _batches(len(reviews), config.batch_size, config.rm_steps, gen),
        total=config.rm_steps,
        desc="reward model",
        disable=not progress,
    )
    for idx in bar:
        logits = model(input_ids=ids[idx], attention_mask=mask[idx]).logits
        loss = F.cross_entropy(logits, labels[idx], label_smoothing=config.label_smoothing)
        # Cross-entropy only fixes logit differences; pinning the sum at zero makes the
        # POSITIVE logit alone (what a reward-model reward reads) equal half the log-odds.
        loss = loss + config.logit_centering * logits.sum(-1).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    model.eval()
    return model, classifier_accuracy(model, tokenizer, heldout)


def classifier_accuracy(model, tokenizer, reviews: Sequence[Review]) -> float:
    """Share of ``reviews`` whose label is the classifier's argmax."""
    ids, mask = _encode(tokenizer, [r.text for r in reviews], eos=False)
    with torch.no_grad():
        pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
    return float((pred == torch.tensor([r.label for r in reviews])).float().mean())


def load_or_train(
    config: ArtefactConfig,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    retrain: bool = False,
) -> DemoArtefacts:
    """Return the cached artefacts for ``config``, training and caching them if absent.

    Training writes to a temporary folder beside the final one and renames it into place,
    so an interrupted run never leaves a half-written cache entry.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / config.cache_key()
    meta_path = final / "meta.json"
    if meta_path.exists() and not retrain:
        meta = json.loads(meta_path.read_text())
        return DemoArtefacts(
            root=final,
            tokenizer=final / "tokenizer",
            policy=final / "policy",
            reward_model=final / "reward_model",
            metrics=meta["metrics"],
            from_cache=True,
        )
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tokenizer = build_tokenizer()
    train_prompts, heldout_prompts = split_prompts(config.corpus)
    corpus = sft_reviews(config.corpus, train_prompts)
    labelled = labelled_reviews(config.corpus, train_prompts)
    heldout_cfg = CorpusConfig(**{**config.corpus.to_dict(), "n_labelled": 400})
    heldout = labelled_reviews(heldout_cfg, heldout_prompts)
    policy, sft_loss = train_sft_policy(config, tokenizer, corpus, progress)
    reward_model, rm_accuracy = train_reward_model(config, tokenizer, labelled, heldout, progress)
    unfinished = heldout_unfinished_reviews(config.corpus, cut_lengths=config.rm_cut_lengths)
    metrics = {
        "sft_final_loss": sft_loss,
        "reward_model_heldout_accuracy": rm_accuracy,
        # On held-out reviews cut after their first sentiment word, before the final ".".
        "reward_model_unfinished_accuracy": classifier_accuracy(
            reward_model, tokenizer, unfinished
        ),
        "train_seconds": time.perf_counter() - start,
    }

    def write(tmp: Path) -> None:
        tokenizer.save_pretrained(tmp / "tokenizer")
        policy.save_pretrained(tmp / "policy", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "policy")
        reward_model.save_pretrained(tmp / "reward_model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "reward_model")
        meta = {"config": config.to_dict(), "format": ARTEFACT_FORMAT, "metrics": metrics}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    atomic_write_dir(final, write)
    return DemoArtefacts(
        root=final,
        tokenizer=final / "tokenizer",
        policy=final / "policy",
        reward_model=final / "reward_model",
        metrics=metrics,
        from_cache=False,
    )
