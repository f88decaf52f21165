"""The demo-augmented rollout group, Eq. 6: G_aug = G_roll ∪ G_demo, contiguous per prompt."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Response:
    """One response to a prompt: a self-rollout (with its behaviour log-probs) or a demonstration."""

    token_ids: list[int]
    reward: float
    logprobs: list[float] | None = None  # per-token log π_old of the sampled tokens (rollouts)
    is_demo: bool = False
    text: str = ""
    policy_version: int = 0  # weights version that generated it (async staleness)


@dataclass
class AugmentedGroups:
    """A training batch: for each prompt its rollouts then its demonstration(s)."""

    responses: list[Response]
    prompt_index: list[int]  # index into the prompts passed to augment_groups, per response
    group_ids: Tensor  # [B] long, = prompt index
    is_demo: Tensor  # [B] bool
    rewards: Tensor  # [B] float32
    old_logprobs: list[list[float]]  # rollouts: behaviour log-probs; demos: 0.0 = log πβ, πβ = 1


def augment_groups(
    rollouts: Sequence[Sequence[Response]],
    demos: Sequence[Sequence[Response]],
    demos_per_group: int = 1,
    demo_mode: str = "append",
) -> AugmentedGroups:
    """Eq. 6: put ``demos_per_group`` demonstrations into each prompt's rollout group.

    ``demo_mode="append"``: rollouts + demos (paper: 8 + 1). ``"replace"``: the last
    ``demos_per_group`` rollout slots are given to the demos (official code: 7 + 1), so the
    group size stays n. The first ``demos_per_group`` demos of each prompt are used; a prompt
    with fewer is an error, as is a rollout without per-token log-probs (the GRPO ratio and
    the async staleness checks need them).
    """
    if len(rollouts) != len(demos):
        raise ValueError(f"got rollouts for {len(rollouts)} prompts but demonstrations for {len(demos)}")
    if demo_mode not in ("append", "replace"):
        raise ValueError(f"demo_mode must be 'append' or 'replace', got {demo_mode!r}")
    if demos_per_group < 0:
        raise ValueError(f"demos_per_group must be >= 0, got {demos_per_group}")

    responses: list[Response] = []
    prompt_index: list[int] = []
    old_logprobs: list[list[float]] = []
    for i, (rolls, prompt_demos) in enumerate(zip(rollouts, demos)):
        for j, r in enumerate(rolls):
            if r.logprobs is None or len(r.logprobs) != len(r.token_ids):
                raise ValueError(
                    f"prompt {i}, rollout {j}: needs one log-prob per token "
                    f"(got {None if r.logprobs is None else len(r.logprobs)} for {len(r.token_ids)} tokens)"
                )
        if len(prompt_demos) < demos_per_group:
            raise ValueError(
                f"prompt {i}: {demos_per_group} demonstration(s) per group requested, {len(prompt_demos)} given"
            )
        keep = list(rolls)
        if demo_mode == "replace" and demos_per_group:
            if len(keep) < demos_per_group:
                raise ValueError(f"prompt {i}: {len(keep)} rollouts cannot give {demos_per_group} slots to demos")
            keep = keep[: len(keep) - demos_per_group]
        for r in keep:
            assert r.logprobs is not None  # checked for every rollout above
            responses.append(dataclasses.replace(r, is_demo=False))
            old_logprobs.append([float(x) for x in r.logprobs])
        for d in prompt_demos[:demos_per_group]:
            responses.append(dataclasses.replace(d, is_demo=True))
            old_logprobs.append([0.0] * len(d.token_ids))
        prompt_index += [i] * (len(keep) + demos_per_group)

    return AugmentedGroups(
        responses=responses,
        prompt_index=prompt_index,
        group_ids=torch.tensor(prompt_index, dtype=torch.long),
        is_demo=torch.tensor([r.is_demo for r in responses], dtype=torch.bool),
        rewards=torch.tensor([float(r.reward) for r in responses], dtype=torch.float32),
        old_logprobs=old_logprobs,
    )
