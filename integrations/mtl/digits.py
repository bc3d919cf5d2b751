"""A real multi-task data set that ships with scikit-learn: three tasks on ``load_digits``.

The 1,797 bundled 8x8 handwritten digits (pixel values 0..16, scaled to 0..1) feed one shared
trunk, ``64 -> hidden -> width`` with tanh, and three heads:

* ``digit``: the digit's class, 10-way cross-entropy; metric: test accuracy (chance 0.1);
* ``parity``: whether the digit is odd, 2-way cross-entropy; metric: test accuracy (chance 0.5);
* ``reconstruction``: the 64 pixels back from the trunk's output (an autoencoder), mean squared
  error; metric: test MSE (reference: predicting the training set's mean image).

The narrow trunk output (``width`` 8 by default) makes the tasks compete for it: the classes need
a code that separates digits, the reconstruction one that keeps pixel detail. Each seed draws
its own stratified 70/30 split (``sklearn.model_selection.train_test_split``), initialisation
and mini-batch order; every method sees the same ones for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .methods import METHODS, apply_method, make_method
from .stats import descent_cosines, flat_grads, is_common_descent

__all__ = [
    "TASKS",
    "DigitsData",
    "DigitsRun",
    "SharedTrunk",
    "evaluate",
    "load_data",
    "reference_point",
    "task_losses",
    "train_digits",
]

TASKS: tuple[str, ...] = ("digit", "parity", "reconstruction")


@dataclass
class DigitsData:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_data(seed: int, test_size: float = 0.3) -> DigitsData:
    """The bundled digits, scaled to [0, 1], split 70/30 stratified by class with ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x / 16.0, y, test_size=test_size, stratify=y, random_state=seed
    )
    return DigitsData(
        torch.tensor(x_tr, dtype=torch.float32),
        torch.tensor(y_tr, dtype=torch.long),
        torch.tensor(x_te, dtype=torch.float32),
        torch.tensor(y_te, dtype=torch.long),
    )


class SharedTrunk(nn.Module):
    """One trunk, one head per task: ``forward(x) -> (z, [digit, parity logits, pixels])``."""

    def __init__(self, hidden: int = 32, width: int = 8) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, width))
        self.heads = nn.ModuleList(
            [nn.Linear(width, 10), nn.Linear(width, 2), nn.Linear(width, 64)]
        )

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = torch.tanh(self.trunk(x))
        return z, [head(z) for head in self.heads]


def task_losses(model: SharedTrunk, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The shared representation ``z`` and the three task losses on a batch."""
    z, (digit, parity, pixels) = model(x)
    return z, [
        nn.functional.cross_entropy(digit, y),
        nn.functional.cross_entropy(parity, y % 2),
        nn.functional.mse_loss(pixels, x),
    ]


@torch.no_grad()
def evaluate(model: SharedTrunk, x: Tensor, y: Tensor) -> dict[str, float]:
    _, (digit, parity, pixels) = model(x)
    return {
        "digit_acc": float((digit.argmax(1) == y).float().mean()),
        "parity_acc": float((parity.argmax(1) == y % 2).float().mean()),
        "recon_mse": float(nn.functional.mse_loss(pixels, x)),
    }


def reference_point(data: DigitsData) -> tuple[float, float, float]:
    """Hypervolume reference in (digit acc, parity acc, -recon MSE), all maximised: chance
    accuracy and the test MSE of predicting the training set's mean image."""
    mean_mse = float(((data.x_test - data.x_train.mean(0)) ** 2).mean())
    return (0.1, 0.5, -mean_mse)


@dataclass
class DigitsRun:
    """One method, one seed: final test metrics and the per-step descent record."""

    method: str
    seed: int
    metrics: dict[str, float]
    reference: tuple[float, float, float]
    grad_descent: list[bool] = field(default_factory=list)
    step_descent: list[bool] = field(default_factory=list)
    min_cosine: list[float] = field(default_factory=list)

    def point(self) -> np.ndarray:
        m = self.metrics
        return np.array([m["digit_acc"], m["parity_acc"], -m["recon_mse"]])


def train_digits(
    method: str,
    seed: int,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    hidden: int = 32,
    width: int = 8,
    measure_descent: bool = True,
) -> DigitsRun:
    """Train the shared-trunk model with one method (Adam, mini-batches) and test it.

    With ``measure_descent`` each step also takes every task's full gradient over the trunk
    (n extra backward passes, outside the method) and records whether (a) the combined trunk
    gradient the method hands to Adam and (b) the parameter change Adam then applies lower every
    task's loss to first order.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    data = load_data(seed)
    torch.manual_seed(seed)
    model = SharedTrunk(hidden, width)
    trunk = list(model.trunk.parameters())
    heads = [list(h.parameters()) for h in model.heads]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rule = make_method(method)
    gen = torch.Generator().manual_seed(seed)
    n_train = data.x_train.shape[0]
    run = DigitsRun(method, seed, {}, reference_point(data))
    order = torch.randperm(n_train, generator=gen)
    cursor = 0
    for _ in range(steps):
        if cursor + batch_size > n_train:
            order, cursor = torch.randperm(n_train, generator=gen), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        z, losses = task_losses(model, data.x_train[idx], data.y_train[idx])
        task_grads = (
            torch.stack([flat_grads(loss, trunk) for loss in losses]) if measure_descent else None
        )
        opt.zero_grad()
        apply_method(rule, losses, shared=z, trunk=trunk, heads=heads)
        if task_grads is not None:
            before = torch.cat([p.detach().reshape(-1) for p in trunk])
            grad = torch.cat([p.grad.reshape(-1) for p in trunk])  # type: ignore[union-attr]
            cos = descent_cosines(grad, task_grads)
            run.grad_descent.append(is_common_descent(cos))
            run.min_cosine.append(float(cos.min()))
        opt.step()
        if task_grads is not None:
            after = torch.cat([p.detach().reshape(-1) for p in trunk])
            run.step_descent.append(is_common_descent(descent_cosines(before - after, task_grads)))
    model.eval()
    run.metrics = evaluate(model, data.x_test, data.y_test)
    for i, loss in enumerate(task_losses(model, data.x_test, data.y_test)[1]):
        run.metrics[f"test_loss/{TASKS[i]}"] = float(loss.detach())
    return run
