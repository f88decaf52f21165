"""SRFT's mathematics, pure torch: group advantages, the demo-augmented group, the loss, presets,
and the step-wide totals that make the loss exact under gradient accumulation.

Both backends call these functions; they know nothing about OpenRLHF, Ray, vLLM or DeepSpeed.
"""

from srft_openrlhf.algorithm.advantages import batch_advantages, group_advantages
from srft_openrlhf.algorithm.config import PRESETS, LossConfig
from srft_openrlhf.algorithm.groups import AugmentedGroups, Response, augment_groups
from srft_openrlhf.algorithm.losses import METRIC_TOKENS, RATIO_METRIC_TOKENS, ratio_stats, srft_loss
from srft_openrlhf.algorithm.totals import StepTotals, entropy_needed, step_totals

__all__ = [
    "METRIC_TOKENS",
    "PRESETS",
    "RATIO_METRIC_TOKENS",
    "AugmentedGroups",
    "LossConfig",
    "Response",
    "StepTotals",
    "augment_groups",
    "batch_advantages",
    "entropy_needed",
    "group_advantages",
    "ratio_stats",
    "srft_loss",
    "step_totals",
]
