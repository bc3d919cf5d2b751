"""Input checks shared by the functional core and the combiners.

Every error names what is wrong: which objective, which shape, which value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_finite(x: Tensor, name: str, objective_dim: int | None = None) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or inf, naming the first bad objective."""
    if not x.is_floating_point() and not x.is_complex():
        return
    # Fast path: a finite float64 sum means every element is finite (NaN and inf propagate);
    # only a non-finite sum (or a float64 overflow) pays for the element-wise scan.
    if not x.is_complex() and bool(torch.isfinite(x.sum(dtype=torch.float64))):
        return
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return
    count = int(bad.sum())
    if objective_dim is not None and x.dim() > 0:
        per_obj = bad.movedim(objective_dim, 0).reshape(x.shape[objective_dim], -1).any(1)
        i = int(per_obj.nonzero()[0, 0])
        raise ValueError(
            f"{name} for objective {i} contains non-finite values "
            f"({count} NaN/inf element(s) in total)"
        )
    raise ValueError(f"{name} contains non-finite values ({count} NaN/inf element(s))")


def stack_objectives(values: Tensor | Sequence[Tensor], name: str, check: bool = True) -> Tensor:
    """Stack per-objective tensors into ``[n, *shape]``; check count, shapes and (unless
    ``check=False``, for callers that check on a cheaper reduction) finiteness."""
    if isinstance(values, Tensor):
        if values.dim() == 0:
            raise ValueError(f"{name} must have an objective dimension first; got a 0-d tensor")
        stacked = values
    else:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise TypeError(
                f"{name} must be a tensor [n, ...] or a sequence of n tensors, "
                f"got {type(values).__name__}"
            )
        items = list(values)
        if not items:
            raise ValueError(f"{name} is empty: need at least one objective")
        for i, t in enumerate(items):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}[{i}] (objective {i}) is {type(t).__name__}, not a Tensor")
            if t.shape != items[0].shape:
                raise ValueError(
                    f"{name} for objective {i} has shape {tuple(t.shape)}, but objective 0 has "
                    f"shape {tuple(items[0].shape)}"
                )
        stacked = torch.stack(items)
    if stacked.shape[0] == 0:
        raise ValueError(f"{name} is empty: need at least one objective")
    if not stacked.is_floating_point():
        stacked = stacked.to(torch.get_default_dtype())
    if check:
        check_finite(stacked, name, objective_dim=0)
    return stacked


class LossList(list):
    """The checked losses; ``stacked`` is the 1-D tensor they were given as, if they were
    (a batched backward then starts from it, not from a stack of its elements)."""

    stacked: Tensor | None = None


def check_losses(losses: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """Validate n scalar losses that require grad; return them as a list (a
    :class:`LossList`)."""
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(
                f"losses given as a tensor must be 1-D [n], got shape {tuple(losses.shape)}"
            )
        items = list(losses.unbind(0))
    elif isinstance(losses, (str, bytes)) or not isinstance(losses, Sequence):
        raise TypeError(
            f"losses must be a sequence of scalar tensors or a 1-D tensor, got "
            f"{type(losses).__name__}"
        )
    else:
        items = list(losses)
    if not items:
        raise ValueError("losses is empty: need at least one objective")
    # One finiteness check for all the losses; the per-loss one below only names the culprit.
    try:
        all_finite = all(isinstance(x, Tensor) and x.numel() == 1 for x in items) and bool(
            torch.isfinite(torch.stack([x.detach().reshape(()) for x in items])).all()
            if not isinstance(losses, Tensor)
            else torch.isfinite(losses.detach()).all()
        )
    except RuntimeError:  # mixed devices: the checks one by one
        all_finite = False
    for i, loss in enumerate(items):
        if not isinstance(loss, Tensor):
            raise TypeError(f"loss of objective {i} is {type(loss).__name__}, not a Tensor")
        if loss.numel() != 1:
            raise ValueError(
                f"loss of objective {i} must be a scalar, got shape {tuple(loss.shape)}"
            )
        if not loss.is_floating_point():
            raise TypeError(f"loss of objective {i} has dtype {loss.dtype}; expected floating")
        if not all_finite and not bool(torch.isfinite(loss.detach()).all()):
            raise ValueError(f"loss of objective {i} is not finite ({float(loss.detach()):g})")
        if not loss.requires_grad:
            raise ValueError(
                f"loss of objective {i} does not require grad: it is not connected to any "
                "trainable tensor"
            )
    checked = LossList(loss if loss.dim() == 0 else loss.reshape(()) for loss in items)
    if isinstance(losses, Tensor):
        checked.stacked = losses
    return checked
