"""Asynchronous rollouts: version bookkeeping, the staleness bound, overlap, errors."""

from __future__ import annotations

import threading

import pytest
import torch
from helpers import srft_train, tiny_run_config, train_records

from srft_openrlhf.generation import Generator
from srft_openrlhf.local.async_rollout import AsyncRollouts, SyncRollouts
from srft_openrlhf.local.rollout import RolloutBatch


class FakeGenerator(Generator):
    """Holds one weight "w"; remembers which value it held when generating each batch."""

    def __init__(self) -> None:
        self.policy_version = 0
        self.w = 0.0

    def update_weights(self, named_tensors, version):
        for name, tensor in named_tensors:
            assert name == "w"
            self.w = float(tensor)
        self.policy_version = version


def fake_produce(log: list | None = None, hook=None):
    def produce(generator: FakeGenerator, step: int) -> RolloutBatch:
        if hook:
            hook(step)
        if log is not None:
            log.append((step, generator.policy_version, generator.w))
        return RolloutBatch(
            step=step, prompt_indices=[step], rollouts=[], demo_rewards=[], policy_version=generator.policy_version
        )

    return produce


def weights(version: int):
    return [("w", torch.tensor(float(version)))]


def drive(rollouts, start: int, steps: int) -> list[int]:
    """The trainer's side: get batch k, 'train', publish version k+1. Returns the versions."""
    versions = []
    for step in range(start, steps):
        batch = rollouts.get(step)
        assert batch.step == step
        versions.append(batch.policy_version)
        rollouts.publish(step + 1, weights(step + 1))
    return versions


@pytest.mark.parametrize("bound", [0, 1, 2])
def test_each_batch_uses_the_stalest_allowed_version(bound):
    log = []
    gen = FakeGenerator()
    rollouts = AsyncRollouts(gen, fake_produce(log), start_step=0, end_step=7, max_staleness=bound)
    try:
        versions = drive(rollouts, 0, 7)
    finally:
        rollouts.close()
    assert versions == [max(0, k - bound) for k in range(7)]
    # the generator really held the weights of the version it reports
    assert [(step, v) for step, v, _ in log] == [(k, max(0, k - bound)) for k in range(7)]
    assert all(w == v for _, v, w in log)


def test_worker_blocks_rather_than_exceed_the_bound():
    produced = threading.Condition()
    done: list[int] = []

    def hook(step):
        with produced:
            done.append(step)
            produced.notify_all()

    rollouts = AsyncRollouts(FakeGenerator(), fake_produce(hook=hook), start_step=0, end_step=5, max_staleness=1)
    try:
        with produced:
            assert produced.wait_for(lambda: len(done) >= 2, timeout=30)
            # batch 2 needs version 1, which nobody has published
            assert not produced.wait_for(lambda: len(done) > 2, timeout=0.5)
        assert rollouts.get(0).policy_version == 0
        rollouts.publish(1, weights(1))
        with produced:
            assert produced.wait_for(lambda: len(done) >= 3, timeout=30)
        assert rollouts.get(1).policy_version == 0 and rollouts.get(2).policy_version == 1
    finally:
        rollouts.close()


def test_generation_overlaps_training():
    """Batch k+1 is generated while batch k trains: the trainer holds 'training' until the
    worker has started the next batch."""
    training = threading.Event()
    started_during_training: list[int] = []
    next_started = {k: threading.Event() for k in range(6)}

    def hook(step):
        if training.is_set():
            started_during_training.append(step)
        next_started[step].set()

    rollouts = AsyncRollouts(FakeGenerator(), fake_produce(hook=hook), start_step=0, end_step=6, max_staleness=1)
    try:
        for step in range(5):
            rollouts.get(step)
            training.set()
            rollouts.publish(step + 1, weights(step + 1))
            assert next_started[step + 1].wait(timeout=30)
            training.clear()
    finally:
        rollouts.close()
    assert started_during_training  # at least one generation ran during a training step


def test_pending_batches_resume_the_same_stream():
    uninterrupted = []
    rollouts = AsyncRollouts(FakeGenerator(), fake_produce(uninterrupted), start_step=0, end_step=6, max_staleness=2)
    try:
        drive(rollouts, 0, 6)
    finally:
        rollouts.close()

    first = AsyncRollouts(FakeGenerator(), fake_produce(), start_step=0, end_step=6, max_staleness=2)
    try:
        drive(first, 0, 3)
        pending = first.pending(3)
    finally:
        first.close()
    # generated from versions older than 3: exactly the next max_staleness batches
    assert sorted(pending) == [3, 4] and [pending[s].policy_version for s in (3, 4)] == [1, 2]

    resumed_log = []
    gen = FakeGenerator()  # a fresh process: weights of the model folder (version 0)
    resumed = AsyncRollouts(gen, fake_produce(resumed_log), start_step=3, end_step=6, max_staleness=2, pending=pending)
    try:
        resumed.publish(3, weights(3))  # the checkpoint's weights
        versions = drive(resumed, 3, 6)
    finally:
        resumed.close()
    assert versions == [1, 2, 3]
    assert resumed_log == [(5, 3, 3.0)] and uninterrupted[5] == (5, 3, 3.0)


def test_worker_error_reaches_the_trainer():
    def hook(step):
        if step == 1:
            raise RuntimeError("generator exploded")

    rollouts = AsyncRollouts(FakeGenerator(), fake_produce(hook=hook), start_step=0, end_step=4, max_staleness=1)
    try:
        rollouts.get(0)
        with pytest.raises(RuntimeError, match="generator exploded"):
            rollouts.get(1)
    finally:
        rollouts.close()


def test_sync_rollouts_are_on_policy():
    gen = FakeGenerator()
    sync = SyncRollouts(gen, fake_produce())
    assert drive(sync, 0, 4) == [0, 1, 2, 3]
    assert gen.w == 4.0 and sync.pending(4) == {}


def test_async_end_to_end_records_staleness(tmp_path, tiny_model_dir):
    config = tiny_run_config(tmp_path, tiny_model_dir, train={"steps": 3, "async_enable": True, "max_staleness": 1})
    assert srft_train("--config", config) == 0
    records = train_records(tmp_path / "run")
    assert [r["staleness"] for r in records] == [0, 1, 1]
    assert [r["policy_version"] for r in records] == [0, 0, 1]
    assert all("time_wait_rollouts" in r for r in records)
    # a stale batch is corrected by the importance ratio against its generating policy
    assert records[0]["log_ratio_abs_mean"] < 1e-4 < records[1]["log_ratio_abs_mean"]
