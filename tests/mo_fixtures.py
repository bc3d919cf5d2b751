"""A tiny two-task BERT (regression head ``a``, 3-class head ``b``) and its offline data set,
for the MultiObjectiveTrainer tests. Built from a config, saved, loaded by from_pretrained."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

VOCAB = 24
SEQ = 8


def _classes():
    from transformers import BertConfig, BertModel, PreTrainedModel

    class TwoTaskBert(PreTrainedModel):
        """Mean-pooled tiny BERT with two heads; returns ``losses = {"a": mse, "b": ce}``."""

        config_class = BertConfig
        base_model_prefix = "bert"
        supports_gradient_checkpointing = True

        def __init__(self, config: BertConfig) -> None:
            super().__init__(config)
            self.bert = BertModel(config, add_pooling_layer=False)
            self.head_a = nn.Linear(config.hidden_size, 1)
            self.head_b = nn.Linear(config.hidden_size, 3)
            self.post_init()

        def forward(
            self,
            input_ids,
            attention_mask=None,
            labels_a=None,
            labels_b=None,
            output_hidden_states=None,
        ):
            out = self.bert(
                input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states
            )
            z = out.last_hidden_state
            m = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            m = m[..., None].to(z.dtype)
            pooled = (z * m).sum(1) / m.sum(1)
            pred_a = self.head_a(pooled)[:, 0]
            logits_b = self.head_b(pooled)
            result = {"pred_a": pred_a, "logits_b": logits_b}
            if out.hidden_states is not None:
                result["hidden_states"] = out.hidden_states
            if labels_a is not None and labels_b is not None:
                losses = {
                    "a": nn.functional.mse_loss(pred_a, labels_a.to(pred_a.dtype)),
                    "b": nn.functional.cross_entropy(logits_b, labels_b),
                }
                result["losses"] = losses
                result["loss"] = losses["a"] + losses["b"]
            return result

    return BertConfig, TwoTaskBert


def two_task_class():
    return _classes()[1]


def build_two_task(path: Path, dropout: float = 0.0, seed: int = 0) -> Path:
    """Save a 1-layer, width-16 TwoTaskBert under ``path``."""
    config_cls, model_cls = _classes()
    torch.manual_seed(seed)
    config = config_cls(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=SEQ,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    model_cls(config).save_pretrained(path)
    return path


def load_two_task(path: Path, dtype: torch.dtype = torch.float32):
    return two_task_class().from_pretrained(path).to(dtype)


def two_task_data(n: int = 32, seed: int = 1):
    """Random token rows; ``a`` = share of tokens in the lower half of the vocabulary (scaled),
    ``b`` = which third of the vocabulary holds most tokens: two tasks that read related but
    different features of the same input."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    a = (ids < VOCAB // 2).float().mean(1) * 4 - 2
    b = torch.stack([(ids // (VOCAB // 3) == k).sum(1) for k in range(3)], 1).argmax(1)
    return Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": torch.ones_like(ids).tolist(),
            "labels_a": a.tolist(),
            "labels_b": b.tolist(),
        }
    )
