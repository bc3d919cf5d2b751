r"""The torchjd zoo: torchjd's aggregators as paretoopt combiners, over a shared tensor or the
parameters, in any training loop that takes a combiner (the RLHF trainer, the
``transformers.Trainer`` drop-in, :func:`paretoopt.combine_and_backward`).

torchjd (github.com/SimplexLab/TorchJD) implements the Jacobian-descent family (UPGrad, CAGrad,
PCGrad, Nash-MTL, DualProj, IMTL-G, Aligned-MTL, GradVac, FairGrad, ConFIG, ...) for plain
backpropagation. :class:`TorchJD` calls them; it re-implements none. What it adds is where the
Jacobian comes from, as for :class:`paretoopt.MGDA`:

* ``mode="shared"``: the n vector-Jacobian products that stop at a shared tensor ``z`` (the
  last hidden states of a policy, an encoder's output), as MGDA-UB;
* ``mode="params"``: the n gradients over the shared parameters, as exact MGDA.

What happens next depends on what the torchjd method reads:

* **a Gramian weighting** (UPGrad, DualProj, CAGrad, IMTL-G, Aligned-MTL, PCGrad, GradVac,
  FairGrad, PCD, Krum): the weights come from the n x n Gram matrix (float64, the one MGDA
  builds), and ``result.loss`` is :math:`\sum_i w_i L_i`: one backward, the cost of MGDA-UB;
* **a matrix weighting** (Nash-MTL, ExcessMTL, Random): the weights come from the ``[n, d]``
  Jacobian itself, then the same :math:`\sum_i w_i L_i`;
* **a Jacobian aggregator** (GradDrop, ConFIG, TrimmedMean): no weights, a vector ``v = A(J)``
  of ``z``'s size (shared) or the parameters' (params). ``result.loss`` is a surrogate whose
  gradient is ``v``: :math:`\langle z, v\rangle` backpropagates ``v`` from ``z``;
  :math:`\sum_j \langle p_j, v_j\rangle` writes ``v`` into the parameters' ``.grad``. Its value
  is the mean of the losses; ``result.weights`` is ``None``.

Stateful methods (GradVac, PCD, Nash-MTL, ExcessMTL, CR-MOGM) keep their state across calls;
:meth:`TorchJD.state_dict` / :meth:`TorchJD.load_state_dict` carry it through checkpoints (the
trainers save it beside the optimizer), so that a resumed run takes the steps the uninterrupted
one takes. torchjd is imported on first use only: ``pip install "paretoopt[zoo]"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ._validation import check_finite
from .combiner_base import Combiner, CombineResult, _check_shared, _grads_wrt, _with_value
from .mgda import MGDA
from .min_norm import gram_matrix

__all__ = ["ZOO", "ZOO_NAMES", "TorchJD", "ZooMethod", "zoo_combiner"]

Mode = Literal["shared", "params"]
Route = Literal["auto", "jacobian"]
INSTALL_HINT = 'pip install "paretoopt[zoo]"'


@dataclass(frozen=True)
class ZooMethod:
    """One registered torchjd method: its class, its kind and the defaults we give it.

    ``kind``: ``"gramian"`` (weights from the Gram matrix), ``"matrix"`` (weights from the
    Jacobian) or ``"jacobian"`` (a vector, no weights). ``modes``: where it makes sense.
    ``homogeneous``: ``combine(s * losses)`` is ``s`` times ``combine(losses)`` for ``s > 0``
    (the weights do not depend on the losses' scale).
    """

    torchjd_class: str
    kind: Literal["gramian", "matrix", "jacobian"]
    stateful: bool = False
    modes: tuple[str, ...] = ("shared", "params")
    defaults: Mapping[str, Any] = field(default_factory=dict)
    homogeneous: bool = True
    min_objectives: int = 1
    random: bool = False


#: The names ``make_combiner`` knows: torchjd's class names in lower case.
ZOO: dict[str, ZooMethod] = {
    "upgrad": ZooMethod("UPGrad", "gramian"),
    "dualproj": ZooMethod("DualProj", "gramian"),
    "cagrad": ZooMethod("CAGrad", "gramian", defaults={"c": 0.4}, homogeneous=False),
    "imtlg": ZooMethod("IMTLG", "gramian"),
    "alignedmtl": ZooMethod("AlignedMTL", "gramian"),
    "pcgrad": ZooMethod("PCGrad", "gramian", random=True),
    "gradvac": ZooMethod("GradVac", "gramian", stateful=True, random=True),
    "fairgrad": ZooMethod("FairGrad", "gramian", defaults={"alpha": 1.0}, homogeneous=False),
    "pcd": ZooMethod("PCD", "gramian", stateful=True, homogeneous=False),
    "krum": ZooMethod("Krum", "gramian", defaults={"n_byzantine": 0}, min_objectives=3),
    "nashmtl": ZooMethod("NashMTL", "matrix", stateful=True, homogeneous=False),
    "excessmtl": ZooMethod(
        "ExcessMTL", "matrix", stateful=True, modes=("params",), homogeneous=False
    ),
    "random": ZooMethod("Random", "matrix", random=True),
    "graddrop": ZooMethod("GradDrop", "jacobian", random=True),
    "config": ZooMethod("ConFIG", "jacobian"),
    "trimmedmean": ZooMethod(
        "TrimmedMean", "jacobian", defaults={"trim_number": 1}, min_objectives=3
    ),
}
ZOO_NAMES: tuple[str, ...] = tuple(ZOO)

# Methods whose input is not the Jacobian of one batch: refused, with the reason.
_REFUSED = {
    "MoDoWeighting": "needs the cross-Gramian J1 J2^T of two independent mini-batches",
    "SDMGradWeighting": "needs the matrix J1 J2^T of two independent mini-batches",
}
# The attributes that hold a stateful method's state (buffers and plain attributes).
_STATE_FIELDS: dict[str, tuple[str, ...]] = {
    "GradVacWeighting": ("_phi_t", "_state_key"),
    "PCDWeighting": ("_sq_norm_ema", "_n_steps", "_state_key"),
    "_NashMTLWeighting": ("step", "prvs_alpha", "normalization_factor"),
    "ExcessMTLWeighting": (
        "_weights",
        "_sq_grad_sum",
        "_initial_w",
        "_warmup_w_sum",
        "_n_steps",
        "_state_key",
    ),
    "CRMOGMWeighting": ("_lambda",),
}


def _torchjd() -> Any:
    try:
        return importlib.import_module("torchjd.aggregation")
    except ImportError as exc:
        raise ImportError(
            f"the torchjd zoo needs torchjd, which is not installed: {INSTALL_HINT}"
        ) from exc


def zoo_combiner(name: str, mode: Mode = "shared", route: Route = "auto", **kwargs: Any) -> TorchJD:
    """The zoo combiner ``name`` (a key of :data:`ZOO`); ``kwargs`` go to the torchjd class,
    over our defaults (e.g. ``zoo_combiner("cagrad", c=0.5)``); ``mode`` and ``route`` as
    :class:`TorchJD`."""
    key = name.lower().replace("-", "_")
    if key not in ZOO:
        raise ValueError(f"unknown torchjd zoo method {name!r}; choose one of {list(ZOO)}")
    spec = ZOO[key]
    if mode not in ("shared", "params"):
        raise ValueError(f"mode must be 'shared' or 'params', got {mode!r}")
    if mode not in spec.modes:
        raise ValueError(_mode_refusal(key, spec.torchjd_class, mode))
    args = {**spec.defaults, **kwargs}

    def build(n: int) -> Any:
        agg = _torchjd()
        cls = getattr(agg, spec.torchjd_class)
        if key == "nashmtl":
            args.setdefault("n_tasks", n)
        try:
            return cls(**args)
        except TypeError as exc:
            raise TypeError(
                f"{key}: bad arguments {args} for torchjd's {cls.__name__}: {exc}"
            ) from exc

    _torchjd()  # a missing torchjd is reported when the combiner is built
    return TorchJD(build, mode=mode, route=route, name=key)


def _mode_refusal(name: str, cls: str, mode: str) -> str:
    return (
        f"{name} ({cls}) in mode={mode!r}: its state holds one entry per coordinate of the "
        "Jacobian, and a shared tensor changes size and meaning with every batch; use "
        "mode='params'"
    )


def _kind(method: Any, agg: Any) -> tuple[str, Any]:
    """``(kind, weighting)`` of a torchjd aggregator or weighting."""
    parts = method.modules() if isinstance(method, torch.nn.Module) else [method]
    for part in parts:
        if type(part).__name__ in _REFUSED:
            raise ValueError(
                f"TorchJD: {type(part).__name__} {_REFUSED[type(part).__name__]}; a combiner "
                "sees one batch's losses, so it cannot provide that input"
            )
    if isinstance(method, agg.GramianWeightedAggregator):
        return "gramian", method.gramian_weighting
    if isinstance(method, agg.WeightedAggregator):
        return "matrix", method.weighting
    if isinstance(method, agg.Aggregator):
        return "jacobian", None
    if isinstance(method, agg.Weighting):
        inner = method
        while type(inner).__name__ == "CRMOGMWeighting":  # a smoothing wrapper: its input
            inner = inner.weighting
        gramian_base = getattr(importlib.import_module(agg.__name__ + "._weighting_bases"),
                               "_GramianWeighting", None)  # fmt: skip
        if gramian_base is not None and isinstance(inner, gramian_base):
            return "gramian", method
        return "matrix", method
    raise TypeError(
        "TorchJD needs a torchjd Aggregator or Weighting (or a function n -> one), got "
        f"{type(method).__name__}"
    )


def _stateful_modules(method: Any) -> list[tuple[str, Any]]:
    import torchjd

    found = []
    for path, module in method.named_modules():
        if isinstance(module, torchjd.Stateful) and type(module).__name__ in _STATE_FIELDS:
            found.append((path, module))
        elif isinstance(module, torchjd.Stateful) and type(module).__name__.endswith("Weighting"):
            raise ValueError(
                f"TorchJD: {type(module).__name__} keeps a state that paretoopt does not know how "
                f"to checkpoint (known: {sorted(_STATE_FIELDS)})"
            )
    return found


class TorchJD(Combiner):
    r"""A torchjd aggregator or weighting as a combiner (see the module's docstring).

    Args:
        method: a torchjd ``Aggregator`` (``UPGrad()``, ``NashMTL(n_tasks=2)``, ...), a torchjd
            ``Weighting`` (``UPGradWeighting()``, ...), or a function ``n -> either`` called at
            the first combination with the number of objectives.
        mode: ``"shared"`` (needs ``shared=``) or ``"params"`` (needs ``params=``).
        route: ``"auto"``: weights where the method has them (one backward of
            :math:`\sum_i w_i L_i`), the aggregated vector otherwise; ``"jacobian"``: always the
            torchjd aggregator applied to the Jacobian, its vector backpropagated (the same
            gradient as the weights give, for a weighted method; kept to check that).
        name: how logs call it (default: the torchjd class name in lower case).

    ``result.weights``: float64 ``[n]`` (not on the simplex in general: UPGrad's and IMTL-G's
    weights are not, PCGrad's sum to n), ``None`` for a Jacobian aggregator.
    ``result.stats``: ``"torchjd"`` (the class name), ``"update_norm"`` (of the update in the
    Jacobian's space), ``"min_directional_derivative"`` (:math:`\min_i g_i \cdot d`; >= 0 when
    the update conflicts with no objective) and ``"weight/i"``.
    """

    def __init__(
        self,
        method: Any,
        mode: Mode = "shared",
        route: Route = "auto",
        name: str | None = None,
    ) -> None:
        if mode not in ("shared", "params"):
            raise ValueError(f"mode must be 'shared' or 'params', got {mode!r}")
        if route not in ("auto", "jacobian"):
            raise ValueError(f"route must be 'auto' or 'jacobian', got {route!r}")
        self.mode = mode
        self.route = route
        self._builder: Callable[[int], Any] | None = None
        self.method: Any = None
        self._name = name
        if callable(method) and not isinstance(method, torch.nn.Module):
            self._builder = method
        else:
            self._adopt(method)
        self._batched = [True]
        self._pending_state: dict[str, Any] | None = None

    # -- the torchjd object -------------------------------------------------------------

    def _adopt(self, method: Any) -> None:
        agg = _torchjd()
        kind, weighting = _kind(method, agg)
        if isinstance(method, agg.Weighting):
            base = agg.GramianWeightedAggregator if kind == "gramian" else agg.WeightedAggregator
            aggregator = base(method)
        else:
            aggregator = method
        cls = type(method).__name__
        if self.mode == "shared" and cls in ("ExcessMTL", "ExcessMTLWeighting"):
            raise ValueError(_mode_refusal("excessmtl", cls, "shared"))
        self.kind, self.weighting, self.aggregator, self.method = (
            kind,
            weighting,
            aggregator,
            method,
        )
        self._stateful = _stateful_modules(aggregator)
        if self._name is None:
            self._name = cls.removesuffix("Weighting").lower()

    def _materialise(self, n: int) -> None:
        if self.method is None:
            assert self._builder is not None
            self._adopt(self._builder(n))
            if self._pending_state is not None:
                state, self._pending_state = self._pending_state, None
                self.load_state_dict(state)
        spec = ZOO.get(self.name)
        if spec is not None and n < spec.min_objectives:
            raise ValueError(
                f"{self.name} ({spec.torchjd_class}) needs at least {spec.min_objectives} "
                f"objectives with its arguments, got {n} losses"
            )
        expected = getattr(self.aggregator, "n_tasks", None)
        if expected is not None and expected != n:
            raise ValueError(f"{self.name} was built for n_tasks={expected} but got {n} losses")

    @property
    def source(self) -> Any:
        """What the combiner was built from: the torchjd object, or the function ``n -> one``
        not yet called."""
        return self.method if self._builder is None else self._builder

    @property
    def requires(self) -> str:  # type: ignore[override]
        return self.mode

    @property
    def vector_update(self) -> bool:
        r"""Whether ``result.loss`` backpropagates a vector from ``z`` or into the parameters
        (a Jacobian aggregator, or ``route="jacobian"``) rather than :math:`\sum_i w_i L_i`:
        then only what lies before ``z`` (or in ``params``) receives a gradient, as with PAMA."""
        spec = ZOO.get(self.name)
        kind = getattr(self, "kind", spec.kind if spec is not None else None)
        return self.route == "jacobian" or kind == "jacobian"

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._name or "torchjd"

    @property
    def stateful(self) -> bool:
        """Whether the method keeps a state across calls (checkpointed by the trainers)."""
        if self.method is None:
            spec = ZOO.get(self.name)
            return bool(spec and spec.stateful)
        return bool(self._stateful)

    @property
    def loss_scale_degree(self) -> int:  # type: ignore[override]
        """1 where the weights do not depend on the losses' scale; 0 (treated as scale-free:
        each micro-batch combined on its own losses) for the methods whose weights do."""
        spec = ZOO.get(self.name)
        return 1 if spec is None or spec.homogeneous else 0

    def _hparams(self) -> dict[str, Any]:
        return {"method": self.method if self.method is not None else self.name,
                "mode": self.mode, "route": self.route}  # fmt: skip

    # -- the Jacobian and its reductions (overridden under data parallelism) -------------

    def jacobian(self, losses: list[Tensor], shared: Tensor | None, params: Any) -> Tensor:
        """This process's ``[n, d]`` Jacobian (over ``z``'s elements or the parameters)."""
        if self.mode == "shared":
            z = _check_shared(shared, f"{self.name} (mode='shared')")
            return _grads_wrt(losses, z, "shared tensor", self._batched).reshape(len(losses), -1)
        jac = MGDA(mode="params").jacobian(losses, None, self._params(params))
        check_finite(jac, "gradient w.r.t. the params", objective_dim=0)
        return jac

    def _params(self, params: Any) -> list[Tensor]:
        if params is None:
            raise TypeError(f"{self.name} (mode='params') needs params=<the shared parameters>")
        plist = list(params)
        for j, p in enumerate(plist):
            if not isinstance(p, Tensor):
                raise TypeError(f"params[{j}] is {type(p).__name__}, not a Tensor")
        plist = [p for p in plist if p.requires_grad]
        if not plist:
            raise ValueError(f"{self.name} (mode='params'): no parameter in params requires grad")
        return plist

    def reduce_gram(self, jac: Tensor) -> Tensor:
        """The Gram matrix the weights are solved on (float64, CPU)."""
        return gram_matrix(jac).cpu()

    def reduce_jacobian(self, jac: Tensor) -> Tensor:
        """The Jacobian a matrix weighting or an aggregator reads."""
        return jac

    def agree(self, x: Tensor) -> Tensor:
        """Make every process use the same weights or vector (identity on one process)."""
        return x

    # -- the combination -------------------------------------------------------------------

    def _combine(self, losses, *, shared, params):  # type: ignore[override]
        n = len(losses)
        self._materialise(n)
        plist = self._params(params) if self.mode == "params" else None
        jac = self.jacobian(losses, shared, plist)
        stats: dict[str, Any] = {"torchjd": type(self.method).__name__}
        if self.route == "auto" and self.kind == "gramian":
            gram = self.reduce_gram(jac)
            weights = self.agree(self.weighting(gram).to(torch.float64))
        elif self.route == "auto" and self.kind == "matrix":
            full = self.reduce_jacobian(jac)
            weights = self.agree(self.weighting(full).detach().to("cpu", torch.float64))
            gram = gram_matrix(full).cpu()
        else:
            full = self.reduce_jacobian(jac)
            vector = self.agree(self.aggregator(full).detach())
            check_finite(vector, f"{self.name}'s aggregated update")
            dirderiv = (full.to(torch.float64) @ vector.to(torch.float64)).cpu()
            stats["update_norm"] = float(vector.to(torch.float64).norm())
            stats["min_directional_derivative"] = float(dirderiv.min())
            value = torch.stack([loss.detach() for loss in losses]).mean()
            surrogate = self._surrogate(vector, shared, plist)
            return CombineResult(loss=_with_value(surrogate, value), weights=None, stats=stats)
        if weights.shape != (n,) or not bool(torch.isfinite(weights).all()):
            raise ValueError(
                f"{self.name} ({type(self.method).__name__}) returned weights "
                f"{weights.tolist()} for {n} objectives; expected {n} finite numbers"
            )
        dirderiv = gram @ weights
        stats["update_norm"] = float((weights @ dirderiv).clamp_min(0).sqrt())
        stats["min_directional_derivative"] = float(dirderiv.min())
        for i in range(n):
            stats[f"weight/{i}"] = float(weights[i])
        loss = sum(float(weights[i]) * losses[i] for i in range(n))
        assert isinstance(loss, Tensor)
        return CombineResult(loss=loss, weights=weights, stats=stats)

    def _surrogate(self, vector: Tensor, shared: Tensor | None, plist: list[Tensor] | None):
        """A scalar whose gradient w.r.t. ``z`` (or the parameters) is ``vector``."""
        if self.mode == "shared":
            assert shared is not None
            return (shared * vector.reshape(shared.shape).to(shared.dtype)).sum()
        assert plist is not None
        parts = vector.split([p.numel() for p in plist])
        terms = [
            (p * g.reshape(p.shape).to(p.dtype)).sum() for p, g in zip(plist, parts, strict=True)
        ]
        return torch.stack([t.to(torch.float32) for t in terms]).sum()

    # -- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The method's state (tensors and plain values, loadable with ``weights_only=True``);
        empty for a stateless method or one not yet built."""
        if self.method is None:
            return dict(self._pending_state or {})
        out = {}
        for path, module in self._stateful:
            cls = type(module).__name__
            fields = {k: _encode(getattr(module, k)) for k in _STATE_FIELDS[cls]}
            out[path] = {"class": cls, "state": fields}
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (applied at the first call if the method is
        built lazily)."""
        if not state:  # a checkpoint taken before the first step: nothing to restore
            return
        if self.method is None:
            self._pending_state = dict(state)
            return
        modules = {path: type(m).__name__ for path, m in self._stateful}
        saved = {path: entry.get("class") for path, entry in state.items()}
        if saved != modules:
            raise ValueError(
                f"{self.name}: the state holds {saved}, but this method's stateful parts are "
                f"{modules}; was it saved by another combiner?"
            )
        parts = dict(self._stateful)
        for path, entry in state.items():
            module = parts[path]
            for key, value in entry["state"].items():
                setattr(module, key, _decode(value))
            if type(module).__name__ == "_NashMTLWeighting" and module.step > 0:
                module._init_optim_problem()  # the solver's problem, rebuilt from the state


def _encode(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return {"numpy": torch.from_numpy(value.copy())}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a state value of type {type(value).__name__}")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        ((kind, inner),) = value.items()
        if kind == "numpy":
            return inner.numpy().copy()
        if kind == "dtype":
            return getattr(torch, inner)
        if kind == "device":
            return torch.device(inner)
        return tuple(_decode(v) for v in inner)
    return value
