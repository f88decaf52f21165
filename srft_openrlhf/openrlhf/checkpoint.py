"""Checkpoints that are complete or not used: OpenRLHF's ``save_ckpt`` with ``latest`` last.

OpenRLHF 0.11.2's ``DeepspeedStrategy.save_ckpt`` first removes the checkpoints beyond
``ckpt.max_num`` (counting the one about to be written), then has DeepSpeed write the new one,
whose rank 0 writes ``latest`` as soon as its own files are written. A job killed while it saves
is left with the previous checkpoint deleted (with ``keep_checkpoints: 1``, nothing to resume
from) and ``latest`` possibly naming a checkpoint whose other ranks' files are missing.

``atomic_save_ckpt`` replaces it (``patches.PATCHES``): every rank writes its files of the new
checkpoint (OpenRLHF's save with nothing removed and no ``latest``), a barrier, then rank 0
points ``latest`` at it by an atomic rename, and only then removes the old checkpoints beyond
``max_num`` (OpenRLHF's order: no-metric first, then worst metric, then oldest), never the one
``latest`` names. A kill at any point leaves ``latest`` naming a complete checkpoint. A save that
fails (disk full) raises ``CheckpointError`` naming the folder, with the previous checkpoint and
``latest`` untouched.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from openrlhf.utils.deepspeed import DeepspeedStrategy
from openrlhf.utils.distributed_util import torch_dist_barrier_and_cuda_sync

from srft_openrlhf.errors import UserError
from srft_openrlhf.openrlhf.faults import reached

_openrlhf_save_ckpt = DeepspeedStrategy.save_ckpt


class CheckpointError(UserError):
    """A checkpoint could not be written; the previous one is intact."""


def step_of(tag: str | None) -> int:
    """global_step12 -> 12 (-1 for other tags)."""
    digits = (tag or "").rpartition("step")[2]
    return int(digits) if digits.isdigit() else -1


def write_latest(save_dir: str, tag: str) -> None:
    """``save_dir/latest`` := tag, atomically (a reader sees the old tag or the new one)."""
    tmp = Path(save_dir) / "latest.tmp"
    with open(tmp, "w") as f:
        f.write(tag)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, Path(save_dir) / "latest")


def prune(strategy, save_dir: str, keep: str, max_num: int) -> None:
    """Remove regular checkpoints beyond ``max_num`` in OpenRLHF's eviction order, never ``keep``
    (what ``latest`` names) nor the ``best*`` ones."""
    regular = [
        path
        for path in (Path(save_dir) / d for d in os.listdir(save_dir))
        if path.is_dir() and not path.name.startswith("best")
    ]
    candidates = sorted(
        (p for p in regular if p.name != keep),
        key=lambda p: (
            (metric := strategy._read_ckpt_metric(str(p))) is not None,
            metric if metric is not None else float("-inf"),
            p.stat().st_mtime,
        ),
    )
    for path in candidates[: max(0, len(regular) - max_num)]:
        shutil.rmtree(path, ignore_errors=True)
        strategy.print(f"Deleted checkpoint {path}")


def atomic_save_ckpt(
    self,
    model,
    save_dir,
    tag=None,
    max_num=3,
    max_mem=1000,
    client_state=None,
    save_latest=True,
    metric_value=None,
    metric_key=None,
):
    """``DeepspeedStrategy.save_ckpt`` in the order of the module docstring (same arguments)."""
    if tag is None or tag.startswith("best"):  # OpenRLHF's best-checkpoint bookkeeping: as it was
        return _openrlhf_save_ckpt(
            self, model, save_dir, tag, max_num, max_mem, client_state, save_latest, metric_value, metric_key
        )
    try:
        _openrlhf_save_ckpt(
            self, model, save_dir, tag, 10**9, float("inf"), client_state, False, metric_value, metric_key
        )
    except OSError as e:
        what = "the disk is full" if e.errno == errno.ENOSPC else f"{type(e).__name__}: {e}"
        raise CheckpointError(
            f"checkpoint {tag} in {save_dir} could not be written ({what}); `latest` still names the previous "
            "checkpoint, which is intact: free space, then srft train --resume RUN_DIR"
        ) from e
    torch_dist_barrier_and_cuda_sync()  # every rank's files are written
    step = step_of(tag)
    reached("checkpoint_files", step)
    if self.is_rank_0() and save_latest:
        write_latest(save_dir, tag)
    torch_dist_barrier_and_cuda_sync()
    reached("checkpoint_latest", step)
    if self.is_rank_0():
        prune(self, save_dir, tag, max_num)
