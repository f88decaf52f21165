"""Checkpoints: atomic writes, pruning, RNG state, and kill -9 then --resume equality."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import metrics, srft_train, subprocess_env, tiny_run_config, train_records
from safetensors.torch import load_file

from srft_openrlhf.local import checkpoint as ckpt


class FakeEngine:
    """Writes a weights file and an optimizer file, like TrainEngine.save; can fail half-way."""

    def __init__(self, value: float, fail: bool = False) -> None:
        self.value, self.fail = value, fail

    def save(self, path: Path) -> None:
        (path / "model.safetensors").write_text(str(self.value))
        if self.fail:
            raise OSError("disk full")
        (path / "optimizer.pt").write_text("adam")

    def load(self, path: Path) -> None:
        self.value = float((path / "model.safetensors").read_text())


def state(step: int) -> dict:
    return {"step": step, "rng": ckpt.rng_state()}


def test_save_points_latest_and_prunes(tmp_path):
    for step in (2, 4, 6):
        ckpt.save_checkpoint(tmp_path, step, FakeEngine(step), state(step), keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000004", "step-000006"]
    assert ckpt.latest_checkpoint(tmp_path) == root / "step-000006"
    engine = FakeEngine(0)
    assert ckpt.load_checkpoint(root / "step-000006", engine)["step"] == 6 and engine.value == 6


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    ckpt.save_checkpoint(tmp_path, 2, FakeEngine(2), state(2), keep=3)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 4, FakeEngine(4, fail=True), state(4), keep=3)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000002"]  # no half checkpoint
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000002"


def test_kill_between_rename_and_pointer(tmp_path, monkeypatch):
    """A checkpoint renamed into place but never pointed to is ignored, then overwritten."""
    ckpt.save_checkpoint(tmp_path, 2, FakeEngine(2), state(2), keep=3)
    real_write = ckpt.write_atomic

    def killed(path, text):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "write_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 4, FakeEngine(4.5), state(4), keep=3)
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000002"
    monkeypatch.setattr(ckpt, "write_atomic", real_write)
    ckpt.save_checkpoint(tmp_path, 4, FakeEngine(4), state(4), keep=3)  # the resumed run saves step 4 again
    engine = FakeEngine(0)
    ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), engine)
    assert engine.value == 4


def test_leftover_temporary_folders_are_removed(tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-000002-abc").mkdir(parents=True)
    (root / ".tmp-step-000002-abc" / "model.safetensors").write_text("half")
    ckpt.save_checkpoint(tmp_path, 2, FakeEngine(2), state(2), keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000002"]


def test_rng_state_round_trip():
    saved = ckpt.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "step-000006" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_model_dir, mode):
    train = {"steps": 6, "save_every": 2, "keep_checkpoints": 3, "async_enable": mode == "async"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config_a = tiny_run_config(tmp_path / "a", tiny_model_dir, train=train)
    config_b = tiny_run_config(tmp_path / "b", tiny_model_dir, train=train)
    run_a, run_b = tmp_path / "a" / "run", tmp_path / "b" / "run"

    assert srft_train("--config", config_a) == 0

    proc = subprocess.Popen(
        [sys.executable, "-m", "srft_openrlhf.cli", "train", "--config", str(config_b)],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    latest = run_b / "checkpoints" / "latest"
    deadline = time.monotonic() + 600
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    killed_at = latest.read_text().strip()
    assert killed_at != "step-000006", "the run finished before it could be killed"

    assert srft_train("--resume", run_b) == 0
    a, b = final_weights(run_a), final_weights(run_b)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after kill at {killed_at} and resume"
    # the metrics read as one run: each step once, the same values
    steps_b = [r["step"] for r in train_records(run_b)]
    assert steps_b == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(train_records(run_a), train_records(run_b)):
        assert ra["loss"] == rb["loss"] and ra["reward_mean"] == rb["reward_mean"]
    assert [r["step"] for r in metrics(run_b) if "eval_accuracy" in r] == [0, 6]


def test_resume_without_checkpoint_starts_over_and_finished_run_is_reported(tmp_path, tiny_model_dir, capsys):
    config = tiny_run_config(tmp_path, tiny_model_dir, train={"save_every": 0})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config.read_text())
    assert srft_train("--resume", run) == 0  # killed before its first checkpoint: from step 0
    assert [r["step"] for r in train_records(run)] == [1, 2]
    capsys.readouterr()
    assert srft_train("--resume", run) == 0
    assert "already finished" in capsys.readouterr().out
