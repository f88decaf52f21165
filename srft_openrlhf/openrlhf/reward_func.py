"""The verifiable reward (Eq. A2) in the form OpenRLHF 0.11.2 loads a custom reward.

OpenRLHF's ``SingleTurnAgentExecutor`` loads ``reward_func`` from the ``.py`` file given as
``--reward.remote_url`` and calls ``reward_func(queries, prompts, labels)`` in the vLLM engine
actor, one rollout at a time, where ``query`` is the decoded prompt + response. The launcher
writes that file into the run folder (``RunFiles.reward_func``): two lines that call
``make_reward_func`` below with the run's settings. The SRFT samples generator scores the
demonstrations with the same function, so demos are rewarded exactly like rollouts.

Labels are the JSON strings the launcher writes (``{"answer": ..., "row": ...}``); a label that
is not such JSON is taken as the answer itself, so plain evaluation sets work too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

import torch

from srft_openrlhf.reward import batch_rewards

logger = logging.getLogger(__name__)

RewardFunc = Callable[[Sequence[str], Sequence[str], Sequence[str]], dict]


def encode_label(answer: str, row: int | None = None) -> str:
    """The label OpenRLHF carries with a prompt: the answer, and the example's row for its demos."""
    return json.dumps({"answer": answer} if row is None else {"answer": answer, "row": row})


def decode_label(label: str) -> tuple[str, int | None]:
    """(answer, row) of a label written by ``encode_label``; any other string is the answer."""
    try:
        value = json.loads(label)
    except (TypeError, json.JSONDecodeError):
        return label, None
    if isinstance(value, dict) and "answer" in value:
        return str(value["answer"]), value.get("row")
    return label, None


def response_text(query: str, prompt: str) -> str:
    """The response part of ``query`` = decode(prompt ids + response ids).

    Byte-level BPE decodes the prompt back to itself, so the response is what follows it.
    Otherwise the whole query is graded: the answer extractor reads the last ``\\boxed{}``
    after the last ``</think>``, which the response writes after anything in the prompt.
    """
    if query.startswith(prompt):
        return query[len(prompt):]
    logger.warning("reward: the decoded query does not start with its prompt; grading the whole text")
    return query


def make_reward_func(kind: str = "math", mode: str = "either", timeout_s: float = 5.0,
                     num_workers: int = 2) -> RewardFunc:
    """``reward_func(queries, prompts, labels)`` returning OpenRLHF's reward dict.

    ``rewards`` and ``scores`` are float tensors [B] of 1.0 / 0.0 (``batch_rewards``, graded in
    ``num_workers`` processes with a per-sample timeout); ``extra_logs["reward_timeout"]``
    marks samples whose grading timed out (OpenRLHF logs it as a per-sample metric).
    """

    def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[str]) -> dict:
        responses = [response_text(q, p) for q, p in zip(queries, prompts)]
        answers = [decode_label(label)[0] for label in labels]
        graded = batch_rewards(responses, answers, kind=kind, mode=mode, timeout_s=timeout_s,
                               num_workers=num_workers)
        rewards = torch.tensor(graded.rewards, dtype=torch.float32)
        timeouts = torch.tensor([d["status"] == "timeout" for d in graded.details], dtype=torch.float32)
        return {"rewards": rewards, "scores": rewards.clone(), "extra_logs": {"reward_timeout": timeouts}}

    return reward_func


def reward_func_file_text(kind: str, mode: str, timeout_s: float, num_workers: int) -> str:
    """The file OpenRLHF loads (``--reward.remote_url``), with this run's reward settings."""
    return (
        '"""Written by `srft train --backend openrlhf`: OpenRLHF loads reward_func from here."""\n'
        "from srft_openrlhf.openrlhf.reward_func import make_reward_func\n\n"
        f"reward_func = make_reward_func(kind={kind!r}, mode={mode!r}, timeout_s={float(timeout_s)!r}, "
        f"num_workers={int(num_workers)!r})\n"
    )
