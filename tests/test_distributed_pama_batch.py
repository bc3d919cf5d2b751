"""PAMA with ``pama_granularity="batch"`` on 2 CPU processes (gloo) against 1.

"Batch" means one weight vector for the global rollout batch: each process all-reduces the
per-objective sums of its clipped advantages and its token count before the closed form,
so both processes get the weights a single process gets on the whole batch. A control
shows that the comparison has teeth: each process's local batch weights differ.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.multiprocessing as mp
from dist_fixtures import free_port, set_worker_env
from paretoopt.integrations.distributed import global_pama_batch_advantages

from paretoopt import pama_advantages

WORLD = 2


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages [2, 8, 5] whose halves favour different objectives, unequal token counts."""
    g = torch.Generator().manual_seed(3)
    adv = torch.rand(2, 8, 5, generator=g, dtype=torch.float64) - 0.2
    adv[0, :4] += 0.6  # rank 0: objective 1 is the smaller one
    adv[1, 4:] += 0.6  # rank 1: objective 0 is the smaller one
    lengths = torch.tensor([5, 4, 5, 5, 1, 2, 3, 2])  # 19 valid tokens against 8
    mask = (torch.arange(5).unsqueeze(0) < lengths.unsqueeze(1)).long()
    return adv, mask


def _worker(rank: int, port: int, out_dir: str) -> None:
    set_worker_env(rank, WORLD, port)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    adv, mask = make_batch()
    rows = slice(rank * 4, (rank + 1) * 4)
    s_star, weights = global_pama_batch_advantages(adv[:, rows], mask[rows])
    _, local = pama_advantages(adv[:, rows], mask[rows], granularity="batch", return_weights=True)
    torch.save(
        {"s_star": s_star, "weights": weights[:, 0, 0], "local": local[:, 0, 0]},
        Path(out_dir) / f"rank{rank}.pt",
    )
    dist.barrier()
    dist.destroy_process_group()


def test_batch_weights_are_global_over_processes(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    adv, mask = make_batch()
    want_s, want_w = pama_advantages(adv, mask, granularity="batch", return_weights=True)
    for rank, res in enumerate(got):
        torch.testing.assert_close(res["weights"], want_w[:, 0, 0], rtol=0, atol=1e-12)
        rows = slice(rank * 4, (rank + 1) * 4)
        torch.testing.assert_close(res["s_star"], want_s[rows], rtol=0, atol=1e-12)
    # Control: the halves alone bind different objectives; rank 1's differ from the global.
    assert not torch.allclose(got[0]["local"], got[1]["local"])
    assert not torch.allclose(got[1]["local"], want_w[:, 0, 0])
