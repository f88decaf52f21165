"""SRFT's changes to OpenRLHF 0.11.2: subclasses, assigned into OpenRLHF's modules.

Importing this module imports OpenRLHF (and so ray, vllm, deepspeed) and first checks
``HOOK_POINTS`` against it, so that an OpenRLHF that moved something fails here, naming it.

How the subclasses reach OpenRLHF's code without a fork. OpenRLHF builds its objects through
module globals (``SamplesGenerator(...)`` in ``ppo_trainer``, ``ActorPPOTrainer(...)`` in
``ppo_actor``, ...), so assigning a subclass to that global is enough, in the process where
the object is built. Those processes are Ray actors; their classes are replaced the same way
(``unwrap`` the Ray actor class to the Python class, subclass, ``rewrap`` with the same Ray
options). Every SRFT Ray actor calls ``install()`` first thing in its ``__init__``, so the
assignments happen in exactly the processes that build OpenRLHF objects: the driver
(``install_driver``), the trainer, the generator and the policy actors. (A job-wide
``worker_process_setup_hook`` would also run in the vLLM engine processes, and this module
imports DeepSpeed, which OpenRLHF keeps out of them.) The SRFT classes below are module-level
names, so Ray pickles them by reference and every worker imports this module to use them.

The SRFT config reaches every actor as ``args.srft`` (``install_driver`` wraps OpenRLHF's
``get_strategy``; the strategy, and with it ``args``, is sent to every actor).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from types import CodeType
from typing import Any

import ray
import torch
import torch.distributed as dist

import openrlhf.utils
from openrlhf.trainer import ppo_trainer, ppo_trainer_async
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
from openrlhf.trainer.ppo_utils.length_penalty import apply_length_penalties
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
from openrlhf.trainer.ray import ppo_actor
from openrlhf.utils.loss_utils import _get_dp_group
from srft_openrlhf.algorithm import StepTotals, batch_advantages, srft_loss, step_totals
from srft_openrlhf.config import SRFTConfig
from srft_openrlhf.data import encode_example
from srft_openrlhf.errors import UserError
from srft_openrlhf.kernels import token_logprobs_and_entropy
from srft_openrlhf.openrlhf import HOOK_POINTS, OPENRLHF_VERSION, GroupLayout, HookPoint, run_files
from srft_openrlhf.openrlhf.launcher import layout_of
from srft_openrlhf.openrlhf.reward_func import decode_label, make_reward_func

# ----------------------------------------------------------------------------- hook points


class HookPointError(UserError):
    """The installed OpenRLHF lacks (or changed) something the SRFT patches rely on."""


def unwrap(obj: Any) -> Any:
    """The Python class behind a Ray actor class (``@ray.remote class X``); anything else as is."""
    meta = getattr(obj, "__ray_metadata__", None)
    return meta.modified_class.__ray_actor_class__ if meta is not None else obj


def rewrap(cls: type, like: Any) -> Any:
    """``cls`` as a Ray actor class with the options of the Ray actor class ``like``."""
    options = dict(like._default_options)
    return ray.remote(**options)(cls) if options else ray.remote(cls)


def _resolve(target: str) -> Any:
    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(unwrap(obj), part)
    return unwrap(obj)


def _code_names(code: CodeType) -> set[str]:
    """Names and string constants a code object (and the functions nested in it) uses."""
    names = set(code.co_names) | {c for c in code.co_consts if isinstance(c, str)}
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _code_names(const)
    return names


def _problems(hook: HookPoint) -> list[str]:
    try:
        obj = _resolve(hook.target)
    except (ImportError, AttributeError) as e:
        return [f"not found ({type(e).__name__}: {e})"]
    problems = []
    if hook.params is not None:
        try:
            names = [p for p in inspect.signature(obj).parameters if p != "self"]
        except (TypeError, ValueError):
            names = None
        if names is None or names[: len(hook.params)] != list(hook.params):
            problems.append(f"signature is ({', '.join(names or ['?'])}), expected it to start with "
                            f"({', '.join(hook.params)})")
    if hook.reads:
        code = getattr(inspect.unwrap(obj), "__code__", None)  # through decorators such as torch.no_grad
        used = _code_names(code) if code is not None else set()
        missing = [name for name in hook.reads if name not in used]
        if missing:
            problems.append(f"no longer reads {', '.join(missing)}")
    if hook.fields:
        have = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
        missing = [name for name in hook.fields if name not in have]
        if missing:
            problems.append(f"has no field(s) {', '.join(missing)}")
    return problems


def check_hook_points(hooks: tuple[HookPoint, ...] = HOOK_POINTS) -> None:
    """Raise ``HookPointError`` listing every hook point the installed OpenRLHF moved."""
    lines = [f"  - {hook.target}: {problem} (SRFT: {hook.srft})" for hook in hooks for problem in _problems(hook)]
    if lines:
        installed = importlib.metadata.version("openrlhf")
        raise HookPointError(
            f"openrlhf {installed} does not have what the SRFT patches rely on (written for "
            f"openrlhf=={OPENRLHF_VERSION}):\n" + "\n".join(lines) + "\nInstall openrlhf=="
            f"{OPENRLHF_VERSION} (requirements-gpu.txt), or port srft_openrlhf/openrlhf/patches.py "
            "and HOOK_POINTS to this version."
        )


check_hook_points()  # before subclassing, so a moved hook reads as a HookPointError, not an AttributeError


# ----------------------------------------------------------------------------- helpers


def srft_config(args: Any) -> SRFTConfig:
    cfg = getattr(args, "srft", None)
    if not isinstance(cfg, SRFTConfig):
        raise RuntimeError("OpenRLHF's args carry no SRFT config (args.srft): start OpenRLHF through "
                           "`srft train --backend openrlhf`, which attaches it")
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

    def __init__(self, strategy, prompts_dataloader, eval_dataloader, tokenizer, vllm_engines):
        super().__init__(strategy, prompts_dataloader, eval_dataloader, tokenizer, vllm_engines)
        self.srft = srft_config(self.args)
        self.layout = layout_of(self.srft)
        self.demo_table = DemoTable(run_files(self.srft.logging.output_dir).demos) if self.layout.demos else None
        rollout = self.srft.rollout
        self.reward_func = make_reward_func(rollout.reward, rollout.reward_mode, rollout.reward_timeout_s,
                                            rollout.reward_workers)

    @torch.no_grad()
    def generate_samples(self, **generate_kwargs):
        samples, filter_pass_rate, prompts_consumed, exhausted = super().generate_samples(
            **{**generate_kwargs, "n_samples_per_prompt": self.layout.rollouts}
        )
        return self.add_demonstrations(samples), filter_pass_rate, prompts_consumed, exhausted

    def add_demonstrations(self, samples: list[Experience]) -> list[Experience]:
        """[r r r r][r r r r]... -> [r r r r d][r r r r d]... (contiguous groups of one prompt)."""
        n = self.layout.rollouts
        if len(samples) % n:
            raise RuntimeError(f"SRFT: {len(samples)} rollouts are not whole groups of {n} per prompt")
        groups = [samples[i: i + n] for i in range(0, len(samples), n)]
        for group in groups:
            if len({s.prompts[0] for s in group}) != 1:
                raise RuntimeError("SRFT: a prompt's rollouts are not contiguous in OpenRLHF's samples; "
                                   "the group layout needs them to be (see HOOK_POINTS)")
            for s in group:
                s.info["is_demo"] = torch.tensor([False])
        if not self.layout.demos:
            return samples
        demos = self.demonstration_samples([group[0] for group in groups])
        return [s for group, group_demos in zip(groups, demos) for s in group + group_demos]

    def demonstration_samples(self, rollouts: list[Experience]) -> list[list[Experience]]:
        """``layout.demos`` demo samples for the prompt of each rollout, rewarded in one batch."""
        cfg = self.srft.data
        pieces = []  # (rollout, prompt ids, demo ids, truncated)
        for rollout in rollouts:
            _, row = decode_label(rollout.labels[0])
            texts = self.demo_table[row][: self.layout.demos]
            if len(texts) < self.layout.demos:
                raise RuntimeError(f"SRFT: example {row} has {len(texts)} demonstration(s), "
                                   f"{self.layout.demos} per group are configured")
            for text in texts:
                encoded = encode_example(self.tokenizer, rollout.prompts[0], text, cfg.max_prompt_len,
                                         cfg.max_response_len, where=f"{cfg.train} example {row}")
                pieces.append((rollout, rollout_prompt_ids(rollout) or encoded.prompt_ids, encoded.demo_ids,
                               encoded.demo_truncated))
        queries = [self.tokenizer.decode(p + d, skip_special_tokens=False) for _, p, d, _ in pieces]
        scored = self.reward_func(queries, [r.prompts[0] for r, *_ in pieces], [r.labels[0] for r, *_ in pieces])
        samples = [
            demo_experience(rollout, prompt_ids, demo_ids, truncated, scored, i)
            for i, (rollout, prompt_ids, demo_ids, truncated) in enumerate(pieces)
        ]
        d = self.layout.demos
        return [samples[i: i + d] for i in range(0, len(samples), d)]


def rollout_prompt_ids(rollout: Experience) -> list[int]:
    """The prompt token ids vLLM generated from: the sequence up to the first response token."""
    response = torch.nonzero(rollout.action_mask[0]).flatten()
    if response.numel() == 0:
        return []
    return rollout.sequences[0, : int(response[0]) + 1].tolist()


def demo_experience(rollout: Experience, prompt_ids: list[int], demo_ids: list[int], truncated: bool,
                    scored: dict, i: int) -> Experience:
    """A demonstration as an OpenRLHF sample, laid out like ``_process_response_into_experience``
    lays out a rollout; its ``info`` has the same keys as the rollout's (OpenRLHF batches
    samples key by key), zero where a key has no meaning for a demo."""
    sequence = torch.tensor(prompt_ids + demo_ids, dtype=torch.long)
    length = sequence.numel()
    action_mask = torch.zeros(length, dtype=torch.long)
    action_mask[len(prompt_ids):] = 1
    reward = scored["rewards"][i: i + 1].float()
    score = scored["scores"][i: i + 1].float()
    info = {key: torch.zeros_like(value) for key, value in rollout.info.items()}
    values = {"reward": reward, "score": score, "is_demo": torch.tensor([True])}
    values.update({key: value[i: i + 1] for key, value in scored.get("extra_logs", {}).items()})
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


class SRFTExperienceMaker(RemoteExperienceMaker):
    """OpenRLHF's experience maker with πβ = 1 for demos and Eq. 7 over the augmented group."""

    @torch.no_grad()
    def make_experience(self, samples_list: list[Experience]) -> list[Experience]:
        experiences = super().make_experience(samples_list)
        for experience in experiences:
            # The old log-probs are computed with the trainer's weights for every row; a demo's
            # behaviour policy is the demonstrator, whose probability is taken as 1 (Eq. 9-10).
            experience.action_log_probs[demo_flags(experience)] = 0.0
        return experiences

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


def check_groups(group_ids: torch.Tensor, is_demo: torch.Tensor, layout: GroupLayout) -> None:
    """Every group has ``layout.rollouts`` rollouts and ``layout.demos`` demos, or fail loudly."""
    rollouts = torch.bincount(group_ids, weights=(~is_demo).double())
    demos = torch.bincount(group_ids, weights=is_demo.double())
    present = (rollouts + demos) > 0
    if not (torch.all(rollouts[present] == layout.rollouts) and torch.all(demos[present] == layout.demos)):
        raise RuntimeError(f"SRFT: the step's samples are not groups of {layout.rollouts} rollouts + "
                           f"{layout.demos} demos (OpenRLHF changed how it orders or indexes samples?)")


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

    The totals carry no entropies: the policy's entropy is known only from each micro-batch's
    own forward, after the previous micro-batch's backward; the batch-scope weights of
    Eq. 8 / Eq. 12 therefore stay per micro-batch here (docs/cluster.md, Limits).
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


def _with_totals(window: list[Experience], dp_group, dp_size: int) -> Iterator[tuple[Experience, dict]]:
    parts = [step_totals(e.action_mask, e.rewards, demo_flags(e)) for e in window]
    totals = sum(parts[1:], parts[0])
    if dp_size > 1:  # every DP rank's micro-batches are part of the same optimizer step
        ranks: list[StepTotals | None] = [None] * dp_size
        dist.all_gather_object(ranks, totals, group=dp_group)
        totals = sum(ranks[1:], ranks[0])
    for experience in window:
        yield experience, {"srft_totals": totals, "dp_size": dp_size}


# srft_loss metric -> the token count it is a mean over (None: one value per micro-batch; for the
# loss terms that is the micro-batch's share times gas · dp_size, whose mean is the step's loss).
_METRIC_WEIGHTS = {
    "loss": None, "loss_sft_demo": None, "loss_rl_demo": None, "loss_rl_rollout": None, "loss_kl": None,
    "loss_entropy_bonus": None, "w_sft": "n_demo_tokens", "entropy_demo": "n_demo_tokens",
    "w_rl": "n_rollout_tokens", "entropy_rollout": "n_rollout_tokens", "clip_frac": "n_rollout_tokens",
    "entropy": "n_tokens", "kl": "n_tokens", "low_entropy_drop_frac": "n_tokens",
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
        status = super().ppo_train(kl_ctl)
        status.update(self._srft_step_metrics())
        return status

    def training_step(self, experience: Experience, kl_ctl: float, step: int, loss_batch_info=None) -> dict:
        if not loss_batch_info or "srft_totals" not in loss_batch_info:
            raise RuntimeError("SRFT: the training step got no StepTotals; ppo_train must pair micro-batches "
                               "through srft_step_windows (patches.install(); dynamic batching is not supported)")
        config = srft_config(self.args).loss
        self.actor.train()
        log_probs, entropy, aux_loss = self.token_logprobs_and_entropy(experience, config.entropy_bonus > 0)
        is_demo = demo_flags(experience).to(log_probs.device)
        share, metrics = srft_loss(
            log_probs, experience.action_log_probs, entropy, experience.action_mask,
            sequence_advantages(experience), experience.rewards, is_demo, config,
            ref_log_probs=experience.base_action_log_probs if config.kl_coef > 0 else None,
            totals=loss_batch_info["srft_totals"],
        )
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
        return self._openrlhf_status(experience, loss)

    def token_logprobs_and_entropy(self, experience: Experience, entropy_grad: bool):
        """log πθ and H(πθ) of each response token [B, A], plus the MoE aux loss (or None)."""
        sequences = experience.sequences
        output = self.actor(sequences, None, attention_mask=experience.attention_mask, return_output=True,
                            ring_attn_group=self.strategy.ring_attn_group)
        # Targets rolled by one (as OpenRLHF does) rather than slicing the logits: the kernel's
        # in-place backward then reuses the logits buffer instead of a padded copy of it.
        log_probs, entropy = token_logprobs_and_entropy(output["logits"], torch.roll(sequences, -1, dims=1),
                                                        entropy_grad=entropy_grad, inplace_backward=True)
        width = experience.action_mask.shape[1]
        return log_probs[:, :-1][:, -width:], entropy[:, :-1][:, -width:], getattr(output, "aux_loss", None)

    def _record_srft_metrics(self, metrics: dict[str, float], scale: float) -> None:
        sums = self.__dict__.setdefault("_srft_sums", {})  # reset by ppo_train at each step
        counts = {"n_tokens": metrics["n_tokens"], "n_demo_tokens": metrics["n_demo_tokens"],
                  "n_rollout_tokens": metrics["n_tokens"] - metrics["n_demo_tokens"], None: 1.0}
        for name, count_key in _METRIC_WEIGHTS.items():
            weight = counts[count_key]
            value = metrics[name] * (scale if name.startswith("loss") else 1.0)  # a share of the step's loss
            total = sums.setdefault(name, [0.0, 0.0])
            total[0] += value * weight
            total[1] += weight

    def _srft_step_metrics(self) -> dict[str, float]:
        """Weighted means over the step's micro-batches of every rank, as ``srft/<name>``."""
        summed = self.strategy.all_reduce({name: torch.tensor(v, dtype=torch.float64)
                                           for name, v in self._srft_sums.items()}, op="sum")
        out = {}
        for name, value in summed.items():
            total, weight = torch.as_tensor(value).tolist()
            out[f"srft/{name}"] = total / weight if weight > 0 else 0.0
        return out

    def _openrlhf_status(self, experience: Experience, loss: torch.Tensor) -> dict:
        """The step status in the form OpenRLHF's ``ppo_train`` reduces (metrics + weights)."""
        metrics: dict[str, Any] = {"policy_loss": loss.detach(), "actor_lr": self.actor_scheduler.get_last_lr()[0],
                                   "actor_grad_norm": self.strategy.get_grad_norm(self.actor)}
        # "sample": micro-batches hold equally many samples, so ppo_train's mean of these scaled shares
        # (training_step) is the step's loss
        weights: dict[str, str | None] = {"policy_loss": "sample", "actor_lr": None, "actor_grad_norm": None}
        for key, value in experience.info.items():
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
        return {"metrics": metrics, "weights": weights, "num_samples": float(experience.action_mask.shape[0]),
                "num_action_tokens": float(experience.action_mask.sum().item())}


# ----------------------------------------------------------------------------- Ray actors


class _RolloutStatsWithoutDemos:
    """Trainer mixin: OpenRLHF's rollout statistics over the rollouts only, demos reported apart."""

    def _compute_rollout_stats(self, experiences: list[Experience]) -> dict:
        stats = super()._compute_rollout_stats(experiences)
        is_demo = torch.cat([demo_flags(e) for e in experiences])
        if not is_demo.any():
            return stats
        reward = torch.cat([e.info["reward"] for e in experiences]).float()
        length = torch.cat([e.response_length for e in experiences]).float()
        truncated = torch.cat([e.truncated for e in experiences]).float()
        roll = ~is_demo
        stats.update({
            "rollout/reward_mean": reward[roll].mean().item(),
            "rollout/reward_std": reward[roll].std().item() if roll.sum() > 1 else 0.0,
            "rollout/response_length_mean": length[roll].mean().item(),
            "rollout/truncated_rate": truncated[roll].mean().item(),
            "rollout/num_samples": float(roll.sum()),
            "rollout/demo_reward_mean": reward[is_demo].mean().item(),
            "rollout/demo_response_length_mean": length[is_demo].mean().item(),
            "rollout/demo_truncated_rate": truncated[is_demo].mean().item(),
            "rollout/num_demos": float(is_demo.sum()),
        })
        return stats


class SRFTPolicyModelActor(unwrap(ppo_actor.PolicyModelActor)):
    def __init__(self, *args, **kwargs):
        install()
        super().__init__(*args, **kwargs)


class SRFTPPOTrainer(_RolloutStatsWithoutDemos, unwrap(ppo_trainer.PPOTrainer)):
    def __init__(self, *args, **kwargs):
        install()
        super().__init__(*args, **kwargs)


class SRFTPPOTrainerAsync(unwrap(ppo_trainer_async.PPOTrainerAsync)):
    def __init__(self, *args, **kwargs):
        install()
        super().__init__(*args, **kwargs)


class SRFTGenerateSamplesActor(unwrap(ppo_trainer_async.GenerateSamplesActor)):
    def __init__(self, *args, **kwargs):
        install()
        super().__init__(*args, **kwargs)


class SRFTTrainingActor(_RolloutStatsWithoutDemos, unwrap(ppo_trainer_async.TrainingActor)):
    def __init__(self, *args, **kwargs):
        install()
        super().__init__(*args, **kwargs)


# (module, attribute) -> the SRFT replacement; Ray actor classes are re-wrapped like the originals.
PATCHES: dict[tuple[Any, str], Any] = {
    (ppo_trainer, "SamplesGenerator"): SRFTSamplesGenerator,
    (ppo_trainer_async, "SamplesGenerator"): SRFTSamplesGenerator,
    (ppo_trainer, "RemoteExperienceMaker"): SRFTExperienceMaker,
    (ppo_actor, "ActorPPOTrainer"): SRFTActorPPOTrainer,
    (ppo_actor, "iter_grad_accum_global_norm"): srft_step_windows,
    (ppo_actor, "PolicyModelActor"): rewrap(SRFTPolicyModelActor, ppo_actor.PolicyModelActor),
    (ppo_trainer, "PPOTrainer"): rewrap(SRFTPPOTrainer, ppo_trainer.PPOTrainer),
    (ppo_trainer_async, "PPOTrainerAsync"): rewrap(SRFTPPOTrainerAsync, ppo_trainer_async.PPOTrainerAsync),
    (ppo_trainer_async, "GenerateSamplesActor"): rewrap(SRFTGenerateSamplesActor,
                                                         ppo_trainer_async.GenerateSamplesActor),
    (ppo_trainer_async, "TrainingActor"): rewrap(SRFTTrainingActor, ppo_trainer_async.TrainingActor),
}


def patch_points() -> Iterator[str]:
    """``module.attribute -> replacement`` lines, for --dry-run and logs."""
    for (module, name), new in PATCHES.items():
        yield f"{module.__name__}.{name} -> {__name__}.{unwrap(new).__name__}"


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
