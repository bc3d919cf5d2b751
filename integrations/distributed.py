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
  averages :math:`d` numbers, as single-objective PPO would. Only ``granularity="batch"``
  (one weight vector for the batch) needs the batch's per-objective means:
  :func:`global_pama_batch_advantages` all-reduces n + 1 numbers.
* **Exact MGDA** needs the Gram matrix of the *global* per-objective gradients,
  :math:`G = \bar J \bar J^T` with :math:`\bar J = \frac1W \sum_r J_r`, which does not
  decompose over processes: :class:`DistributedMGDA` all-reduces the ``[n, d]`` Jacobian
  (n times the traffic of one DDP step) before the Gram matrix and the min-norm solve.
  MGDA-UB only needs the n x n Gram matrices of the shared tensor summed.
* **The torchjd zoo** (:class:`paretoopt.TorchJD`) follows MGDA: :class:`DistributedTorchJD`
  solves a Gramian weighting on the global Gram matrix (summed over processes for a shared
  tensor, of the all-reduced Jacobian over parameters) and hands a matrix weighting or a
  Jacobian aggregator the all-reduced Jacobian (parameters only: over a shared tensor the
  global Jacobian is spread over the processes, so those are refused). Rank 0's weights (or
  vector) are broadcast, so that a random method (PCGrad, GradVac, GradDrop) takes one step
  everywhere; a stateful method's checkpointed state is rank 0's.

What happens when one process fails (a bounded wait, every process stopping with an error
that says why) is in :mod:`paretoopt.integrations.faults`.

Every function here is a no-op on one process (``torch.distributed`` not initialised), so
the same training code runs with and without a launcher.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from paretoopt import MGDA, Combiner, TorchJD, gram_matrix
from paretoopt.zoo import ZOO

__all__ = [
    "DistributedMGDA",
    "DistributedTorchJD",
    "all_reduce_mean",
    "all_reduce_sum",
    "dp_loss_scale",
    "global_mean_std",
    "global_pama_batch_advantages",
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


def global_pama_batch_advantages(
    advantages: Tensor, mask: Tensor | None = None, noon: bool = True
) -> tuple[Tensor, Tensor]:
    r"""PAMA's ``granularity="batch"`` on the *global* batch: ``s*`` and weights ``[n, ...]``.

    One weight vector from the closed form on each objective's mean (Noon-clipped)
    advantage over the valid elements of every process: the per-objective sums and the
    element count are all-reduced (n + 1 numbers), so every process gets the weights one
    process gets on the whole batch. Without it, "batch" would mean "this process's share".
    On one process this is :func:`paretoopt.pama_advantages` with ``granularity="batch"``,
    bit for bit. Collective.
    """
    from paretoopt import noon_clip, pama_closed_form

    adv = noon_clip(advantages) if noon else advantages
    wd = torch.float64 if adv.dtype == torch.float64 else torch.float32
    advf = adv.to(wd)
    valid = torch.ones_like(advf[0], dtype=torch.bool) if mask is None else mask.to(torch.bool)
    m = valid.to(wd).expand_as(advf)
    dims = tuple(range(1, advf.dim()))
    local = torch.cat([(advf * m).sum(dim=dims), m[0].sum().reshape(1)])  # [n + 1]
    total = all_reduce_sum(local)
    _, w = pama_closed_form(total[:-1] / total[-1].clamp_min(1), dim=0)
    weights = w.reshape(w.shape + (1,) * (advf.dim() - 1)).expand_as(advf)
    s_star = (weights * advf).sum(0).to(adv.dtype).masked_fill_(~valid, 0)
    return s_star, weights


class DistributedMGDA(Combiner):
    r"""MGDA (Sener & Koltun 2018) on the *global* batch under data parallelism.

    A drop-in for :class:`paretoopt.MGDA` in a DDP run: call it with this process's losses,
    already scaled with :func:`dp_loss_scale` (so that their average over processes is the
    global loss), and backpropagate ``result.loss`` through the DDP-wrapped model as usual.

    * ``mode="params"`` (exact MGDA): the local Jacobian :math:`J_r` ``[n, d]`` is
      all-reduced, :math:`\bar J = \frac1W \sum_r J_r` (n d numbers: the communication
      PAMA avoids), and the min-norm problem is solved on :math:`\bar J \bar J^T`.
    * ``mode="shared"`` (MGDA-UB): each process's shared tensor holds different samples, so
      the global Gram matrix is the sum of the local ones, :math:`\frac1{W^2}\sum_r J_r J_r^T`
      (n^2 numbers).

    The solve (float64) is identical on every process, so the weights :math:`\alpha` are
    too; ``result.loss`` is :math:`\sum_i \alpha_i L_i^{(r)}` (``alpha`` the simplex weights,
    or ``c / nu`` with ``rescale=True``) and DDP's gradient average
    turns it into :math:`\sum_i \alpha_i \bar g_i`, the single-process MGDA update.
    On one process it equals :class:`paretoopt.MGDA`.

    Args:
        mode, normalization, solver, tol, max_iter, rescale: as :class:`paretoopt.MGDA`.
        group: process group to reduce over (default: the world).
    """

    name = "mgda"

    def __init__(
        self,
        mode: str = "params",
        normalization: str = "none",
        solver: str = "exact",
        tol: float | None = None,
        max_iter: int | None = None,
        group: dist.ProcessGroup | None = None,
        rescale: bool = False,
    ) -> None:
        # Validation and the per-objective gradient code live in the core combiner.
        self.mgda = MGDA(
            mode=mode,  # type: ignore[arg-type]
            normalization=normalization,  # type: ignore[arg-type]
            solver=solver,  # type: ignore[arg-type]
            tol=tol,
            max_iter=max_iter,
            rescale=rescale,
        )
        self.group = group

    @property
    def requires(self) -> str:  # type: ignore[override]
        return self.mgda.mode

    def _hparams(self) -> dict[str, Any]:
        return self.mgda._hparams()

    @property
    def loss_scale_degree(self) -> int:  # type: ignore[override]
        return self.mgda.loss_scale_degree

    def global_gram(self, losses: list[Tensor], shared: Tensor | None, params: Any) -> Tensor:
        """Gram matrix ``[n, n]`` (float64, CPU) of the global per-objective gradients."""
        jac = self.mgda.jacobian(losses, shared, params)  # local [n, d]
        if self.mgda.mode == "params":
            return gram_matrix(all_reduce_mean(jac, self.group)).cpu()
        w = dist.get_world_size(self.group) if is_distributed() else 1
        return (all_reduce_sum(gram_matrix(jac), self.group) / (w * w)).cpu()

    def _combine(self, losses, *, shared, params):  # type: ignore[override]
        gram = self.global_gram(losses, shared, params)
        loss_values = all_reduce_mean(torch.stack([loss.detach() for loss in losses]), self.group)
        return self.mgda.from_gram(losses, gram, list(loss_values.unbind()))


class DistributedTorchJD(TorchJD):
    r"""A :class:`paretoopt.TorchJD` combiner on the *global* batch under data parallelism.

    Built from a single-process one (``DistributedTorchJD(make_combiner("upgrad"))``) and
    called, like :class:`DistributedMGDA`, with this process's losses scaled by
    :func:`dp_loss_scale`:

    * a Gramian weighting (UPGrad, CAGrad, PCGrad, ...) solves on
      :math:`\frac1{W^2}\sum_r J_r J_r^T` (shared tensor: n^2 numbers) or on
      :math:`\bar J \bar J^T` with the all-reduced :math:`\bar J` (parameters: n d numbers);
    * a matrix weighting (Nash-MTL, ExcessMTL, Random) or a Jacobian aggregator (GradDrop,
      ConFIG, TrimmedMean) reads :math:`\bar J`: parameters only, refused over a shared tensor.

    The weights (or the vector) of rank 0 are broadcast, so every process takes one update;
    on one process it equals the combiner it was built from.
    """

    def __init__(self, combiner: TorchJD, group: dist.ProcessGroup | None = None) -> None:
        if not isinstance(combiner, TorchJD):
            raise TypeError(f"DistributedTorchJD wraps a TorchJD, got {type(combiner).__name__}")
        self.group = group
        self._device: torch.device | None = None
        spec = ZOO.get(combiner.name)
        if spec is not None:
            self._check_kind(spec.kind, combiner.mode, combiner.route, combiner.name)
        super().__init__(
            combiner.source, mode=combiner.mode, route=combiner.route, name=combiner.name
        )
        state = combiner.state_dict()
        if state:
            self.load_state_dict(state)

    @staticmethod
    def _check_kind(kind: str, mode: str, route: str, name: str) -> None:
        if mode == "shared" and (kind != "gramian" or route == "jacobian"):
            raise ValueError(
                f"{name} reads the Jacobian itself, and over a shared tensor the global Jacobian "
                "is spread over the processes (each holds its own samples' rows of z): under "
                "data parallelism use mode='params', or a Gramian method (upgrad, cagrad, ...)"
            )

    def _adopt(self, method: Any) -> None:
        super()._adopt(method)
        self._check_kind(self.kind, self.mode, self.route, self.name)

    def reduce_gram(self, jac: Tensor) -> Tensor:
        self._device = jac.device
        if self.mode == "params":
            return gram_matrix(all_reduce_mean(jac, self.group)).cpu()
        w = dist.get_world_size(self.group) if is_distributed() else 1
        return (all_reduce_sum(gram_matrix(jac), self.group) / (w * w)).cpu()

    def reduce_jacobian(self, jac: Tensor) -> Tensor:
        self._device = jac.device
        return all_reduce_mean(jac, self.group)

    def agree(self, x: Tensor) -> Tensor:
        if not is_distributed():
            return x
        out = x.detach().to(self._device if self._device is not None else x.device).clone()
        dist.broadcast(out, src=dist.get_global_rank(self.group, 0) if self.group else 0,
                       group=self.group)  # fmt: skip
        return out.to(x.device)
