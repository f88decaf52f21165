"""Atomic checkpoints of a run, and exact resume.

Layout under ``RUN_DIR/checkpoints/``::

    step-000050/           one checkpoint: what the engine saves (the model in Hugging Face
                           format, loadable by vLLM, plus optimizer and LR scheduler) and
                           trainer_state.pt (step, RNG states, data position, async batches)
    latest                 the name of the newest complete checkpoint, one line

A checkpoint is written into a hidden temporary folder, every file fsynced, then renamed
into place (``os.replace`` is atomic within a file system), and only then does ``latest``
(itself replaced atomically) point to it. A kill at any moment therefore leaves either the
previous checkpoint or the new one, never one that loads half; leftover temporary folders
are removed by the next save. The ``keep`` newest checkpoints are kept.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srft_openrlhf.errors import CheckpointError
from srft_openrlhf.runs import CHECKPOINTS

LATEST = "latest"
STATE_FILE = "trainer_state.pt"
PREFIX = "step-"
TMP_PREFIX = ".tmp-"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def rng_state() -> dict[str, Any]:
    """Every random number generator the trainer process uses."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (children before parents)."""
    for dirpath, _, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by a file holding ``text``, all or nothing."""
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The folder ``latest`` points to, or None when the run has no checkpoint yet."""
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"{pointer} points to {folder.name}, which is not a complete checkpoint")
    return folder


def save_checkpoint(run_dir: Path, step: int, engine, state: dict[str, Any], keep: int) -> Path:
    """Write the checkpoint of ``step`` atomically, point ``latest`` at it, prune old ones."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(f"{TMP_PREFIX}*"):  # from a save that was killed
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    final = root / checkpoint_name(step)
    pointer = root / LATEST
    if pointer.is_file() and pointer.read_text().strip() == final.name:
        return final  # resumed from this very checkpoint: its content is what we would write
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=root))
    try:
        engine.save(tmp)
        torch.save(state, tmp / STATE_FILE)
        fsync_tree(tmp)
        if final.exists():  # written by a killed run after its last `latest` update: not referenced
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)
        write_atomic(pointer, final.name + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prune(root, keep, protect=final.name)
    return final


def prune(root: Path, keep: int, protect: str) -> None:
    """Delete all but the ``keep`` newest checkpoints (never ``protect``, the one ``latest`` names)."""
    folders = sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir())
    for old in folders[: max(0, len(folders) - max(keep, 1))]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, engine) -> dict[str, Any]:
    """Restore the engine (weights, optimizer, scheduler) and RNGs; returns the trainer state."""
    engine.load(folder)
    # our own file: it holds Python objects (RNG tuples, pending rollout batches)
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    set_rng_state(state["rng"])
    return state
