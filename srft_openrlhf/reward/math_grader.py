"""The verifiable math reward (paper Eq. A2): 1 if the final answer is right, else 0.

Two graders judge the extracted answer against the ground truth:
- math-verify (HuggingFace, the paper's choice), called with its own signal timeouts
  switched off (``parsing_timeout=None``, ``timeout_seconds=None``): they only work in the
  main thread and would fight over SIGALRM with ours;
- our OAT-style normalising grader (``oat_grader``).
``mode``: "either" (default: correct if either grader says so), "math_verify", "oat".

Time: one wall-clock limit per sample (``time_limit``) covers both graders, in any thread.
Python delivers it between bytecodes; the main thread's SIGALRM also interrupts CPython's
big-integer arithmetic (which checks signals), nothing interrupts it in another thread. So off
the main thread math-verify is not given an answer with an exponent that our parser does not
vouch for (``9^{9^{9^9}}`` or ``9E999999999`` would build a giant integer in one C call).
``batch.batch_rewards`` (worker processes killed on overrun) is the hard bound on top.
"""

from __future__ import annotations

import ctypes
import logging
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from srft_openrlhf.errors import ConfigError
from srft_openrlhf.reward.extract import as_text, extract_answer, last_boxed
from srft_openrlhf.reward.latex import parse_latex
from srft_openrlhf.reward.oat_grader import MAX_ANSWER_CHARS, oat_equal

logger = logging.getLogger(__name__)
# math-verify warns once per process that its timeouts are off (we time-limit ourselves),
# and logs parse failures of model garbage; neither helps a training log.
logging.getLogger("math_verify").setLevel(logging.ERROR)

MODES = ("either", "math_verify", "oat")
DEFAULT_TIMEOUT_S = 5.0

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
# Anything math-verify may read as a power: ^, **, scientific notation (1e9, 2.5 E-7).
_EXPONENT = re.compile(r"\^|\*\*|[0-9.]\s*[eE]\s*[-+]?\s*[0-9]")


@dataclass(frozen=True)
class MathGrade:
    """Verdict on one response. ``math_verify`` / ``oat`` are None when that grader did
    not run (mode) or could not finish (timeout, crash)."""

    correct: bool
    extracted: str | None
    math_verify: bool | None
    oat: bool | None


class GradingTimeout(BaseException):
    """Raised by ``time_limit``. A BaseException so that the graders' and sympy's broad
    ``except Exception`` handlers cannot swallow it."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise GradingTimeout in the block after ``seconds`` of wall time, in any thread.

    Main thread: SIGALRM. An outer SIGALRM timer (e.g. pytest-timeout) is respected: if it
    fires first it keeps its handler, otherwise it is re-armed with its remaining time on exit.
    Other threads (OpenRLHF calls ``reward_func`` from ``asyncio.to_thread`` workers, where
    signals never arrive): ``_thread_time_limit``.
    """
    if not seconds or seconds <= 0:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        with _thread_time_limit(seconds):
            yield
        return
    outer_remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    if outer_remaining and outer_remaining <= seconds:
        yield
        return

    def _expire(signum: int, frame: object) -> None:
        raise GradingTimeout(f"grading took longer than {seconds} s")

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_remaining:
            left = outer_remaining - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3))


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    """Have ``thread_id`` raise ``exc`` at its next bytecode; None withdraws a pending one."""
    # ctypes passes None as NULL, which is what withdrawing takes.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


@contextmanager
def _thread_time_limit(seconds: float) -> Iterator[None]:
    """``time_limit`` off the main thread: a timer thread raises GradingTimeout in this one.

    The lock makes "the block has ended" and "raise now" exclusive, and the exit withdraws an
    exception raised but not yet delivered, so a timeout surfaces inside the block or not at all.
    """
    thread_id = threading.get_ident()
    lock = threading.Lock()
    ended = False
    fired = False

    def _expire() -> None:
        nonlocal fired
        with lock:
            if not ended:
                fired = True
                _set_async_exc(thread_id, GradingTimeout)

    timer = threading.Timer(seconds, _expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            ended = True
        timer.cancel()
        if fired:
            _set_async_exc(thread_id, None)
            raise GradingTimeout(f"grading took longer than {seconds} s")


def clean_ground_truth(ground_truth: object) -> str:
    """Dataset gold -> bare answer: unbox (AIME24's ``\\boxed{204}``), drop ``$``
    delimiters (OlympiadBench's ``$69$,$84$``) and a trailing period."""
    text = as_text(ground_truth).strip()
    boxed = last_boxed(text) if "\\boxed" in text or "\\fbox" in text else None
    if boxed is not None:
        text = boxed
    return _UNESCAPED_DOLLAR.sub("", text).strip().rstrip(".").strip()


def _math_verify_equal(prediction: str, gold: str) -> bool:
    """math-verify's verdict; both sides are given as ``\\boxed{...}`` so that its parser
    reads exactly the answer we extracted (its own extraction is not used)."""
    # Imported here: math_verify pulls in sympy and antlr (~1 s), not needed to import us.
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
    gold_parsed = parse(f"\\boxed{{{gold}}}", extraction_config=config, parsing_timeout=None)
    pred_parsed = parse(f"\\boxed{{{prediction}}}", extraction_config=config, parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"reward mode {mode!r} is unknown; use one of {', '.join(MODES)}")


def grade_math_unguarded(response: object, ground_truth: object, mode: str = "either") -> MathGrade:
    """``grade_math`` without the time limit and the exception net (the batch workers
    apply their own and count what escapes)."""
    check_mode(mode)
    extracted = extract_answer(as_text(response))
    gold = clean_ground_truth(ground_truth)
    if extracted is None or not gold:
        return MathGrade(False, extracted, None, None)
    prediction = _UNESCAPED_DOLLAR.sub("", extracted).strip().rstrip(".").strip()
    oat = oat_equal(prediction, gold) if mode in ("either", "oat") else None
    mv = None
    if mode in ("either", "math_verify"):
        # Over-long answers are not worth a parse that may take seconds: no match. Off the main
        # thread the timer cannot stop one long C call (module docstring): no match either for an
        # exponent that our parser refuses or cannot read (it size-checks every power and number).
        unbounded = threading.current_thread() is not threading.main_thread() and any(
            _EXPONENT.search(text) and parse_latex(text) is None for text in (prediction, gold)
        )
        mv = len(prediction) <= MAX_ANSWER_CHARS and not unbounded and _math_verify_equal(prediction, gold)
    return MathGrade(bool(oat) or bool(mv), extracted, mv, oat)


def grade_math(
    response: object, ground_truth: object, mode: str = "either", timeout_s: float | None = DEFAULT_TIMEOUT_S
) -> MathGrade:
    """Grade one response against a ground truth (Eq. A2). Never raises on any input
    (only on an unknown ``mode``); a timeout or a grader crash gives ``correct=False``."""
    check_mode(mode)
    try:
        with time_limit(timeout_s):
            return grade_math_unguarded(response, ground_truth, mode)
    except GradingTimeout:
        logger.warning("math grading timed out after %s s", timeout_s)
    except Exception:
        logger.warning("math grader crashed", exc_info=True)
    try:
        extracted = extract_answer(as_text(response))
    except Exception:
        extracted = None
    return MathGrade(False, extracted, None, None)


def math_reward(response: object, ground_truth: object, mode: str = "either") -> float:
    """1.0 if the final answer of ``response`` equals ``ground_truth``, else 0.0 (Eq. A2)."""
    return 1.0 if grade_math(response, ground_truth, mode).correct else 0.0
