"""Hostile rollouts (issue 18): a response that is pathological for the grader costs its grading
at most about one per-sample timeout, scores 0 and is counted, on every grading path:

- the worker pool (``rollout.reward_workers > 0``, as the GPU configs ship it);
- the in-process fallback when the pool cannot start, called as OpenRLHF calls ``reward_func``
  inside an engine: from ``asyncio.to_thread`` worker threads, concurrent calls coalesced by
  ``CoalescingGrader`` (one leader grades for every caller);
- end to end on the CPU cluster path with the pool inside the Ray actors.

Bounds are generous (30 s for a 2 s timeout): the machine is shared and noisy. Each hostile
input is chosen so that grading it without a bound takes far longer than the timeout (measured
here: the nested parentheses ~9 s, the fraction sum ~20 s, the giant numbers never finish), or
is a kind the grader handles in linear time by design (1 MB, 10,000 digits, invalid UTF-8), for
which the test checks that it stays cheap and scores 0.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from srft_openrlhf.openrlhf.reward_func import encode_label, grade_never_raising, make_reward_func
from srft_openrlhf.reward import batch as batch_module
from srft_openrlhf.reward import batch_rewards
from srft_openrlhf.reward.batch import WorkerPool
from srft_openrlhf.reward.latex import parse_latex
from srft_openrlhf.reward.math_grader import GradingTimeout, time_limit

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 2.0
BOUND_S = 30.0  # generous: a hostile sample may cost ~1.5 timeouts plus a worker restart
NORMAL, NORMAL_GOLD = "<think>\n2+2=4\n</think> \\boxed{4}", "4"
HOSTILE_GOLD = "5"  # no hostile response below is worth 5 (a timeout must not hide a wrong answer)
# kind -> (response, status in a worker process, status off the main thread in process).
# A worker grades in its main thread, where SIGALRM also interrupts CPython's big-integer
# arithmetic; off the main thread no timer can interrupt one long C call, so there the giant
# numbers are never handed to math-verify (our parser refuses them: status "ok", reward 0).
HOSTILE = {
    "1mb_response": ("<think>" + "\\frac{1}{2}+" * 90_000 + "</think> \\boxed{3}", "ok", "ok"),
    "nested_latex": ("\\boxed{" + "(" * 480 + "1" + ")" * 480 + "}", "timeout", "timeout"),
    "frac_chain": ("\\boxed{" + "+".join(f"\\frac{{x}}{{x+{k}}}" for k in range(1, 60)) + "}", "timeout", "timeout"),
    "digits_10k": ("\\boxed{" + "9" * 10_000 + "}", "ok", "ok"),
    "giant_power": ("\\boxed{9^{9^{9^{9}}}}", "timeout", "ok"),
    "giant_literal": ("so the answer is \\boxed{9E999999999}", "timeout", "ok"),
    "invalid_utf8": (
        b"<think>\xff\xfe</think> \\boxed{\xed\xa0\x80 7\xc3}".decode("utf-8", "surrogateescape"),
        "ok",
        "ok",
    ),
}
KINDS = list(HOSTILE)


def check_batch(result, kind: str, status: str, elapsed: float) -> None:
    """[normal, hostile, normal]: bounded, the hostile one scores 0 with its status and count,
    the normal ones keep their reward."""
    assert elapsed < BOUND_S, (kind, elapsed)
    assert result.rewards == [1.0, 0.0, 1.0], (kind, result.details[1])
    assert result.details[1]["status"] == status, (kind, result.details[1])
    assert (result.timeouts, result.errors) == (int(status == "timeout"), 0), kind


def batch_of(kind: str) -> tuple[list[str], list[str]]:
    return [NORMAL, HOSTILE[kind][0], NORMAL], [NORMAL_GOLD, HOSTILE_GOLD, NORMAL_GOLD]


@pytest.fixture(scope="module", autouse=True)
def warm_graders():
    """Import math-verify here and start the pool before anything is timed."""
    batch_rewards([NORMAL], [NORMAL_GOLD], mode="either", num_workers=0)
    batch_rewards([NORMAL], [NORMAL_GOLD], mode="either", num_workers=2)


@pytest.fixture
def pool_fails_to_start(monkeypatch):
    """The shared pool is gone and no worker can start (as when forkserver fails in an actor)."""
    batch_module.close_pool()

    def fail(self):
        raise RuntimeError("reward worker did not start (test)")

    monkeypatch.setattr(WorkerPool, "_start_worker", fail)
    yield
    monkeypatch.undo()
    batch_module.close_pool()


# ---------------------------------------------------------------- the worker pool


@pytest.mark.parametrize("kind", KINDS)
def test_pool_bounds_each_hostile_sample(kind):
    responses, golds = batch_of(kind)
    started = time.monotonic()
    result = batch_rewards(responses, golds, mode="either", timeout_s=TIMEOUT_S, num_workers=2)
    check_batch(result, kind, HOSTILE[kind][1], time.monotonic() - started)


# ---------------------------------------------------------------- the in-process fallback, in threads


@pytest.mark.parametrize("kind", KINDS)
def test_fallback_in_a_worker_thread_bounds_each_hostile_sample(kind, pool_fails_to_start):
    """The pool cannot start and the batch is graded in the calling thread, which is not the
    main thread (OpenRLHF's ``asyncio.to_thread``): the per-sample timeout still acts."""
    responses, golds = batch_of(kind)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as executor:
        future = executor.submit(grade_never_raising, responses, golds, "math", "either", TIMEOUT_S, 2)
        result = future.result(timeout=BOUND_S * 4)  # fails instead of hanging; the bound is checked below
    check_batch(result, kind, HOSTILE[kind][2], time.monotonic() - started)


@pytest.mark.parametrize("kind", KINDS)
def test_fallback_two_concurrent_calls_through_the_coalescing_grader(kind, pool_fails_to_start):
    """Two rollouts graded at once as OpenRLHF does (one ``reward_func`` call per rollout, each in
    its own ``asyncio.to_thread`` thread): whichever thread leads grades both; the normal rollout
    gets its reward within the bound, the hostile one scores 0 and is counted."""
    reward_func = make_reward_func(kind="math", mode="either", timeout_s=TIMEOUT_S, num_workers=2)
    prompt = "What is 2+2? "

    async def both():
        return await asyncio.gather(
            asyncio.to_thread(reward_func, [prompt + HOSTILE[kind][0]], [prompt], [encode_label(HOSTILE_GOLD)]),
            asyncio.to_thread(reward_func, [prompt + NORMAL], [prompt], [encode_label(NORMAL_GOLD)]),
        )

    started = time.monotonic()
    hostile, normal = asyncio.run(asyncio.wait_for(both(), timeout=BOUND_S * 4))
    assert time.monotonic() - started < BOUND_S
    assert hostile["rewards"].tolist() == [0.0] and normal["rewards"].tolist() == [1.0]
    timed_out = float(HOSTILE[kind][2] == "timeout")
    assert hostile["extra_logs"]["reward_timeout"].tolist() == [timed_out]
    assert normal["extra_logs"]["reward_timeout"].tolist() == [0.0]


# ---------------------------------------------------------------- the pieces


def test_time_limit_interrupts_a_worker_thread():
    def spin_forever():
        with time_limit(0.2):
            while True:
                pass

    with ThreadPoolExecutor(max_workers=1) as executor:
        future = executor.submit(spin_forever)
        with pytest.raises(GradingTimeout):
            future.result(timeout=BOUND_S)


def test_thread_time_limit_never_fires_outside_its_block():
    """Blocks that end just before, at or after their deadline: a timeout surfaces inside the
    block (caught here) or not at all, never later in code that follows the block."""

    def spin(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    def many_blocks() -> int:
        fired = 0
        for i in range(60):
            try:
                with time_limit(0.002):
                    spin((0.0, 0.001, 0.002, 0.003, 0.05)[i % 5])
            except GradingTimeout:
                fired += 1
            spin(0.002)  # a stray timeout would be raised here, outside the handler
        return fired

    with ThreadPoolExecutor(max_workers=1) as executor:
        assert executor.submit(many_blocks).result(timeout=BOUND_S) > 0


def test_parser_refuses_giant_scientific_literals():
    """``Rational("1e100000000")`` builds a 10^8-digit integer in one C call: refused up front."""
    assert parse_latex("1e100000000") is None and parse_latex("2.5E-99999999") is None
    assert parse_latex("1.5e3") == 1500


def test_a_pool_that_fails_half_way_leaves_no_worker_behind(monkeypatch):
    started = []
    start = WorkerPool._start_worker

    def second_fails(self):
        if started:
            raise RuntimeError("reward worker did not start (test)")
        started.append(start(self))
        return started[-1]

    monkeypatch.setattr(WorkerPool, "_start_worker", second_fails)
    with pytest.raises(RuntimeError, match="did not start"):
        WorkerPool(2)
    assert not started[0].process.is_alive()
    assert started[0].process not in multiprocessing.active_children()


# ---------------------------------------------------------------- end to end, CPU cluster path

E2E_STEPS = [
    "train.steps=3",
    "train.lr_warmup_steps=1",
    "train.prompts_per_step=8",
    "train.micro_batch_size=5",
    "train.async_enable=false",
    "train.save_every=0",
    "data.max_eval_rows=16",
    "rollout.reward_workers=2",  # the pool inside the Ray actors, as the GPU configs ship it
    "rollout.reward_mode=either",  # math-verify too: the part that hangs on giant numbers
    f"rollout.reward_timeout_s={TIMEOUT_S}",
]
HOSTILE_GOLD_ROW, HOSTILE_DEMO_ROW = 5, 6


@pytest.mark.slow
@pytest.mark.openrlhf
def test_hostile_samples_on_the_cpu_cluster_with_reward_workers(tmp_path):
    """``srft train --backend openrlhf`` (configs/toy_openrlhf_cpu.yaml) on 24 toy problems, one
    epoch of 3 steps, with two hostile samples in the data, no hook in the code: row 5's gold is a
    giant power, so every rollout of it is graded against it by the engine actor's pool and its
    demonstration by the generator actor's pool; row 6's demonstration is a giant literal. The run
    completes its steps and the step holding row 5 counts its 4 rollouts' timeouts."""
    from srft_openrlhf.data import toy

    rows = [{"prompt": e.prompt, "answer": e.answer, "demonstration": e.demonstration} for e in toy.examples("train")]
    rows = rows[:24]
    rows[HOSTILE_GOLD_ROW]["answer"] = HOSTILE["giant_power"][0].removeprefix("\\boxed{").removesuffix("}")
    rows[HOSTILE_DEMO_ROW]["demonstration"] = "<think>\n</think> \\boxed{9E999999999}"
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    sets = [a for s in [*E2E_STEPS, f"data.train={data}"] for a in ("--set", s)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")
    env.pop("RAY_ADDRESS", None)
    config = ROOT / "configs" / "toy_openrlhf_cpu.yaml"
    command = [sys.executable, "-m", "srft_openrlhf.cli", "train", "--backend", "openrlhf", "--config", str(config)]
    result = subprocess.run(
        [*command, "--output-dir", str(out), *sets], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    (tmp_path / "run.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "policy_loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    # every rollout of row 5 and both hostile demos time out (normal samples may too on a busy machine)
    assert max(r["rollout/reward_timeouts"] for r in steps) >= 4
    assert sum(r["rollout/demo_reward_timeouts"] for r in steps) >= 2
    assert all(r["rollout/num_samples"] == 8 * 4 and r["rollout/num_demos"] == 8 for r in steps)
