"""Fault points: named places of a cluster run where the fault tests stop it.

``SRFT_FAULT=POINT@STEP`` (set in the launching shell; the launcher passes it to every Ray worker)
makes the process that reaches ``POINT`` at optimizer step ``STEP`` write ``SRFT_FAULT_MARKER``
and wait there, so that the test can SIGKILL the whole job at exactly that point;
``SRFT_FAULT=POINT@STEP:die`` makes that process kill itself instead (a worker dying mid-step);
``POINT@STEP/RANK`` restricts it to the training rank ``RANK`` where the point is on every rank.
Unset, as in every real run, ``reached`` returns at once. The points (``POINTS``) are called
from the modules that do the work: ``samples`` (generation), ``actor`` (optimizer step),
``weight_sync`` and ``checkpoint``; ``tests/test_openrlhf_faults.py`` kills at each.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "SRFT_FAULT"
MARKER_ENV = "SRFT_FAULT_MARKER"
POINTS = (
    "generation",  # a rollout batch for step STEP was generated, before it is queued for training
    "optimizer_step",  # the last micro-batch's backward of step STEP is done, before the optimizer step
    "weight_sync",  # weights after STEP steps gathered, before the engines load them
    "checkpoint_files",  # every file of checkpoint STEP written, before ``latest`` names it
    "checkpoint_latest",  # ``latest`` names checkpoint STEP, before older ones are removed
)


def armed() -> bool:
    """Whether a fault point is set (for points whose step is costly to find)."""
    return bool(os.environ.get(ENV))


def reached(point: str, step: int, rank: int | None = None) -> None:
    """Stop here if ``SRFT_FAULT`` names this point and step (see the module docstring)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, action = spec.partition(":")
    target, _, only_rank = target.partition("/")
    if target != f"{point}@{step}" or (only_rank and rank is not None and int(only_rank) != rank):
        return
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).write_text(f"{point}@{step} pid {os.getpid()}\n")
    if action == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    while True:  # until the test kills the job
        time.sleep(1)
