"""The cluster backend killed anywhere, then resumed: OpenRLHF's own trainer on the CPU cluster config.

Each case starts ``srft train --backend openrlhf`` (configs/toy_openrlhf_cpu.yaml, 2 DeepSpeed
ranks, 6 steps, a checkpoint every 2 steps, ``keep_checkpoints: 1``) in a session of its own with
``SRFT_FAULT=POINT@STEP`` (``srft_openrlhf/openrlhf/faults.py``): the process that reaches the
point stops there and writes a marker; the test then SIGKILLs the whole session (the driver, Ray's
head processes and every actor), as a preempted node would lose them. The points and steps come
from a seeded schedule (``SCHEDULE``). Then ``srft train --resume RUN`` (no ``--backend``: the run
folder says which) must finish the run:

- it resumed from the checkpoint ``latest`` named at the kill, which must be complete (a kill while
  checkpoint k is written resumes from k - 2, one after ``latest`` moved from k);
- ``metrics.jsonl`` holds each step 1..6 exactly once;
- every step trained the same examples as an uninterrupted run (``rollout/example_rows_sum``);
- the held-out accuracy after training is within ``ACCURACY_BAND`` of the uninterrupted run's.

Two more cases kill a worker instead of the job: a DeepSpeed rank dies at an optimizer step, and
the rollout engine actor is killed while it generates. The run must stop by itself within
``STOP_S`` with one error naming the dead actor and the resume command; the resume then works as
above. (OpenRLHF's actors are created without Ray restarts, so a dead actor is never restarted
behind the run's back with stale weights.)
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.openrlhf]

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "toy_openrlhf_cpu.yaml"
STEPS = 6
SETTINGS = [
    f"train.steps={STEPS}",
    "train.lr_warmup_steps=1",
    "train.prompts_per_step=8",
    "train.micro_batch_size=5",
    "train.save_every=2",
    "train.keep_checkpoints=1",
    "data.max_eval_rows=64",
]
ACCURACY_BAND = 0.15  # 64 held-out prompts: a binomial s.d. of ~6 points at 70%, and rollouts differ
STOP_S = 240  # a run whose worker died must end by itself within this (no hang)
MARKER_WAIT_S = 420


@dataclass(frozen=True)
class Kill:
    point: str
    step: int
    asynchronous: bool

    @property
    def name(self) -> str:
        return f"{self.point}@{self.step}-{'async' if self.asynchronous else 'sync'}"


def schedule(seed: int = 18) -> list[Kill]:
    """Where to kill: every fault point once, at a seeded step after the first checkpoint (step 2;
    async generation runs one batch ahead), async and sync alternating."""
    rng = random.Random(seed)
    return [
        Kill("generation", rng.randint(4, STEPS), True),
        Kill("optimizer_step", rng.randint(3, STEPS), False),
        Kill("weight_sync", rng.randint(3, STEPS - 1), True),
        Kill("checkpoint_files", rng.choice([2, 4]), False),
        Kill("checkpoint_latest", rng.choice([2, 4]), True),
    ]


SCHEDULE = schedule()


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "srft_openrlhf.cli", "train", *extra, "--output-dir", str(out)]


def new_run(out: Path, asynchronous: bool) -> list[str]:
    sets = [*SETTINGS, f"train.async_enable={str(asynchronous).lower()}"]
    return command(out, "--backend", "openrlhf", "--config", str(CONFIG), *[a for s in sets for a in ("--set", s)])


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0", **extra)
    e.pop("RAY_ADDRESS", None)
    return e


def run(argv: list[str], log: Path, timeout: int = 600, **extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=ROOT, env=env(**extra), capture_output=True, text=True, timeout=timeout)
    log.write_text(result.stdout + result.stderr)
    return result


def start(argv: list[str], log: Path, **extra: str) -> subprocess.Popen:
    """In a session of its own: Ray's head processes and actors inherit it, so one killpg ends all."""
    return subprocess.Popen(
        argv, cwd=ROOT, env=env(**extra), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def kill_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def steps(out: Path) -> list[dict]:
    return [r for r in records(out) if "policy_loss" in r]


def latest_step(out: Path) -> int:
    """The step of the checkpoint ``latest`` names (0: none), which must be complete."""
    actor = out / "checkpoints" / "_actor"
    if not (actor / "latest").is_file():
        return 0
    tag = (actor / "latest").read_text().strip()
    files = {p.name for p in (actor / tag).iterdir()} if (actor / tag).is_dir() else set()
    shards = {f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)}  # ZeRO-2, 2 ranks
    assert "mp_rank_00_model_states.pt" in files and shards <= files, (tag, sorted(files))
    return int(tag.removeprefix("global_step"))


def accuracy(out: Path) -> float:
    return json.loads((out / "summary.json").read_text())["accuracy_after"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "uninterrupted"
    result = run(new_run(out, asynchronous=True), out.parent / "uninterrupted.log")
    assert result.returncode == 0, result.stderr[-4000:]
    assert [r["step"] for r in steps(out)] == list(range(1, STEPS + 1))
    assert (out / "backend").read_text().strip() == "openrlhf"
    return out


def check_resumed(out: Path, uninterrupted: Path, report: dict) -> None:
    resume = [sys.executable, "-m", "srft_openrlhf.cli", "train", "--resume", str(out)]
    result = run(resume, out.parent / f"{out.name}-resume.log")
    assert result.returncode == 0, result.stderr[-4000:]
    rows = steps(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), [r["step"] for r in rows]
    # the same examples at every step as the uninterrupted run: the data order survived the kill
    assert [r["rollout/example_rows_sum"] for r in rows] == [
        r["rollout/example_rows_sum"] for r in steps(uninterrupted)
    ]
    report.update(accuracy=accuracy(out), uninterrupted=accuracy(uninterrupted))
    print(f"fault report: {json.dumps(report)}")
    assert abs(report["accuracy"] - report["uninterrupted"]) <= ACCURACY_BAND, report


@pytest.mark.parametrize("kill", SCHEDULE, ids=[k.name for k in SCHEDULE])
def test_sigkill_anywhere_then_resume(tmp_path, uninterrupted, kill):
    out = tmp_path / "run"
    marker = tmp_path / "marker"
    proc = start(
        new_run(out, kill.asynchronous),
        tmp_path / "killed.log",
        SRFT_FAULT=f"{kill.point}@{kill.step}",
        SRFT_FAULT_MARKER=str(marker),
    )
    try:
        deadline = time.time() + MARKER_WAIT_S
        while not marker.exists():
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-4000:]
            assert time.time() < deadline, f"{kill.name} not reached in {MARKER_WAIT_S} s"
            time.sleep(0.5)
    finally:
        kill_session(proc)
    resumed_from = latest_step(out)
    assert resumed_from <= kill.step
    if kill.point == "checkpoint_files":  # written but not yet `latest`: the previous one is used
        assert resumed_from == kill.step - 2
    if kill.point == "checkpoint_latest":
        assert resumed_from == kill.step
    check_resumed(out, uninterrupted, {"kill": kill.name, "resumed_from": resumed_from})


def stopped_by_itself(proc: subprocess.Popen, log: Path, died_at: float) -> tuple[str, float]:
    """The run's one error line, and how long after the death ``died_at`` (a time.time()) it ended."""
    try:
        proc.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        pytest.fail(f"the run hung for {STOP_S} s after a worker died: {log.read_text()[-3000:]}")
    stopped_after = time.time() - died_at
    kill_session(proc)  # whatever Ray left behind
    text = log.read_text()
    assert proc.returncode == 2, text[-4000:]
    error = [line for line in text.splitlines() if line.startswith("srft train: error: ")]
    assert len(error) == 1, text[-4000:]
    return error[0], stopped_after


def test_a_training_rank_dies(tmp_path, uninterrupted):
    out, log, marker = tmp_path / "run", tmp_path / "died.log", tmp_path / "marker"
    proc = start(
        new_run(out, asynchronous=True), log, SRFT_FAULT="optimizer_step@3/1:die", SRFT_FAULT_MARKER=str(marker)
    )
    deadline = time.time() + MARKER_WAIT_S
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-4000:]
        time.sleep(0.2)
    error, stopped_after = stopped_by_itself(proc, log, marker.stat().st_mtime)
    assert "a Ray actor of the run died: SRFTPolicyModelActor (pid" in error and f"--resume {out}" in error
    report = {"kill": "rank 1 died at optimizer_step@3", "stopped_after_s": round(stopped_after, 1)}
    check_resumed(out, uninterrupted, {**report, "error": error, "resumed_from": latest_step(out)})


def test_the_rollout_engine_dies(tmp_path, uninterrupted):
    out, log = tmp_path / "run", tmp_path / "died.log"
    proc = start(new_run(out, asynchronous=True), log)
    deadline = time.time() + MARKER_WAIT_S
    while not ((out / "metrics.jsonl").is_file() and steps(out)):  # mid-run: step 1 logged
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-4000:]
        time.sleep(0.5)
    engine = subprocess.run(
        ["pgrep", "-s", str(proc.pid), "-f", "ray::CPURolloutActor"], capture_output=True, text=True
    )
    [pid] = engine.stdout.split()
    os.kill(int(pid), signal.SIGKILL)
    error, stopped_after = stopped_by_itself(proc, log, time.time())
    assert "a Ray actor of the run died: CPURolloutActor" in error and f"--resume {out}" in error
    report = {"kill": "rollout engine killed after step 1", "stopped_after_s": round(stopped_after, 1)}
    check_resumed(out, uninterrupted, {**report, "error": error, "resumed_from": latest_step(out)})
