"""One PPO-style policy update on a GPT-2-small-shaped model on a GPU, per combiner.

Run on a CUDA machine (``python bench/gpu_step.py --out DIR``); writes ``gpu_step.json`` and
prints a table. Each combiner gets the same model, batch and n per-objective advantages;
reported: median wall time of one update (forward, combination, backward) and peak memory,
each also as a ratio to linear scalarization measured in the same run. The weight selection
alone (``pama_advantages`` vs MGDA-UB's Gram + solve on the same advantages) is timed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial
from pathlib import Path

import torch

from paretoopt import MGDA, PAMA, LinearScalarization, pama_advantages
from paretoopt.losses import ppo_losses, ppo_losses_from_ratio, ppo_surrogate, ratio


def timed(fn, reps: int) -> tuple[float, int]:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times), int(torch.cuda.max_memory_allocated() - base)


def _linear_select(big, mask):
    return big.mean(0) * mask


def _mgda_ub_select(z, big):
    losses = [(z * big[i]).sum() for i in range(big.shape[0])]
    MGDA(mode="shared", normalization="l2")(losses, shared=z)


def _steps(model, forward, params, mask, adv, old) -> dict:
    """One update per combiner on the same batch and advantages."""

    def step_linear():
        logp, _ = forward()
        losses = ppo_losses(logp, old, adv, mask, noon=False)
        LinearScalarization()(list(losses)).loss.backward()
        model.zero_grad(set_to_none=True)

    def step_pama_fast():
        logp, _ = forward()
        s = pama_advantages(adv, mask)
        ppo_surrogate(logp, old, s, mask).backward()
        model.zero_grad(set_to_none=True)

    def step_pama_generic():
        logp, _ = forward()
        u = ratio(logp, old)
        losses = ppo_losses_from_ratio(u, adv, mask)
        PAMA()(list(losses), shared=u, mask=mask).loss.backward()
        model.zero_grad(set_to_none=True)

    def step_mgda_ub():
        logp, hidden = forward()
        losses = ppo_losses(logp, old, adv, mask, noon=False)
        MGDA(mode="shared", normalization="l2")(list(losses), shared=hidden).loss.backward()
        model.zero_grad(set_to_none=True)

    def step_mgda():
        logp, _ = forward()
        losses = ppo_losses(logp, old, adv, mask, noon=False)
        MGDA(mode="params", normalization="l2")(list(losses), params=params).loss.backward()
        model.zero_grad(set_to_none=True)

    return {
        "linear": step_linear,
        "pama_fast_path": step_pama_fast,
        "pama_generic": step_pama_generic,
        "mgda_ub": step_mgda_ub,
        "mgda_exact": step_mgda,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_out")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    from transformers import GPT2Config, GPT2LMHeadModel

    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12)).to(dev)
    model.config.use_cache = False
    B, T, P = 16, 256, 64
    ids = torch.randint(0, 50257, (B, P + T), device=dev)
    mask = torch.ones(B, T, device=dev)
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []

    def forward():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids, output_hidden_states=True)
        logits = out.logits[:, P - 1 : -1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, P:, None])[..., 0]
        return logp, out.hidden_states[-1]

    for n in (2, 4, 8):
        adv = torch.randn(n, B, T, device=dev)
        old = forward()[0].detach()
        steps = _steps(model, forward, params, mask, adv, old)
        step_linear = steps["linear"]
        base_t, base_m = timed(step_linear, args.reps)
        for name, fn in steps.items():
            t, m = (base_t, base_m) if name == "linear" else timed(fn, args.reps)
            rows.append(
                {
                    "n": n,
                    "what": f"step/{name}",
                    "seconds": t,
                    "peak_bytes": m,
                    "time_ratio": t / base_t,
                    "memory_ratio": m / max(base_m, 1),
                }
            )
        # Weight selection alone, on the same advantages (flattened B*T per objective).
        big = torch.randn(n, 64, 2048, device=dev)
        big_mask = torch.ones(64, 2048, device=dev)
        z = torch.zeros(64, 2048, device=dev, requires_grad=True)
        t_lin, _ = timed(partial(_linear_select, big, big_mask), 50)
        t_pama, _ = timed(partial(pama_advantages, big, big_mask), 50)
        t_ub, _ = timed(partial(_mgda_ub_select, z, big), 50)
        for name, t in (("linear_mean", t_lin), ("pama_advantages", t_pama), ("mgda_ub", t_ub)):
            rows.append({"n": n, "what": f"select/{name}", "seconds": t, "time_ratio": t / t_lin})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "model": "GPT-2 small shape (124M), bf16 autocast",
        "batch": [B, P + T],
        "rows": rows,
    }
    (out / "gpu_step.json").write_text(json.dumps(info, indent=1))
    for r in rows:
        ms = r["seconds"] * 1e3
        extra = f" mem x{r['memory_ratio']:.2f}" if "memory_ratio" in r else ""
        print(f"n={r['n']} {r['what']:<24} {ms:9.3f} ms  x{r['time_ratio']:.2f}{extra}")


if __name__ == "__main__":
    main()
