"""SRFT's experiences on OpenRLHF 0.11.2: π_old, the entropy sums and the advantages (Eq. 7).

``SRFTExperienceMaker`` replaces OpenRLHF's ``RemoteExperienceMaker`` (``patches.PATCHES``): old
log-probs are the rollout engine's (0 for demos), the actor's forward only computes the entropy
sums the step's batch-scope weights need (``ENTROPY_SUM``, read by ``actor.srft_step_windows``),
and the advantages are ``batch_advantages`` over each augmented group.
"""

from __future__ import annotations

import math

import ray
import torch
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
from openrlhf.trainer.ppo_utils.length_penalty import apply_length_penalties

from srft_openrlhf.algorithm import batch_advantages, entropy_needed
from srft_openrlhf.openrlhf.layout import check_groups, layout_of
from srft_openrlhf.openrlhf.samples import demo_flags, srft_config

ENTROPY_SUM = "srft_entropy_sum"  # info key: Σ H over a sample's response tokens under θ_k (NaN: not computed)


def sequence_advantages(experience: Experience) -> torch.Tensor:
    """Â per sequence [B] from OpenRLHF's per-token advantages [B, A] (constant over the response)."""
    mask = experience.action_mask.float()
    return (experience.advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)


class SRFTExperienceMaker(RemoteExperienceMaker):
    """OpenRLHF's experience maker with SRFT's old log-probs and Eq. 7 over the augmented group.

    Old log-probs (π_old): a rollout's are the rollout engine's sampling log-probs (the policy
    that generated it, one step stale under async), as in the local backend; a demo's are 0
    (πβ = 1, Eq. 9-10). OpenRLHF's actor forward with the trainer's weights would give ratio 1
    on stale data. The actor forward runs only on the rows whose entropy the step's batch-scope
    weights need (``entropy_needed``) and returns each row's entropy sum (``ENTROPY_SUM``),
    which ``srft_step_windows`` adds up over the step. The reference model's forward
    (``loss.kl_coef > 0``) is OpenRLHF's.
    """

    @torch.no_grad()
    def make_experience(self, samples_list: list[Experience]) -> list[Experience]:
        args = self.strategy.args
        need_demo, need_rollout = entropy_needed(srft_config(args).loss)
        flags = [demo_flags(s) for s in samples_list]
        rows = [(f & need_demo) | (~f & need_rollout) for f in flags]
        colocated = args.train.colocate_all or args.train.colocate_actor_ref
        batch = {
            "sequences": [s.sequences for s in samples_list],
            "action_mask": [s.action_mask for s in samples_list],
            "attention_mask": [s.attention_mask for s in samples_list],
        }
        entropy_ref = None
        if any(bool(r.any()) for r in rows):
            entropy_ref = self._dispatch(self.actor_model_group, "srft_entropy_sums", colocated, **batch, rows=rows)
        base_ref = None
        if self.initial_model_group is not None:
            base_ref = self._dispatch(self.initial_model_group, "forward", colocated, **batch)
        duplicate = args.ds.ring_attn_size * args.ds.tensor_parallel_size
        entropy_sums = self._flatten_results(entropy_ref, duplicate) if entropy_ref else [None] * len(samples_list)
        base = self._flatten_results(base_ref, duplicate) if base_ref else [None] * len(samples_list)
        for s, is_demo, sums, base_log_probs in zip(samples_list, flags, entropy_sums, base):
            s.action_log_probs = srft_old_log_probs(s, is_demo)
            s.base_action_log_probs = base_log_probs if args.algo.kl.use_loss else None
            s.values = None
            s.kl = torch.zeros_like(s.action_log_probs)  # SRFT's KL is a loss term (loss.kl_coef), not a reward
            s.info["kl"] = torch.zeros(len(is_demo))
            s.info["logprobs_diff"] = torch.zeros(len(is_demo))
            s.info[ENTROPY_SUM] = (
                sums if sums is not None else torch.full((len(is_demo),), math.nan, dtype=torch.float64)
            )
        return samples_list

    def _dispatch(self, group, method: str, sync: bool, **batch):
        """``group.<method>`` on every micro-batch; colocated models run one at a time (as OpenRLHF's
        ``_dispatch_forward``, which is fixed to the method ``forward``)."""
        ref = group.async_run_method_batch(method_name=method, **batch)
        if sync:
            ray.get(ref)
            ray.get(group.async_run_method(method_name="empty_cache"))
        return ref

    @torch.no_grad()
    def compute_advantages_and_returns(self, experiences: list[Experience]) -> list[Experience]:
        """Â = ``batch_advantages`` (Eq. 7) per sample, for every response token.

        A sample's group is its position in the step's sample list (``experience.index``,
        which OpenRLHF keeps through its micro-batching) divided by the group size.
        """
        cfg = srft_config(self.args)
        for experience in experiences:
            experience.rewards = experience.rewards.float()
        apply_length_penalties(experiences, self.args)  # OpenRLHF's optional reward shaping, off by default

        sizes = [len(experience.index) for experience in experiences]
        group_ids = torch.tensor([i for experience in experiences for i in experience.index]) // layout_of(cfg).size
        rewards = torch.cat([experience.rewards for experience in experiences])
        is_demo = torch.cat([demo_flags(experience) for experience in experiences])
        check_groups(group_ids, is_demo, layout_of(cfg))
        advantages = batch_advantages(rewards, group_ids, is_demo, cfg.loss)
        group_std = group_reward_std(rewards, group_ids)
        for experience, adv, std in zip(experiences, advantages.split(sizes), group_std.split(sizes)):
            experience.advantages = adv[:, None] * experience.action_mask.float()
            experience.returns = experience.advantages.clone()
            experience.info["return"] = adv
            experience.info["group_reward_std"] = std
            experience.kl = None
        return experiences


def srft_old_log_probs(samples: Experience, is_demo: torch.Tensor) -> torch.Tensor:
    """π_old per response token [B, A]: the rollout engine's log-probs, 0 for demos (πβ = 1).

    Out of place: the samples' tensors may be Ray's zero-copy views of the object store."""
    if samples.rollout_log_probs is None:
        if bool((~is_demo).any()):
            raise RuntimeError(
                "SRFT: rollouts without the engine's sampling log-probs (π_old); the launcher asks "
                "vLLM for them with --algo.advantage.is_correction_level"
            )
        return torch.zeros(samples.action_mask.shape)
    old = samples.rollout_log_probs.float() * samples.action_mask.float()
    return old.masked_fill(is_demo.reshape(-1, 1).to(old.device), 0.0)


def group_reward_std(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Per sample, the (unbiased) std of its group's rewards: 0 marks groups with no signal."""
    count = torch.bincount(group_ids).double()
    mean = torch.bincount(group_ids, weights=rewards.double()) / count.clamp(min=1)
    dev = rewards.double() - mean[group_ids]
    var = torch.bincount(group_ids, weights=dev * dev) / (count - 1).clamp(min=1)
    return var.sqrt()[group_ids].float()
