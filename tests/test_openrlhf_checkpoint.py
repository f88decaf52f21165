"""The cluster backend's checkpoint save (``checkpoint.atomic_save_ckpt``) against OpenRLHF's own.

A fake DeepSpeed engine writes a checkpoint as files; a save "killed" part-way (an exception
after the first file) or failing with a full disk must leave ``latest`` naming the previous
checkpoint, complete. OpenRLHF's own ``save_ckpt`` removes the previous checkpoint before it
writes the new one, so with ``max_num=1`` a kill leaves nothing to resume from: the first test
shows it on the same fake, so that the check is seen to catch the bug it guards against.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

pytestmark = [pytest.mark.openrlhf, pytest.mark.deepspeed]

FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_optim_states.pt", "zero_pp_rank_1_optim_states.pt")


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no except clause catches it."""


@pytest.fixture
def strategy(monkeypatch):
    pytest.importorskip("openrlhf")
    from srft_openrlhf.openrlhf import cpu_compat

    cpu_compat.install()  # OpenRLHF imports flash-attn; the CPU layer's stub stands in
    from openrlhf.utils.deepspeed import DeepspeedStrategy
    from openrlhf.utils.deepspeed import deepspeed as deepspeed_module

    from srft_openrlhf.openrlhf import checkpoint

    monkeypatch.setattr(checkpoint, "torch_dist_barrier_and_cuda_sync", lambda: None)  # one process
    monkeypatch.setattr(deepspeed_module, "torch_dist_barrier_and_cuda_sync", lambda: None)
    s = DeepspeedStrategy.__new__(DeepspeedStrategy)
    s.is_rank_0 = lambda: True
    s.print = lambda *msg: None
    return s


def fake_engine(fail_after: int | None = None, error: BaseException | None = None):
    """A DeepSpeedEngine whose save_checkpoint writes ``FILES`` into save_dir/tag (and ``latest``
    if asked, as DeepSpeed's rank 0 does), raising ``error`` after ``fail_after`` files."""
    from deepspeed import DeepSpeedEngine

    class Engine(DeepSpeedEngine):
        def __init__(self):  # none of DeepSpeed's state is needed
            pass

        def save_checkpoint(self, save_dir, tag=None, client_state=None, save_latest=True, **kwargs):
            folder = Path(save_dir) / tag
            folder.mkdir(parents=True, exist_ok=True)
            for i, name in enumerate(FILES):
                if fail_after is not None and i == fail_after:
                    raise error
                (folder / name).write_text(tag)
            if save_latest:
                (Path(save_dir) / "latest").write_text(tag)

    return Engine()


def complete(save_dir: Path, tag: str) -> bool:
    return all((save_dir / tag / name).is_file() for name in FILES)


def saved_once(strategy, save_dir: Path) -> None:
    from srft_openrlhf.openrlhf.checkpoint import atomic_save_ckpt

    atomic_save_ckpt(strategy, fake_engine(), str(save_dir), "global_step2", max_num=1)
    assert (save_dir / "latest").read_text() == "global_step2" and complete(save_dir, "global_step2")


def test_openrlhf_save_killed_midway_leaves_nothing_to_resume(strategy, tmp_path):
    """The bug: OpenRLHF's order (remove, then write) with max_num=1."""
    from srft_openrlhf.openrlhf.checkpoint import _openrlhf_save_ckpt

    saved_once(strategy, tmp_path)
    with pytest.raises(Killed):
        _openrlhf_save_ckpt(strategy, fake_engine(1, Killed()), str(tmp_path), "global_step4", max_num=1)
    assert (tmp_path / "latest").read_text() == "global_step2"
    assert not (tmp_path / "global_step2").exists()  # latest names a removed checkpoint


@pytest.mark.parametrize("fail_after", [0, 1, 2])
def test_save_killed_midway_keeps_latest_on_a_complete_checkpoint(strategy, tmp_path, fail_after):
    from srft_openrlhf.openrlhf.checkpoint import atomic_save_ckpt

    saved_once(strategy, tmp_path)
    with pytest.raises(Killed):
        atomic_save_ckpt(strategy, fake_engine(fail_after, Killed()), str(tmp_path), "global_step4", max_num=1)
    assert (tmp_path / "latest").read_text() == "global_step2" and complete(tmp_path, "global_step2")


def test_disk_full_is_one_clear_error_and_keeps_the_previous_checkpoint(strategy, tmp_path):
    from srft_openrlhf.openrlhf.checkpoint import CheckpointError, atomic_save_ckpt

    saved_once(strategy, tmp_path)
    full = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(CheckpointError, match=r"global_step4 .* could not be written \(the disk is full\)"):
        atomic_save_ckpt(strategy, fake_engine(2, full), str(tmp_path), "global_step4", max_num=1)
    assert (tmp_path / "latest").read_text() == "global_step2" and complete(tmp_path, "global_step2")


def test_a_complete_save_moves_latest_then_prunes(strategy, tmp_path):
    from srft_openrlhf.openrlhf.checkpoint import atomic_save_ckpt

    saved_once(strategy, tmp_path)
    (tmp_path / "best_global_step1").mkdir()
    for step in (4, 6):
        atomic_save_ckpt(strategy, fake_engine(), str(tmp_path), f"global_step{step}", max_num=2)
    assert (tmp_path / "latest").read_text() == "global_step6"
    kept = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert kept == ["best_global_step1", "global_step4", "global_step6"]
    assert not (tmp_path / "latest.tmp").exists()
