"""Command-line reward specs for reward models: ``NAME[,NAME...]=PATH:LABEL[,LABEL...]`` ->
one :class:`~.reward_models.RewardHead` per named output of one shared model."""

from __future__ import annotations

from typing import Any

from .reward_models import RewardHead, shared_reward_model

__all__ = ["parse_reward_model_spec"]


def parse_reward_model_spec(spec: str, **options: Any) -> list[RewardHead]:
    """``NAME[,NAME...]=PATH:LABEL[,LABEL...]`` -> one :class:`RewardHead` per name.

    ``helpful,verbose=path/to/rm:0,4`` gives two objectives, outputs 0 and 4 of one model.
    ``PATH:0,4`` without names names them ``<model>:0`` and ``<model>:4``.
    """
    names: list[str]
    body = spec.strip()
    if "=" in body:
        head, body = body.split("=", 1)
        names = [n.strip() for n in head.split(",")]
        if not all(names):
            raise ValueError(f"reward spec {spec!r}: empty objective name before '='")
    else:
        names = []
    path, sep, tail = body.rpartition(":")
    labels_ok = sep and all(t.strip().lstrip("-").isdigit() for t in tail.split(","))
    if not labels_ok:
        path, labels = body, [0]
    else:
        labels = [int(t) for t in tail.split(",")]
    if not path:
        raise ValueError(f"reward spec {spec!r}: no model name or path")
    if not names:
        base = path.rstrip("/").split("/")[-1]
        names = [base] if len(labels) == 1 else [f"{base}:{label}" for label in labels]
    if len(names) != len(labels):
        raise ValueError(
            f"reward spec {spec!r}: {len(names)} names for {len(labels)} labels; "
            "give one name per output, e.g. helpful,verbose=PATH:0,4"
        )
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f"reward spec {spec!r}: output {twice[0]} is listed twice")
    named_twice = sorted({n for n in names if names.count(n) > 1})
    if named_twice:
        raise ValueError(
            f"reward spec {spec!r}: objective name {named_twice[0]!r} is given twice; "
            "each output needs its own name"
        )
    model = shared_reward_model(path, **options)
    return [model.head(label, name) for name, label in zip(names, labels, strict=True)]
