"""PAMA without Noon clipping: the closed form on signed advantages, on both routes."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_core_combiners import TinyPolicy, param_grads, perturbed_reference, rl_batch

from paretoopt import PAMA, pama_advantages, pama_ppo_loss, ppo_losses_from_ratio, ratio


def test_unclipped_closed_form_pushes_down_where_all_objectives_agree() -> None:
    adv = torch.tensor([[2.0, -1.0, -3.0, 0.5], [1.0, -2.0, 4.0, 0.0]])
    s_star = pama_advantages(adv, noon=False)
    # all positive: the smallest; all negative: the largest (closest to 0); mixed or 0: 0.
    torch.testing.assert_close(s_star, torch.tensor([1.0, -1.0, 0.0, 0.0]))
    # With Noon the agreed-bad token is left alone instead.
    torch.testing.assert_close(pama_advantages(adv), torch.tensor([1.0, 0.0, 0.0, 0.0]))


@settings(max_examples=25)
@given(st.integers(0, 10_000), st.integers(1, 4), st.booleans())
def test_generic_pama_without_noon_equals_fast_path(seed: int, n: int, use_mask: bool) -> None:
    """Standard (signed) PPO losses through PAMA(shared=u) == the surrogate with s*.

    Holds with clipping too (the perturbed reference puts ratios outside 1 +- eps): a
    positive s* needs every A_i > 0, which are all clipped above 1 + eps exactly when s*'s
    term is; a negative s* likewise below 1 - eps; mixed signs give s* = 0 on both routes.
    """
    tokens, adv, mask = rl_batch(seed, n=n)
    m = mask if use_mask else None
    model = TinyPolicy(0)
    ref = perturbed_reference(model, tokens, seed)

    u = ratio(model(tokens), ref)
    losses = ppo_losses_from_ratio(u, adv, m, noon=False)
    PAMA()(list(losses), shared=u).loss.backward()
    generic = param_grads(model)

    model.zero_grad()
    pama_ppo_loss(model(tokens), ref, adv, m, noon=False).backward()
    torch.testing.assert_close(generic, param_grads(model), rtol=1e-10, atol=1e-12)
