"""SRFT's mathematics, pure torch: group advantages, the demo-augmented group, the loss, presets.

Both backends call these functions; they know nothing about OpenRLHF, Ray, vLLM or DeepSpeed.
"""

from srft_openrlhf.algorithm.advantages import batch_advantages, group_advantages
from srft_openrlhf.algorithm.config import PRESETS, LossConfig
from srft_openrlhf.algorithm.groups import AugmentedGroups, Response, augment_groups
from srft_openrlhf.algorithm.losses import srft_loss

__all__ = [
    "PRESETS",
    "AugmentedGroups",
    "LossConfig",
    "Response",
    "augment_groups",
    "batch_advantages",
    "group_advantages",
    "srft_loss",
]
