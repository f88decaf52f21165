"""Batched rewards: worker pool, soft and hard timeouts, crashes, garbage."""

from __future__ import annotations

import os
import time

import pytest

from srft_openrlhf.errors import ConfigError
from srft_openrlhf.reward import batch as batch_module
from srft_openrlhf.reward import batch_rewards, math_reward
from srft_openrlhf.reward.batch import WorkerPool

# math-verify gets stuck for many seconds on this (sympy evaluates 9^(9^(9^9)));
# our own parser refuses it up front.
PATHOLOGICAL = "\\boxed{9^{9^{9^{9}}}}"

RESPONSES = [
    "<think>work</think> so \\boxed{\\frac{1}{2}}",
    "\\boxed{3}",
    "The answer is $x = 5$.",
    "no answer at all",
    "\\boxed{(3, 4]}",
]
GOLDS = ["0.5", "4", "5", "5", "(3,4]"]


def test_pool_matches_single_sample_reward():
    result = batch_rewards(RESPONSES, GOLDS, timeout_s=5.0, num_workers=2)
    assert result.rewards == [math_reward(r, g) for r, g in zip(RESPONSES, GOLDS)] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert (result.timeouts, result.errors) == (0, 0)
    assert result.details[0] == {
        "status": "ok",
        "correct": True,
        "extracted": "\\frac{1}{2}",
        "math_verify": True,
        "oat": True,
    }
    assert result.details[3]["extracted"] is None


def test_sequential_path_gives_the_same_result():
    pooled = batch_rewards(RESPONSES, GOLDS, num_workers=2)
    sequential = batch_rewards(RESPONSES, GOLDS, num_workers=0)
    assert pooled == sequential


def test_pool_is_reused_between_calls():
    batch_rewards(["\\boxed{1}"], ["1"], num_workers=2)
    pool = batch_module._pool
    batch_rewards(["\\boxed{1}"], ["1"], num_workers=2)
    assert batch_module._pool is pool


def test_timeout_scores_zero_is_counted_and_the_batch_goes_on():
    responses = ["\\boxed{2}", PATHOLOGICAL, "\\boxed{7}", PATHOLOGICAL, "\\boxed{1}"]
    golds = ["2", "1", "7", "1", "1"]
    start = time.monotonic()
    result = batch_rewards(responses, golds, mode="math_verify", timeout_s=1.0, num_workers=2)
    assert time.monotonic() - start < 12
    assert result.rewards == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert result.timeouts == 2 and result.errors == 0
    assert [d["status"] for d in result.details] == ["ok", "timeout", "ok", "timeout", "ok"]
    assert result.details[1]["extracted"] == "9^{9^{9^{9}}}"
    # the pool still works afterwards
    assert batch_rewards(["\\boxed{3}"], ["3"], num_workers=2).rewards == [1.0]


def test_hung_worker_is_killed_and_replaced():
    """The hard path: a task that ignores the soft timer (here a plain sleep, with no
    SIGALRM handler in a bare worker) is killed at the deadline; the rest finishes."""
    pool = WorkerPool(2)
    try:
        start = time.monotonic()
        out = pool.run(time.sleep, [(60,), (0.01,), (0.01,), (60,), (0.01,)], timeout_s=1.0)
        assert time.monotonic() - start < 10
        assert out == [("timeout", None), ("ok", None), ("ok", None), ("timeout", None), ("ok", None)]
        assert pool.run(divmod, [(7, 2)], timeout_s=5.0) == [("ok", (3, 1))]
    finally:
        pool.close()


def test_crashing_task_is_an_error_and_the_worker_is_replaced():
    pool = WorkerPool(1)
    try:
        out = pool.run(os._exit, [(3,)], timeout_s=5.0)
        assert out[0][0] == "error" and "died" in out[0][1]
        out = pool.run(divmod, [(1, 0), (9, 4)], timeout_s=5.0)
        assert out[0] == ("error", "ZeroDivisionError: integer division or modulo by zero")
        assert out[1] == ("ok", (2, 1))
    finally:
        pool.close()


def test_pool_failures_map_to_zero_rewards_and_counts(monkeypatch):
    class FailingPool:
        num_workers = 2

        def run(self, fn, tasks, timeout_s):
            return [("timeout", None), ("error", "worker died"), ("ok", (1.0, {"status": "ok"}))]

    monkeypatch.setattr(batch_module, "_shared_pool", lambda n: FailingPool())
    result = batch_rewards(["\\boxed{1}", "\\boxed{2}", "\\boxed{3}"], ["1", "2", "3"])
    assert result.rewards == [0.0, 0.0, 1.0]
    assert (result.timeouts, result.errors) == (1, 1)
    assert result.details[0]["extracted"] == "1" and result.details[0]["status"] == "timeout"
    assert result.details[1]["error"] == "worker died"


GARBAGE = [
    None,
    "",
    b"\xff\xfe\\boxed{1}",
    12345,
    "x" * 1_000_000,
    "{" * 5000,
    "\\boxed{" + "{" * 2000 + "1" + "}" * 2000 + "}",
    "\\boxed{\\frac{1}{",
    "\\boxed{" * 100_000,
    "\\boxed{" + "\\sqrt{" * 300 + "2" + "}" * 300 + "}",
    "\x00" * 1000 + "\\boxed{1}",
]


def test_garbage_never_raises():
    result = batch_rewards(GARBAGE, ["1"] * len(GARBAGE), timeout_s=5.0, num_workers=2)
    assert len(result.rewards) == len(GARBAGE)
    assert set(result.rewards) <= {0.0, 1.0}
    assert result.rewards[2] == 1.0 and result.rewards[6] == 1.0 and result.rewards[-1] == 1.0
    assert result.errors == 0


def test_garbage_ground_truths_never_raise():
    result = batch_rewards(["\\boxed{1}"] * 4, [None, "", b"\xff", "\\boxed{"], num_workers=0)
    assert result.rewards == [0.0, 0.0, 0.0, 0.0] and result.errors == 0


def test_choice_kind():
    result = batch_rewards(["\\boxed{C}", "ANSWER: B", "\\boxed{2}", "\\boxed{A}"], ["C", "C", "2", "Z"], kind="choice")
    assert result.rewards == [1.0, 0.0, 1.0, 0.0]
    assert [d["extracted"] for d in result.details] == ["C", "B", "B", None]
    assert (result.timeouts, result.errors) == (0, 1)


def test_argument_errors():
    with pytest.raises(ValueError, match="2 responses but 1 ground truths"):
        batch_rewards(["a", "b"], ["1"])
    with pytest.raises(ValueError, match="reward kind 'essay'"):
        batch_rewards(["a"], ["1"], kind="essay")
    with pytest.raises(ConfigError, match="reward mode"):
        batch_rewards(["a"], ["1"], mode="vote")
    assert batch_rewards([], []).rewards == []
