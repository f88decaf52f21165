"""SRFT's training step on OpenRLHF 0.11.2: the SRFT loss (Eq. 13 or a preset) over each optimizer step.

``srft_step_windows`` replaces ``ppo_actor.iter_grad_accum_global_norm`` and pairs each
micro-batch with the ``StepTotals`` of its optimizer step on every DP rank;
``SRFTActorPPOTrainer`` replaces ``ppo_actor.ActorPPOTrainer`` and trains each micro-batch on its
share of the step's loss (both assigned by ``patches.PATCHES``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ray import ppo_actor
from openrlhf.utils.loss_utils import _get_dp_group

from srft_openrlhf.algorithm import (
    METRIC_TOKENS,
    RATIO_METRIC_TOKENS,
    StepTotals,
    ratio_stats,
    srft_loss,
    step_totals,
)
from srft_openrlhf.kernels import token_logprobs_and_entropy
from srft_openrlhf.models import fused_forward, fused_head_unsupported
from srft_openrlhf.openrlhf import faults
from srft_openrlhf.openrlhf.experience import ENTROPY_SUM, sequence_advantages
from srft_openrlhf.openrlhf.samples import demo_flags, srft_config

logger = logging.getLogger(__name__)

_NOT_LOGGED = ("is_demo", ENTROPY_SUM)  # info keys that are bookkeeping, not per-sample metrics


def srft_step_windows(data_iter, strategy, accumulated_gradient: int, mask_fn=None):
    """Replaces ``iter_grad_accum_global_norm`` in ``ppo_actor``, whose ``ppo_train`` calls it
    with the same arguments: the same windows of ``accumulated_gradient`` micro-batches (one
    optimizer step; DeepSpeed's accumulation boundaries), each micro-batch paired with
    ``{"srft_totals": StepTotals of the window on every DP rank, "dp_size": ...}`` in place of
    OpenRLHF's token counts. ``mask_fn`` is not needed: the totals read mask, rewards, is_demo.

    The totals carry the step's entropy sums of demo and rollout tokens, from the experience
    maker's forward with the same weights θ_k (``ENTROPY_SUM``; DeepSpeed changes no weight
    inside the window), so the batch-scope weights of Eq. 8 / Eq. 12 are the step's.
    """
    dp_group = _get_dp_group(strategy)
    dp_size = dist.get_world_size(group=dp_group) if dist.is_available() and dist.is_initialized() else 1
    gas = max(int(accumulated_gradient), 1)
    window: list[Experience] = []
    for experience in data_iter:
        window.append(experience)
        if len(window) == gas:
            yield from _with_totals(window, dp_group, dp_size)
            window = []
    if window:  # a trailing partial step, as OpenRLHF's own iterator allows
        yield from _with_totals(window, dp_group, dp_size)


def experience_totals(experience: Experience) -> StepTotals:
    """``step_totals`` of a micro-batch, with its entropy sums (NaN where they were not computed)."""
    is_demo = demo_flags(experience)
    totals = step_totals(experience.action_mask, experience.rewards, is_demo)
    sums = experience.info.get(ENTROPY_SUM)
    if sums is None:
        return totals
    sums = (torch.stack(list(sums)) if isinstance(sums, list) else sums).double().reshape(-1).cpu()
    is_demo = is_demo.cpu()
    return dataclasses.replace(
        totals, demo_entropy_sum=float(sums[is_demo].sum()), rollout_entropy_sum=float(sums[~is_demo].sum())
    )


def _known(totals: StepTotals) -> StepTotals:
    """NaN entropy sums (rows whose entropy no weight needed) -> None (unknown)."""
    demo, rollout = totals.demo_entropy_sum, totals.rollout_entropy_sum
    nan_demo, nan_rollout = demo is not None and math.isnan(demo), rollout is not None and math.isnan(rollout)
    if not (nan_demo or nan_rollout):
        return totals
    return dataclasses.replace(
        totals, demo_entropy_sum=None if nan_demo else demo, rollout_entropy_sum=None if nan_rollout else rollout
    )


def _with_totals(window: list[Experience], dp_group, dp_size: int) -> Iterator[tuple[Experience, dict]]:
    parts = [experience_totals(e) for e in window]
    totals = sum(parts[1:], parts[0])
    if dp_size > 1:  # every DP rank's micro-batches are part of the same optimizer step
        ranks: list[StepTotals | None] = [None] * dp_size
        dist.all_gather_object(ranks, totals, group=dp_group)
        gathered = [r for r in ranks if r is not None]
        if len(gathered) != dp_size:
            raise RuntimeError(f"SRFT: all_gather_object returned step totals from {len(gathered)} of {dp_size} ranks")
        totals = sum(gathered[1:], gathered[0])
    totals = _known(totals)
    for experience in window:
        yield experience, {"srft_totals": totals, "dp_size": dp_size}


# srft_loss / ratio_stats metric -> the token count it is a mean over (None: one value per
# micro-batch; for the loss terms that is the micro-batch's share times gas · dp_size, whose mean
# is the step's loss).
_METRIC_WEIGHTS: dict[str, str | None] = {
    **dict.fromkeys(("loss", "loss_sft_demo", "loss_rl_demo", "loss_rl_rollout", "loss_kl", "loss_entropy_bonus")),
    **METRIC_TOKENS,
    **RATIO_METRIC_TOKENS,
}


class SRFTActorPPOTrainer(ppo_actor.ActorPPOTrainer):
    """OpenRLHF's actor trainer whose training step is the SRFT loss (Eq. 13 or a preset).

    Each micro-batch: token log-probs and entropy at the sampling temperature from the final
    hidden states and the LM head weight (``response_logprobs_and_entropy``; ``fused_head =
    False`` reads them from OpenRLHF's fp32 logits instead), ``srft_loss`` with the
    run's ``LossConfig`` and the optimizer step's ``StepTotals`` (``srft_step_windows``), then
    DeepSpeed's backward and step exactly as OpenRLHF calls them. The micro-batch losses are
    shares of the step's loss that must add up, so the loss given to DeepSpeed is multiplied
    by what DeepSpeed divides it by (``training_step``).
    The SRFT metrics (w_sft, w_rl, each term, entropy of demos / rollouts) are averaged over
    the step, each over the tokens it describes, and returned with OpenRLHF's status, which
    its trainer sends to wandb / tensorboard.
    """

    fused_head = True  # False: the [B, T, V] fp32 logits of OpenRLHF's Actor (the path before the fused head)

    def ppo_train(self, kl_ctl: float):
        self._srft_sums: dict[str, list[float]] = {}
        self._srft_step_totals: StepTotals | None = None
        status = super().ppo_train(kl_ctl)
        status.update(self._srft_step_metrics())
        return status

    def training_step(self, experience: Experience, kl_ctl: float, step: int, loss_batch_info=None) -> dict:
        if not loss_batch_info or "srft_totals" not in loss_batch_info:
            raise RuntimeError(
                "SRFT: the training step got no StepTotals; ppo_train must pair micro-batches "
                "through srft_step_windows (patches.install(); dynamic batching is not supported)"
            )
        config = srft_config(self.args).loss
        self.actor.train()
        log_probs, entropy, aux_loss = self.token_logprobs_and_entropy(experience, config.entropy_bonus > 0)
        is_demo = demo_flags(experience).to(log_probs.device)
        share, metrics = srft_loss(
            log_probs,
            experience.action_log_probs,
            entropy,
            experience.action_mask,
            sequence_advantages(experience),
            experience.rewards,
            is_demo,
            config,
            ref_log_probs=experience.base_action_log_probs if config.kl_coef > 0 else None,
            totals=loss_batch_info["srft_totals"],
        )
        # The gap between the engine's π_old and log πθ_k: every micro-batch of the window is scored
        # with θ_k (DeepSpeed steps at the window's end), so on-policy this is the engine-vs-trainer
        # numerics, for free from this forward.
        rollout_tokens = experience.action_mask.bool() & ~is_demo[:, None].to(experience.action_mask.device)
        metrics.update(ratio_stats(log_probs, experience.action_log_probs, rollout_tokens))
        # The shares must SUM over the step's micro-batches of every DP rank. DeepSpeedEngine.backward
        # divides the loss by its gradient_accumulation_steps and the DP all-reduce averages over
        # dp_size ranks: multiply both back (as OpenRLHF's aggregate_loss does with dp_size and
        # batch_num_tokens / gas).
        scale = self.actor.model.gradient_accumulation_steps() * loss_batch_info["dp_size"]
        loss = share * scale
        if self.aux_loss:
            loss = loss + aux_loss * self.args.actor.aux_loss_coef
        self.strategy.backward(loss, self.actor, self.actor_optim)
        if faults.armed() and self.actor.model.is_gradient_accumulation_boundary():
            faults.reached("optimizer_step", self.actor.model.global_steps + 1, dist.get_rank())
        self.strategy.optimizer_step(self.actor_optim, self.actor, self.actor_scheduler, name="actor")
        if self.ema_model:
            self.strategy.moving_average(self.actor, self.ema_model, self.ema_beta, "cuda")
        self._record_srft_metrics(metrics, scale)
        self._srft_step_totals = loss_batch_info["srft_totals"]
        return self._openrlhf_status(experience, loss)

    def token_logprobs_and_entropy(self, experience: Experience, entropy_grad: bool):
        """log πθ and H(πθ) of each response token [B, A], plus the MoE aux loss (or None)."""
        return self.response_logprobs_and_entropy(
            experience.sequences, experience.attention_mask, experience.action_mask, entropy_grad
        )

    def response_logprobs_and_entropy(
        self, sequences: torch.Tensor, attention_mask: torch.Tensor, action_mask: torch.Tensor, entropy_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """log πθ(y_t) and H(πθ) [B, A] at the response tokens ``action_mask`` (the last A positions;
        0 elsewhere under the fused head), and the MoE aux loss (None for a dense model), for
        π = softmax(logits / T) with T the actor's (sampling) temperature, as OpenRLHF's ``Actor``
        scores the rollouts.

        ``fused_head`` (default): the actor's model runs its forward as OpenRLHF's ``Actor.forward``
        calls it (the same model call, position ids from the attention mask), with the LM head
        replaced by the fused log-prob + entropy head (``models.fused_forward``), so the [B, T, V]
        logits are never built; DeepSpeed (ZeRO-2 or ZeRO-3) sees the head's computation as the
        head module's own forward. Otherwise, and where the head is not a plain linear layer
        (``models.fused_head_unsupported``, logged once), OpenRLHF's ``Actor`` returns the fp32
        logits divided by T and the token kernel reads them.
        """
        if not self._fused_head_used():
            return self._openrlhf_logits_path(sequences, attention_mask, action_mask.shape[1], entropy_grad)
        if getattr(self.actor, "packing_samples", False) or self.strategy.ring_attn_group is not None:
            raise RuntimeError(
                "SRFT: the fused LM head scores padded [B, T] batches; packing and ring attention are not supported"
            )
        width = action_mask.shape[1]
        scored = torch.zeros_like(sequences[:, 1:], dtype=torch.bool)
        scored[:, -width:] = action_mask.bool()
        # OpenRLHF's Actor.forward: positions count the real tokens (padding gets 1, never scored)
        positions = attention_mask.long().cumsum(-1) - 1
        positions.masked_fill_(attention_mask == 0, 1)
        log_probs, entropy, output = fused_forward(
            self.actor.model, sequences, attention_mask, positions, scored, self.actor.temperature, entropy_grad
        )
        return log_probs[:, -width:], entropy[:, -width:], getattr(output, "aux_loss", None)

    def _fused_head_used(self) -> bool:
        """``fused_head`` where the actor's LM head allows it (the reason why not logged once)."""
        if not self.fused_head:
            return False
        if "_fused_head_reason" not in self.__dict__:
            model = self.actor.model
            # the HF model inside the DeepSpeed engine (whose own .config is DeepSpeed's)
            self._fused_head_reason = fused_head_unsupported(getattr(model, "module", model))
            if self._fused_head_reason is not None:
                logger.warning(
                    "SRFT: log-probs from OpenRLHF's fp32 logits, not the fused head: %s", self._fused_head_reason
                )
        return self._fused_head_reason is None

    def _openrlhf_logits_path(
        self, sequences: torch.Tensor, attention_mask: torch.Tensor, width: int, entropy_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        output = self.actor(
            sequences,
            None,
            attention_mask=attention_mask,
            return_output=True,
            ring_attn_group=self.strategy.ring_attn_group,
        )
        # Targets rolled by one (as OpenRLHF does) rather than slicing the logits: the kernel's
        # in-place backward then reuses the logits buffer instead of a padded copy of it.
        log_probs, entropy = token_logprobs_and_entropy(
            output["logits"], torch.roll(sequences, -1, dims=1), entropy_grad=entropy_grad, inplace_backward=True
        )
        return log_probs[:, :-1][:, -width:], entropy[:, :-1][:, -width:], getattr(output, "aux_loss", None)

    def _record_srft_metrics(self, metrics: dict[str, float], scale: float) -> None:
        sums = self.__dict__.setdefault("_srft_sums", {})  # reset by ppo_train at each step
        counts = {
            "n_tokens": metrics["n_tokens"],
            "n_demo_tokens": metrics["n_demo_tokens"],
            "n_rollout_tokens": metrics["n_tokens"] - metrics["n_demo_tokens"],
            None: 1.0,
        }
        for name, count_key in _METRIC_WEIGHTS.items():
            # a ratio metric is absent from a micro-batch without rollout tokens: weight 0 (every
            # rank still sends every name to the step's all-reduce)
            weight = counts[count_key] if name in metrics else 0.0
            value = metrics.get(name, 0.0) * (scale if name.startswith("loss") else 1.0)  # a share of the step's loss
            total = sums.setdefault(name, [0.0, 0.0])
            total[0] += value * weight
            total[1] += weight

    def _srft_step_metrics(self) -> dict[str, float]:
        """Weighted means over the step's micro-batches of every rank, as ``srft/<name>``; and the
        step's StepTotals, with whether every rank used the same (``srft/step_totals_ranks_agree``)."""
        summed = self.strategy.all_reduce(
            {name: torch.tensor(v, dtype=torch.float64) for name, v in self._srft_sums.items()}, op="sum"
        )
        out = {}
        for name, value in summed.items():
            total, weight = torch.as_tensor(value).tolist()
            out[f"srft/{name}"] = total / weight if weight > 0 else 0.0
        totals = getattr(self, "_srft_step_totals", None)
        if totals is not None:
            values = torch.tensor(
                [
                    float(getattr(totals, f.name) if getattr(totals, f.name) is not None else -1.0)
                    for f in dataclasses.fields(totals)
                ],
                dtype=torch.float64,
            )
            high = self.strategy.all_reduce(values.clone(), op="max")
            low = -self.strategy.all_reduce(-values, op="max")
            out["srft/step_totals_ranks_agree"] = float(torch.equal(high, low))
            out["srft/step_response_tokens"] = float(totals.response_tokens)
            out["srft/step_sequences"] = float(totals.sequences)
            if totals.h_demo is not None:
                out["srft/step_entropy_demo"] = totals.h_demo
            if totals.h_roll is not None:
                out["srft/step_entropy_rollout"] = totals.h_roll
        return out

    def _openrlhf_status(self, experience: Experience, loss: torch.Tensor) -> dict:
        """The step status in the form OpenRLHF's ``ppo_train`` reduces (metrics + weights)."""
        metrics: dict[str, Any] = {
            "policy_loss": loss.detach(),
            "actor_lr": self.actor_scheduler.get_last_lr()[0],
            "actor_grad_norm": self.strategy.get_grad_norm(self.actor),
        }
        # "sample": micro-batches hold equally many samples, so ppo_train's mean of these scaled shares
        # (training_step) is the step's loss
        weights: dict[str, str | None] = {"policy_loss": "sample", "actor_lr": None, "actor_grad_norm": None}
        for key, value in experience.info.items():
            if key in _NOT_LOGGED:
                continue
            if isinstance(value, list):
                value = torch.stack([torch.as_tensor(v) for v in value]).float()
            if isinstance(value, torch.Tensor):
                metrics[key] = value
                weights[key] = "token" if value.dim() == 0 else "sample"
        for name in ("response_length", "truncated", "total_length"):
            value = getattr(experience, name)
            if isinstance(value, torch.Tensor) and name not in metrics:
                metrics[name] = value
                weights[name] = "sample"
        return {
            "metrics": metrics,
            "weights": weights,
            "num_samples": float(experience.action_mask.shape[0]),
            "num_action_tokens": float(experience.action_mask.sum().item()),
        }
