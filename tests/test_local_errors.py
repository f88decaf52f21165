"""Bad input to `srft train` (local backend): one line naming the culprit, before any start-up."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import srft_train, tiny_run_config, write_toy_rows

from srft_openrlhf.local import engine as engine_module


@pytest.fixture(autouse=True)
def no_expensive_startup(monkeypatch, tmp_path):
    """Building a model or a toy base model would mean the check came too late."""

    def forbidden(*args, **kwargs):
        raise AssertionError("an expensive start-up ran before the input was checked")

    monkeypatch.setattr(engine_module, "make_engine", forbidden)
    monkeypatch.setattr("srft_openrlhf.data.toy.pretrain_base_model", forbidden)
    monkeypatch.setenv("SRFT_CACHE", str(tmp_path / "cache"))


def error_line(capsys, *args) -> str:
    assert srft_train(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("srft train: error: ")
    return err


def test_missing_model_path(tmp_path, tiny_model_dir, capsys):
    config = tiny_run_config(tmp_path, tiny_model_dir)
    err = error_line(capsys, "--config", config, "--set", f"model.path={tmp_path / 'no-such-model'}")
    assert "model.path" in err and "no-such-model" in err and "does not exist" in err


def test_model_folder_without_config(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "empty").mkdir()
    err = error_line(
        capsys, "--config", tiny_run_config(tmp_path, tiny_model_dir), "--set", f"model.path={tmp_path / 'empty'}"
    )
    assert "model.path" in err and "config.json" in err


def test_dataset_without_demonstrations_for_a_preset_that_needs_them(tmp_path, tiny_model_dir, capsys):
    data = write_toy_rows(tmp_path / "no_demos.jsonl", "train", 5, demo=False)
    config = tiny_run_config(tmp_path, tiny_model_dir, data={"train": str(data)})
    err = error_line(capsys, "--config", config)  # srft trains on demonstrations
    assert "no_demos.jsonl row 0" in err and "'demonstration'" in err
    # the same data is fine for GRPO, which never reads a demonstration
    assert srft_train("--config", config, "--algo", "grpo", "--dry-run") == 0


def test_sequential_schedule_needs_demonstrations_too(tmp_path, tiny_model_dir, capsys):
    data = write_toy_rows(tmp_path / "no_demos.jsonl", "train", 5, demo=False)
    config = tiny_run_config(
        tmp_path, tiny_model_dir, data={"train": str(data)}, train={"schedule": "rl_then_sft", "switch_step": 1}
    )
    assert "'demonstration'" in error_line(capsys, "--config", config, "--algo", "grpo")


def test_unknown_config_key(tmp_path, tiny_model_dir, capsys):
    config = tiny_run_config(tmp_path, tiny_model_dir)
    err = error_line(capsys, "--config", config, "--set", "train.lrr=1e-4")
    assert "unknown config key 'train.lrr'" in err and "train.lr" in err
    config.write_text(config.read_text() + "trian:\n  steps: 3\n")
    assert "'trian'" in error_line(capsys, "--config", config)


def test_prompt_longer_than_max_prompt_len(tmp_path, tiny_model_dir, capsys):
    config = tiny_run_config(tmp_path, tiny_model_dir)
    err = error_line(capsys, "--config", config, "--set", "data.max_prompt_len=3")
    assert "train.jsonl row 0" in err and "data.max_prompt_len=3" in err


def test_toy_prompt_too_long_is_caught_before_the_base_model_is_built(tmp_path, tiny_model_dir, capsys):
    err = error_line(
        capsys,
        "--config",
        tiny_run_config(tmp_path, tiny_model_dir),
        "--set",
        "model.path=toy",
        "--set",
        "data.train=toy",
        "--set",
        "data.eval=null",
        "--set",
        "data.max_prompt_len=4",
    )
    assert "toy row 0" in err and "max_prompt_len" in err
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "setting,culprit",
    [
        ("train.schedule=sft_first", "train.schedule"),
        ("train.switch_step=0", "train.switch_step"),  # with schedule sft_then_rl below
        ("rollout.generator=tgi", "rollout.generator"),
        ("rollout.temperature=0", "rollout.temperature"),
        ("loss.demo_mode=prepend", "loss.demo_mode"),
        ("train.prompts_per_step=0", "train.prompts_per_step"),
        ("train.lr_warmup_steps=5", "train.lr_warmup_steps"),  # more than train.steps
    ],
)
def test_bad_values_name_their_key(tmp_path, tiny_model_dir, capsys, setting, culprit):
    extra = ["--set", "train.schedule=sft_then_rl"] if culprit == "train.switch_step" else []
    err = error_line(capsys, "--config", tiny_run_config(tmp_path, tiny_model_dir), *extra, "--set", setting)
    assert culprit in err


@pytest.mark.parametrize(
    "setting,message",
    [
        ("train.lr=-1", "train.lr must be > 0 and finite, got -1.0"),
        ("train.lr=0", "train.lr must be > 0 and finite, got 0.0"),
        ("train.lr=.nan", "train.lr must be > 0 and finite, got nan"),
        ("train.weight_decay=-0.1", "train.weight_decay must be >= 0 and finite, got -0.1"),
        ("train.grad_clip=-1", "train.grad_clip must be > 0, or 0 to turn clipping off, got -1.0"),
        ("train.adam_betas=[0.9,1.0]", "train.adam_betas must be two numbers in [0, 1), got [0.9, 1.0]"),
        ("train.adam_betas=[-0.1,0.999]", "train.adam_betas must be two numbers in [0, 1), got [-0.1, 0.999]"),
    ],
)
def test_bad_optimizer_values_are_caught_before_the_model_is_built(tmp_path, tiny_model_dir, capsys, setting, message):
    """Not torch's ValueError from building AdamW: a ConfigError naming the key, before any start-up."""
    err = error_line(capsys, "--config", tiny_run_config(tmp_path, tiny_model_dir), "--set", setting)
    assert message in err, err


def test_grad_clip_zero_turns_clipping_off(tmp_path, tiny_model_dir):
    assert (
        srft_train("--config", tiny_run_config(tmp_path, tiny_model_dir), "--set", "train.grad_clip=0", "--dry-run")
        == 0
    )


def test_wandb_requested_but_not_installed(tmp_path, tiny_model_dir, capsys, monkeypatch):
    # wandb is pinned in the CPU install; None in sys.modules is how Python spells "not
    # installed" to both `import wandb` and importlib.util.find_spec
    monkeypatch.setitem(sys.modules, "wandb", None)
    err = error_line(
        capsys, "--config", tiny_run_config(tmp_path, tiny_model_dir), "--set", "logging.wandb_project=toy"
    )
    assert "logging.wandb_project" in err and "wandb" in err


def test_existing_run_folder_needs_resume(tmp_path, tiny_model_dir, capsys):
    config = tiny_run_config(tmp_path, tiny_model_dir)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}")
    assert "--resume" in error_line(capsys, "--config", config)


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert "no config.yaml" in error_line(capsys, "--resume", tmp_path)


def test_malformed_row_names_file_and_row(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "1+2=?", "answer": "3", "demonstration": "x"}) + "\n{not json\n")
    err = error_line(capsys, "--config", tiny_run_config(tmp_path, tiny_model_dir, data={"train": str(data)}))
    assert "bad.jsonl row 1" in err


def test_data_file_that_is_not_utf8_text(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes('{"prompt": "1+2=?", "answer": "3", "demonstration": "trois, café"}\n'.encode("latin-1"))
    err = error_line(capsys, "--config", tiny_run_config(tmp_path, tiny_model_dir, data={"train": str(data)}))
    assert "latin1.jsonl row 0 (line 1): not UTF-8 text (byte 0xe9" in err and "save the file as UTF-8" in err


def test_model_folder_whose_tokenizer_drops_characters(tmp_path, tiny_model_dir, capsys):
    """A character-level tokenizer saved next to a Qwen2 config reloads as Qwen2Tokenizer,
    whose byte-level pre-tokenizer drops the characters missing from its vocabulary (here
    every space and newline) while decoding still looks right: training would silently see
    other text. `srft train` must refuse the folder, naming it."""
    import shutil

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = "0123456789+=?{}\\<>/abcdefghijklmnopqrstuvwxyz \n"
    vocab = {t: i for i, t in enumerate(("<pad>", "<eos>", "<unk>", *chars))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    folder = tmp_path / "char-model"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(folder)
    config = tiny_run_config(tmp_path, tiny_model_dir, data={"template": "none"})
    err = error_line(capsys, "--config", config, "--set", f"model.path={folder}")
    assert f"model.path {folder}" in err and "does not reproduce the training text" in err
    assert "training prompt 0" in err or "demonstration 0" in err
