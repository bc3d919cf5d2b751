r"""``transformers.Trainer`` for models with several losses: one combiner picks the update.

A multi-task model (one encoder, a head per task), a classifier with an auxiliary loss, an LM
loss beside a regulariser: the model returns its losses under ``outputs["losses"]`` (a dict
``name -> scalar`` or a tuple), and :class:`MultiObjectiveTrainer` replaces the Trainer's
``loss.backward()`` by :func:`paretoopt.combine_and_backward`::

    args = MultiObjectiveTrainingArguments("out", combiner="mgda_ub",
                                           head_modules={"sentiment": "head_a", "topic": "head_b"})
    MultiObjectiveTrainer(model, args, train_dataset=ds).train()

Everything else is the Trainer's own: callbacks, evaluation, checkpoints and exact resume,
``report_to``, mixed precision, ``accelerate launch``. What each combiner means on such a model
and the choices made (gradient accumulation, DDP, fp16) are in docs/hf_trainer.md; in short:

* the combiner decides the gradient of the *trunk* (``trunk_module``, by default every
  trainable parameter outside the heads), the head of objective ``i`` gets the gradient of
  ``L_i`` alone (:func:`paretoopt.combine_and_backward`);
* PAMA and MGDA-UB work on a shared tensor ``z`` (``shared_module``'s output through a
  forward hook, by default the model's last hidden states); exact MGDA on the trunk's
  parameters, all-reduced across processes before its solve (``DistributedMGDA``);
* a torchjd aggregator (``combiner="upgrad"``, ``"cagrad"``, ``"nashmtl"``, ...: the zoo of
  :mod:`paretoopt.zoo`) works on the shared tensor like MGDA-UB, or with
  ``combiner_kwargs={"mode": "params"}`` on the trunk like exact MGDA; a stateful one is saved
  in each checkpoint and restored on resume;
* gradient accumulation combines each micro-batch on its own, then sums, as the Trainer does
  with one loss.
"""

from __future__ import annotations

import inspect
import math
import os
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_pt_utils import find_batch_size

from paretoopt import (
    PAMA,
    Combiner,
    LinearScalarization,
    combine_and_backward,
)

from ..faults import set_collective_timeout, stop_together
from .multi_objective_args import (
    ComputeLosses,
    MultiObjectiveTrainingArguments,
    _accumulation_split,
    _arg,
    _refuse_sharding,
    check_weight_count,
    combiner_from_args,
    no_shared_message,
)
from .multi_objective_logs import accumulate, global_means, objective_values
from .objectives import (
    ObjectiveLayout,
    SharedCapture,
    find_module,
    named_losses,
    resolve_layout,
    unreached_by_shared,
)
from .state import COMBINER_FILE, combiner_state, restore_combiner_state

__all__ = ["MultiObjectiveTrainer", "MultiObjectiveTrainingArguments"]


class MultiObjectiveTrainer(Trainer):
    """A ``transformers.Trainer`` whose step combines several losses with a paretoopt combiner.

    Args:
        model, args, **kwargs: as ``transformers.Trainer`` (``args`` preferably a
            :class:`MultiObjectiveTrainingArguments`).
        combiner: a :class:`paretoopt.Combiner` object; overrides ``args.combiner``.
        compute_losses: optional ``compute_losses(model, inputs) -> dict | list`` of scalar
            losses, used instead of the model output's ``losses``; it may take a
            ``num_items_in_batch`` keyword (then its losses count as normalised over the whole
            accumulated batch, as the Trainer's ``compute_loss_func``).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        *,
        combiner: Combiner | None = None,
        compute_losses: ComputeLosses | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "MultiObjectiveTrainer computes one loss per objective: pass "
                "compute_losses=(model, inputs) -> dict of losses instead of compute_loss_func"
            )
        if combiner is not None and not isinstance(combiner, Combiner):
            raise TypeError(f"combiner must be a paretoopt Combiner, got {type(combiner).__name__}")
        if args is None:
            args = MultiObjectiveTrainingArguments(output_dir="trainer_output")
        _refuse_sharding(args)
        super().__init__(model, args, **kwargs)
        _refuse_sharding(args, self.accelerator.distributed_type)
        # Also on a process group started before this trainer (ddp_timeout applies at its start).
        set_collective_timeout(self.args.ddp_timeout)
        self.combiner = combiner if combiner is not None else self._combiner_from_args()
        self.compute_losses = compute_losses
        self._losses_accept_items = compute_losses is not None and (
            "num_items_in_batch" in inspect.signature(compute_losses).parameters
        )
        self._layout: ObjectiveLayout | None = None
        self._names: list[str] | None = None
        self._capture: SharedCapture | None = None
        self._cached_root: weakref.ref[nn.Module] | None = None
        # Sums and counts per key since the last log (training: one count a step; evaluation:
        # one count a sample, so that eval_loss/<name> is per sample as the Trainer's).
        self._train_sums: dict[str, float] = {}
        self._train_counts: dict[str, float] = {}
        self._eval_sums: dict[str, float] = {}
        self._eval_counts: dict[str, float] = {}
        self._check_before_training()

    # ---- set-up -----------------------------------------------------------------------

    def _check_before_training(self) -> None:
        """What can be checked before the first forward: the declared objectives against the
        combiner's weights, and that every named module exists. The losses themselves (their
        names, shapes and values) and whether the shared module runs are known only from the
        first forward pass; they are checked there, before any update."""
        objectives = _arg(self.args, "objectives")
        if objectives is not None:
            check_weight_count(self.combiner, [str(o) for o in objectives])
        if self.model is None:
            return
        root = self._root(self.model)
        if hasattr(root, "get_submodule"):
            shared = _arg(self.args, "shared_module")
            if shared is not None and self._needs_shared:
                find_module(root, shared, "shared_module")
            trunk = _arg(self.args, "trunk_module")
            if trunk is not None:
                find_module(root, trunk, "trunk_module")
            for obj, spec in (_arg(self.args, "head_modules") or {}).items():
                for mod_name in [spec] if isinstance(spec, str) else list(spec):
                    find_module(root, mod_name, f"head module of objective {obj!r}")

    def _combiner_from_args(self) -> Combiner:
        return combiner_from_args(self.args)

    @property
    def _needs_shared(self) -> bool:
        return self.combiner.requires == "shared"

    def _root(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model)

    def _forget_other_model(self, model: nn.Module) -> None:
        """Drop the hook, layout and names cached for another model: ``train()`` with
        ``model_init`` (as ``hyperparameter_search`` does) builds a new one each time."""
        root = self._root(model)
        cached = self._cached_root() if self._cached_root is not None else None
        if cached is root:
            return
        if self._capture is not None:
            self._capture.remove()
        self._capture, self._layout, self._names = None, None, None
        self._cached_root = weakref.ref(root)

    def _arm_capture(self, model: nn.Module) -> SharedCapture | None:
        if not self._needs_shared:
            return None
        if self._capture is None:
            name = _arg(self.args, "shared_module")
            root = self._root(model)
            if name is None:  # the model's own output, for its last hidden states
                self._capture = SharedCapture(root, type(root).__name__, raw=True)
            else:
                self._capture = SharedCapture(find_module(root, name, "shared_module"), name)
        return self._capture.armed()

    # ---- forward: named losses and the shared tensor ----------------------------------

    def _forward(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any, training: bool
    ) -> tuple[list[str], list[Tensor], Tensor | None, Any, bool]:
        """Run the model once; return names, losses, shared tensor, outputs and whether the
        losses are already normalised over the accumulated batch (``num_items_in_batch``)."""
        capture = self._arm_capture(model) if training else None
        try:
            return self._forward_captured(model, inputs, num_items_in_batch, training, capture)
        finally:
            if capture is not None:
                capture.release()  # the shared tensor is taken: let the rest of the output go

    def _forward_captured(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: Any,
        training: bool,
        capture: SharedCapture | None,
    ) -> tuple[list[str], list[Tensor], Tensor | None, Any, bool]:
        key = _arg(self.args, "losses_key")
        want_hidden = training and self._needs_shared and _arg(self.args, "shared_module") is None
        try:
            if self.compute_losses is not None:
                extra = {}
                if self._losses_accept_items and num_items_in_batch is not None:
                    extra["num_items_in_batch"] = num_items_in_batch
                raw, outputs = self.compute_losses(model, inputs, **extra), None
                source, scaled = "compute_losses(model, inputs)", bool(extra)
            else:
                kwargs = dict(inputs)
                scaled = bool(
                    getattr(self, "model_accepts_loss_kwargs", False)
                    and num_items_in_batch is not None
                )
                if scaled:
                    kwargs["num_items_in_batch"] = num_items_in_batch
                if want_hidden and self._forward_takes("output_hidden_states"):
                    kwargs.setdefault("output_hidden_states", True)
                outputs = model(**kwargs)
                if not isinstance(outputs, Mapping) or outputs.get(key) is None:
                    keys = list(outputs.keys()) if isinstance(outputs, Mapping) else []
                    raise ValueError(
                        f"the model output has no {key!r} (its keys: {keys}); return the "
                        f"objectives' losses as outputs[{key!r}] = {{name: scalar loss}}, or "
                        "pass compute_losses=(model, inputs) -> dict to MultiObjectiveTrainer"
                    )
                raw, source = outputs[key], f"outputs[{key!r}]"
        finally:
            if capture is not None:
                capture.__exit__()  # disarmed before any recomputation in backward
        names, losses = named_losses(raw, _arg(self.args, "objectives"), source)
        if len(names) < 2:
            raise ValueError(
                f"{source} gave {len(names)} loss ({names}); a multi-objective combiner needs "
                "at least two losses (with one, use transformers.Trainer)"
            )
        if self._names is None:
            check_weight_count(self.combiner, names)
        if self._names is not None and names != self._names:
            raise ValueError(
                f"{source} gave objectives {names}, but earlier steps gave {self._names}; "
                "every batch must yield the same losses (set objectives= to fix the order)"
            )
        self._names = names
        if scaled and self.args.average_tokens_across_devices and self.args.world_size > 1:
            # As Trainer.compute_loss: num_items_in_batch counted the tokens of every process.
            losses = [loss * self.accelerator.num_processes for loss in losses]
        shared = None
        if training and self._needs_shared:
            shared = capture.tensor if capture is not None else None
            if shared is None:
                captured = self._capture.output if self._capture is not None else None
                raise ValueError(no_shared_message(
                    type(self.combiner).__name__, _arg(self.args, "shared_module"),
                    self._root(model), captured if captured is not None else outputs,
                ))  # fmt: skip
        return names, losses, shared, outputs, scaled

    def _forward_takes(self, name: str) -> bool:
        root = self._root(self.model)
        if hasattr(root, "get_base_model"):  # PEFT passes its keyword arguments through
            root = root.get_base_model()
        return name in inspect.signature(root.forward).parameters

    def train(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        """``Trainer.train``; under several processes, one process failing (an error, a kill, a
        hang past ``ddp_timeout``) stops every process, each saying why and from which
        checkpoint to restart (:func:`paretoopt.integrations.faults.stop_together`)."""
        with stop_together(
            lambda: f" at step {self.state.global_step + 1}",
            self._resume_advice,
            self.args.ddp_timeout,
        ):
            return super().train(*args, **kwargs)

    def _resume_advice(self) -> str:
        from transformers.trainer_utils import get_last_checkpoint

        out = self.args.output_dir
        latest = get_last_checkpoint(out) if out and os.path.isdir(out) else None
        if latest is None:
            return f"No checkpoint was written in {out} yet: a restart begins at step 1."
        return (
            f"The last checkpoint is {latest}: once the cause is fixed, restart every process "
            "with trainer.train(resume_from_checkpoint=True) to continue from it."
        )

    # ---- the step ---------------------------------------------------------------------

    def _check_setting(self) -> None:
        if self.args.n_gpu > 1:
            raise RuntimeError(
                "MultiObjectiveTrainer does not support torch.nn.DataParallel (n_gpu > 1): "
                "launch one process per GPU (accelerate launch / torchrun) for DDP"
            )

    def _layout_for(self, model: nn.Module, names: list[str]) -> ObjectiveLayout:
        if self._layout is None:
            self._layout = resolve_layout(
                self._root(model),
                names,
                _arg(self.args, "head_modules"),
                _arg(self.args, "trunk_module"),
            )
        return self._layout

    def _check_pama_reaches(self, layout: ObjectiveLayout, losses: list, shared: Tensor) -> None:
        # PAMA backpropagates only through the shared tensor: a trunk parameter after it
        # (an unnamed head, a pooler) would silently never train. Checked once.
        lost = unreached_by_shared(shared, losses, layout.trunk, layout.trunk_names)
        if lost:
            raise ValueError(
                f"{len(lost)} trainable parameter(s) lie after the shared tensor, where "
                f"{type(self.combiner).__name__} sends no gradient, e.g. {lost[:3]}: name the "
                "task heads in head_modules, or pick a later shared_module"
            )

    def _backward_through_accelerator(self, loss_scale: float) -> Callable[[Tensor], None]:
        def backward(t: Tensor) -> None:
            # combine_and_backward scaled the update's backward passes by the grad scaler's
            # scale already; accelerate multiplies once more.
            self.accelerator.backward(t / loss_scale if loss_scale != 1.0 else t)

        return backward

    def _accumulation_steps(self) -> int:
        # The last window of an epoch can be shorter; older transformers do not track it.
        current = getattr(self, "current_gradient_accumulation_steps", None)
        return int(current or self.args.gradient_accumulation_steps)

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor | Any],
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor:
        """The Trainer's step with ``loss.backward()`` replaced by the combination."""
        self._check_setting()
        self._forget_other_model(model)
        cp_context, inputs = self._prepare_context_parallel_inputs(model, inputs)
        with cp_context():
            model.train()
            if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
                self.optimizer.train()
            inputs = self._prepare_inputs(inputs)
            with self.compute_loss_context_manager():
                names, losses, shared, _, scaled = self._forward(
                    model, inputs, num_items_in_batch, training=True
                )
            del inputs
            first = self._layout is None
            layout = self._layout_for(model, names)
            backprop_from_shared = isinstance(self.combiner, PAMA) or (
                getattr(self.combiner, "vector_update", False)
            )
            if first and backprop_from_shared and shared is not None:
                self._check_pama_reaches(layout, losses, shared)
            # transformers >= 5.2x lets a subclass declare it; older releases have no attribute.
            declared = getattr(self, "loss_is_scaled_for_ga", None)
            if declared is not None:
                scaled = declared
            steps = self._accumulation_steps()
            scaler = getattr(self.accelerator, "scaler", None)
            if scaler is None:
                self._check_finite(names, losses)
            loss_scale = float(scaler.get_scale()) if scaler is not None else 1.0
            degree = getattr(self.combiner, "loss_scale_degree", 1)
            seen, grad_scale, per_step = _accumulation_split(losses, steps, scaled, degree)
            try:
                result = combine_and_backward(
                    seen,
                    self.combiner,
                    shared=shared,
                    params=layout.trunk,
                    heads=layout.heads,
                    backward=self._backward_through_accelerator(loss_scale),
                    grad_scale=loss_scale * grad_scale,
                )
            except ValueError as exc:
                if scaler is None or "finite" not in str(exc):
                    raise
                # fp16 overflow inside the combination: give the scaler non-finite gradients,
                # so that it skips this step and lowers its scale, as it would for one loss.
                self._poison_gradients(layout)
                return torch.tensor(float("nan"), device=self.args.device)
            self._record_train(names, losses, result)
            # As Trainer.training_step returns it (divided for accumulation, never by the grad
            # scaler's scale), and as a user reads it: sum_i w_i L_i with the step's weights
            # (on the simplex for PAMA and MGDA, whatever the normalisation).
            if degree == 1:  # the combined loss's value is that sum already
                return result.loss.detach().to(self.args.device)
            n = len(seen)
            weights = [1.0 / n] * n if result.weights is None else result.weights.tolist()
            value = sum(float(weights[i]) * seen[i].detach() for i in range(n))
            return (value / per_step).to(self.args.device)

    def _check_finite(self, names: list[str], losses: list[Tensor]) -> None:
        """A NaN or infinite loss, named, before the combination writes any gradient. (Under
        a grad scaler a non-finite loss is an fp16 overflow: that step is skipped instead.)"""
        values = torch.stack([loss.detach().float() for loss in losses])
        if bool(torch.isfinite(values).all()):
            return
        bad = [(n, float(v)) for n, v in zip(names, values.tolist(), strict=True)]
        bad = [(n, v) for n, v in bad if not math.isfinite(v)]
        listed = ", ".join(f"loss {n!r} (objective {names.index(n)}) is {v:g}" for n, v in bad)
        raise ValueError(
            f"{listed} at step {self.state.global_step + 1}; no update was made. A loss is "
            "non-finite for this batch (check its inputs and labels, or lower the learning rate)"
        )

    def _poison_gradients(self, layout: ObjectiveLayout) -> None:
        params = layout.trunk + [p for h in layout.heads or [] for p in h]
        total = sum((p * float("nan")).sum() for p in params)
        self.accelerator.backward(total)

    # ---- checkpoints: a stateful combiner's state beside the optimizer's --------------

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        state = combiner_state(self.combiner)
        if state is not None and self.args.should_save:
            torch.save(state, os.path.join(output_dir, COMBINER_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            restore_combiner_state(self.combiner, Path(checkpoint))

    # ---- losses for evaluation --------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """One number for evaluation (and ``load_best_model_at_end``): the sum of the losses,
        weighted for a :class:`~paretoopt.LinearScalarization` with explicit weights.
        Per-objective losses are logged beside it as ``eval_loss/<name>``."""
        names, losses, _, outputs, _ = self._forward(model, inputs, num_items_in_batch, False)
        weights = getattr(self.combiner, "weights", None)
        if not isinstance(self.combiner, LinearScalarization) or weights is None:
            weights = [1.0] * len(losses)
        total = sum(float(w) * loss for w, loss in zip(weights, losses, strict=True))
        if not model.training:
            # Weighted by the batch's size, as the Trainer's eval_loss (a short last batch
            # counts for its samples only).
            n = float(find_batch_size(inputs) or 1)
            for name, loss in zip(names, losses, strict=True):
                self._eval_sums[name] = self._eval_sums.get(name, 0.0) + n * float(loss.detach())
                self._eval_counts[name] = self._eval_counts.get(name, 0.0) + n
        if not return_outputs:
            return total
        key = _arg(self.args, "losses_key")
        rest = {}
        if isinstance(outputs, Mapping):  # predictions only: no losses dict, no empty entries
            rest = {k: v for k, v in outputs.items() if k != key and v is not None}
        return total, rest

    def evaluation_loop(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self._eval_sums, self._eval_counts = {}, {}
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        for name, value in self._means(self._eval_sums, self._eval_counts).items():
            output.metrics[f"{prefix}_loss/{name}"] = value
        self._eval_sums, self._eval_counts = {}, {}
        return output

    # ---- logging ----------------------------------------------------------------------

    def _record_train(self, names: list[str], losses: list[Tensor], result: Any) -> None:
        prefix = getattr(self.combiner, "name", "combiner")
        stats = result.stats if _arg(self.args, "log_combiner_stats") else None
        values = objective_values(names, losses, result.weights, stats, prefix)
        accumulate(self._train_sums, self._train_counts, values)

    def _means(self, sums: dict[str, float], counts: dict[str, float]) -> dict[str, float]:
        """Means over every process (:func:`.multi_objective_logs.global_means`)."""
        return global_means(sums, counts, self.args.device)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the per-objective losses, weights and combiner stats, averaged over the steps
        since the last log, to the Trainer's training logs (and so to every report_to)."""
        if "loss" in logs:  # on every process, with or without steps of its own: a collective
            logs = {**logs, **self._means(self._train_sums, self._train_counts)}
            self._train_sums, self._train_counts = {}, {}
        super().log(logs, start_time)
