r"""Data-parallel helpers: make a run on W processes equal a run on one process.

Under data parallelism (DDP through ``accelerate launch`` or ``torchrun``) every process
holds B/W samples, and DDP *averages* the parameter gradients over the processes. Two
things decide whether that average is the single-process gradient of the global batch:

* **Token means.** A loss that averages over the *local* valid tokens weights processes
  with few valid tokens too much. :func:`dp_loss_scale` is the factor
  :math:`W\,c_r / \sum_q c_q` (``c_r`` = valid tokens on process r) that turns a local
  token mean into this process's share of the global token mean.
* **Statistics.** Advantage whitening or reward normalisation must use global means and
  standard deviations: :func:`global_mean_std`.

Then the combiners:

* **PAMA** is element-wise (Theorem 1 per token, no Gram matrix), so it needs nothing more:
  each process computes :math:`s^*` on its own tokens and one ordinary DDP backward
  averages :math:`d` numbers, as single-objective PPO would.
* **Exact MGDA** needs the Gram matrix of the *global* per-objective gradients,
  :math:`G = \bar J \bar J^T` with :math:`\bar J = \frac1W \sum_r J_r`, which does not
  decompose over processes: :class:`DistributedMGDA` all-reduces the ``[n, d]`` Jacobian
  (n times the traffic of one DDP step) before the Gram matrix and the min-norm solve, and
  writes the combined gradient into ``.grad`` itself (no further DDP reduction).

Every function here is a no-op on one process (``torch.distributed`` not initialised), so
the same training code runs with and without a launcher.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from paretoopt import MGDA, CombineResult, gram_matrix, min_norm_weights
from paretoopt._validation import check_losses

__all__ = [
    "DistributedMGDA",
    "all_reduce_mean",
    "all_reduce_sum",
    "dp_loss_scale",
    "global_mean_std",
    "is_distributed",
    "world_size",
]


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group with more than one process is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of data-parallel processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Sum of ``x`` over the processes, as a new tensor (``x`` is not modified)."""
    out = x.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def all_reduce_mean(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Mean of ``x`` over the processes, as a new tensor."""
    n = dist.get_world_size(group) if is_distributed() else 1
    return all_reduce_sum(x, group) / n


def dp_loss_scale(mask: Tensor | None, batch_size: int | None = None) -> Tensor:
    r"""Factor that turns a local masked token mean into its share of the global one.

    With ``c_r`` valid tokens on process r, the global token mean is
    :math:`\sum_r S_r / \sum_q c_q` while process r computes :math:`S_r / c_r` and DDP
    averages over W processes. Multiplying the local loss by
    :math:`W c_r / \sum_q c_q` makes that average the global token mean, for any split of
    the tokens. Without a mask pass ``batch_size`` (the local number of samples) to get the
    same correction for per-sample means; with neither, the factor is 1.

    Returns:
        A 0-d float64 tensor (1 on a single process). Collective: every process must call it.
    """
    if mask is not None:
        local = mask.detach().to(torch.float64).sum()
    elif batch_size is not None:
        local = torch.tensor(float(batch_size), dtype=torch.float64)
    else:
        return torch.ones((), dtype=torch.float64)
    total = all_reduce_sum(local)
    if float(total) == 0:
        return torch.ones((), dtype=torch.float64, device=local.device)
    return world_size() * local / total


def global_mean_std(
    x: Tensor, mask: Tensor | None = None, unbiased: bool = True
) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of the valid entries of ``x`` over all processes.

    For whitening advantages or normalising rewards exactly as a single process would on
    the global batch. Computed from all-reduced sums in float64. Collective.
    """
    xd = x.detach().to(torch.float64)
    m = torch.ones_like(xd) if mask is None else mask.detach().to(torch.float64)
    stats = torch.stack([(xd * m).sum(), (xd * xd * m).sum(), m.sum()])
    s, s2, c = all_reduce_sum(stats).unbind()
    mean = s / c.clamp_min(1)
    var = (s2 / c.clamp_min(1) - mean**2).clamp_min(0)
    if unbiased:
        var = torch.where(c > 1, var * c / (c - 1).clamp_min(1), var)
    return mean.to(x.dtype), var.sqrt().to(x.dtype)


class DistributedMGDA:
    r"""Exact MGDA (Sener & Koltun 2018) on the global batch under data parallelism.

    Each process passes its *local* per-objective losses, already scaled so that their
    average over processes is the global loss (see :func:`dp_loss_scale`). The step

    1. takes the local Jacobian :math:`J_r` (n backward passes over the parameters, as
       :class:`paretoopt.MGDA` does);
    2. all-reduces it: :math:`\bar J = \frac1W \sum_r J_r` (n d numbers; the cost PAMA
       avoids) and the losses (for the ``loss``/``loss+`` normalisations);
    3. solves the min-norm problem on :math:`\bar J \bar J^T` in float64, identically on
       every process;
    4. writes :math:`\sum_i \alpha_i \bar g_i` into each parameter's ``.grad``.

    Call ``optimizer.step()`` afterwards. Do not call ``backward()`` on the returned loss:
    the gradient is already in place and already global. When the model is wrapped in DDP,
    run its forward inside ``model.no_sync()`` (``accelerator.no_sync(model)``) or through
    the unwrapped module, so that DDP does not wait for a backward that never comes.

    Args:
        normalization, solver, tol, max_iter: as :class:`paretoopt.MGDA`.
        group: process group to reduce over (default: the world).
    """

    def __init__(
        self,
        normalization: str = "none",
        solver: str = "exact",
        tol: float | None = None,
        max_iter: int | None = None,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        # Validation and the per-objective gradient code live in the core combiner.
        self.mgda = MGDA(
            mode="params",
            normalization=normalization,  # type: ignore[arg-type]
            solver=solver,  # type: ignore[arg-type]
            tol=tol,
            max_iter=max_iter,
        )
        self.group = group

    def __repr__(self) -> str:
        m = self.mgda
        return f"DistributedMGDA(normalization={m.normalization!r}, solver={m.solver!r})"

    def step(self, losses: Sequence[Tensor] | Tensor, params: Iterable[Tensor]) -> CombineResult:
        """Compute the global MGDA direction and store it in ``p.grad``; collective."""
        items = check_losses(losses)
        plist = [p for p in params if p.requires_grad]
        jac = self.mgda.jacobian(items, None, plist)  # [n, d], local
        jac = all_reduce_mean(jac, self.group)
        loss_values = all_reduce_mean(torch.stack([loss.detach() for loss in items]), self.group)
        gram = gram_matrix(jac).cpu()
        nu = self.mgda.normalizers(list(loss_values.unbind()), gram)
        sol = min_norm_weights(
            gram / torch.outer(nu, nu),
            method=self.mgda.solver,
            tol=self.mgda.tol,
            max_iter=self.mgda.max_iter,
        )
        alpha = sol.weights / nu
        direction = (alpha.to(jac.device, jac.dtype).unsqueeze(1) * jac).sum(0)
        offset = 0
        for p in plist:
            g = direction[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
            p.grad = g.clone() if p.grad is None else p.grad + g
        dirderiv = gram @ alpha
        stats = {
            "min_norm": sol.value,
            "kkt_residual": sol.kkt_residual,
            "solver_iterations": float(sol.iterations),
            "min_directional_derivative": float(dirderiv.min()),
            "allreduce_numel": float(jac.numel()),
        }
        for i in range(len(items)):
            stats[f"weight/{i}"] = float(sol.weights[i])
            stats[f"loss_weight/{i}"] = float(alpha[i])
        value = (alpha.to(loss_values.dtype) * loss_values).sum()
        return CombineResult(loss=value, weights=sol.weights, stats=stats)
