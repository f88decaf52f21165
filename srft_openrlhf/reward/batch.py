"""Rewards for a whole batch of responses, in worker processes, with a per-sample timeout.

A sample whose grading runs past ``timeout_s`` scores 0 and is counted in ``timeouts``;
one whose grader raises (or kills its worker) scores 0 and is counted in ``errors``.
Two layers of protection:
- soft: inside the worker, ``time_limit(timeout_s)`` interrupts Python-level work
  (sympy, regexes, big-integer arithmetic all honour SIGALRM); the worker survives;
- hard: the parent kills a worker that has not answered ``HARD_TIMEOUT_FACTOR`` times
  later (stuck in C code, deadlocked) and starts a replacement, so the batch never stalls.

Workers are started with "forkserver" (fork from a clean server that has already
imported sympy and math-verify: a replacement costs milliseconds and inherits no
threads or CUDA state of the trainer) or "spawn" where forkserver does not exist. The
pool is created on first use and kept for later calls (one per process).

``details[i]`` is a dict: ``status`` ("ok" | "timeout" | "error"), ``correct``,
``extracted`` and, for math, ``math_verify`` / ``oat`` (bool, or None when that grader
did not run or did not finish); ``error`` (a short message) when ``status == "error"``.
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing
import multiprocessing.connection
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from srft_openrlhf.config import RolloutConfig

from srft_openrlhf.reward.choice import choice_reward, extract_choice, gold_to_letter
from srft_openrlhf.reward.extract import as_text, extract_answer
from srft_openrlhf.reward.math_grader import (
    DEFAULT_TIMEOUT_S,
    GradingTimeout,
    check_mode,
    grade_math_unguarded,
    time_limit,
)

KINDS = ("math", "choice")
HARD_TIMEOUT_FACTOR = 1.5
HARD_TIMEOUT_GRACE_S = 1.0
WORKER_START_TIMEOUT_S = 120.0
_PRELOAD = ("srft_openrlhf.reward.batch", "math_verify")


@dataclass
class BatchRewards:
    rewards: list[float]
    details: list[dict[str, Any]]
    timeouts: int
    errors: int


# ---------------------------------------------------------------- one sample


def _failed_detail(response: str, status: str, error: str | None = None) -> dict[str, Any]:
    try:
        extracted = extract_answer(response)
    except Exception:
        extracted = None
    detail: dict[str, Any] = {
        "status": status,
        "correct": False,
        "extracted": extracted,
        "math_verify": None,
        "oat": None,
    }
    if error is not None:
        detail["error"] = error
    return detail


def score_math_sample(response: str, ground_truth: str, mode: str, timeout_s: float) -> tuple[float, dict]:
    """Reward and detail of one math sample; runs in a worker (or in-process)."""
    try:
        with time_limit(timeout_s):
            grade = grade_math_unguarded(response, ground_truth, mode)
    except GradingTimeout:
        return 0.0, _failed_detail(response, "timeout")
    except Exception as exc:
        return 0.0, _failed_detail(response, "error", f"{type(exc).__name__}: {exc}"[:300])
    detail = {
        "status": "ok",
        "correct": grade.correct,
        "extracted": grade.extracted,
        "math_verify": grade.math_verify,
        "oat": grade.oat,
    }
    return (1.0 if grade.correct else 0.0), detail


def _score_choice_sample(response: str, ground_truth: str) -> tuple[float, dict]:
    if gold_to_letter(ground_truth) is None:
        error = f"gold {ground_truth[:40]!r} is not a letter A-J or a number 1-10"
        return 0.0, {"status": "error", "correct": False, "extracted": None, "error": error}
    reward = choice_reward(response, ground_truth)
    extracted = extract_choice(response, numbered=ground_truth.strip().isdigit())
    return reward, {"status": "ok", "correct": reward == 1.0, "extracted": extracted}


# ---------------------------------------------------------------- worker pool


def _worker_main(conn: multiprocessing.connection.Connection, preload: tuple[str, ...]) -> None:
    """Worker loop: import, say "ready", then run ``fn(*args)`` messages until None/EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    for module in preload:
        importlib.import_module(module)
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        fn, args = message
        try:
            reply = ("ok", fn(*args))
        except BaseException as exc:  # noqa: BLE001 - report everything, the pool decides
            reply = ("error", f"{type(exc).__name__}: {exc}"[:300])
        conn.send(reply)


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection


class WorkerPool:
    """Processes that each run one ``fn(*args)`` at a time. ``run`` returns, per task,
    ``("ok", value)``, ``("error", message)`` or ``("timeout", None)``; a worker that
    overruns ``timeout_s`` or dies is killed and replaced, the other tasks go on."""

    def __init__(self, num_workers: int, start_method: str | None = None, preload: Sequence[str] = ()):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        methods = multiprocessing.get_all_start_methods()
        self.start_method = start_method or ("forkserver" if "forkserver" in methods else "spawn")
        self._context = multiprocessing.get_context(self.start_method)
        self._preload = tuple(preload)
        if self.start_method == "forkserver" and self._preload:
            # Takes effect only if this process's forkserver has not started yet.
            self._context.set_forkserver_preload(list(self._preload))
        self._workers: list[_Worker] = []
        try:
            for _ in range(num_workers):
                self._workers.append(self._start_worker())
        except BaseException:
            # The caller grades in process and retries next batch: workers started before the
            # failure would otherwise pile up, one set per retry.
            self.close()
            raise
        self.num_workers = num_workers

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        # typeshed's BaseContext (what get_context(str) returns) lacks Process; every real context has it
        process = self._context.Process(  # type: ignore[attr-defined]
            target=_worker_main, args=(child_conn, self._preload), daemon=True, name="srft-reward-worker"
        )
        process.start()
        child_conn.close()
        if not parent_conn.poll(WORKER_START_TIMEOUT_S) or parent_conn.recv() != "ready":
            process.kill()
            raise RuntimeError(f"reward worker did not start within {WORKER_START_TIMEOUT_S} s")
        return _Worker(process, parent_conn)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.process.kill()
        worker.process.join(timeout=10)
        worker.conn.close()
        fresh = self._start_worker()
        self._workers[self._workers.index(worker)] = fresh
        return fresh

    def run(self, fn: Callable[..., Any], tasks: Sequence[tuple], timeout_s: float) -> list[tuple[str, Any]]:
        results: list[tuple[str, Any]] = [("error", "not run")] * len(tasks)
        idle = list(self._workers)
        busy: dict[int, tuple[_Worker, int, float]] = {}  # id(conn) -> worker, task, deadline
        next_task = 0
        while next_task < len(tasks) or busy:
            while idle and next_task < len(tasks):
                worker = idle.pop()
                try:
                    worker.conn.send((fn, tasks[next_task]))
                except (OSError, ValueError) as exc:  # dead pipe or unpicklable task
                    results[next_task] = ("error", f"could not send task: {exc}"[:300])
                    idle.append(self._replace(worker))
                else:
                    busy[id(worker.conn)] = (worker, next_task, time.monotonic() + timeout_s)
                next_task += 1
            if not busy:
                continue
            wait_s = max(0.0, min(deadline for _, _, deadline in busy.values()) - time.monotonic())
            ready = multiprocessing.connection.wait([w.conn for w, _, _ in busy.values()], timeout=wait_s)
            for conn in ready:
                worker, index, _ = busy.pop(id(conn))
                try:
                    results[index] = worker.conn.recv()
                    idle.append(worker)
                except (EOFError, OSError):
                    results[index] = ("error", "reward worker died (crash or out of memory)")
                    idle.append(self._replace(worker))
            now = time.monotonic()
            for key, (worker, index, deadline) in list(busy.items()):
                if now >= deadline:
                    del busy[key]
                    results[index] = ("timeout", None)
                    idle.append(self._replace(worker))
        return results

    def close(self) -> None:
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._workers:
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()
        self._workers = []


_pool: WorkerPool | None = None
_pool_lock = threading.Lock()


def _shared_pool(num_workers: int) -> WorkerPool:
    global _pool
    if _pool is None or _pool.num_workers != num_workers:
        if _pool is not None:
            _pool.close()
        _pool = WorkerPool(num_workers, preload=_PRELOAD)
    return _pool


@atexit.register
def close_pool() -> None:
    """Stop the shared worker processes (a later batch_rewards starts new ones)."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close()
            _pool = None


# ---------------------------------------------------------------- batch


def batch_rewards(
    responses: Sequence[object],
    ground_truths: Sequence[object],
    kind: str = "math",
    mode: str = "either",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    num_workers: int = 2,
) -> BatchRewards:
    """Rewards (1.0 / 0.0) for ``responses[i]`` against ``ground_truths[i]``.

    ``kind="math"``: graded in ``num_workers`` processes (0: in this process, in any thread,
    with the bounds of ``math_grader.time_limit``). ``kind="choice"``: letter matching, always
    in this process (a regex pass; nothing to time out). Never raises on response content.
    """
    if kind not in KINDS:
        raise ValueError(f"reward kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    check_mode(mode)
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
    texts = [as_text(r) for r in responses]
    golds = [as_text(g) for g in ground_truths]
    if kind == "choice":
        scored = [_score_choice_sample(r, g) for r, g in zip(texts, golds)]
    elif num_workers <= 0 or multiprocessing.current_process().daemon or not texts:
        # Daemonic processes (e.g. inside another pool) may not start children.
        scored = [score_math_sample(r, g, mode, timeout_s) for r, g in zip(texts, golds)]
    else:
        scored = _score_math_in_pool(texts, golds, mode, timeout_s, num_workers)
    details = [detail for _, detail in scored]
    return BatchRewards(
        rewards=[reward for reward, _ in scored],
        details=details,
        timeouts=sum(d["status"] == "timeout" for d in details),
        errors=sum(d["status"] == "error" for d in details),
    )


def grade(texts: list[str], answers: list[str], cfg: RolloutConfig) -> BatchRewards:
    """``batch_rewards`` with the run's ``rollout.*`` reward settings."""
    return batch_rewards(
        texts,
        answers,
        kind=cfg.reward,
        mode=cfg.reward_mode,
        timeout_s=cfg.reward_timeout_s,
        num_workers=cfg.reward_workers,
    )


def _score_math_in_pool(
    texts: list[str], golds: list[str], mode: str, timeout_s: float, num_workers: int
) -> list[tuple[float, dict]]:
    tasks = [(r, g, mode, timeout_s) for r, g in zip(texts, golds)]
    hard_timeout_s = timeout_s * HARD_TIMEOUT_FACTOR + HARD_TIMEOUT_GRACE_S
    with _pool_lock:
        outcomes = _shared_pool(num_workers).run(score_math_sample, tasks, hard_timeout_s)
    scored = []
    for text, (status, value) in zip(texts, outcomes):
        if status == "ok":
            scored.append(value)
        else:
            scored.append((0.0, _failed_detail(text, status, value if status == "error" else None)))
    return scored
