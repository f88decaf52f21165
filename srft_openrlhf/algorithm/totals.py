"""``StepTotals``: the denominators of Eq. 13 over a whole optimizer step.

A backend that splits one optimizer step into micro-batches (gradient accumulation) computes
``step_totals`` over all of the step's sequences and passes it to every micro-batch's
``srft_loss(..., totals=...)``. Each term is then divided by the step's token / sequence
counts instead of the micro-batch's, and the batch-scope entropy weights use the step's
mean entropies, so the SUM of the micro-batch losses (and of their gradients) is the loss of
the whole step in one batch. The caller sums: no 1/accumulation factor.

Totals of disjoint parts add up (``a + b``): counts and entropy sums are stored, not means,
so a backend may compute them per micro-batch or per data-parallel rank and add them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from srft_openrlhf.algorithm.config import LossConfig
from srft_openrlhf.algorithm.token_sets import token_sets

_COUNTS = ("sequences", "demo_tokens", "pos_tokens", "neg_tokens", "demo_seqs", "pos_seqs", "neg_seqs")


@dataclass(frozen=True)
class StepTotals:
    """Counts over an optimizer step's sequences, and (optionally) entropy sums.

    Token sets as in ``srft_loss`` (``token_sets``): demo = response tokens of demonstrations; positive /
    negative = response tokens of self-rollouts with reward > 0.5 / ≤ 0.5. ``*_seqs`` count
    the sequences having at least one token in the set (the divisor of
    ``seq_mean_token_mean``). ``demo_entropy_sum`` / ``rollout_entropy_sum`` are None when not
    computed (``entropy_needed`` says when the loss needs them): the batch-scope weights of
    Eq. 8 / Eq. 12 then use each micro-batch's own mean entropy.
    """

    sequences: int  # B: every sequence of the step, also those without response tokens
    demo_tokens: int
    pos_tokens: int
    neg_tokens: int
    demo_seqs: int
    pos_seqs: int
    neg_seqs: int
    demo_entropy_sum: float | None = None  # Σ H over demo tokens
    rollout_entropy_sum: float | None = None  # Σ H over self-rollout tokens

    @property
    def rollout_tokens(self) -> int:
        return self.pos_tokens + self.neg_tokens

    @property
    def response_tokens(self) -> int:
        return self.demo_tokens + self.rollout_tokens

    @property
    def rollout_seqs(self) -> int:
        return self.pos_seqs + self.neg_seqs  # a rollout is positive or negative, never both

    @property
    def response_seqs(self) -> int:
        return self.demo_seqs + self.rollout_seqs

    @property
    def h_demo(self) -> float | None:
        """Step-wide mean entropy of the demo tokens (H in Eq. 8's w_SFT); 0.0 if there are none."""
        return None if self.demo_entropy_sum is None else self.demo_entropy_sum / max(self.demo_tokens, 1)

    @property
    def h_roll(self) -> float | None:
        """Step-wide mean entropy of the self-rollout tokens (H in Eq. 12's w_RL); 0.0 if there are none."""
        return None if self.rollout_entropy_sum is None else self.rollout_entropy_sum / max(self.rollout_tokens, 1)

    def counts(self, token_set: str) -> tuple[int, int, int]:
        """(tokens, sequences having them, all sequences) of ``token_set``: demo | pos | neg |
        rollout | response — the step-wide divisors of ``aggregate``."""
        return getattr(self, f"{token_set}_tokens"), getattr(self, f"{token_set}_seqs"), self.sequences

    def __add__(self, other: StepTotals) -> StepTotals:
        """Totals of two disjoint parts of a step; an entropy sum is known only if both parts know it."""
        values = {name: getattr(self, name) + getattr(other, name) for name in _COUNTS}
        for name in ("demo_entropy_sum", "rollout_entropy_sum"):
            mine, theirs = getattr(self, name), getattr(other, name)
            values[name] = None if mine is None or theirs is None else mine + theirs
        return dataclasses.replace(self, **values)


def entropy_needed(loss: LossConfig) -> tuple[bool, bool]:
    """(demo rows, rollout rows): whose step-mean entropy the batch-scope weights w_SFT (Eq. 8) and
    w_RL (Eq. 12) need; the sequence and token scopes and fixed weights need none."""
    batch = loss.entropy_scope == "batch"
    return (batch and loss.sft_demo and loss.w_sft_fixed is None, batch and loss.rl_rollout and loss.w_rl_fixed is None)


def step_totals(mask: Tensor, rewards: Tensor, is_demo: Tensor, entropy: Tensor | None = None) -> StepTotals:
    """``StepTotals`` of the sequences given (a whole step, or a part of it to be added up).

    ``mask`` [B, T] response tokens, ``rewards`` / ``is_demo`` [B], ``entropy`` [B, T] or None.
    """
    sets = token_sets(mask, rewards, is_demo)
    counts: dict[str, int] = {"sequences": mask.shape[0]}
    for name in ("demo", "pos", "neg"):
        token_set = getattr(sets, name)
        counts[f"{name}_tokens"] = int(token_set.sum())
        counts[f"{name}_seqs"] = int(token_set.any(-1).sum())
    totals = StepTotals(**counts)
    if entropy is not None:
        h = entropy.detach().to(torch.float64)
        totals = dataclasses.replace(
            totals,
            demo_entropy_sum=float(h[sets.demo].sum()),
            rollout_entropy_sum=float(h[sets.rollout].sum()),
        )
    return totals
