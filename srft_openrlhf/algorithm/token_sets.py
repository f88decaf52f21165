"""The token sets of Eq. 13, shared by ``srft_loss`` and ``step_totals`` so the two can never disagree.

- response tokens  = mask
- demo tokens      = mask & is_demo                     (Eq. 8 SFT and Eq. 9-10 RL on demos)
- rollout tokens   = mask & ~is_demo, split by reward into positive (> 0.5) / negative (Eq. 12)
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

# Eq. 12: a self-rollout is positive when its reward is above this (rewards are 0 / 1 in the paper).
POSITIVE_REWARD = 0.5


class TokenSets(NamedTuple):
    """Bool [B, T] masks of each token set; ``pos`` and ``neg`` partition ``rollout``."""

    response: Tensor
    demo: Tensor
    rollout: Tensor
    pos: Tensor
    neg: Tensor


def token_sets(mask: Tensor, rewards: Tensor, is_demo: Tensor) -> TokenSets:
    """The token sets of ``mask`` [B, T] for per-sequence ``rewards`` and ``is_demo`` [B]."""
    response = mask.bool()
    demo_seq = is_demo.bool().reshape(-1, 1)
    rollout = response & ~demo_seq
    pos = rollout & (rewards.reshape(-1, 1) > POSITIVE_REWARD)
    return TokenSets(response=response, demo=response & demo_seq, rollout=rollout, pos=pos, neg=rollout & ~pos)
