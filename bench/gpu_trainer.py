"""The whole RLHF trainer on a GPU, per combiner: seconds per step by phase, tokens per second,
peak memory; and the same model through TRL's GRPOTrainer with and without the PAMA plug-in.

Run on a CUDA machine from the repository root (``python bench/gpu_trainer.py --out DIR``;
``bash bench/device_check.sh`` calls it); ``--tiny`` runs the same code on a 2-layer model on
the CPU in about a minute, to check that the script works where no GPU is. Writes
``gpu_trainer.json`` (every measured row, the machine and the versions) and prints two tables.

What is measured, offline (no hub): a GPT-2-small-shaped policy (12 layers, width 768, 12
heads, a 50,257-word vocabulary built in code) saved and loaded through ``from_pretrained``;
n = 2 and 4 text rewards (the share of words from one slice of the vocabulary each), so the
rewards cost nothing and the table shows the trainer. For each n and combiner (PAMA, MORLHF,
MGDA-UB, exact MGDA) one :class:`~paretoopt.integrations.hf.MOPPOTrainer` run in bf16 mixed
precision: the trainer's own ``time/<phase>`` metrics averaged over the steps after the
warm-up, generated tokens per second of the rollout phase, and the peak memory of the run.
Ratios are to MORLHF at the same n, measured in the same process. Then TRL's ``GRPOTrainer``
on the same model and rewards, with TRL's default aggregation and with
:class:`~paretoopt.integrations.trl.PAMAGRPOTrainer`: seconds per step and peak memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

COMBINERS = ("morlhf", "pama", "mgda_ub", "mgda")


def build_policy(path: Path, tiny: bool) -> tuple[Path, int]:
    """A GPT-2-shaped LM and a word-level tokenizer over ``vocab`` words, saved at ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab_size = 512 if tiny else 50257
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for i in range(vocab_size - len(vocab)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    ).save_pretrained(path)
    torch.manual_seed(0)
    shape = (
        dict(n_layer=2, n_head=2, n_embd=32) if tiny else dict(n_layer=12, n_head=12, n_embd=768)
    )
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=1024,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
        **shape,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    return path, vocab_size


def make_rewards(n: int, vocab_size: int) -> list[Any]:
    """n rewards: the share of a response's words drawn from one slice of the vocabulary (n + 1
    slices, so that the rewards do not sum to a constant and every aggregation has a signal)."""
    width = (vocab_size - 3) // (n + 1)

    def reward(i: int):
        lo, hi = i * width, (i + 1) * width

        def share(prompts, responses=None, completions=None, **kwargs) -> list[float]:
            # MOPPOTrainer passes (prompts, responses); TRL passes completions= by keyword.
            out = []
            for r in responses if responses is not None else completions:
                words = [w for w in r.split() if w.startswith("w")]
                hits = sum(lo <= int(w[1:]) < hi for w in words if w[1:].isdigit())
                out.append(hits / max(len(words), 1))
            return out

        share.__name__ = f"slice{i}"
        return share

    return [reward(i) for i in range(n)]


def prompts(k: int, vocab_size: int) -> list[str]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab_size - 3, (k, 16), generator=g)
    return [" ".join(f"w{int(t)}" for t in row) for row in ids]


def _peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak() -> int | None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    return None


def moppo_row(
    policy: Path, n: int, combiner: str, args: argparse.Namespace, vocab_size: int, out: Path
) -> dict[str, Any]:
    from accelerate.state import AcceleratorState
    from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer

    AcceleratorState._reset_state(reset_partial_state=True)
    config = MOPPOConfig(
        combiner=combiner,
        steps=args.warmup + args.steps,
        batch_size=args.batch_size,
        mini_batch_size=args.mini_batch_size,
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.max_new_tokens,  # every step generates the same number of tokens
        learning_rate=1e-6,
        mixed_precision="no" if args.tiny else "bf16",
        cpu=not torch.cuda.is_available(),
        output_dir=str(out / f"moppo-{combiner}-{n}"),
        progress=False,
        seed=0,
    )
    with warnings.catch_warnings():
        # min_new_tokens makes every step generate the same number of tokens, which a timing
        # table needs; the trainer warns that it makes the rollout off-policy (true, harmless
        # for a timing at a learning rate of 1e-6).
        warnings.filterwarnings("ignore", message="sampling with min_new_tokens")
        trainer = MOPPOTrainer(
            config,
            str(policy),
            prompts=prompts(64, vocab_size),
            rewards=make_rewards(n, vocab_size),
        )
    _peak_reset()
    rows = []
    start = None
    for step in range(config.steps):
        if step == args.warmup:
            _peak_reset()
            start = time.perf_counter()
        metrics = trainer.step()
        if step >= args.warmup:
            rows.append(metrics)
    wall = (time.perf_counter() - start) / max(len(rows), 1) if start is not None else float("nan")
    phases = sorted({k for r in rows for k in r if k.startswith("time/")})
    timing = {k: statistics.mean(r[k] for r in rows if k in r) for k in phases}
    tokens = args.batch_size * args.max_new_tokens
    rollout = next((timing[k] for k in timing if "rollout" in k or "generate" in k), None)
    return {
        "engine": "moppo",
        "n": n,
        "combiner": combiner,
        "seconds_per_step": wall,
        "phases": timing,
        "generated_tokens_per_second": tokens / rollout if rollout else None,
        "peak_memory_bytes": _peak(),
    }


def grpo_row(
    policy: Path, n: int, pama: bool, args: argparse.Namespace, vocab_size: int, out: Path
) -> dict[str, Any]:
    from accelerate.state import AcceleratorState
    from datasets import Dataset
    from paretoopt.integrations.trl import PAMAGRPOConfig, PAMAGRPOTrainer
    from transformers import AutoTokenizer, TrainerCallback

    AcceleratorState._reset_state(reset_partial_state=True)
    from trl import GRPOConfig, GRPOTrainer

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0

        def on_step_begin(self, *a, **k):
            if len(self.times) == args.warmup:
                _peak_reset()
            self._t = time.perf_counter()

        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._t)

    common = dict(
        output_dir=str(out / f"grpo-{'pama' if pama else 'sum'}-{n}"),
        per_device_train_batch_size=args.batch_size,
        num_generations=4,
        max_completion_length=args.max_new_tokens,
        max_steps=args.warmup + args.steps,
        learning_rate=1e-6,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        bf16=not args.tiny and torch.cuda.is_available(),
        seed=0,
        disable_tqdm=True,
    )
    cls, cfg_cls = (PAMAGRPOTrainer, PAMAGRPOConfig) if pama else (GRPOTrainer, GRPOConfig)
    timer = StepTimes()
    trainer = cls(
        model=str(policy),
        reward_funcs=make_rewards(n, vocab_size),
        args=cfg_cls(**common),
        train_dataset=Dataset.from_dict({"prompt": prompts(64, vocab_size)}),
        processing_class=AutoTokenizer.from_pretrained(policy),
        callbacks=[timer],
    )
    trainer.train()
    kept = timer.times[args.warmup :]
    return {
        "engine": "trl_grpo",
        "n": n,
        "combiner": "pama" if pama else "sum_then_normalize",
        "seconds_per_step": statistics.mean(kept) if kept else None,
        "peak_memory_bytes": _peak(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu_trainer_out")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model on any device (a check)")
    p.add_argument("--objectives", type=int, nargs="+", default=[2, 4])
    p.add_argument("--combiners", nargs="+", default=list(COMBINERS), choices=COMBINERS)
    p.add_argument("--steps", type=int, default=None, help="measured steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--mini-batch-size", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--no-trl", action="store_true", help="skip the GRPOTrainer rows")
    args = p.parse_args(argv)
    defaults = (
        dict(steps=2, warmup=1, batch_size=8, mini_batch_size=4, max_new_tokens=8)
        if args.tiny
        else dict(steps=5, warmup=2, batch_size=32, mini_batch_size=8, max_new_tokens=128)
    )
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny to check the script on the CPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        policy, vocab_size = build_policy(Path(tmp) / "policy", args.tiny)
        for n in args.objectives:
            for combiner in args.combiners:
                rows.append(moppo_row(policy, n, combiner, args, vocab_size, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
            if not args.no_trl:
                for pama in (False, True):
                    rows.append(grpo_row(policy, n, pama, args, vocab_size, Path(tmp)))
                    print(json.dumps(rows[-1]), flush=True)
    report = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "tiny": args.tiny,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "settings": {k: getattr(args, k) for k in defaults},
        "rows": rows,
    }
    (out / "gpu_trainer.json").write_text(json.dumps(report, indent=1))
    print_tables(report)
    return 0


def _mib(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:.0f}"


def print_tables(report: dict[str, Any]) -> None:
    rows = report["rows"]
    moppo = [r for r in rows if r["engine"] == "moppo"]
    phases = sorted({k for r in moppo for k in r["phases"]})
    print(f"\nMOPPOTrainer on {report['device']} (ratios to MORLHF at the same n)")
    head = ["n", "combiner", "s/step", "ratio", "tok/s", "peak MiB", *phases]
    print(" | ".join(head))
    for r in moppo:
        base = next((b for b in moppo if b["n"] == r["n"] and b["combiner"] == "morlhf"), None)
        ratio = r["seconds_per_step"] / base["seconds_per_step"] if base else float("nan")
        tps = r["generated_tokens_per_second"]
        cells = [str(r["n"]), r["combiner"], f"{r['seconds_per_step']:.3f}", f"{ratio:.2f}x",
                 "n/a" if tps is None else f"{tps:.0f}", _mib(r["peak_memory_bytes"]),
                 *[f"{r['phases'].get(k, float('nan')):.3f}" for k in phases]]  # fmt: skip
        print(" | ".join(cells))
    grpo = [r for r in rows if r["engine"] == "trl_grpo"]
    if grpo:
        print(f"\nTRL GRPOTrainer on {report['device']}")
        print("n | aggregation | s/step | peak MiB")
        for r in grpo:
            s = r["seconds_per_step"]
            print(f"{r['n']} | {r['combiner']} | {'n/a' if s is None else f'{s:.3f}'} | "
                  f"{_mib(r['peak_memory_bytes'])}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
