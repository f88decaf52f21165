"""wandb logging of the local backend, end to end and offline.

A tiny 2-step run with ``logging.wandb_project`` set and no ``WANDB_API_KEY`` must write an
offline wandb run under ``RUN_DIR/wandb`` whose history holds, step for step, the same metric
names and values as ``metrics.jsonl``; ``--resume`` must continue the same wandb run id.

The offline ``.wandb`` files are read back with wandb's own reader (``wandb leet inspect
--json``, a subprocess of the pinned wandb). Nothing may touch the network: the test fails if
anything in this process resolves a host name (wandb 0.31's analytics exporter would, unless the
logger puts wandb offline process-wide), and it shuts down the wandb service it started.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import wandb
from helpers import metrics, srft_train, tiny_run_config, train_records
from wandb.analytics.opentelemetry import opentelemetry_proxy

PROJECT = "srft-wandb-test"


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """No API key and no WANDB_MODE (the logger must go offline by itself), wandb's own folders
    in tmp_path (a developer's ~/.config/wandb settings do not apply; no debug logs land in
    ~/.cache/wandb), no host name resolved; afterwards the wandb service process is gone."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_BASE_URL", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    for name, folder in (
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
    ):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / folder))
    monkeypatch.setenv("SRFT_CACHE", str(tmp_path / "srft-cache"))

    lookups: list[tuple] = []
    real_getaddrinfo = socket.getaddrinfo

    def no_network(host, *args, **kwargs):
        # wandb talks to its service over a unix socket; any host name means the network
        lookups.append((host, *args))
        raise OSError(f"test_local_wandb: no network (tried to resolve {host!r})")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        yield lookups
    finally:
        # wandb's analytics exporter sends from a background thread at exit, after this test;
        # shut it down now so that whatever it would send is attempted (and caught) here
        proxy = getattr(opentelemetry_proxy, "_singleton_telemetry_proxy", None)
        if proxy is not None:
            proxy.shutdown()
        wandb.teardown()  # ends the wandb service this process started, if a failure left one
        monkeypatch.setattr(socket, "getaddrinfo", real_getaddrinfo)
    deadline = time.monotonic() + 30
    while (left := wandb_processes(before)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"wandb processes still running after teardown: {left}"
    assert not lookups, f"wandb tried the network: {lookups}"


def wandb_processes(ignore: set[int]) -> list[str]:
    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid not in ignore and "wandb" in " ".join(p.cmdline()):
                alive.append(f"{p.pid} {p.name()}")
        except psutil.NoSuchProcess:
            pass
    return alive


def wandb_records(run_file: Path) -> list[dict]:
    """The records of an offline run's .wandb file, read by wandb itself."""
    # WANDB_MODE=offline here only for the reader: without it `wandb leet` passes the server URL
    # to wandb-core for its own telemetry, which then resolves api.forge.coreweave.com
    env = {**os.environ, "WANDB_MODE": "offline"}
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def history(records: list[dict]) -> dict[int, dict]:
    """step -> the metrics logged at that step (wandb's own `_step`, `_runtime`, ... left out)."""
    rows = {}
    for r in records:
        if r["type"] == "history":
            step = int(r["history"].get("step", {}).get("num", 0))
            assert step not in rows, f"step {step} written twice"
            rows[step] = {k: v for k, v in r["history"]["item"].items() if not k.startswith("_")}
    return rows


def run_record(records: list[dict]) -> dict:
    [run] = [r["run"] for r in records if r["type"] == "run"]
    return run


def jsonl_by_step(run_dir: Path) -> dict[int, dict]:
    """What metrics.jsonl holds at each step: every record of that step merged, numbers only
    (wandb gets the numbers; `phase` is a string, NaN is written as null and not sent)."""
    rows: dict[int, dict] = {}
    for r in metrics(run_dir):
        numbers = {
            k: v
            for k, v in r.items()
            if k not in ("step", "time")
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
        }
        rows.setdefault(r["step"], {}).update(numbers)
    return rows


def train(*args) -> None:
    assert srft_train(*args) == 0
    # run.finish() only asks the wandb service to close the run and returns; teardown waits until
    # it has written the run's files and exited (at the CLI's exit, wandb's atexit hook does this)
    wandb.teardown()


def offline_runs(run_dir: Path, run_id: str) -> list[Path]:
    """The offline run folders of ``run_id``, oldest first: ``offline-run-<time>-<id>``, and
    wandb appends ``-1``, ``-2``, ... when a session starts within the same second as another."""
    name = re.compile(rf"offline-run-(\d{{8}}_\d{{6}})-{run_id}(?:-(\d+))?")
    found = [(m[1], int(m[2] or 0), p) for p in (run_dir / "wandb").iterdir() if (m := name.fullmatch(p.name))]
    return [p for _, _, p in sorted(found)]


def test_a_run_that_fails_is_a_failed_wandb_run(tmp_path, tiny_model_dir, offline_wandb, monkeypatch):
    from srft_openrlhf.local import trainer

    def fail(self):
        raise RuntimeError("out of memory in step 1")

    monkeypatch.setattr(trainer.Trainer, "fit", fail)
    config = tiny_run_config(tmp_path, tiny_model_dir, logging={"wandb_project": PROJECT})
    with pytest.raises(RuntimeError, match="out of memory"):
        srft_train("--config", config)
    wandb.teardown()
    run = tmp_path / "run"
    run_id = (run / "wandb_id").read_text().strip()
    [folder] = offline_runs(run, run_id)
    records = wandb_records(folder / f"run-{run_id}.wandb")
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [1]


def test_offline_wandb_run_mirrors_metrics_and_resume_continues_it(tmp_path, tiny_model_dir, offline_wandb):
    config = tiny_run_config(tmp_path, tiny_model_dir, logging={"wandb_project": PROJECT})
    run = tmp_path / "run"
    train("--config", config)

    run_id = (run / "wandb_id").read_text().strip()
    [first] = offline_runs(run, run_id)
    first_file = first / f"run-{run_id}.wandb"
    first_bytes = first_file.read_bytes()
    records = wandb_records(first_file)
    info = run_record(records)
    assert info["run_id"] == run_id and info["project"] == PROJECT
    assert info["config"]["update"]["train"]["steps"] == 2  # the resolved config goes along
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]  # finish() ran

    logged = history(records)
    expected = jsonl_by_step(run)
    assert sorted(logged) == sorted(expected) == [0, 1, 2]  # eval before training, two steps
    assert logged == expected  # same names, same values, step for step
    # every name of a training record is a wandb metric at its step; `phase` (a string) is the
    # one field wandb does not get
    for r in train_records(run):
        assert set(r) - {"step", "time", "phase"} <= set(logged[r["step"]])
    assert {"loss", "reward_mean", "w_sft", "w_rl", "eval_accuracy", "time_checkpoint"} <= set(logged[2])

    # --resume for two more steps: the same wandb run id, logging on from step 3
    train("--resume", run, "--set", "train.steps=4")
    assert (run / "wandb_id").read_text().strip() == run_id
    folders = offline_runs(run, run_id)
    # wandb keeps one folder per process start (offline-run-<time>-<id>); `wandb sync` uploads
    # folders of the same id in start order, into that one run
    assert folders[0] == first and len(folders) == 2, folders
    assert first_file.read_bytes() == first_bytes  # the first session's log is left as it was
    records = wandb_records(folders[1] / f"run-{run_id}.wandb")
    info = run_record(records)
    assert info["run_id"] == run_id and info["project"] == PROJECT and info["resume"] is True
    resumed = history(records)
    assert sorted(resumed) == [3, 4]  # steps continue; the resume does not re-log steps 0..2
    expected = jsonl_by_step(run)
    assert sorted(expected) == [0, 1, 2, 3, 4]
    assert {**logged, **resumed} == expected
