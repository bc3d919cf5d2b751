"""MultiObjectiveTrainer: a transformers.Trainer drop-in for a model with several losses.

A tiny two-task BERT (built from a config, saved, loaded through ``from_pretrained``) trained
offline for a few steps: equality with the plain Trainer under a fixed weighting, every
combiner lowering both losses, gradient accumulation semantics, resume, PEFT, gradient
checkpointing, bf16 autocast, logging and the first-step errors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from mo_fixtures import build_two_task, load_two_task, two_task_data
from paretoopt.integrations.hf import (
    MultiObjectiveTrainer,
    MultiObjectiveTrainingArguments,
)
from transformers import Trainer, TrainerCallback, TrainingArguments

from paretoopt import MGDA, combine_and_backward

HEADS = {"a": "head_a", "b": "head_b"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_two_task(tmp_path_factory.mktemp("two_task"))


@pytest.fixture(scope="module")
def dropout_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_two_task(tmp_path_factory.mktemp("two_task_dropout"), dropout=0.1)


def _args(out: Path, cls=MultiObjectiveTrainingArguments, **kw):
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    base.update(kw)
    return cls(**base)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class GradRecorder(TrainerCallback):
    """Keeps a copy of every gradient just before each optimizer step."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []
        self.model = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(
            {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        )


@pytest.mark.parametrize(
    "heads", [pytest.param(None, marks=pytest.mark.slow), HEADS], ids=["no_heads", "heads"]
)
def test_linear_equals_plain_trainer_bit_for_bit(dropout_dir: Path, tmp_path: Path, heads) -> None:
    """LinearScalarization([1, 1]) is the plain Trainer on losses["a"] + losses["b"], with
    dropout, AdamW and gradient accumulation: the same parameters, bit for bit."""
    data = two_task_data(16)
    common = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3)
    plain_model = load_two_task(dropout_dir)
    Trainer(
        plain_model, _args(tmp_path / "p", TrainingArguments, **common), train_dataset=data
    ).train()
    model = load_two_task(dropout_dir)
    args = _args(
        tmp_path / "m", combiner="linear", combiner_kwargs={"weights": [1.0, 1.0]},
        head_modules=heads, **common,
    )  # fmt: skip
    MultiObjectiveTrainer(model, args, train_dataset=data).train()
    want, got = _state(plain_model), _state(model)
    assert any(not torch.equal(want[k], _state(load_two_task(dropout_dir))[k]) for k in want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize(
    "combiner", [pytest.param("linear", marks=pytest.mark.slow), "pama", "mgda_ub", "mgda"]
)
def test_each_combiner_lowers_both_losses_and_logs_them(
    model_dir: Path, tmp_path: Path, combiner: str
) -> None:
    data = two_task_data(32)
    model = load_two_task(model_dir)
    kwargs = {"normalization": "l2"} if combiner.startswith("mgda") else {}
    args = _args(
        tmp_path, combiner=combiner, combiner_kwargs=kwargs, head_modules=HEADS, max_steps=40,
        per_device_train_batch_size=8, per_device_eval_batch_size=32, learning_rate=5e-2,
        logging_steps=8,
    )  # fmt: skip
    trainer = MultiObjectiveTrainer(model, args, train_dataset=data, eval_dataset=data)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    for name in ("a", "b"):
        assert after[f"eval_loss/{name}"] < 0.9 * before[f"eval_loss/{name}"], (before, after)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 5
    for h in logged:
        for name in ("a", "b"):
            assert h[f"loss/{name}"] > 0
            assert 0 <= h[f"weight/{name}"] <= 1.0 + 1e-9
    if combiner == "pama":
        assert 0 <= logged[-1]["pama/veto_rate"] <= 1
    if combiner.startswith("mgda"):
        assert logged[-1]["mgda/kkt_residual"] < 1e-6


def _one_step_grads(model_dir: Path, tmp_path: Path, combiner: str, **kw):
    """Gradients of the first optimizer step (SGD, no clipping) on the first 4 samples."""
    data = two_task_data(4)
    rec = GradRecorder()
    args = _args(
        tmp_path, combiner=combiner, head_modules=HEADS, max_steps=1, max_grad_norm=0.0,
        optim="sgd", train_sampling_strategy="sequential", **kw,
    )  # fmt: skip
    MultiObjectiveTrainer(
        load_two_task(model_dir), args, train_dataset=data, callbacks=[rec]
    ).train()
    return rec.grads[0]


def _manual_grads(model_dir: Path, combiner, halves: list[list[int]]):
    """Each half combined on its own by combine_and_backward, gradients averaged."""
    data = two_task_data(4).with_format("torch")
    model = load_two_task(model_dir)
    heads = [list(model.head_a.parameters()), list(model.head_b.parameters())]
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head_")]
    for rows in halves:
        out = model(**data[rows])
        losses = [out["losses"][k] / len(halves) for k in ("a", "b")]
        combine_and_backward(losses, combiner, params=trunk, heads=heads)
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "combiner", [pytest.param("linear", marks=pytest.mark.slow), "pama", "mgda"]
)
def test_gradient_accumulation_combines_each_micro_batch(
    model_dir: Path, tmp_path: Path, combiner: str
) -> None:
    """Chosen semantics: each micro-batch is combined on its own and the gradients summed
    (divided by the accumulation steps). For a fixed weighting and for PAMA (element-wise and
    positively homogeneous) that equals one batch of 4; for MGDA it equals the average of two
    MGDA steps on the halves, which is not MGDA on the batch of 4."""
    whole = _one_step_grads(model_dir, tmp_path / "w", combiner)
    accumulated = _one_step_grads(
        model_dir, tmp_path / "g", combiner, per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )  # fmt: skip
    assert whole.keys() == accumulated.keys()
    if combiner in ("linear", "pama"):
        for k in whole:
            torch.testing.assert_close(accumulated[k], whole[k], rtol=1e-5, atol=1e-7)
        return
    halves = _manual_grads(model_dir, MGDA(mode="params"), [[0, 1], [2, 3]])
    for k in whole:
        torch.testing.assert_close(accumulated[k], halves[k], rtol=1e-5, atol=1e-7)
    gap = max(float((accumulated[k] - whole[k]).abs().max()) for k in whole)
    assert gap > 1e-4, "MGDA per micro-batch should differ from MGDA on the whole batch"


def test_resume_from_checkpoint_is_exact(model_dir: Path, tmp_path: Path) -> None:
    data = two_task_data(16)
    common = dict(
        combiner="mgda_ub", head_modules=HEADS, max_steps=4, per_device_train_batch_size=2,
        gradient_accumulation_steps=2, save_strategy="steps", save_steps=2,
    )  # fmt: skip
    full = load_two_task(model_dir)
    MultiObjectiveTrainer(full, _args(tmp_path / "full", **common), train_dataset=data).train()
    resumed = load_two_task(model_dir)  # fresh weights: everything must come from the checkpoint
    args = _args(tmp_path / "again", **common)
    trainer = MultiObjectiveTrainer(resumed, args, train_dataset=data)
    trainer.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert trainer.state.global_step == 4
    want, got = _state(full), _state(resumed)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def _train_once(model_dir: Path, tmp_path: Path, compute_losses=None, **kw) -> None:
    args = _args(tmp_path, max_steps=1, **kw)
    trainer = MultiObjectiveTrainer(
        load_two_task(model_dir), args, train_dataset=two_task_data(8),
        compute_losses=compute_losses,
    )  # fmt: skip
    trainer.train()


def test_bad_input_fails_at_the_first_step_with_a_clear_error(
    model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"objectives \['a', 'b', 'c'\]; missing \['c'\]"):
        _train_once(model_dir, tmp_path, combiner="linear", objectives=["a", "b", "c"])

    def per_sample(model, inputs):
        out = model(**inputs)
        pred = out["pred_a"]
        return {"a": (pred - inputs["labels_a"]) ** 2, "b": out["losses"]["b"]}

    with pytest.raises(ValueError, match=r"loss 'a' .* has shape \(4,\); each objective needs"):
        _train_once(model_dir, tmp_path, per_sample, combiner="linear")

    def no_hidden(model, inputs):
        return model(**inputs)["losses"]

    with pytest.raises(ValueError, match=r"PAMA needs a shared tensor .* none was found"):
        _train_once(model_dir, tmp_path, no_hidden, combiner="pama", head_modules=HEADS)
    with pytest.raises(ValueError, match="shared_module 'encoderr' is not a module"):
        _train_once(model_dir, tmp_path, combiner="pama", shared_module="encoderr")
    # PAMA moves only what lies before the shared tensor: unnamed heads would never train
    with pytest.raises(ValueError, match=r"lie after the shared tensor.*head_a\.weight"):
        _train_once(model_dir, tmp_path, combiner="pama")
    with pytest.raises(ValueError, match=r"head_modules names objectives \['c'\]"):
        _train_once(model_dir, tmp_path, combiner="mgda", head_modules={"c": "head_a"})
    with pytest.raises(ValueError, match="no 'scores'"):
        _train_once(model_dir, tmp_path, combiner="linear", losses_key="scores")
    with pytest.raises(ValueError, match="unknown combiner"):
        MultiObjectiveTrainingArguments(output_dir=str(tmp_path), combiner="pareto")


def test_shared_module_hook_and_gradient_checkpointing(model_dir: Path, tmp_path: Path) -> None:
    """The shared tensor taken by a forward hook on ``bert.encoder`` is the model's last hidden
    state, so MGDA-UB takes the same step; with activation checkpointing (which reruns the
    encoder's forward during backward) the step is the same again."""
    kw = dict(combiner="mgda_ub")
    default = _one_step_grads(model_dir, tmp_path / "d", **kw)
    hooked = _one_step_grads(model_dir, tmp_path / "h", shared_module="bert.encoder", **kw)
    checkpointed = _one_step_grads(
        model_dir, tmp_path / "c", shared_module="encoder", gradient_checkpointing=True, **kw
    )
    for k in default:
        torch.testing.assert_close(hooked[k], default[k], rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(checkpointed[k], default[k], rtol=1e-5, atol=1e-7)


def test_bf16_autocast_on_cpu(model_dir: Path, tmp_path: Path) -> None:
    data = two_task_data(16)
    model = load_two_task(model_dir)
    start = _state(model)
    args = _args(tmp_path, combiner="pama", head_modules=HEADS, bf16=True, max_steps=3)
    trainer = MultiObjectiveTrainer(model, args, train_dataset=data)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss/a" in h]
    assert len(logged) == 3 and all(h["loss/b"] > 0 for h in logged)
    end = _state(model)
    assert all(torch.isfinite(v).all() for v in end.values())
    assert not torch.equal(end["bert.embeddings.word_embeddings.weight"],
                           start["bert.embeddings.word_embeddings.weight"])  # fmt: skip


@pytest.mark.parametrize("combiner", ["mgda", "pama"])
def test_peft_lora_with_heads_in_modules_to_save(
    model_dir: Path, tmp_path: Path, combiner: str
) -> None:
    """LoRA on the attention projections, both heads trained in full: exact MGDA over the LoRA
    weights (the trunk), PAMA on the last hidden states, head names resolved through PEFT's
    wrapper, base weights frozen."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        load_two_task(model_dir),
        LoraConfig(r=2, target_modules=["query", "value"], modules_to_save=["head_a", "head_b"]),
    )
    start = _state(model)
    args = _args(
        tmp_path, combiner=combiner, head_modules=HEADS, max_steps=3, gradient_checkpointing=True
    )
    trainer = MultiObjectiveTrainer(model, args, train_dataset=two_task_data(16))
    trainer.train()
    end = _state(model)
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    assert any("lora_B" in k for k in changed)
    assert any("modules_to_save.default.head_a" in k or "head_a.modules_to_save" in k
               for k in changed), changed  # fmt: skip
    assert not any("query.base_layer.weight" in k for k in changed)
    assert all("lora" in name for name in trainer._layout.trunk_names)


def test_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/hf_trainer.md's example, as written: both tasks improve on held-in data."""
    import re

    doc = Path(__file__).resolve().parents[1] / "docs" / "hf_trainer.md"
    match = re.search(r"## A complete example\n.*?```python\n(.*?)```", doc.read_text(), re.S)
    assert match, "docs/hf_trainer.md lost its example"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(match.group(1), str(doc), "exec"), namespace)
    trainer = namespace["trainer"]
    history = trainer.state.log_history  # type: ignore[attr-defined]
    evals = [h for h in history if "eval_loss/score" in h]
    assert len(evals) >= 2
    assert evals[-1]["eval_loss/score"] < evals[0]["eval_loss/score"]
    assert evals[-1]["eval_loss/topic"] < evals[0]["eval_loss/topic"]
    assert any("mgda/kkt_residual" in h for h in history)


def _with_grad_scaler(model_dir: Path, tmp_path: Path, init_scale: float | None, **kw):
    """Train with a CPU GradScaler put where accelerate keeps the fp16 one (the CPU build has
    no fp16 scaler of its own), so that the scaled path runs without a GPU."""
    data = two_task_data(8)
    model = load_two_task(model_dir)
    compute_losses = kw.pop("compute_losses", None)
    args = _args(tmp_path, head_modules=HEADS, optim="sgd", train_sampling_strategy="sequential",
                 per_device_train_batch_size=4, **kw)  # fmt: skip
    trainer = MultiObjectiveTrainer(model, args, train_dataset=data, compute_losses=compute_losses)
    if init_scale is not None:
        trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    trainer.train()
    return _state(model), trainer


def _large_losses(model, inputs):
    """Objective "a" times 2**20: its gradients (~1e5 and more) overflow float32 at a loss
    scale of 2**127 whatever the library versions, so every combiner's update does."""
    losses = model(**inputs)["losses"]
    return {"a": losses["a"] * 2.0**20, "b": losses["b"]}


SCALER_COMBINERS = ["mgda_ub", "mgda", "pama", "linear"]


@pytest.mark.parametrize("combiner", SCALER_COMBINERS)
def test_grad_scaler_scales_every_objective_and_skips_overflowing_steps(
    model_dir: Path, tmp_path: Path, combiner: str
) -> None:
    # no clipping: accelerate unscales before clipping only under its own fp16 setting
    kw = dict(combiner=combiner, max_steps=2, max_grad_norm=0.0)
    if combiner.startswith("mgda"):
        kw["combiner_kwargs"] = {"normalization": "l2"}
    plain, _ = _with_grad_scaler(model_dir, tmp_path / "p", None, **kw)
    scaled, trainer = _with_grad_scaler(model_dir, tmp_path / "s", 2.0**12, **kw)
    for k in plain:  # the combination does not depend on the loss scale
        torch.testing.assert_close(scaled[k], plain[k], rtol=1e-5, atol=1e-7)
    assert trainer.accelerator.scaler.get_scale() == 2.0**12
    # Gradients that overflow float32 once scaled: the step is skipped and the scale halved,
    # as the scaler does for one loss, instead of an error or an applied step.
    init = _state(load_two_task(model_dir))
    over = {**kw, "max_steps": 1, "compute_losses": _large_losses}
    if combiner in ("pama", "mgda_ub"):  # compute_losses: the shared tensor from a module
        over["shared_module"] = "bert"
    skipped, trainer = _with_grad_scaler(model_dir, tmp_path / "o", 2.0**127, **over)
    for k in init:
        assert torch.equal(skipped[k], init[k]), k
    assert trainer.accelerator.scaler.get_scale() == 2.0**126


@pytest.mark.parametrize("combiner", ["mgda", "mgda_ub"])
def test_a_huge_loss_scale_without_overflow_applies_the_exact_step(
    model_dir: Path, tmp_path: Path, combiner: str
) -> None:
    """At a scale of 2**127 this model's scaled gradients stay below float32's maximum (the
    largest is about 2.5e38): nothing overflowed, so the scaler must apply the step, and the
    unscaled step is the plain one (scaling by a power of two is exact). transformers before
    5.2x computed the logged gradient norm with clip_grad_norm_(max_norm=inf) on the scaled
    gradients: the norm overflowed, inf / inf made the clip coefficient NaN and the gradients
    NaN, and the scaler skipped a valid step. That, not an overflowing gradient, is what the
    former version of the test above saw on those releases."""
    kw = dict(combiner=combiner, combiner_kwargs={"normalization": "l2"}, max_steps=1,
              max_grad_norm=0.0)  # fmt: skip
    plain, _ = _with_grad_scaler(model_dir, tmp_path / "p", None, **kw)
    huge, trainer = _with_grad_scaler(model_dir, tmp_path / "h", 2.0**127, **kw)
    for k in plain:
        torch.testing.assert_close(huge[k], plain[k], rtol=1e-6, atol=1e-9)
    assert trainer.accelerator.scaler.get_scale() == 2.0**127


def test_non_finite_loss_under_a_grad_scaler_skips_the_step(model_dir: Path, tmp_path: Path):
    """Under fp16 a loss can overflow: with a scaler the step is skipped, as for one loss."""

    def overflowing(model, inputs):
        losses = dict(model(**inputs)["losses"])
        losses["a"] = losses["a"] * float("inf")
        return losses

    model = load_two_task(model_dir)
    init = _state(model)
    args = _args(
        tmp_path,
        combiner="pama",
        head_modules=HEADS,
        shared_module="bert",
        max_steps=1,
        max_grad_norm=0.0,
    )
    trainer = MultiObjectiveTrainer(
        model, args, train_dataset=two_task_data(8), compute_losses=overflowing
    )
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    trainer.train()
    assert trainer.accelerator.scaler.get_scale() == 2.0**7
    for k, v in _state(model).items():
        assert torch.equal(v, init[k]), k


def test_arguments_from_the_command_line(tmp_path: Path) -> None:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(MultiObjectiveTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--combiner", "mgda", "--combiner_kwargs",
         '{"normalization": "l2"}', "--head_modules", '{"a": "head_a"}', "--objectives", "a",
         "b", "--use_cpu", "true"]
    )  # fmt: skip
    assert args.combiner_kwargs == {"normalization": "l2"}
    assert args.head_modules == {"a": "head_a"} and args.objectives == ["a", "b"]
    with pytest.raises(ValueError, match="normalization must be one of"):
        MultiObjectiveTrainingArguments(
            output_dir=str(tmp_path), combiner="mgda", combiner_kwargs={"normalization": "x"}
        )


class TokenTwoTask(torch.nn.Module):
    """Token-level two-task model whose losses are sums over valid tokens divided by the
    Trainer's ``num_items_in_batch`` when it takes loss kwargs (``**kwargs``), else by the
    micro-batch's own count."""

    def __init__(self, takes_loss_kwargs: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(24, 8)
        self.trunk = torch.nn.Linear(8, 8)
        self.head_a = torch.nn.Linear(8, 5)
        self.head_b = torch.nn.Linear(8, 1)
        self.accepts_loss_kwargs = takes_loss_kwargs

    def forward(self, input_ids, labels, **kwargs):
        z = torch.tanh(self.trunk(self.emb(input_ids)))
        valid = labels != -100
        count = kwargs.get("num_items_in_batch")
        count = valid.sum() if count is None or not self.accepts_loss_kwargs else count
        ce = torch.nn.functional.cross_entropy(
            self.head_a(z).transpose(1, 2), labels.clamp_min(0), reduction="none"
        )
        sq = (self.head_b(z)[..., 0] - labels.clamp_min(0) / 4.0) ** 2
        losses = {"a": (ce * valid).sum() / count, "b": (sq * valid).sum() / count}
        return {"losses": losses, "last_hidden_state": z}


@pytest.mark.parametrize("combiner", ["linear", "pama"])
def test_num_items_in_batch_makes_unequal_micro_batches_exact(tmp_path: Path, combiner: str):
    """As the Trainer does for one loss: when the model takes loss kwargs, its losses are
    normalised by the valid-token count of the whole accumulated batch, so 2 x 2 micro-batches
    with 9 and 3 valid tokens give the step of one batch of 4. Without it they do not."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 24, (4, 6), generator=g)
    labels = (ids % 5).clone()
    for row, n_valid in enumerate([6, 3, 2, 1]):
        labels[row, n_valid:] = -100
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})

    def grads(takes: bool, batch: int, accumulate: int, out: str):
        rec = GradRecorder()
        args = _args(
            tmp_path / out, combiner=combiner, head_modules=HEADS, max_steps=1, optim="sgd",
            max_grad_norm=0.0, train_sampling_strategy="sequential",
            per_device_train_batch_size=batch, gradient_accumulation_steps=accumulate,
        )  # fmt: skip
        trainer = MultiObjectiveTrainer(
            TokenTwoTask(takes), args, train_dataset=data, callbacks=[rec]
        )
        trainer.train()
        return rec.grads[0]

    whole = grads(True, 4, 1, "w")
    accumulated = grads(True, 2, 2, "g")
    for k in whole:
        torch.testing.assert_close(accumulated[k], whole[k], rtol=1e-5, atol=1e-7)
    per_micro_batch = grads(False, 2, 2, "m")
    gap = max(float((per_micro_batch[k] - whole[k]).abs().max()) for k in whole)
    assert gap > 1e-4, gap


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("combiner", ["pama", "mgda_ub", "mgda"])
def test_fp16_with_the_grad_scaler_on_cuda(model_dir: Path, tmp_path: Path, combiner: str):
    """fp16 autocast with accelerate's own GradScaler: both losses go down, the scaler is the
    one in use, and the weights chosen match an fp32 run's first step to fp16 accuracy."""
    data = two_task_data(32)
    weights = {}
    for precision in ("fp32", "fp16"):
        model = load_two_task(model_dir)
        args = _args(
            tmp_path / precision, combiner=combiner, head_modules=HEADS, max_steps=40,
            per_device_train_batch_size=8, per_device_eval_batch_size=32, learning_rate=5e-2,
            logging_steps=1, use_cpu=False, fp16=precision == "fp16",
        )  # fmt: skip
        trainer = MultiObjectiveTrainer(model, args, train_dataset=data, eval_dataset=data)
        before = trainer.evaluate()
        trainer.train()
        after = trainer.evaluate()
        for name in ("a", "b"):
            assert after[f"eval_loss/{name}"] < 0.9 * before[f"eval_loss/{name}"], (before, after)
        first = next(h for h in trainer.state.log_history if "weight/a" in h)
        weights[precision] = first["weight/a"]
        if precision == "fp16":
            assert trainer.accelerator.scaler is not None
            assert all(torch.isfinite(p).all() for p in model.parameters())
    assert abs(weights["fp16"] - weights["fp32"]) < 0.05, weights


def test_logged_loss_does_not_depend_on_the_grad_scaler(model_dir: Path, tmp_path: Path) -> None:
    kw = dict(combiner="mgda_ub", combiner_kwargs={"normalization": "l2"}, max_steps=2,
              max_grad_norm=0.0)  # fmt: skip
    _, plain = _with_grad_scaler(model_dir, tmp_path / "p", None, **kw)
    _, scaled = _with_grad_scaler(model_dir, tmp_path / "s", 2.0**12, **kw)
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (plain, scaled)]
    assert len(losses[0]) == 2
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_the_captured_model_output_does_not_outlive_the_step(
    model_dir: Path, tmp_path: Path
) -> None:
    args = _args(tmp_path, combiner="pama", head_modules=HEADS, max_steps=1)
    trainer = MultiObjectiveTrainer(load_two_task(model_dir), args, train_dataset=two_task_data(4))
    trainer.train()
    assert trainer._capture is not None and trainer._capture.output is None


@pytest.mark.parametrize("combiner", ["pama", "mgda"])
def test_train_twice_with_model_init(model_dir: Path, tmp_path: Path, combiner: str) -> None:
    """hyperparameter_search calls train() again with a new model from model_init."""
    args = _args(tmp_path, combiner=combiner, head_modules=HEADS, max_steps=2,
                 train_sampling_strategy="sequential")  # fmt: skip
    trainer = MultiObjectiveTrainer(
        args=args, model_init=lambda: load_two_task(model_dir), train_dataset=two_task_data(8)
    )
    trainer.train()
    first = _state(trainer.model)
    trainer.train()
    second = _state(trainer.model)
    init = _state(load_two_task(model_dir))
    for k in init:  # the new model trained, exactly as the first one
        torch.testing.assert_close(second[k], first[k])
    assert not torch.equal(second["bert.embeddings.word_embeddings.weight"],
                           init["bert.embeddings.word_embeddings.weight"])  # fmt: skip


def test_eval_losses_are_per_sample_with_a_short_last_batch(
    model_dir: Path, tmp_path: Path
) -> None:
    args = _args(tmp_path, combiner="pama", head_modules=HEADS, per_device_eval_batch_size=2)
    trainer = MultiObjectiveTrainer(load_two_task(model_dir), args, eval_dataset=two_task_data(5))
    metrics = trainer.evaluate()  # batches of 2, 2 and 1
    total = metrics["eval_loss/a"] + metrics["eval_loss/b"]
    assert total == pytest.approx(metrics["eval_loss"], rel=1e-5)


ACCUMULATION_COMBINERS = [
    ("linear", {}),
    ("pama", {}),
    *[("mgda", {"normalization": n, "rescale": r})
      for n in ("none", "l2", "loss", "loss+") for r in (False, True)],
    *[("mgda_ub", {"normalization": n, "rescale": r})
      for n in ("l2", "loss+") for r in (False, True)],
]  # fmt: skip


@pytest.mark.parametrize(
    ("combiner", "kwargs"),
    ACCUMULATION_COMBINERS,
    ids=[f"{c}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for c, kw in ACCUMULATION_COMBINERS],
)
def test_accumulating_two_identical_micro_batches_is_one_step_on_one(
    model_dir: Path, tmp_path: Path, combiner: str, kwargs: dict
) -> None:
    """SGD, no clipping: gradient accumulation 2 over two copies of one micro-batch must give
    the step of one micro-batch, for every combiner and normalisation, trunk and heads alike.
    A scale-free combination (MGDA with rescale=True and l2 / loss / loss+) undid the
    division by the accumulation steps on the trunk, which then got the sum of the two steps
    while the heads got their average. The logged loss is sum_i w_i L_i, as a user reads it."""
    rows = two_task_data(4).to_dict()
    twice = type(two_task_data(4)).from_dict({k: v + v for k, v in rows.items()})

    def train(data, accumulate: int, out: str):
        model = load_two_task(model_dir)
        args = _args(
            tmp_path / out, combiner=combiner, combiner_kwargs=kwargs, head_modules=HEADS,
            max_steps=1, optim="sgd", max_grad_norm=0.0, train_sampling_strategy="sequential",
            per_device_train_batch_size=4, gradient_accumulation_steps=accumulate,
        )  # fmt: skip
        trainer = MultiObjectiveTrainer(model, args, train_dataset=data)
        trainer.train()
        return _state(model), trainer.state.log_history[0]

    one, log_one = train(two_task_data(4), 1, "one")
    acc, log_acc = train(twice, 2, "acc")
    for k in one:
        torch.testing.assert_close(acc[k], one[k], rtol=1e-5, atol=1e-7, msg=k)
    assert log_acc["loss"] == pytest.approx(log_one["loss"], rel=1e-4)
    losses = [log_one["loss/a"], log_one["loss/b"]]
    # a convex combination of the two losses (PAMA, MGDA) or the fixed weights' sum (uniform)
    assert min(losses) - 1e-3 <= log_one["loss"] <= max(losses) + 1e-3
