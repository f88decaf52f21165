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
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import torch

from srft_openrlhf.reward import batch_rewards
from srft_openrlhf.reward.batch import BatchRewards

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
        return query[len(prompt) :]
    logger.warning("reward: the decoded query does not start with its prompt; grading the whole text")
    return query


def grade_never_raising(
    responses: list[str], answers: list[str], kind: str, mode: str, timeout_s: float, num_workers: int
) -> BatchRewards:
    """``batch_rewards`` that does not raise: OpenRLHF's executor swallows an exception from
    ``reward_func`` and leaves the rollout without a reward, which fails much later, far from the
    cause. If the worker pool fails (a worker that does not start, ...), the batch is graded in
    this process, still with the per-sample timeout in the caller's thread (``time_limit``), so
    one hostile sample holds up ``CoalescingGrader``'s leader, and every caller waiting on it,
    for about one timeout; if that fails too, every sample scores 0 with status "error"."""
    try:
        return batch_rewards(responses, answers, kind=kind, mode=mode, timeout_s=timeout_s, num_workers=num_workers)
    except Exception as exc:  # noqa: BLE001 - anything, see the docstring
        logger.warning(
            "reward: grading in worker processes failed (%s: %s); grading in process", type(exc).__name__, exc
        )
    try:
        return batch_rewards(responses, answers, kind=kind, mode=mode, timeout_s=timeout_s, num_workers=0)
    except Exception as exc:  # noqa: BLE001
        logger.error("reward: grading failed (%s: %s); %d sample(s) score 0", type(exc).__name__, exc, len(responses))
        error = f"{type(exc).__name__}: {exc}"[:300]
        details = [{"status": "error", "correct": False, "extracted": None, "error": error} for _ in responses]
        return BatchRewards(rewards=[0.0] * len(responses), details=details, timeouts=0, errors=len(responses))


class CoalescingGrader:
    """Grades the samples of concurrent calls as one batch.

    Inside a vLLM engine OpenRLHF calls ``reward_func`` once per rollout, each call in its own
    thread; graded call by call, one sample at a time would occupy the worker pool
    (``rollout.reward_workers``), whose batches run one after the other. Here the first caller
    grades everything that is waiting, then what arrived meanwhile, until nothing is left;
    the others wait for their results.
    """

    def __init__(self, grade: Callable[[list[str], list[str]], BatchRewards]):
        self._grade = grade
        self._lock = threading.Lock()
        self._pending: list[tuple[list[str], list[str], Future]] = []
        self._grading = False

    def __call__(self, responses: list[str], answers: list[str]) -> BatchRewards:
        future: Future = Future()
        with self._lock:
            self._pending.append((responses, answers, future))
            lead, self._grading = not self._grading, True
        while lead:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._grading = False
                    break
            self._run(batch)
        return future.result()

    def _run(self, batch: list[tuple[list[str], list[str], Future]]) -> None:
        try:
            graded = self._grade([r for rs, _, _ in batch for r in rs], [a for _, as_, _ in batch for a in as_])
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
            for _, _, future in batch:
                future.set_exception(exc)
            return
        start = 0
        for responses, _, future in batch:
            end = start + len(responses)
            details = graded.details[start:end]
            future.set_result(
                BatchRewards(
                    rewards=graded.rewards[start:end],
                    details=details,
                    timeouts=sum(d["status"] == "timeout" for d in details),
                    errors=sum(d["status"] == "error" for d in details),
                )
            )
            start = end


def make_reward_func(
    kind: str = "math", mode: str = "either", timeout_s: float = 5.0, num_workers: int = 2
) -> RewardFunc:
    """``reward_func(queries, prompts, labels)`` returning OpenRLHF's reward dict; never raises.

    ``rewards`` and ``scores`` are float tensors [B] of 1.0 / 0.0 (``batch_rewards``, graded in
    ``num_workers`` processes with a per-sample timeout, concurrent calls batched together:
    ``CoalescingGrader``); ``extra_logs["reward_timeout"]`` marks samples whose grading timed
    out (OpenRLHF logs it as a per-sample metric).
    """
    grader = CoalescingGrader(
        lambda responses, answers: grade_never_raising(responses, answers, kind, mode, timeout_s, num_workers)
    )

    def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[str]) -> dict:
        responses = [response_text(q, p) for q, p in zip(queries, prompts)]
        answers = [decode_label(label)[0] for label in labels]
        graded = grader(responses, answers)
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
