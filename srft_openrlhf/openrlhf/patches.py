"""SRFT's changes to OpenRLHF 0.11.2: subclasses, assigned into OpenRLHF's modules.

Importing this module imports OpenRLHF (and so ray, vllm, deepspeed) and first checks
``HOOK_POINTS`` against it (``hooks.check_hook_points``), so that an OpenRLHF that moved
something fails here, naming it. The group layout the samples and advantages follow is
``layout.layout_of``, the launcher's too (this module does not import the launcher).

How the subclasses reach OpenRLHF's code without a fork. OpenRLHF builds its objects through
module globals (``SamplesGenerator(...)`` in ``ppo_trainer``, ``ActorPPOTrainer(...)`` in
``ppo_actor``, ...), so assigning a subclass to that global is enough, in the process where
the object is built. Those processes are Ray actors; their classes are replaced the same way
(``unwrap`` the Ray actor class to the Python class, subclass, ``rewrap`` with the same Ray
options). Every SRFT Ray actor calls ``install()`` first thing in its ``__init__`` (the
``InstallFirst`` mixin), so the assignments happen in exactly the processes that build OpenRLHF objects: the driver
(``install_driver``), the trainer, the generator and the policy actors. (A job-wide
``worker_process_setup_hook`` would also run in the vLLM engine processes, and this module
imports DeepSpeed, which OpenRLHF keeps out of them.) The SRFT classes below are module-level
names, so Ray pickles them by reference and every worker imports this module to use them.

The SRFT config reaches every actor as ``args.srft`` (``install_driver`` wraps OpenRLHF's
``get_strategy``; the strategy, and with it ``args``, is sent to every actor).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openrlhf.utils
import ray
import torch
import torch.distributed as dist
from openrlhf.trainer import ppo_trainer, ppo_trainer_async
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
from openrlhf.trainer.ppo_utils.length_penalty import apply_length_penalties
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
from openrlhf.trainer.ray import ppo_actor
from openrlhf.trainer.ray.vllm_engine import batch_vllm_engine_call
from openrlhf.utils.loss_utils import _get_dp_group

from srft_openrlhf.algorithm import (
    METRIC_TOKENS,
    RATIO_METRIC_TOKENS,
    StepTotals,
    batch_advantages,
    entropy_needed,
    ratio_stats,
    srft_loss,
    step_totals,
)
from srft_openrlhf.config import SRFTConfig
from srft_openrlhf.data import encode_example
from srft_openrlhf.kernels import token_logprobs_and_entropy
from srft_openrlhf.openrlhf.hooks import HookPointError as HookPointError  # re-exported, as before the split
from srft_openrlhf.openrlhf.hooks import check_hook_points, rewrap, unwrap
from srft_openrlhf.openrlhf.layout import check_groups, layout_of
from srft_openrlhf.openrlhf.reward_func import decode_label, make_reward_func
from srft_openrlhf.runs import run_files
from srft_openrlhf.runs.records import append_record

check_hook_points()  # before subclassing, so a moved hook reads as a HookPointError, not an AttributeError


# ----------------------------------------------------------------------------- helpers


def srft_config(args: Any) -> SRFTConfig:
    cfg = getattr(args, "srft", None)
    if not isinstance(cfg, SRFTConfig):
        raise RuntimeError(
            "OpenRLHF's args carry no SRFT config (args.srft): start OpenRLHF through "
            "`srft train --backend openrlhf`, which attaches it"
        )
    return cfg


def demo_flags(experience: Experience) -> torch.Tensor:
    """``info["is_demo"]`` as a bool tensor [B]: a tensor in the experience maker, a list of
    0-d tensors once OpenRLHF's replay buffer has split and re-batched the experience."""
    flags = experience.info["is_demo"]
    return (torch.stack(list(flags)) if isinstance(flags, list) else flags).bool().reshape(-1)


def sequence_advantages(experience: Experience) -> torch.Tensor:
    """Â per sequence [B] from OpenRLHF's per-token advantages [B, A] (constant over the response)."""
    mask = experience.action_mask.float()
    return (experience.advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)


class DemoTable:
    """Line k of ``demos.jsonl`` holds ``{"demonstrations": [...]}`` of example k (the ``row``
    in its label). Offsets are indexed once and lines read on demand: 46k R1 traces are ~1 GB."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offsets: list[int] = []
        with self.path.open("rb") as f:
            offset = 0
            for line in f:
                self.offsets.append(offset)
                offset += len(line)

    def __getitem__(self, row: int) -> list[str]:
        with self.path.open("rb") as f:
            f.seek(self.offsets[row])
            return json.loads(f.readline())["demonstrations"]


# ----------------------------------------------------------------------------- 1. samples


class SRFTSamplesGenerator(SamplesGenerator):
    """Eq. 6 on OpenRLHF's samples: each prompt's rollouts from vLLM, then its demonstration(s).

    Demos are tokenised by ``encode_example`` after the rollouts' own prompt ids (so the group
    shares one context x), scored by the run's reward function like any rollout (a demo is
    not assumed correct), marked ``info["is_demo"]``, and carry rollout log-probs 0 (πβ = 1).
    Rollouts also get ``info["is_demo"] = False``; the group layout is ``layout_of(cfg)``.
    """

    def __init__(self, strategy, prompts_dataloader, eval_dataloader, tokenizer, vllm_engines) -> None:
        super().__init__(strategy, prompts_dataloader, eval_dataloader, tokenizer, vllm_engines)
        self.srft = srft_config(self.args)
        self.layout = layout_of(self.srft)
        self.demo_table = DemoTable(run_files(self.srft.logging.output_dir).demos) if self.layout.demos else None
        rollout = self.srft.rollout
        self.reward_func = make_reward_func(
            rollout.reward, rollout.reward_mode, rollout.reward_timeout_s, rollout.reward_workers
        )
        # Demonstrations are encoded and graded in this thread while the engines generate (started
        # when the prompts are dispatched): in async mode generate_samples runs under OpenRLHF's
        # vLLM lock, which the weight broadcast waits for.
        self._demo_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="srft-demos")
        self._demos_ahead: dict[tuple[str, str], list[Future]] = {}
        self._training_call = False

    @torch.no_grad()
    def generate_samples(self, **generate_kwargs):
        self._training_call, self._demos_ahead = True, {}
        try:
            samples, filter_pass_rate, prompts_consumed, exhausted = super().generate_samples(
                **{**generate_kwargs, "n_samples_per_prompt": self.layout.rollouts}
            )
        finally:
            self._training_call = False
        check_samples(samples)
        return self.add_demonstrations(samples), filter_pass_rate, prompts_consumed, exhausted

    def _dispatch_prompts_to_vllm(self, prompts, labels, *, images=None, **generate_kwargs):
        refs = super()._dispatch_prompts_to_vllm(prompts, labels, images=images, **generate_kwargs)
        if self._training_call and self.layout.demos:
            for prompt, label in zip(prompts, labels):
                future = self._demo_thread.submit(self.graded_demonstrations, prompt, label)
                self._demos_ahead.setdefault((prompt, label), []).append(future)
        return refs

    def add_demonstrations(self, samples: list[Experience]) -> list[Experience]:
        """[r r r r][r r r r]... -> [r r r r d][r r r r d]... (contiguous groups of one prompt)."""
        n = self.layout.rollouts
        if len(samples) % n:
            raise RuntimeError(f"SRFT: {len(samples)} rollouts are not whole groups of {n} per prompt")
        groups = [samples[i : i + n] for i in range(0, len(samples), n)]
        for group in groups:
            if len({s.prompts[0] for s in group}) != 1:
                raise RuntimeError(
                    "SRFT: a prompt's rollouts are not contiguous in OpenRLHF's samples; "
                    "the group layout needs them to be (see HOOK_POINTS)"
                )
            for s in group:
                s.info["is_demo"] = torch.tensor([False])
        if not self.layout.demos:
            return samples
        demos = [self.demonstration_samples(group[0]) for group in groups]
        return [s for group, group_demos in zip(groups, demos) for s in group + group_demos]

    def demonstration_samples(self, rollout: Experience) -> list[Experience]:
        """The ``layout.demos`` demo samples of a rollout's prompt, after its rollouts' prompt ids."""
        key = (rollout.prompts[0], rollout.labels[0])
        ahead = self._demos_ahead.get(key)
        graded = ahead.pop(0).result() if ahead else self.graded_demonstrations(*key)
        prompt_ids = rollout_prompt_ids(rollout)
        return [
            demo_experience(rollout, prompt_ids or ids[0], ids[1], truncated, scored, 0)
            for ids, truncated, scored in graded
        ]

    def graded_demonstrations(self, prompt: str, label: str) -> list[tuple[tuple[list[int], list[int]], bool, dict]]:
        """((prompt ids, demo ids), truncated, reward dict) per demonstration of the prompt's example,
        tokenised by ``encode_example`` and rewarded by the run's reward function."""
        cfg = self.srft.data
        _, row = decode_label(label)
        assert self.demo_table is not None  # called only when layout.demos > 0, which loads the table
        if row is None:
            raise RuntimeError(
                f"SRFT: the label {label!r:.80} carries no training row, so its demonstrations are unknown"
            )
        texts = self.demo_table[row][: self.layout.demos]
        if len(texts) < self.layout.demos:
            raise RuntimeError(
                f"SRFT: example {row} has {len(texts)} demonstration(s), {self.layout.demos} per group are configured"
            )
        out: list[tuple[tuple[list[int], list[int]], bool, dict]] = []
        for text in texts:
            encoded = encode_example(
                self.tokenizer,
                prompt,
                text,
                cfg.max_prompt_len,
                cfg.max_response_len,
                where=f"{cfg.train} example {row}",
            )
            assert encoded.demo_ids is not None  # encode_example encodes the demonstration text it is given
            query = self.tokenizer.decode(encoded.prompt_ids + encoded.demo_ids, skip_special_tokens=False)
            out.append(
                (
                    (encoded.prompt_ids, encoded.demo_ids),
                    encoded.demo_truncated,
                    self.reward_func([query], [prompt], [label]),
                )
            )
        return out


def check_samples(samples: list[Experience]) -> None:
    """Every rollout came back with a reward and its sampling log-probs, or fail naming its prompt.

    OpenRLHF's rollout executor logs and swallows a reward-function failure, leaving the rollout
    without a reward, which would otherwise fail much later in batching."""
    for s in samples:
        if s.rewards is None:
            raise RuntimeError(
                f"SRFT: a rollout of the prompt {s.prompts[0][-300:]!r} (label {s.labels[0]!r}) came "
                "back without a reward: the reward function failed in the rollout engine (its log "
                "says '[SingleTurnExecutor] Failed to fetch reward')"
            )
        if s.rollout_log_probs is None:
            raise RuntimeError(
                f"SRFT: a rollout of the prompt {s.prompts[0][-300:]!r} came back without the engine's "
                "log-probs, which SRFT uses as π_old (the launcher asks for them with "
                "--algo.advantage.is_correction_level; start runs with `srft train`)"
            )


def rollout_prompt_ids(rollout: Experience) -> list[int]:
    """The prompt token ids vLLM generated from: the sequence up to the first response token."""
    response = torch.nonzero(rollout.action_mask[0]).flatten()
    if response.numel() == 0:
        return []
    return rollout.sequences[0, : int(response[0]) + 1].tolist()


def demo_experience(
    rollout: Experience, prompt_ids: list[int], demo_ids: list[int], truncated: bool, scored: dict, i: int
) -> Experience:
    """A demonstration as an OpenRLHF sample, laid out like ``_process_response_into_experience``
    lays out a rollout; its ``info`` has the same keys as the rollout's (OpenRLHF batches
    samples key by key), zero where a key has no meaning for a demo."""
    sequence = torch.tensor(prompt_ids + demo_ids, dtype=torch.long)
    length = sequence.numel()
    action_mask = torch.zeros(length, dtype=torch.long)
    action_mask[len(prompt_ids) :] = 1
    reward = scored["rewards"][i : i + 1].float()
    score = scored["scores"][i : i + 1].float()
    info = {key: torch.zeros_like(value) for key, value in rollout.info.items()}
    values = {"reward": reward, "score": score, "is_demo": torch.tensor([True])}
    values.update({key: value[i : i + 1] for key, value in scored.get("extra_logs", {}).items()})
    info.update({key: value for key, value in values.items() if key in info})
    return Experience(
        sequences=sequence[None],
        attention_mask=torch.ones(1, length, dtype=torch.long),
        action_mask=action_mask[1:][None],
        rollout_log_probs=torch.zeros(1, length - 1) if rollout.rollout_log_probs is not None else None,  # πβ = 1
        prompts=list(rollout.prompts),
        labels=list(rollout.labels),
        images=[None],
        mm_train_inputs=[None],
        rewards=reward.clone(),
        scores=score.clone() if rollout.scores is not None else None,
        response_length=torch.tensor([len(demo_ids)]),
        truncated=torch.tensor([truncated]),
        total_length=torch.tensor([float(length)]),
        info=info,
    )


# ----------------------------------------------------------------------------- 2. experience


ENTROPY_SUM = "srft_entropy_sum"  # info key: Σ H over a sample's response tokens under θ_k (NaN: not computed)
_NOT_LOGGED = ("is_demo", ENTROPY_SUM)  # info keys that are bookkeeping, not per-sample metrics


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


# ----------------------------------------------------------------------------- 3. actor loss


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

    Each micro-batch: logits from OpenRLHF's ``Actor`` (fp32, divided by the sampling
    temperature), token log-probs and entropy from the fused kernel, ``srft_loss`` with the
    run's ``LossConfig`` and the optimizer step's ``StepTotals`` (``srft_step_windows``), then
    DeepSpeed's backward and step exactly as OpenRLHF calls them. The micro-batch losses are
    shares of the step's loss that must add up, so the loss given to DeepSpeed is multiplied
    by what DeepSpeed divides it by (``training_step``).
    The SRFT metrics (w_sft, w_rl, each term, entropy of demos / rollouts) are averaged over
    the step, each over the tokens it describes, and returned with OpenRLHF's status, which
    its trainer sends to wandb / tensorboard.
    """

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
        self.strategy.optimizer_step(self.actor_optim, self.actor, self.actor_scheduler, name="actor")
        if self.ema_model:
            self.strategy.moving_average(self.actor, self.ema_model, self.ema_beta, "cuda")
        self._record_srft_metrics(metrics, scale)
        self._srft_step_totals = loss_batch_info["srft_totals"]
        return self._openrlhf_status(experience, loss)

    def token_logprobs_and_entropy(self, experience: Experience, entropy_grad: bool):
        """log πθ and H(πθ) of each response token [B, A], plus the MoE aux loss (or None)."""
        return self.response_logprobs_and_entropy(
            experience.sequences, experience.attention_mask, experience.action_mask.shape[1], entropy_grad
        )

    def response_logprobs_and_entropy(
        self, sequences: torch.Tensor, attention_mask: torch.Tensor, width: int, entropy_grad: bool
    ):
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


# ----------------------------------------------------------------------------- Ray actors


class _SRFTTrainerLogs:
    """Trainer mixin: rollout statistics without the demos, and the run's ``metrics.jsonl``.

    OpenRLHF's per-step status (``reward``, ``response_length``, ... reduced by the actors over
    every sample) would mix demonstrations in; ``train_step`` merges these rollout statistics
    last, so the names a GRPO run logs describe the rollouts only here too, and the demos are
    reported apart (``demo/*``).
    """

    args: Any  # OpenRLHF's trainer that this is mixed into sets it

    def _compute_rollout_stats(self, experiences: list[Experience]) -> dict:
        # a mixin: the method is OpenRLHF's trainer's, next in the MRO of the classes below
        stats = super()._compute_rollout_stats(experiences)  # type: ignore[misc]
        is_demo = torch.cat([demo_flags(e) for e in experiences])
        reward = torch.cat([e.info["reward"] for e in experiences]).float()
        length = torch.cat([e.response_length for e in experiences]).float()
        truncated = torch.cat([e.truncated for e in experiences]).float()
        total = torch.cat([e.total_length for e in experiences]).float()
        group = torch.tensor([i for e in experiences for i in e.index]) // layout_of(srft_config(self.args)).size
        roll = ~is_demo
        stats.update(
            {
                "rollout/reward_mean": reward[roll].mean().item(),
                "rollout/reward_std": reward[roll].std().item() if roll.sum() > 1 else 0.0,
                "rollout/response_length_mean": length[roll].mean().item(),
                "rollout/truncated_rate": truncated[roll].mean().item(),
                "rollout/num_samples": float(roll.sum()),
                "reward": reward[roll].mean().item(),
                "response_length": length[roll].mean().item(),
                "total_length": total[roll].mean().item(),
                "truncated": truncated[roll].mean().item(),
                "rollout/num_groups": float(group.unique().numel()),
                "rollout/min_group_rollouts": float(torch.bincount(group[roll]).min()) if roll.any() else 0.0,
                "rollout/min_group_demos": float(torch.bincount(group[is_demo], minlength=int(group.max()) + 1).min())
                if is_demo.any()
                else 0.0,
                "rollout/max_group_demos": float(torch.bincount(group[is_demo]).max()) if is_demo.any() else 0.0,
            }
        )
        if "weights_version" in experiences[0].info:  # the CPU layer's rollout engine tags each rollout
            version = torch.cat([e.info["weights_version"] for e in experiences]).float()[roll]
            stats["rollout/weights_version_min"] = version.min().item()
            stats["rollout/weights_version_max"] = version.max().item()
            stats["weights_version"] = version.mean().item()
        if "score" in experiences[0].info:
            stats["score"] = torch.cat([e.info["score"] for e in experiences]).float()[roll].mean().item()
        if is_demo.any():
            stats.update(
                {
                    "rollout/demo_reward_mean": reward[is_demo].mean().item(),
                    "rollout/demo_response_length_mean": length[is_demo].mean().item(),
                    "rollout/demo_truncated_rate": truncated[is_demo].mean().item(),
                    "rollout/num_demos": float(is_demo.sum()),
                }
            )
        return stats

    def save_logs_and_checkpoints(self, global_step: int, logs_dict=None, client_states=None) -> None:
        """OpenRLHF's logs and checkpoints, plus one line of ``metrics.jsonl`` in the run folder per
        step (the file the local backend writes too), whatever the wandb / tensorboard settings."""
        self._append_metrics(global_step, logs_dict or {})
        # a mixin, as above
        super().save_logs_and_checkpoints(global_step, logs_dict, client_states)  # type: ignore[misc]

    def save_best_checkpoint(self, eval_metrics, global_step, client_states=None) -> None:
        """OpenRLHF's best-checkpoint bookkeeping, after one ``metrics.jsonl`` line of the periodic
        evaluation's metrics (``eval_<dataset>_pass1``, ...): both trainers pass every evaluation
        through here, and it is the only place the sync trainer's are seen outside wandb / tensorboard."""
        if eval_metrics:
            self._append_metrics(global_step, eval_metrics)
        super().save_best_checkpoint(eval_metrics, global_step, client_states)  # type: ignore[misc]

    def _append_metrics(self, step: int, logs: dict) -> None:
        """The numbers of OpenRLHF's logs (it also logs sample texts and lists) as one record."""
        numbers = {
            k: float(v.item() if isinstance(v, torch.Tensor) else v)
            for k, v in logs.items()
            if (isinstance(v, torch.Tensor) and v.numel() == 1)
            or (isinstance(v, (int, float)) and not isinstance(v, bool))
        }
        append_record(run_files(srft_config(self.args).logging.output_dir).metrics, {"step": int(step), **numbers})


class InstallFirst:
    """Ray actor mixin: ``install()`` in the actor's process before OpenRLHF's ``__init__`` runs
    (first in the bases of each SRFT Ray actor class below, so its ``__init__`` comes first)."""

    def __init__(self, *args, **kwargs):
        install()
        super().__init__(*args, **kwargs)


# The SRFT Ray actor classes (re-wrapped in PATCHES). unwrap: the plain class under OpenRLHF's
# Ray actor (a dynamic base to mypy).
class SRFTPolicyModelActor(InstallFirst, unwrap(ppo_actor.PolicyModelActor)):  # type: ignore[misc]
    @torch.no_grad()
    def srft_entropy_sums(
        self, sequences: torch.Tensor, action_mask: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """Σ H(πθ) over each response's tokens [B] (float64, NaN outside ``rows``), with the current
        weights: the same forward and kernel as the training step's (``SRFTExperienceMaker``)."""
        sums = torch.full((sequences.shape[0],), math.nan, dtype=torch.float64)
        picked = torch.nonzero(rows.reshape(-1)).flatten()
        # One forward per micro-batch on every rank, needed rows or not: under ZeRO-3 a forward is a
        # collective (parameter all-gathers), and a rank that skipped one would wait in the next
        # collective while the others wait in this one (srft_no_wrl / srft_no_wsft with 6 ranks).
        # Without a needed row the forward scores the first row and its result is dropped.
        forward_rows = picked if picked.numel() else torch.zeros(1, dtype=torch.long)
        device = next(self.actor.model.parameters()).device
        mask = action_mask[forward_rows].to(device)
        self.actor.eval()
        try:
            _, entropy, _ = self.trainer.response_logprobs_and_entropy(
                sequences[forward_rows].to(device),
                attention_mask[forward_rows].to(device),
                mask.shape[1],
                entropy_grad=False,
            )
        finally:
            self.actor.train()
        if picked.numel():
            sums[picked] = (entropy.double() * mask.double()).sum(-1).cpu()
        return sums


class SRFTPPOTrainer(InstallFirst, _SRFTTrainerLogs, unwrap(ppo_trainer.PPOTrainer)):  # type: ignore[misc]
    pass


class SRFTPPOTrainerAsync(InstallFirst, unwrap(ppo_trainer_async.PPOTrainerAsync)):  # type: ignore[misc]
    pass


class SRFTGenerateSamplesActor(InstallFirst, unwrap(ppo_trainer_async.GenerateSamplesActor)):  # type: ignore[misc]
    pass


class SRFTTrainingActor(InstallFirst, _SRFTTrainerLogs, unwrap(ppo_trainer_async.TrainingActor)):  # type: ignore[misc]
    def broadcast_to_vllm(self) -> None:
        """OpenRLHF's ``TrainingActor.broadcast_to_vllm`` (the vLLM lock around the base class's
        broadcast), with the base class named: its zero-argument ``super()`` raised "super(type,
        obj): obj must be an instance or subtype of type" in this subclass's Ray worker (seen in
        the CPU end-to-end run of the async trainer, at its first weight sync; the cause is not
        pinned down)."""
        ray.get(self.vllm_lock.acquire.remote())
        if self._partial_rollout:
            batch_vllm_engine_call(self.vllm_engines, "pause_generation")
        try:
            ppo_trainer.BasePPOTrainer.broadcast_to_vllm(self)
        finally:
            if self._partial_rollout:
                batch_vllm_engine_call(self.vllm_engines, "resume_generation")
            ray.get(self.vllm_lock.release.remote())


_openrlhf_prepare_datasets = ppo_trainer.prepare_datasets


def prepare_datasets_in_file_order(strategy, tokenizer):
    """OpenRLHF's ``prepare_datasets`` with the prompts read in the training file's order.

    The launcher writes the prompts in the order they are trained on (one seeded permutation per
    epoch, as the local backend draws them); OpenRLHF would shuffle them again with a generator
    nothing seeds in the trainer process, ignoring ``train.seed``."""
    setup_dataloader = strategy.setup_dataloader

    def in_file_order(dataset, batch_size, pin_memory=False, shuffle=True, *args, **kwargs):
        return setup_dataloader(dataset, batch_size, pin_memory, False, *args, **kwargs)

    strategy.setup_dataloader = in_file_order
    try:
        return _openrlhf_prepare_datasets(strategy, tokenizer)
    finally:
        del strategy.setup_dataloader  # the instance attribute; the class's method shows again


# (module, attribute) -> the SRFT replacement; Ray actor classes are re-wrapped like the originals.
PATCHES: dict[tuple[Any, str], Any] = {
    (ppo_trainer, "SamplesGenerator"): SRFTSamplesGenerator,
    (ppo_trainer_async, "SamplesGenerator"): SRFTSamplesGenerator,
    (ppo_trainer, "RemoteExperienceMaker"): SRFTExperienceMaker,
    (ppo_actor, "ActorPPOTrainer"): SRFTActorPPOTrainer,
    (ppo_actor, "iter_grad_accum_global_norm"): srft_step_windows,
    (ppo_trainer, "prepare_datasets"): prepare_datasets_in_file_order,
    (ppo_trainer_async, "prepare_datasets"): prepare_datasets_in_file_order,
    (ppo_actor, "PolicyModelActor"): rewrap(SRFTPolicyModelActor, ppo_actor.PolicyModelActor),
    (ppo_trainer, "PPOTrainer"): rewrap(SRFTPPOTrainer, ppo_trainer.PPOTrainer),
    (ppo_trainer_async, "PPOTrainerAsync"): rewrap(SRFTPPOTrainerAsync, ppo_trainer_async.PPOTrainerAsync),
    (ppo_trainer_async, "GenerateSamplesActor"): rewrap(
        SRFTGenerateSamplesActor, ppo_trainer_async.GenerateSamplesActor
    ),
    (ppo_trainer_async, "TrainingActor"): rewrap(SRFTTrainingActor, ppo_trainer_async.TrainingActor),
}


def install() -> None:
    """Assign the SRFT classes into OpenRLHF's modules (idempotent)."""
    for (module, name), new in PATCHES.items():
        setattr(module, name, new)


_openrlhf_get_strategy = openrlhf.utils.get_strategy


def install_driver(cfg: SRFTConfig) -> None:
    """``install()`` plus the driver's part: OpenRLHF's ``get_strategy`` attaches ``cfg`` as
    ``args.srft`` (train_ppo_ray imports it from ``openrlhf.utils`` when it runs)."""
    install()

    def get_strategy(args):
        args.srft = cfg
        return _openrlhf_get_strategy(args)

    openrlhf.utils.get_strategy = get_strategy
