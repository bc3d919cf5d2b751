"""Step time of MultiObjectiveTrainer per combiner against the plain Trainer on the summed loss.

Two-task BERT (mean pooling, two linear heads) built from a config, CPU, one thread; every
ratio is taken within one run (the same process, interleaved rounds). Usage:
``python bench/hf_trainer_cost.py [--layers 4 --width 128 --seq 32 --batch 16 --steps 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    import mo_fixtures as fx
    from paretoopt.integrations.hf import MultiObjectiveTrainer, MultiObjectiveTrainingArguments
    from transformers import BertConfig, Trainer, TrainingArguments

    fx.SEQ = a.seq
    tmp = Path(tempfile.mkdtemp())
    cls = fx.two_task_class()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=fx.VOCAB, hidden_size=a.width, num_hidden_layers=a.layers,
                     num_attention_heads=4, intermediate_size=4 * a.width,
                     max_position_embeddings=a.seq, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)  # fmt: skip
    cls(cfg).save_pretrained(tmp / "m")
    data = fx.two_task_data(a.batch * a.steps)
    n_params = sum(p.numel() for p in cls(cfg).parameters())
    common = dict(output_dir=str(tmp / "o"), per_device_train_batch_size=a.batch,
                  max_steps=a.steps, report_to=[], save_strategy="no", use_cpu=True,
                  disable_tqdm=True, logging_steps=a.steps)  # fmt: skip
    heads = {"a": "head_a", "b": "head_b"}
    runs = {"plain Trainer (sum)": None, "linear": "linear", "pama": "pama",
            "mgda_ub": "mgda_ub", "mgda": "mgda"}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(a.rounds):
        for label, combiner in runs.items():
            model = fx.load_two_task(tmp / "m")
            if combiner is None:
                trainer = Trainer(model, TrainingArguments(**common), train_dataset=data)
            else:
                args = MultiObjectiveTrainingArguments(
                    combiner=combiner, head_modules=heads, **common
                )
                trainer = MultiObjectiveTrainer(model, args, train_dataset=data)
            t0 = time.perf_counter()
            trainer.train()
            times[label].append((time.perf_counter() - t0) / a.steps)
    base = statistics.median(times["plain Trainer (sum)"])
    print(f"{n_params / 1e6:.2f}M parameters, batch {a.batch} x {a.seq} tokens, "
          f"{a.layers} layers, width {a.width}, CPU 1 thread")  # fmt: skip
    print("| combiner | ms / step (median of rounds) | ratio to plain Trainer |")
    print("|---|---|---|")
    for label in runs:
        t = statistics.median(times[label])
        print(f"| {label} | {1e3 * t:.1f} | {t / base:.2f}x |")


if __name__ == "__main__":
    main()
