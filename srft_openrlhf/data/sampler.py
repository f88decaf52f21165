"""Which prompts each training step sees, and with which sampling seed: functions of the step
only, shared by both backends, so a resumed run (and an asynchronous producer running ahead of
the trainer) sees exactly the batches an uninterrupted run would."""

from __future__ import annotations

import random


class PromptSampler:
    """Prompts of step k: positions [k·P, (k+1)·P) of an endless stream made of one seeded
    permutation of the training set per epoch. Stateless in k, so the "data-loader position"
    of a checkpoint is just the step."""

    def __init__(self, num_items: int, per_step: int, seed: int) -> None:
        self.num_items, self.per_step, self.seed = num_items, per_step, seed
        self._orders: dict[int, list[int]] = {}

    def permutation(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(self.num_items))
            random.Random(self.seed * 7919 + epoch).shuffle(order)
            self._orders = {epoch: order, **{e: o for e, o in self._orders.items() if e == epoch - 1}}
        return self._orders[epoch]

    def batch(self, step: int) -> list[int]:
        start = step * self.per_step
        return [self.permutation(k // self.num_items)[k % self.num_items] for k in range(start, start + self.per_step)]


def generation_seed(seed: int, step: int) -> int:
    """Sampling seed of step ``step``: a function of (seed, step) only, so resumed runs match."""
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**31 - 1)
