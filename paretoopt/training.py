"""The multi-task training step: a combiner for the shared part, each task's own loss for its head.

A shared-trunk model (one encoder, one head per task, one loss per task) needs two kinds of
gradient: the trunk's, which the combiner chooses (PAMA, MGDA, MGDA-UB, a fixed weighting), and
each head's, which only its own task's loss reaches. :func:`combine_and_backward` does both in
one call::

    z = encoder(x)                                   # shared representation
    losses = [loss_fn(head(z), y) for head, y in zip(heads, targets)]
    result = combine_and_backward(
        losses, MGDA(mode="shared", normalization="l2"), shared=z,
        params=encoder.parameters(), heads=[h.parameters() for h in heads],
    )
    optimizer.step()

The rule: a combiner that *chooses* its weights (PAMA, MGDA) decides only the shared
parameters' gradient, and head ``i`` gets the plain gradient of ``L_i`` (weight 1), as in
Sener & Koltun (2018) and LibMTL. A fixed weighting (:class:`LinearScalarization`) is the plain
weighted sum everywhere: head ``i`` gets ``w_i`` times its gradient, exactly as
``sum_i w_i L_i``.backward() would give.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from ._validation import check_losses
from .combiners import Combiner, CombineResult, LinearScalarization

__all__ = ["combine_and_backward"]


def _param_list(params: Iterable[Tensor], what: str) -> list[Tensor]:
    out = list(params)
    for j, p in enumerate(out):
        if not isinstance(p, Tensor):
            raise TypeError(f"{what}[{j}] is {type(p).__name__}, not a Tensor")
    return [p for p in out if p.requires_grad]


def _accumulate(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g.detach().clone()
        else:
            p.grad.add_(g)


def _replay(
    params: Sequence[Tensor], grads: Sequence[Tensor | None], backward: Callable[[Tensor], None]
) -> None:
    """One ``backward(s)`` call whose gradient w.r.t. each ``params[j]`` is ``grads[j]``.

    ``s = sum_j <p_j, g_j>`` (with ``g_j`` constant) has exactly ``dL/dp_j = g_j``; its value
    is made 0 so that a wrapper which logs or scales the loss sees nothing odd. Every
    parameter with a gradient is reached once, which is what DDP's reducer counts on.
    """
    terms = [(p * g.detach().to(p.dtype)).sum() for p, g in zip(params, grads, strict=True)
             if g is not None]  # fmt: skip
    if not terms:
        return
    total = torch.stack([t.to(torch.float32) for t in terms]).sum()
    backward(total - total.detach())


def combine_and_backward(
    losses: Sequence[Tensor],
    combiner: Combiner,
    *,
    shared: Tensor | None = None,
    params: Iterable[Tensor] | None = None,
    heads: Sequence[Iterable[Tensor]] | None = None,
    backward: Callable[[Tensor], None] | None = None,
    grad_scale: float = 1.0,
) -> CombineResult:
    """Combine n task losses and accumulate their gradients into ``.grad`` (one call a step).

    Args:
        losses: n scalar losses, ``losses[i]`` the loss of task ``i``.
        combiner: any :class:`~paretoopt.Combiner`.
        shared: the shared tensor (e.g. the encoder's output) for combiners that need one
            (``combiner.requires == "shared"``: PAMA, MGDA-UB).
        params: the shared (trunk) parameters. Needed by exact MGDA, and whenever ``heads``
            is given: then only these parameters receive the combined gradient.
        heads: optional, n iterables of parameters; ``heads[i]`` belongs to task ``i`` alone
            and receives the gradient of ``losses[i]`` (times ``w_i`` for a
            :class:`LinearScalarization`, else weight 1). Without ``heads`` the combined loss
            is backpropagated into everything it reaches.
        backward: optional, how to backpropagate a scalar (default ``Tensor.backward``), e.g.
            ``accelerator.backward`` so that a grad scaler and DDP's gradient all-reduce see
            the step. It is called exactly once. With ``heads`` the trunk's and the heads'
            gradients are first computed with ``torch.autograd.grad`` and then written by one
            call ``backward(sum_j <p_j, g_j>)`` whose gradient is exactly ``g_j``: DDP
            averages gradients only in hooks that a real backward fires, and it expects every
            parameter once per step.
        grad_scale: multiplies every gradient written, not the losses the combiner sees: the
            combiner chooses on the true losses (its choice need not scale with them: MGDA
            with ``"l2"`` or ``"loss"`` normalisation does not), while the backward passes of
            the update run on scaled values, as a mixed-precision grad scaler needs.

    Returns:
        The combiner's :class:`~paretoopt.CombineResult` (weights and stats for logging).
        Gradients are *added* to ``.grad``, as ``loss.backward()`` does: zero them between
        steps.
    """
    items = check_losses(losses)
    n = len(items)
    trunk = _param_list(params, "params") if params is not None else None
    if not (grad_scale > 0 and math.isfinite(grad_scale)):
        raise ValueError(f"grad_scale must be finite and > 0, got {grad_scale}")
    if heads is None:
        result = combiner(items, shared=shared, params=trunk)
        total = result.loss * grad_scale if grad_scale != 1.0 else result.loss
        if backward is None:
            total.backward()
        else:
            backward(total)
        return result
    if isinstance(heads, (Tensor, str)) or len(heads) != n:
        got = "a tensor" if isinstance(heads, Tensor) else f"{len(heads)} entries"
        raise ValueError(f"heads must hold one iterable of parameters per loss ({n}); got {got}")
    if trunk is None:
        raise TypeError(
            "heads= needs params=<the shared parameters>: the combined gradient goes to them, "
            "each head's own loss to the head"
        )
    head_lists = [_param_list(h, f"heads[{i}]") for i, h in enumerate(heads)]
    trunk_ids = {id(p) for p in trunk}
    owner: dict[int, int] = {}
    for i, hp in enumerate(head_lists):
        for p in hp:
            if id(p) in trunk_ids:
                raise ValueError(
                    f"a parameter of shape {tuple(p.shape)} is in both params and heads[{i}]; "
                    "a parameter is shared or belongs to one task, not both"
                )
            if id(p) in owner and owner[id(p)] != i:
                raise ValueError(
                    f"a parameter of shape {tuple(p.shape)} is in heads[{owner[id(p)]}] and "
                    f"heads[{i}]; a head belongs to one task"
                )
            owner[id(p)] = i
    result = combiner(items, shared=shared, params=trunk)
    fixed = isinstance(combiner, LinearScalarization)
    replay_params: list[Tensor] = []
    replay_grads: list[Tensor | None] = []
    for i, (loss, hp) in enumerate(zip(items, head_lists, strict=True)):
        if not hp:
            continue
        weight = (float(result.weights[i]) if fixed else 1.0) * grad_scale
        grads = torch.autograd.grad(loss * weight, hp, retain_graph=True, allow_unused=True)
        if backward is None:
            _accumulate(hp, grads)
        else:
            replay_params += hp
            replay_grads += grads
    total = result.loss * grad_scale if grad_scale != 1.0 else result.loss
    if backward is None:
        if trunk:
            total.backward(inputs=trunk)
        return result
    if trunk:
        grads = torch.autograd.grad(total, trunk, retain_graph=True, allow_unused=True)
        replay_params += trunk
        replay_grads += grads
    _replay(replay_params, replay_grads, backward)
    return result
