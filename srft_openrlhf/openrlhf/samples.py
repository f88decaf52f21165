"""SRFT's samples on OpenRLHF 0.11.2 (Eq. 6): each prompt's rollouts from vLLM, then its demonstrations.

``SRFTSamplesGenerator`` replaces OpenRLHF's ``SamplesGenerator`` (``patches.PATCHES``): it
appends each prompt's demonstration(s) to its rollouts, scored by the run's reward function and
marked ``info["is_demo"]``, in the group layout ``layout.layout_of`` (the launcher's too). The
two readers every later stage shares live here, next to what they read: ``srft_config``
(``args.srft``, attached by ``patches.install_driver``) and ``demo_flags`` (the ``is_demo`` mark).
Importing this module imports OpenRLHF (and so ray, vllm).
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

from srft_openrlhf.config import SRFTConfig
from srft_openrlhf.data import encode_example
from srft_openrlhf.openrlhf.faults import reached
from srft_openrlhf.openrlhf.layout import layout_of
from srft_openrlhf.openrlhf.reward_func import decode_label, make_reward_func
from srft_openrlhf.runs import run_files


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
        self._batches = 0  # training batches generated: the step of the "generation" fault point

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
        self._batches += 1
        reached("generation", self._batches)
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
