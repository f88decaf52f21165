"""``srft analyze``: bad input is a one-line error naming the input (exit code 2)."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import analyze


@pytest.fixture(autouse=True)
def no_toy_base_build(monkeypatch, tmp_path):
    """Errors come before any expensive work: building the toy base model is one."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the toy base model must not be built")

    monkeypatch.setattr("srft_openrlhf.data.toy.pretrain_base_model", forbidden)
    monkeypatch.setenv("SRFT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def run_dir(tmp_path, toy_models):
    """A run folder with checkpoints at steps 100 and 200."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"path": str(toy_models["base"])}}))
    for step in (100, 200):
        (run / "checkpoints" / f"step-{step:06d}").symlink_to(toy_models["other"], target_is_directory=True)
    return run


def error(capsys, *args) -> str:
    assert analyze(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("srft analyze: error: ") and err.count("\n") == 1, err
    return err


def test_missing_checkpoint_names_the_run_and_the_steps_there(tmp_path, toy_models, run_dir, capsys):
    err = error(
        capsys,
        "token-shift",
        "--base",
        toy_models["base"],
        "--models",
        f"{run_dir}@150",
        "--data",
        "toy",
        "--out",
        tmp_path / "out",
    )
    assert str(run_dir) in err and "no checkpoint for step 150" in err and "100, 200" in err


def test_run_without_checkpoints(tmp_path, capsys):
    run = tmp_path / "empty_run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {path: toy}\n")
    err = error(capsys, "trajectory", "--runs", run, "--data", "toy", "--out", tmp_path / "out")
    assert "no checkpoints under" in err and str(run) in err


def test_not_a_run_folder_nor_a_model(tmp_path, toy_models, capsys):
    (tmp_path / "plain").mkdir()
    err = error(capsys, "trajectory", "--runs", tmp_path / "plain", "--data", "toy", "--out", tmp_path / "out")
    assert "not a run folder" in err and "plain" in err
    err = error(
        capsys,
        "token-shift",
        "--base",
        toy_models["base"],
        "--models",
        tmp_path / "nowhere",
        "--data",
        "toy",
        "--out",
        tmp_path / "out",
    )
    assert "nowhere" in err and "does not exist" in err


def test_incomplete_checkpoint_is_named(tmp_path, run_dir, capsys):
    (run_dir / "checkpoints" / "step-000300").mkdir()
    err = error(capsys, "trajectory", "--runs", run_dir, "--data", "toy", "--out", tmp_path / "out")
    assert "step-000300" in err and "without config.json" in err


def test_tokenizer_mismatch(tmp_path, toy_models, tiny_model_dir, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "What is 12 + 35?", "answer": "47"}) + "\n")
    err = error(
        capsys,
        "token-shift",
        "--base",
        f"toybase={toy_models['base']}",
        "--models",
        f"bpe={tiny_model_dir}",
        "--data",
        data,
        "--template",
        "none",
        "--out",
        tmp_path / "out",
    )
    assert "tokenizer mismatch between toybase" in err and "bpe" in err
    err = error(
        capsys,
        "token-shift",
        "--base",
        toy_models["base"],
        "--models",
        f"bpe={tiny_model_dir}",
        "--data",
        "toy",
        "--out",
        tmp_path / "out",
    )
    assert "tokenizer mismatch between the toy task's tokenizer and bpe" in err


def test_duplicate_names(tmp_path, toy_models, capsys):
    err = error(
        capsys,
        "token-shift",
        "--base",
        toy_models["base"],
        "--models",
        f"x={toy_models['copy']}",
        f"x={toy_models['other']}",
        "--data",
        "toy",
        "--out",
        tmp_path / "out",
    )
    assert "two models are named 'x'" in err
