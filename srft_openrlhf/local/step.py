"""One optimizer step of the local backend: the loss of each schedule phase and ``optimize``.

Micro-batches: the step's batch is cut into ``train.micro_batch_size`` sequences and the
gradients of the micro-batch losses are summed before one optimizer step. Every micro-batch
divides by the step's token and sequence counts (``StepTotals``), so the summed loss is the
loss of the whole step in one batch. The batch-scope entropy weights w_SFT, w_RL (Eq. 8, 12)
use the step's mean entropies: a step of several micro-batches first runs one
gradient-free forward over them (``micro_batch_entropy``); with one micro-batch per step
(the toy configs) the loss's own forward gives them. Advantages are always computed over
whole groups first.

The cluster tests compare OpenRLHF's multi-rank step with ``optimize`` (the reference).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from srft_openrlhf.algorithm import (
    METRIC_TOKENS,
    RATIO_METRIC_TOKENS,
    LossConfig,
    entropy_needed,
    ratio_stats,
    srft_loss,
    step_totals,
)
from srft_openrlhf.config import SRFTConfig
from srft_openrlhf.local.rollout import MicroBatch, TrainBatch


def phase_loss(cfg: SRFTConfig, step: int) -> LossConfig:
    """The loss of step ``step`` (0-based) under ``train.schedule``."""
    schedule = cfg.train.schedule
    if schedule == "joint":
        return cfg.loss
    first, second = ("sft", "grpo") if schedule == "sft_then_rl" else ("grpo", "sft")
    return LossConfig.from_preset(first if step < cfg.train.switch_step else second)


def phase_losses(cfg: SRFTConfig) -> list[LossConfig]:
    if cfg.train.schedule == "joint":
        return [cfg.loss]
    return [phase_loss(cfg, 0), phase_loss(cfg, cfg.train.switch_step)]


# The token count each per-micro-batch mean of ``srft_loss`` and ``ratio_stats`` is taken over.
MEAN_OVER = {**METRIC_TOKENS, **RATIO_METRIC_TOKENS}


def optimize(
    engine,
    batch: TrainBatch,
    loss_cfg: LossConfig,
    *,
    micro_batch_size: int,
    pad_id: int,
    temperature: float,
    reference=None,
) -> dict[str, float]:
    """One optimizer step on ``batch``: srft_loss per micro-batch with the step's
    denominators and, for batch-scope entropy weights, the step's mean entropies (one
    gradient-free forward first when the step has several micro-batches), gradients summed.
    Returns the metrics of the step."""
    chunks = list(batch.micro_batches(micro_batch_size, pad_id, engine.device))
    step_entropy = len(chunks) > 1 and any(entropy_needed(loss_cfg))
    parts = [
        step_totals(
            mb.mask, mb.rewards, mb.is_demo, micro_batch_entropy(engine, mb, temperature) if step_entropy else None
        )
        for mb in chunks
    ]
    step = sum(parts[1:], parts[0])
    totals: dict[str, float] = defaultdict(float)
    weighted: dict[str, float] = defaultdict(float)  # Σ (micro-batch mean × its token count)
    for mb in chunks:
        log_probs, entropy = engine.token_logprobs(
            mb.input_ids, mb.attention_mask, temperature=temperature, entropy_grad=loss_cfg.entropy_bonus > 0
        )
        ref = reference(mb.input_ids, mb.attention_mask, temperature=temperature) if loss_cfg.kl_coef > 0 else None
        loss, metrics = srft_loss(
            log_probs,
            mb.old_log_probs,
            entropy,
            mb.mask,
            mb.advantages,
            mb.rewards,
            mb.is_demo,
            loss_cfg,
            ref,
            totals=step,
        )
        engine.backward(loss)
        metrics.update(ratio_stats(log_probs.detach(), mb.old_log_probs, mb.mask & ~mb.is_demo[:, None]))
        metrics["n_rollout_tokens"] = metrics["n_tokens"] - metrics["n_demo_tokens"]
        for key, value in metrics.items():
            # token counts and loss shares add up over micro-batches, maxima are maxima, a
            # mean over a token set is weighted by the set's tokens in each micro-batch
            if key.startswith(("n_", "loss")):
                totals[key] += value
            elif key.endswith("_max"):
                totals[key] = max(totals.get(key, value), value)
            else:
                weighted[key] += value * metrics[MEAN_OVER[key]]
    for key, value in weighted.items():
        totals[key] = value / max(totals[MEAN_OVER[key]], 1)
    del totals["n_rollout_tokens"]
    totals.update(engine.step())
    return dict(totals)


@torch.no_grad()
def micro_batch_entropy(engine, mb: MicroBatch, temperature: float) -> torch.Tensor:
    """H(πθ) at every position of ``mb`` with the weights of the step, before its updates."""
    _, entropy = engine.token_logprobs(mb.input_ids, mb.attention_mask, temperature=temperature)
    return entropy
