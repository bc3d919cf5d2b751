"""Where a multi-objective Trainer finds its inputs: named losses, the shared tensor, the
trunk and the heads of a model (used by :mod:`.multi_objective`).

Kept apart from the Trainer subclass so that each piece can be read and tested alone: none of
these functions knows about ``transformers.Trainer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ObjectiveLayout",
    "SharedCapture",
    "find_module",
    "named_losses",
    "resolve_layout",
    "shared_from_output",
    "to_tensor",
]


def _children_hint(root: nn.Module) -> str:
    names = [n for n, _ in root.named_children()]
    return ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")


def find_module(root: nn.Module, name: str, what: str) -> nn.Module:
    """The sub-module ``name`` of ``root``, also through PEFT's and DDP's wrappers.

    ``name`` is tried as given, then as the unique module whose qualified name ends with
    ``.name`` (PEFT prefixes ``base_model.model.``), so the names of the model a user wrote
    keep working after ``get_peft_model``.
    """
    try:
        return root.get_submodule(name)
    except AttributeError:
        pass
    matches = [m for qual, m in root.named_modules() if qual.endswith("." + name)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ValueError(f"{what} {name!r} matches {len(matches)} modules; give its full name")
    raise ValueError(
        f"{what} {name!r} is not a module of {type(root).__name__} "
        f"(its top-level modules: {_children_hint(root)})"
    )


def to_tensor(output: Any, where: str) -> Tensor:
    """The tensor a module returned: itself, the first item of a tuple, or a ModelOutput's
    ``last_hidden_state`` (else its first tensor)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        if isinstance(output.get("last_hidden_state"), Tensor):
            return output["last_hidden_state"]
        output = tuple(output.values())
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"{where} returned {type(output).__name__}, not a tensor or a tuple of tensors")


class SharedCapture:
    """A forward hook that keeps the output of one module during the Trainer's forward only.

    With ``raw=False`` it keeps the tensor the module returned (:func:`to_tensor`); with
    ``raw=True`` the whole output, e.g. the model's own output before DDP wraps every tensor
    of it in a new autograd node (through which the losses no longer depend on it).
    Activation checkpointing runs a module's forward again during backward; the hook is armed
    only inside :meth:`armed`, so those recomputations never replace the captured output.
    """

    def __init__(self, module: nn.Module, name: str, raw: bool = False) -> None:
        self.name = name
        self.raw = raw
        self.output: Any = None
        self._armed = False
        self._handle = module.register_forward_hook(self._hook)

    @property
    def tensor(self) -> Tensor | None:
        if self.raw:
            return shared_from_output(self.output)
        return self.output

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._armed and self.output is None:  # the first call: the outer forward
            self.output = output if self.raw else to_tensor(output, f"module {self.name!r}")

    def armed(self) -> SharedCapture:
        self.output = None
        self._armed = True
        return self

    def __enter__(self) -> SharedCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self._armed = False

    def release(self) -> None:
        """Disarm and drop the captured output: it holds the whole forward graph (every
        activation), which must not outlive the step that used it."""
        self._armed = False
        self.output = None

    def remove(self) -> None:
        self.release()
        self._handle.remove()


def shared_from_output(outputs: Any) -> Tensor | None:
    """The last hidden states of a model output (``hidden_states[-1]`` or
    ``last_hidden_state``), or None."""
    if not isinstance(outputs, Mapping):
        return None
    hidden = outputs.get("hidden_states")
    if isinstance(hidden, (tuple, list)) and hidden and isinstance(hidden[-1], Tensor):
        return hidden[-1]
    last = outputs.get("last_hidden_state")
    return last if isinstance(last, Tensor) else None


def named_losses(
    raw: Any, objectives: Sequence[str] | None, source: str
) -> tuple[list[str], list[Tensor]]:
    """Names and scalar losses from a dict ``name -> loss`` or a sequence of losses.

    ``objectives`` (optional) fixes the names and their order: a dict must hold exactly these
    keys, a sequence exactly that many losses. Each loss must be a scalar floating tensor.
    """
    if isinstance(raw, Mapping):
        names = [str(k) for k in raw]
        values = list(raw.values())
        if objectives is not None:
            missing = [o for o in objectives if o not in raw]
            extra = [k for k in names if k not in objectives]
            if missing or extra:
                raise ValueError(
                    f"{source} must hold the losses of objectives {list(objectives)}; "
                    + (f"missing {missing}" if missing else "")
                    + ("; " if missing and extra else "")
                    + (f"unexpected {extra}" if extra else "")
                )
            names = list(objectives)
            values = [raw[o] for o in objectives]
    elif isinstance(raw, (tuple, list)) or (isinstance(raw, Tensor) and raw.dim() == 1):
        values = list(raw)
        if objectives is not None and len(objectives) != len(values):
            raise ValueError(
                f"{source} holds {len(values)} losses, but objectives names {len(objectives)}: "
                f"{list(objectives)}"
            )
        names = list(objectives) if objectives is not None else [str(i) for i in range(len(values))]
    else:
        raise TypeError(
            f"{source} must be a dict name -> scalar loss or a tuple/list of scalar losses, "
            f"got {type(raw).__name__}"
        )
    if not values:
        raise ValueError(f"{source} is empty: need at least one loss")
    out = []
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, Tensor):
            raise TypeError(f"loss {name!r} in {source} is {type(value).__name__}, not a tensor")
        if value.numel() != 1:
            raise ValueError(
                f"loss {name!r} in {source} has shape {tuple(value.shape)}; each objective needs "
                "one scalar loss (reduce it, e.g. .mean(), in the model)"
            )
        if not value.is_floating_point():
            raise TypeError(f"loss {name!r} in {source} has dtype {value.dtype}, not floating")
        out.append(value.reshape(()))
    return names, out


@dataclass
class ObjectiveLayout:
    """Which parameters are the trunk (the combiner's) and which belong to one objective."""

    trunk: list[Tensor]
    heads: list[list[Tensor]] | None
    trunk_names: list[str] = field(default_factory=list)


def _trainable(module: nn.Module) -> list[tuple[str, Tensor]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def resolve_layout(
    root: nn.Module,
    names: Sequence[str],
    head_modules: Mapping[str, str | Sequence[str]] | None,
    trunk_module: str | None,
) -> ObjectiveLayout:
    """Trunk and heads from module names (see MultiObjectiveTrainingArguments).

    Without ``head_modules`` every trainable parameter (or those of ``trunk_module``) is the
    trunk and the combined loss reaches everything. With ``head_modules`` the trunk is
    ``trunk_module``'s trainable parameters, by default every trainable parameter outside the
    heads; a trainable parameter in neither would get no gradient, which is an error.
    """
    everything = _trainable(root)
    if not everything:
        raise ValueError(f"{type(root).__name__} has no parameter that requires grad")
    heads: list[list[Tensor]] | None = None
    head_ids: dict[int, str] = {}
    if head_modules:
        unknown = [k for k in head_modules if k not in names]
        if unknown:
            raise ValueError(
                f"head_modules names objectives {unknown} that the losses do not have "
                f"(objectives: {list(names)})"
            )
        heads = []
        for obj in names:
            spec = head_modules.get(obj, [])
            mods = [spec] if isinstance(spec, str) else list(spec)
            params: list[Tensor] = []
            for mod_name in mods:
                module = find_module(root, mod_name, f"head module of objective {obj!r}")
                found = _trainable(module)
                if not found:
                    raise ValueError(
                        f"head module {mod_name!r} of objective {obj!r} has no trainable "
                        "parameter (frozen? under PEFT list it in modules_to_save)"
                    )
                for _, p in found:
                    if id(p) in head_ids and head_ids[id(p)] != obj:
                        raise ValueError(
                            f"head module {mod_name!r} of objective {obj!r} shares a parameter "
                            f"with the head of objective {head_ids[id(p)]!r}"
                        )
                    head_ids[id(p)] = obj
                    params.append(p)
            heads.append(params)
    if trunk_module is not None:
        trunk_named = _trainable(find_module(root, trunk_module, "trunk_module"))
        if not trunk_named:
            raise ValueError(f"trunk_module {trunk_module!r} has no trainable parameter")
        clash = [n for n, p in trunk_named if id(p) in head_ids]
        if clash:
            raise ValueError(
                f"trunk_module {trunk_module!r} holds parameters of the head of objective "
                f"{head_ids[id(dict(trunk_named)[clash[0]])]!r} ({clash[0]}); a parameter is "
                "shared or belongs to one objective"
            )
    else:
        trunk_named = [(n, p) for n, p in everything if id(p) not in head_ids]
    if heads is not None:
        covered = head_ids.keys() | {id(p) for _, p in trunk_named}
        orphans = [n for n, p in everything if id(p) not in covered]
        if orphans:
            raise ValueError(
                f"{len(orphans)} trainable parameter(s) are neither in trunk_module "
                f"{trunk_module!r} nor in a head and would get no gradient, e.g. {orphans[:3]}; "
                "freeze them (requires_grad=False) or widen trunk_module"
            )
    return ObjectiveLayout(
        trunk=[p for _, p in trunk_named], heads=heads, trunk_names=[n for n, _ in trunk_named]
    )


def unreached_by_shared(
    shared: Tensor, losses: Sequence[Tensor], params: Sequence[Tensor], names: Sequence[str]
) -> list[str]:
    """Names of the parameters that the losses reach but the shared tensor does not: they lie
    after it (task heads), where a combiner that only backpropagates the shared tensor's
    gradient (PAMA) leaves them untrained. Two extra backward passes: call it once."""
    total = torch.stack([loss.reshape(()) for loss in losses]).sum()
    by_loss = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
    by_shared = torch.autograd.grad(
        shared, params, grad_outputs=torch.ones_like(shared), retain_graph=True, allow_unused=True
    )
    return [
        n for n, a, b in zip(names, by_loss, by_shared, strict=True) if a is not None and b is None
    ]
