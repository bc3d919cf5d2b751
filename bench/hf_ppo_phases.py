"""Phase times (``time/*``) of MOPPOTrainer's step: reward model on token ids against text.

Two trainers built identically (a tiny GPT-2 policy, a tiny GPT-2 sequence-classification
reward model saved with the policy's tokenizer, plus the length reward), one scoring through
text (``token_inputs=False``: decode, join, re-tokenise), one on the rollout's ids (the
default). Both follow the same trajectory (checked: equal metrics); their steps alternate in a
fresh random order each round, after warm-up steps, so every ratio is taken within one run.

Then, on one rollout, what taking the old log-probs from generation would cost and change:
``generate(output_logits=True)`` against plain ``generate`` (the same sampled tokens), the
policy's share of the advantage phase's forward, and the largest difference between the
log-probs of the generation logits (KV cache, one position at a time) and the forward's.

CPU, one thread. Usage: ``python bench/hf_ppo_phases.py [--rounds 15 --batch 16 --new 24]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PHASES = ("generate", "score", "advantages", "combine", "update", "step")


def build(root: Path, width: int, layers: int) -> tuple[Path, Path]:
    """Policy and reward model (same tokenizer files) under ``root``."""
    import hf_fixtures as fx
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tok = fx.build_tokenizer(root / "lm")
    fx.build_policy(root / "lm", len(tok), tok.eos_token_id, eos_prob=0.05)
    if (width, layers) != (32, 2):
        from transformers import GPT2LMHeadModel

        torch.manual_seed(0)
        cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=width, n_layer=layers,
                         n_head=4, eos_token_id=tok.eos_token_id, pad_token_id=0)  # fmt: skip
        GPT2LMHeadModel(cfg).save_pretrained(str(root / "lm"))
    tok.save_pretrained(str(root / "rm"))
    torch.manual_seed(1)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=width, n_layer=layers,
                     n_head=4, num_labels=1, pad_token_id=tok.pad_token_id)  # fmt: skip
    GPT2ForSequenceClassification(cfg).eval().save_pretrained(str(root / "rm"))
    return root / "lm", root / "rm"


def trainer_for(lm: Path, rm: Path, out: Path, a: argparse.Namespace, token_inputs: bool | None):
    import hf_fixtures as fx
    from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer, RewardModelFunction

    cfg = MOPPOConfig(
        steps=a.rounds + a.warmup, batch_size=a.batch, mini_batch_size=a.mini_batch,
        ppo_epochs=2, max_new_tokens=a.new, learning_rate=1e-4, output_dir=str(out),
        progress=False, save_final=False, log_jsonl=False,
    )  # fmt: skip
    head = RewardModelFunction(str(rm), 0, token_inputs=token_inputs)
    prompts = [f"{p} {q}" for p in fx.PROMPTS for q in fx.PROMPTS]
    return MOPPOTrainer(cfg, str(lm), prompts=prompts, rewards=[head, "length"])


def phase_table(a: argparse.Namespace, lm: Path, rm: Path, tmp: Path) -> None:
    variants = {"text": False, "ids": None}
    trainers = {k: trainer_for(lm, rm, tmp / k, a, v) for k, v in variants.items()}
    times: dict[str, dict[str, list[float]]] = {k: {p: [] for p in PHASES} for k in variants}
    ratios: dict[str, list[float]] = {p: [] for p in PHASES}
    histories: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    order = list(variants)
    rng = random.Random(0)
    for r in range(a.warmup + a.rounds):
        rng.shuffle(order)
        step = {}
        for k in order:
            metrics = trainers[k].step()
            histories[k].append({m: v for m, v in metrics.items() if not m.startswith("time/")})
            step[k] = metrics
        if r < a.warmup:
            continue
        for p in PHASES:
            for k in variants:
                times[k][p].append(step[k][f"time/{p}"])
            ratios[p].append(step["ids"][f"time/{p}"] / step["text"][f"time/{p}"])
    same = histories["ids"] == histories["text"]
    batches = trainers["ids"].reward_fns[0].reward_model.token_batches
    print(f"identical metrics on both paths: {same}; batches scored on ids: {batches}")
    print("| phase | text path: ms | token ids: ms | ids / text (median of per-round ratios) |")
    print("|---|---|---|---|")
    for p in PHASES:
        t_old, t_new = (1e3 * statistics.median(times[k][p]) for k in ("text", "ids"))
        print(f"| time/{p} | {t_old:.2f} | {t_new:.2f} | {statistics.median(ratios[p]):.2f}x |")


def generation_logprobs(a: argparse.Namespace, lm: Path, rm: Path, tmp: Path) -> None:
    """Cost and difference of old log-probs taken from generation instead of a forward."""
    from paretoopt.integrations.hf.rollout import response_mask, tokenize_prompts
    from paretoopt.integrations.hf.value_heads import response_forward

    trainer = trainer_for(lm, rm, tmp / "gen", a, None)
    policy, gen_cfg = trainer.policy, trainer.generation_config
    prompts = [str(p) for p in trainer.sample_prompts(1)]
    enc = tokenize_prompts(trainer.tokenizer, prompts, trainer.device)
    policy.eval()

    def generate(with_logits: bool):
        torch.manual_seed(0)
        extra = dict(output_logits=True, return_dict_in_generate=True) if with_logits else {}
        with torch.no_grad():
            return policy.generate(**enc, generation_config=gen_cfg, **extra)

    start = enc["input_ids"].shape[1]
    mb = trainer.config.mini_batch_size

    def forward(model, ids, attn):
        with torch.no_grad():
            return torch.cat([
                response_forward(model, ids[lo : lo + mb], attn[lo : lo + mb], start)["logprobs"]
                for lo in range(0, ids.shape[0], mb)
            ])  # fmt: skip

    plain_t, logits_t, fwd_t, ratios_gen, ratios_fwd = [], [], [], [], []
    for r in range(a.warmup + a.rounds):
        t0 = time.perf_counter()
        plain = generate(False)
        t1 = time.perf_counter()
        out = generate(True)
        t2 = time.perf_counter()
        assert torch.equal(plain, out.sequences)  # the same sampled tokens
        response = out.sequences[:, start:]
        mask = response_mask(response, trainer.eos_token_ids)
        ids = torch.cat([enc["input_ids"], response.masked_fill(mask == 0, 0)], dim=1)
        attn = torch.cat([enc["attention_mask"], mask], dim=1)
        t3 = time.perf_counter()
        from_forward = forward(policy, ids, attn)
        t4 = time.perf_counter()
        if r >= a.warmup:
            plain_t.append(t1 - t0)
            logits_t.append(t2 - t1)
            fwd_t.append(t4 - t3)
            ratios_gen.append((t2 - t1) / (t1 - t0))
            ratios_fwd.append((t4 - t3) / (t1 - t0))
    logits = torch.stack(out.logits, dim=1).float() / trainer.config.temperature
    from_generation = torch.log_softmax(logits, -1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
    diff = ((from_generation - from_forward).abs() * mask).max()
    print(f"generate: {1e3 * statistics.median(plain_t):.2f} ms; with output_logits "
          f"{1e3 * statistics.median(logits_t):.2f} ms ({statistics.median(ratios_gen):.3f}x); "
          f"the policy's log-prob forward {1e3 * statistics.median(fwd_t):.2f} ms "
          f"({statistics.median(ratios_fwd):.3f}x generate)")  # fmt: skip
    print(f"max |log-prob from generation logits - from the forward| over "
          f"{int(mask.sum())} response tokens: {float(diff):.3g}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--mini-batch", type=int, default=8)
    ap.add_argument("--new", type=int, default=24)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    lm, rm = build(tmp, a.width, a.layers)
    print(
        f"policy and reward model: GPT-2, {a.layers} layers, width {a.width}; batch {a.batch}, "
        f"mini-batch {a.mini_batch}, 2 PPO epochs, up to {a.new} new tokens; CPU, 1 thread"
    )
    phase_table(a, lm, rm, tmp)
    generation_logprobs(a, lm, rm, tmp)


if __name__ == "__main__":
    main()
