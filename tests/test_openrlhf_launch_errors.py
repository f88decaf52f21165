"""Bad input to `srft train --backend openrlhf`: the local backend's one-line errors, before Ray starts.

Every case runs the launcher in this process with Ray and the toy model
build forbidden (``no_start``): an error raised after one of them would fail the test with
"started before the input was checked" instead of the expected line. A bad input must also leave
no run folder behind, so that fixing it and running the same command works.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import srft_train, write_toy_rows

pytestmark = [pytest.mark.openrlhf]

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "toy_openrlhf_cpu.yaml"


@pytest.fixture(autouse=True)
def no_start(monkeypatch, tmp_path):
    pytest.importorskip("ray")

    def forbidden(*args, **kwargs):
        raise AssertionError("Ray, OpenRLHF or the toy model build started before the input was checked")

    monkeypatch.setattr("ray.init", forbidden)
    monkeypatch.setattr("srft_openrlhf.openrlhf.launcher.init_ray", forbidden)
    monkeypatch.setattr("srft_openrlhf.data.toy.pretrain_base_model", forbidden)
    monkeypatch.setenv("SRFT_CACHE", str(tmp_path / "cache"))


def cluster_args(tmp_path: Path, model_dir: Path, *sets: str) -> list[str]:
    """The CPU cluster config on the tiny model and toy rows; run folder tmp_path/run."""
    train = write_toy_rows(tmp_path / "train.jsonl", "train", 12)
    heldout = write_toy_rows(tmp_path / "eval.jsonl", "heldout", 4, demo=False)
    values = (
        f"model.path={model_dir}",
        f"data.train={train}",
        f"data.eval={heldout}",
        "data.max_prompt_len=32",
        *sets,
    )
    return ["--backend", "openrlhf", "--config", str(CONFIG), "--output-dir", str(tmp_path / "run")] + [
        a for v in values for a in ("--set", v)
    ]


def error_line(capsys, tmp_path: Path, *args) -> str:
    assert srft_train(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("srft train: error: ")
    return err


def no_new_run(tmp_path: Path) -> bool:
    return not (tmp_path / "run" / "config.yaml").exists()


def test_missing_model_path(tmp_path, tiny_model_dir, capsys):
    err = error_line(capsys, tmp_path, *cluster_args(tmp_path, tiny_model_dir, f"model.path={tmp_path / 'nope'}"))
    assert "model.path" in err and "nope" in err and "does not exist" in err
    assert no_new_run(tmp_path)


def test_model_folder_without_config(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "empty").mkdir()
    err = error_line(capsys, tmp_path, *cluster_args(tmp_path, tiny_model_dir, f"model.path={tmp_path / 'empty'}"))
    assert "model.path" in err and "config.json" in err
    assert no_new_run(tmp_path)


def test_hub_name_that_cannot_be_loaded(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = error_line(capsys, tmp_path, *cluster_args(tmp_path, tiny_model_dir, "model.path=no-such-org/no-such-model"))
    assert "model.path: 'no-such-org/no-such-model': cannot load its tokenizer" in err
    assert no_new_run(tmp_path)


def test_dataset_without_demonstrations(tmp_path, tiny_model_dir, capsys):
    data = write_toy_rows(tmp_path / "no_demos.jsonl", "train", 5, demo=False)
    err = error_line(capsys, tmp_path, *cluster_args(tmp_path, tiny_model_dir, f"data.train={data}"))
    assert "no_demos.jsonl row 0" in err and "'demonstration'" in err
    assert no_new_run(tmp_path)


def test_malformed_row_names_file_and_row(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "1+2=?", "answer": "3", "demonstration": "x"}) + "\n{not json\n")
    err = error_line(capsys, tmp_path, *cluster_args(tmp_path, tiny_model_dir, f"data.train={data}"))
    assert "bad.jsonl row 1" in err
    assert no_new_run(tmp_path)


def test_data_file_that_is_not_utf8_text(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes('{"prompt": "1+2=?", "answer": "3", "demonstration": "trois, café"}\n'.encode("latin-1"))
    err = error_line(capsys, tmp_path, *cluster_args(tmp_path, tiny_model_dir, f"data.train={data}"))
    assert "latin1.jsonl row 0 (line 1): not UTF-8 text" in err
    assert no_new_run(tmp_path)


def test_prompt_longer_than_max_prompt_len(tmp_path, tiny_model_dir, capsys):
    err = error_line(capsys, tmp_path, *cluster_args(tmp_path, tiny_model_dir, "data.max_prompt_len=3"))
    assert "train.jsonl row 0" in err and "data.max_prompt_len=3" in err
    assert no_new_run(tmp_path)


def test_missing_eval_file(tmp_path, tiny_model_dir, capsys):
    err = error_line(capsys, tmp_path, *cluster_args(tmp_path, tiny_model_dir, f"data.eval={tmp_path / 'gone.jsonl'}"))
    assert "gone.jsonl" in err
    assert no_new_run(tmp_path)


@pytest.mark.parametrize(
    "setting,culprit",
    [
        ("train.lrr=1e-4", "unknown config key 'train.lrr'"),
        ("train.lr=-1", "train.lr must be > 0 and finite, got -1.0"),
        ("train.adam_betas=[0.9,1.0]", "train.adam_betas must be two numbers in [0, 1)"),
        ("rollout.temperature=0", "rollout.temperature"),
        ("rollout.top_p=0.9", "rollout.top_p"),
        ("model.dtype=fp16", "model.dtype"),
        ("train.prompts_per_step=0", "train.prompts_per_step"),
        ("cluster.actor_gpus=5", "cluster"),
        ("cluster.extra_args=[--ds.packing]", "--ds.packing"),
    ],
)
def test_bad_values_name_their_key(tmp_path, tiny_model_dir, capsys, setting, culprit):
    err = error_line(capsys, tmp_path, *cluster_args(tmp_path, tiny_model_dir, setting))
    assert culprit in err, err
    assert no_new_run(tmp_path)


def test_existing_run_folder_needs_resume(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}")
    err = error_line(capsys, tmp_path, *cluster_args(tmp_path, tiny_model_dir))
    assert "already holds a run" in err and "--resume" in err


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert "no config.yaml" in error_line(capsys, tmp_path, "--resume", tmp_path)


def saved_cluster_run(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A cluster run folder as the launcher leaves it before training: config, backend, data."""
    from srft_openrlhf.cli import train_parser
    from srft_openrlhf.config import load_config, save_config
    from srft_openrlhf.runs import run_files, start_run_folder

    args = train_parser().parse_args(cluster_args(tmp_path, tiny_model_dir))
    cfg = load_config(args.config, [*args.overrides, f"logging.output_dir={args.output_dir}"])
    files = run_files(args.output_dir)
    start_run_folder(files, "openrlhf")
    save_config(cfg, files.config)
    files.train_data.parent.mkdir()
    files.train_data.write_text("")
    return files.root


def test_resume_continues_on_the_runs_backend(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """`srft train --resume RUN` on a cluster run goes to the cluster launcher (it used to start
    the local backend from step 0 in that folder and drop the run's metrics)."""
    run = saved_cluster_run(tmp_path, tiny_model_dir)
    (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    called = []

    def launcher(cfg, resume=False, dry_run=False):
        called.append(("openrlhf", resume))
        return 0

    def local(cfg, resume=False, dry_run=False):
        raise AssertionError("the local backend ran a cluster run")

    monkeypatch.setattr("srft_openrlhf.openrlhf.launcher.run", launcher)
    monkeypatch.setattr("srft_openrlhf.local.trainer.run", local)
    assert srft_train("--resume", run) == 0
    assert called == [("openrlhf", True)]
    assert (run / "metrics.jsonl").read_text().count("step") == 2
    err = error_line(capsys, tmp_path, "--resume", run, "--backend", "local")
    assert "made with --backend openrlhf" in err and "drop --backend" in err


def test_resume_with_a_different_config_names_the_keys(tmp_path, tiny_model_dir, capsys):
    run = saved_cluster_run(tmp_path, tiny_model_dir)
    err = error_line(capsys, tmp_path, "--resume", run, "--set", "train.lr=1e-3", "--set", "train.steps=99")
    assert "train.lr: 0.0002 -> 0.001" in err and "train.steps: 60 -> 99" in err
    # the same values are not a difference
    err = error_line(capsys, tmp_path, "--resume", run, "--set", "train.lr=2e-4", "--set", "cluster.actor_gpus=5")
    assert "train.lr" not in err and "cluster.actor_gpus: 2 -> 5" in err


def test_old_cluster_run_without_backend_file(tmp_path, tiny_model_dir, monkeypatch):
    from srft_openrlhf.runs import run_files, saved_backend

    run = saved_cluster_run(tmp_path, tiny_model_dir)
    (run / "backend").unlink()
    assert saved_backend(run_files(run)) == "openrlhf"  # it has the launcher's openrlhf/ data files
    (run / "backend").write_text("slurm\n")
    with pytest.raises(Exception, match="'slurm' is not a backend"):
        saved_backend(run_files(run))


def test_errors_never_import_ray_workers(tmp_path, tiny_model_dir, capsys):
    """The checks run in the driver alone: no Ray module state was created."""
    error_line(capsys, tmp_path, *cluster_args(tmp_path, tiny_model_dir, "train.lr=-1"))
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


def test_dead_actor_names_the_actor_that_died_not_the_one_waiting():
    """Ray's actor-died error as the driver gets it: wrapped in the error of the trainer actor that
    waited on the dead one (ray/exceptions.py ActorDiedError's message lines, colours included)."""
    from srft_openrlhf.openrlhf.launcher import dead_actor

    text = (
        "\x1b[36mray::SRFTPPOTrainerAsync.fit()\x1b[39m (pid=17654, ip=192.0.2.2, actor_id=20b8)\n"
        '  File "ppo_trainer_async.py", line 3, in fit\n'
        "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n"
        "\tclass_name: SRFTPolicyModelActor\n\tactor_id: 0a1b\n\tpid: 17653\n\tnamespace: n\n\tip: 192.0.2.2\n"
        "The actor is dead because its worker process has died. Worker exit type: UNEXPECTED_SYSTEM_EXIT"
    )
    assert dead_actor(Exception(text)) == (
        "SRFTPolicyModelActor (pid 17653): The actor is dead because its worker process has died. "
        "Worker exit type: UNEXPECTED_SYSTEM_EXIT"
    )
    assert dead_actor(Exception("something else\nand more")) == "something else"
