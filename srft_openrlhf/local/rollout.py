"""From prompts to a training batch: sample prompts → rollouts → rewards → augmented groups
(Eq. 6) → advantages (Eq. 7) → padded tensors, one micro-batch at a time.

Everything here is deterministic given the step: the prompts of step k come from a seeded
permutation of the training set, and the generator's sampling seed is a function of
(seed, k). That is what lets a resumed run (and the asynchronous producer, which runs
ahead of the trainer) reproduce exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from srft_openrlhf.algorithm import LossConfig, Response, augment_groups, batch_advantages
from srft_openrlhf.config import RolloutConfig
from srft_openrlhf.data import Example, encode_example, render_prompt
from srft_openrlhf.data.sampler import generation_seed
from srft_openrlhf.errors import DataError
from srft_openrlhf.generation import Generator
from srft_openrlhf.reward import grade


@dataclass
class PromptItem:
    """One training or evaluation example, tokenised."""

    prompt_ids: list[int]
    answer: str
    demo_ids: list[int] | None
    demo_text: str | None
    demo_truncated: bool
    prompt_text: str


def encode_items(
    examples: Sequence[Example], tokenizer, template: str, max_prompt_len: int, max_response_len: int
) -> list[PromptItem]:
    """Render and tokenise every example; a prompt longer than ``max_prompt_len`` is a DataError
    naming its source and row (raised by ``encode_example``)."""
    items = []
    for ex in examples:
        text = render_prompt(ex.prompt, template, tokenizer)
        enc = encode_example(
            tokenizer, text, ex.demonstration, max_prompt_len, max_response_len, where=f"{ex.source} row {ex.row}"
        )
        items.append(PromptItem(enc.prompt_ids, ex.answer, enc.demo_ids, ex.demonstration, enc.demo_truncated, text))
    return items


@dataclass
class RolloutBatch:
    """What generation produced for one training step (before augmentation)."""

    step: int
    prompt_indices: list[int]
    rollouts: list[list[Response]]  # [prompt][sample]; empty lists when the step needs none
    demo_rewards: list[float]  # reward of each prompt's demonstration (graded like a rollout)
    policy_version: int  # weights version that generated the rollouts
    truncated: int = 0  # rollouts cut at max_new_tokens
    reward_timeouts: int = 0
    reward_errors: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def collect_rollouts(
    generator: Generator | None,
    items: Sequence[PromptItem],
    indices: list[int],
    step: int,
    cfg: RolloutConfig,
    seed: int,
    loss: LossConfig,
) -> RolloutBatch:
    """Generate ``n_samples_per_prompt`` rollouts per prompt (if ``loss`` trains on any) and
    grade them together with the prompts' demonstrations (if ``loss`` uses them)."""
    prompts = [items[i] for i in indices]
    completions: list[list] = [[] for _ in prompts]
    t0 = time.perf_counter()
    version = generator.policy_version if generator is not None else 0
    if loss.needs_rollouts:
        if generator is None:
            raise ValueError(f"preset {loss.preset!r} trains on rollouts: collect_rollouts needs a generator")
        completions = generator.generate(
            [p.prompt_ids for p in prompts],
            cfg.n_samples_per_prompt,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            seed=generation_seed(seed, step),
        )
    t1 = time.perf_counter()
    texts = [c.text for group in completions for c in group]
    answers = [p.answer for p, group in zip(prompts, completions) for _ in group]
    demo_prompts = prompts if loss.needs_demos else []
    graded = grade(texts + [p.demo_text for p in demo_prompts], answers + [p.answer for p in demo_prompts], cfg)
    rewards = iter(graded.rewards)
    rollouts = [
        [
            Response(
                token_ids=list(c.token_ids),
                reward=next(rewards),
                logprobs=list(c.logprobs),
                text=c.text,
                policy_version=version,
            )
            for c in group
        ]
        for group in completions
    ]
    demo_rewards = [next(rewards) for _ in demo_prompts]
    return RolloutBatch(
        step=step,
        prompt_indices=list(indices),
        rollouts=rollouts,
        demo_rewards=demo_rewards,
        policy_version=version,
        truncated=sum(c.finish_reason == "length" for g in completions for c in g),
        reward_timeouts=graded.timeouts,
        reward_errors=graded.errors,
        timings={"generate": t1 - t0, "reward": time.perf_counter() - t1},
    )


@dataclass
class MicroBatch:
    """Right-padded tensors; per-token ones are [B, L−1], aligned with the targets input_ids[:, 1:]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor  # response tokens
    old_log_probs: torch.Tensor
    advantages: torch.Tensor
    rewards: torch.Tensor
    is_demo: torch.Tensor


@dataclass
class TrainBatch:
    """An augmented batch (rollouts ∪ demos per prompt) with its advantages."""

    sequences: list[list[int]]  # prompt + response token ids
    prompt_lens: list[int]
    old_logprobs: list[list[float]]
    advantages: torch.Tensor
    rewards: torch.Tensor
    is_demo: torch.Tensor

    def __len__(self) -> int:
        return len(self.sequences)

    def micro_batches(self, size: int, pad_id: int, device: torch.device) -> Iterator[MicroBatch]:
        for start in range(0, len(self), size):
            yield self.pad(range(start, min(start + size, len(self))), pad_id, device)

    def pad(self, rows: range, pad_id: int, device: torch.device) -> MicroBatch:
        width = max(len(self.sequences[i]) for i in rows)
        n = len(rows)
        input_ids = torch.full((n, width), pad_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, width - 1), dtype=torch.bool)
        old = torch.zeros((n, width - 1), dtype=torch.float32)
        for r, i in enumerate(rows):
            seq, p = self.sequences[i], self.prompt_lens[i]
            input_ids[r, : len(seq)] = torch.tensor(seq)
            attention[r, : len(seq)] = 1
            # position t predicts token t+1: the response tokens are targets p .. len−1
            mask[r, p - 1 : len(seq) - 1] = True
            old[r, p - 1 : len(seq) - 1] = torch.tensor(self.old_logprobs[i], dtype=torch.float32)
        idx = torch.tensor(list(rows))
        return MicroBatch(
            input_ids.to(device),
            attention.to(device),
            mask.to(device),
            old.to(device),
            self.advantages[idx].to(device),
            self.rewards[idx].to(device),
            self.is_demo[idx].to(device),
        )


def build_train_batch(items: Sequence[PromptItem], rb: RolloutBatch, loss: LossConfig) -> TrainBatch:
    """Eq. 6 (augment each prompt's group with its demonstration) and Eq. 7 (advantages).

    A step that trains on demonstrations only (the ``sft`` preset) has groups of one demo;
    one that uses no demonstrations (``grpo``) has groups of rollouts only.
    """
    prompts = [items[i] for i in rb.prompt_indices]
    if loss.needs_demos:
        demos = []
        for i, p, r in zip(rb.prompt_indices, prompts, rb.demo_rewards):
            if p.demo_ids is None:
                raise DataError(f"training row {i} has no demonstration, which preset {loss.preset!r} trains on")
            demos.append([Response(token_ids=list(p.demo_ids), reward=r, is_demo=True, text=p.demo_text or "")])
        per_group, mode = loss.demos_per_group, loss.demo_mode if loss.needs_rollouts else "append"
    else:
        demos, per_group, mode = [[] for _ in prompts], 0, "append"
    groups = augment_groups(rb.rollouts, demos, demos_per_group=per_group, demo_mode=mode)
    advantages = batch_advantages(groups.rewards, groups.group_ids, groups.is_demo, loss)
    return TrainBatch(
        sequences=[prompts[g].prompt_ids + r.token_ids for g, r in zip(groups.prompt_index, groups.responses)],
        prompt_lens=[len(prompts[g].prompt_ids) for g in groups.prompt_index],
        old_logprobs=groups.old_logprobs,
        advantages=advantages,
        rewards=groups.rewards,
        is_demo=groups.is_demo,
    )


def rollout_stats(rb: RolloutBatch) -> dict[str, float]:
    """Reward, accuracy, length and truncation of the self-rollouts; reward of the demos."""
    flat = [r for group in rb.rollouts for r in group]
    stats: dict[str, float] = {}
    if flat:
        lengths = [len(r.token_ids) for r in flat]
        stats.update(
            reward_mean=sum(r.reward for r in flat) / len(flat),
            accuracy=sum(r.reward >= 1.0 for r in flat) / len(flat),
            response_length=sum(lengths) / len(lengths),
            response_length_max=float(max(lengths)),
            truncation_rate=rb.truncated / len(flat),
            solved_prompts=sum(any(r.reward >= 1.0 for r in g) for g in rb.rollouts) / len(rb.rollouts),
        )
    if rb.demo_rewards:
        stats["demo_reward_mean"] = sum(rb.demo_rewards) / len(rb.demo_rewards)
    stats["reward_timeouts"] = float(rb.reward_timeouts)
    stats["reward_errors"] = float(rb.reward_errors)
    return stats
