"""``paretoopt train``: multi-objective PPO on a prompt file.

Example::

    paretoopt train --policy gpt2 --prompts prompts.txt \\
        --reward sentiment=lvwerra/distilbert-imdb:1 --reward length \\
        --combiner pama --steps 100 --output-dir runs/pama
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "load_prompts", "main"]

_EPILOG = """\
reward specs (repeat --reward, one per objective):
  length                      clip(len(response chars) / 140, 0, 1)
  length:SCALE[:LO:HI[:UNIT]] clip(len / SCALE, LO, HI); UNIT chars (default) or words
  NAME=package.module:func    your Python function func(prompts, responses) -> list of
                              floats, one per response; the module is imported from the
                              current directory or the Python path (NAME= optional)
  NAME=NAME_OR_PATH[:LABEL]   a sequence-classification reward model; logit LABEL (default 0)
  NAME_OR_PATH[:LABEL]        the same, named after the path
  N1,N2=NAME_OR_PATH:L1,L2    one reward model, several outputs as several objectives
                              (loaded once, scored once per batch), e.g.
                              helpful,verbose=path/to/rm:0,4

Example of your own reward, in ./myrewards.py, used as --reward polite=myrewards:politeness:
  def politeness(prompts, responses):
      return [float("please" in r) for r in responses]

Reward functions receive the prompts as given (a conversation stays its list of messages)
and the responses without the prompt; functions that take a prompt_texts keyword also get
the prompts as the policy saw them (rendered, cut from the left to max_prompt_length).

prompts: --prompts FILE (one per line .txt, or .jsonl with a "prompt" field), or --dataset
SOURCE: a local file (.jsonl/.json/.parquet/.csv/.txt), a folder (save_to_disk or data
files) or a dataset name (datasets.load_dataset; needs the network or the local cache).
A prompt is a string or a list of {"role", "content"} messages, rendered with the policy
tokenizer's chat template (generation prompt added); a final assistant message is dropped.
Metrics go to OUTPUT_DIR/metrics.jsonl; checkpoints to OUTPUT_DIR/checkpoint-STEP.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="paretoopt train",
        description=(
            "Multi-objective PPO (PAMA's Algorithm 1) on a causal LM with n rewards. "
            "Defaults follow the paper (lr 1e-5, KL coef 0.2, cliprange 0.2, GAE lambda 0.95, "
            "gamma 1, adaptive KL)."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--policy",
        required=True,
        help="model name or local path (AutoModelForCausalLM); a missing local path is an error",
    )
    p.add_argument("--tokenizer", help="tokenizer name or path (default: the policy's)")
    p.add_argument("--prompts", type=Path, help="prompt file (.txt or .jsonl)")
    p.add_argument("--dataset", help="prompt dataset: a file, folder or dataset name")
    p.add_argument("--split", help="split of --dataset (default train)")
    p.add_argument("--prompt-column", help="column holding the prompts (default: prompt, ...)")
    p.add_argument("--eval-dataset", help="held-out prompts (same forms as --dataset)")
    p.add_argument("--eval-split", help="split of --eval-dataset (default: --split or train)")
    p.add_argument("--eval-every", type=int, help="evaluate every N steps (and at the end)")
    p.add_argument(
        "--best",
        dest="best_criterion",
        metavar="CRITERION",
        help="keep OUTPUT_DIR/best by hypervolume | hypervolume_per_response | an objective "
        "| NAME=W,NAME=W (weighted mean reward)",
    )
    p.add_argument(
        "--reward",
        action="append",
        required=True,
        metavar="SPEC",
        help="one objective's reward (repeat); see the specs below",
    )
    from paretoopt.zoo import ZOO_NAMES

    ours = ("pama", "pama_ub", "morlhf", "gdpo", "linear_noon", "mgda_ub", "mgda", "linear")
    p.add_argument(
        "--combiner",
        choices=[*ours, *ZOO_NAMES],
        metavar="COMBINER",
        help="how the objectives are combined (default pama): pama | pama_ub | morlhf | gdpo | "
        "linear_noon | mgda_ub | mgda | linear, or a torchjd aggregator by its name in lower case "
        f"({' | '.join(ZOO_NAMES)}; needs paretoopt[zoo]). pama_ub: PPO on the min-norm "
        "combination of the batch's advantage vectors (MGDA-UB at the ratio, --noon); morlhf: "
        "PPO on the scalarised reward; linear_noon: sum of Noon PPO losses; linear: sum of PPO "
        "losses (--noon)",
    )
    p.add_argument(
        "--combiner-mode",
        choices=["shared", "params"],
        help="torchjd combiners: the Jacobian of the objectives' PPO losses over the policy's "
        "last hidden states (shared, the default, as mgda_ub) or its trainable parameters "
        "(params, as mgda)",
    )
    p.add_argument(
        "--weights",
        type=float,
        nargs="+",
        help="fixed weights, one per --reward, for morlhf/gdpo/linear_noon/linear (default 1/n)",
    )
    p.add_argument(
        "--noon",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Noon clipping A = max(A, 0) for pama/pama_ub/linear/mgda* (default on)",
    )
    p.add_argument(
        "--mgda-normalization",
        choices=["none", "l2", "loss", "loss+"],
        help="gradient normalisation of mgda/mgda_ub (default l2)",
    )
    p.add_argument(
        "--mgda-rescale",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mgda/mgda_ub: train on sum c_i/nu_i L_i (the normalised min-norm point) instead "
        "of the authors' sum c_i L_i (default off)",
    )
    p.add_argument(
        "--value-warmup-steps",
        type=int,
        help="value-only steps on the starting policy before the first update (default 0)",
    )
    p.add_argument("--granularity", choices=["token", "sample", "batch"], help="PAMA granularity")
    p.add_argument("--config", type=Path, help="MOPPOConfig as JSON; flags given here override it")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, help="prompts per step and process")
    p.add_argument("--mini-batch-size", type=int)
    p.add_argument("--ppo-epochs", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float)
    p.add_argument("--kl-coef", type=float)
    p.add_argument("--target-kl", type=float)
    p.add_argument("--no-adaptive-kl", action="store_true", help="keep the KL coefficient fixed")
    p.add_argument("--cliprange", type=float)
    p.add_argument("--vf-coef", type=float)
    p.add_argument(
        "--ratio-to",
        choices=["ref", "old"],
        help="ratio to pi_old (default, ordinary PPO) or pi_ref (as the paper writes it)",
    )
    p.add_argument("--advantage-normalization", choices=["none", "scale", "whiten"])
    p.add_argument("--temperature", type=float)
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter (r 64, alpha 128)")
    p.add_argument("--lora-r", type=int)
    p.add_argument("--lora-alpha", type=int)
    p.add_argument("--lora-dropout", type=float)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    quant = p.add_mutually_exclusive_group()
    quant.add_argument(
        "--load-in-8bit", action="store_true", help="8-bit base weights (needs --lora, GPU)"
    )
    quant.add_argument(
        "--load-in-4bit", action="store_true", help="4-bit base weights, QLoRA (needs --lora, GPU)"
    )
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--forward-chunk-size", type=int, help="sequences per rollout forward pass")
    p.add_argument(
        "--micro-batch-size", type=int, help="gradient accumulation inside each mini-batch"
    )
    p.add_argument("--export-dir", help="write the shipped model here at the end")
    p.add_argument(
        "--export-merged", action="store_true", help="also export LoRA merged into the base"
    )
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"])
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    p.add_argument("--seed", type=int)
    p.add_argument("--output-dir")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps (0: only at the end)")
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="checkpoint folder; 'latest': the newest complete one in --output-dir; 'auto': "
        "the same, or start fresh when there is none (for restarted jobs)",
    )
    p.add_argument(
        "--collective-timeout",
        type=float,
        metavar="SECONDS",
        help="under several processes, how long a collective waits for a process that hangs "
        "before every process stops (default 600)",
    )
    p.add_argument(
        "--report-to", nargs="*", help="transformers integrations, e.g. tensorboard wandb"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--sample", type=int, default=0, help="print N greedy responses at the end")
    return p


def load_prompts(path: Path) -> list[str]:
    """Prompts from a text file (one per line) or JSON lines with a ``prompt`` field."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "prompt" not in record:
                raise ValueError(f"{path}:{number}: no 'prompt' field")
            prompts.append(str(record["prompt"]))
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


def check_reward_names(specs: list[str]) -> None:
    """The names given before ``=`` in the ``--reward`` specs are distinct (unnamed rewards
    are named after their source and made unique)."""
    seen: dict[str, str] = {}
    for spec in specs:
        head, eq, _ = spec.strip().partition("=")
        if not eq:
            continue
        for name in {n.strip() for n in head.split(",") if n.strip()}:
            if name in seen:
                raise ValueError(
                    f"objective name {name!r} is given by two --reward specs ({seen[name]!r} "
                    f"and {spec!r}); give each objective its own name"
                )
            seen[name] = spec


def _prompts_from_args(args: argparse.Namespace) -> tuple[Any, Any]:
    """Training and held-out prompts from --prompts / --dataset and --eval-dataset."""
    from .data import load_prompt_dataset

    if (args.prompts is None) == (args.dataset is None):
        raise ValueError("give the prompts with exactly one of --prompts FILE or --dataset SOURCE")
    if args.prompts is not None:
        prompts = load_prompts(args.prompts)
    else:
        prompts = load_prompt_dataset(args.dataset, split=args.split, column=args.prompt_column)
    eval_prompts = None
    if args.eval_dataset is not None:
        eval_prompts = load_prompt_dataset(
            args.eval_dataset, split=args.eval_split or args.split, column=args.prompt_column
        )
    return prompts, eval_prompts


def _config_from_args(args: argparse.Namespace) -> Any:
    from .config import MOPPOConfig

    data: dict[str, Any] = {}
    if args.config is not None:
        data.update(json.loads(args.config.read_text()))
    direct = [
        "combiner",
        "steps",
        "batch_size",
        "mini_batch_size",
        "ppo_epochs",
        "max_new_tokens",
        "learning_rate",
        "kl_coef",
        "target_kl",
        "cliprange",
        "vf_coef",
        "ratio_to",
        "advantage_normalization",
        "noon",
        "mgda_normalization",
        "mgda_rescale",
        "value_warmup_steps",
        "temperature",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "dtype",
        "mixed_precision",
        "seed",
        "output_dir",
        "save_every",
        "report_to",
        "eval_every",
        "best_criterion",
        "forward_chunk_size",
        "micro_batch_size",
        "export_dir",
        "collective_timeout",
    ]
    for key in direct:
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    if args.granularity is not None:
        data["pama_granularity"] = args.granularity
    if args.combiner_mode is not None:
        data["combiner_kwargs"] = {**data.get("combiner_kwargs", {}), "mode": args.combiner_mode}
    if args.weights is not None:
        data["combiner_weights"] = args.weights
    if args.no_adaptive_kl:
        data["adaptive_kl"] = False
    if args.lora:
        data["use_lora"] = True
    for flag in ("load_in_8bit", "load_in_4bit", "gradient_checkpointing", "export_merged"):
        if getattr(args, flag):
            data[flag] = True
    if args.cpu:
        data["cpu"] = True
    if args.no_progress:
        data["progress"] = False
    if args.resume is not None:
        data["resume_from"] = args.resume
    if "mini_batch_size" not in data and "batch_size" in data:
        data["mini_batch_size"] = min(data["batch_size"], MOPPOConfig.mini_batch_size)
    return MOPPOConfig.from_dict(data)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``paretoopt train``; returns the exit status."""
    args = build_parser().parse_args(argv)
    from ..faults import DistributedRunError

    try:
        from . import MOPPOTrainer
        from .rewards import RewardError, parse_reward_specs

        config = _config_from_args(args)
        prompts, eval_prompts = _prompts_from_args(args)
        check_reward_names(args.reward)
        rewards = [fn for spec in args.reward for fn in parse_reward_specs(spec)]
        tokenizer = None
        if args.tokenizer:
            from transformers import AutoTokenizer

            from .models import check_model_source

            check_model_source(args.tokenizer, "tokenizer")

            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, trust_remote_code=False)
        trainer = MOPPOTrainer(
            config,
            args.policy,
            tokenizer=tokenizer,
            prompts=prompts,
            rewards=rewards,
            eval_prompts=eval_prompts,
        )
        history = trainer.train()
    except (RewardError, ValueError, FileNotFoundError, ImportError) as exc:
        print(f"paretoopt train: error: {exc}", file=sys.stderr)
        return 2
    except DistributedRunError as exc:
        # Another process failed first; its log holds the cause, this one says what followed.
        print(f"paretoopt train: error: {exc}", file=sys.stderr)
        return 1
    if trainer.accelerator.is_main_process:
        last = history[-1] if history else {}
        shown = {k: round(v, 4) for k, v in last.items() if k.startswith(("reward/", "kl"))}
        print(f"done: {trainer.global_step} steps; last {shown}; output in {config.output_dir}")
        if args.sample:
            for prompt, response in zip(
                prompts[: args.sample], trainer.generate(prompts[: args.sample]), strict=True
            ):
                print(f"{prompt!r} -> {response!r}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
