"""Group-relative advantages (GRPO Eq. 2; SRFT Eq. 7 over the demo-augmented group)."""

from __future__ import annotations

import torch
from torch import Tensor

from srft_openrlhf.algorithm.config import LossConfig


def group_advantages(rewards: Tensor, group_ids: Tensor, normalize_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Eq. 2 / Eq. 7: Â_k = (r_k − mean_group) / (std_group + eps), std unbiased (torch.std).

    ``rewards`` [B] float, ``group_ids`` [B] integer labels; groups need be neither contiguous
    nor of equal size. A group whose rewards are all equal (a size-1 group included) gets 0:
    it carries no preference between its members. ``normalize_std=False`` gives r − mean
    (Dr.GRPO / the official SRFT code).
    """
    if rewards.dim() != 1 or rewards.shape != group_ids.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be equal 1-D")
    r = rewards if rewards.is_floating_point() else rewards.float()
    _, g = torch.unique(group_ids, return_inverse=True)
    n_groups = int(g.max()) + 1 if g.numel() else 0
    count = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, g, torch.ones_like(r))
    mean = torch.zeros_like(count).index_add_(0, g, r) / count
    dev = r - mean[g]
    # Equality is tested directly: r − mean is not exactly 0 in floating point (e.g. 0.1 × 3).
    high = torch.full_like(count, -torch.inf).scatter_reduce(0, g, r, "amax")
    low = torch.full_like(count, torch.inf).scatter_reduce(0, g, r, "amin")
    constant = (high == low)[g]
    if normalize_std:
        var = torch.zeros_like(count).index_add_(0, g, dev * dev) / (count - 1).clamp(min=1)
        dev = dev / (var.sqrt()[g] + eps)
    return torch.where(constant, torch.zeros_like(dev), dev)


def batch_advantages(rewards: Tensor, group_ids: Tensor, is_demo: Tensor, config: LossConfig) -> Tensor:
    """Advantages for an augmented batch: demos join their group only if ``config.demos_in_group``.

    Otherwise (e.g. ``sft_plus_rl``) the groups are the rollouts alone and demos get 0.
    """
    if config.demos_in_group:
        return group_advantages(rewards, group_ids, config.normalize_std, config.adv_eps)
    rollout = ~is_demo.bool()
    adv = torch.zeros_like(rewards, dtype=rewards.dtype if rewards.is_floating_point() else torch.float32)
    adv[rollout] = group_advantages(rewards[rollout], group_ids[rollout], config.normalize_std, config.adv_eps)
    return adv
