"""The config schema: YAML + --set overrides, presets, and errors that name the key."""

import subprocess
import sys

import pytest

from srft_openrlhf.algorithm import LossConfig
from srft_openrlhf.config import build_config, load_config, parse_overrides, save_config
from srft_openrlhf.errors import ConfigError


def test_defaults_are_the_paper():
    cfg = build_config({})
    assert cfg.loss == LossConfig()
    assert cfg.rollout.n_samples_per_prompt == 8 and cfg.rollout.temperature == 1.0
    assert cfg.train.lr == 1e-6 and cfg.train.prompts_per_step == 128 and cfg.train.steps == 500


def test_overrides_are_typed_and_nested():
    nested = parse_overrides(
        [
            "train.lr=3e-5",
            "train.adam_betas=[0.9,0.95]",
            "data.eval=null",
            "rollout.generator=hf",
            "train.async_enable=true",
        ]
    )
    cfg = build_config(nested)
    assert cfg.train.lr == pytest.approx(3e-5) and isinstance(cfg.train.lr, float)
    assert cfg.train.adam_betas == (0.9, 0.95)
    assert cfg.data.eval is None
    assert cfg.rollout.generator == "hf"
    assert cfg.train.async_enable is True


def test_preset_applies_before_other_loss_keys():
    cfg = build_config({"loss": {"kl_coef": 0.05, "preset": "grpo"}})
    assert cfg.loss.preset == "grpo"
    assert cfg.loss.kl_coef == 0.05
    assert cfg.loss.needs_rollouts and not cfg.loss.needs_demos


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"train": {"lrr": 1}}, "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
        ({"trian": {"lr": 1}}, "unknown config key 'trian' (did you mean 'train'?)"),
        ({"train": {"steps": "many"}}, "train.steps: expected an integer"),
        ({"train": {"steps": 2.5}}, "train.steps: expected an integer"),
        ({"train": {"async_enable": "maybe"}}, "train.async_enable: expected true/false"),
        ({"train": 3}, "train: expected a mapping"),
        ({"loss": {"preset": "nope"}}, "loss.preset"),
        ({"loss": {"w_sftt": 1}}, "unknown config key 'loss.w_sftt'"),
    ],
)
def test_bad_values_name_the_key(values, fragment):
    with pytest.raises(ConfigError) as e:
        build_config(values)
    assert fragment in str(e.value)


def test_yaml_roundtrip(tmp_path):
    cfg = load_config(None, ["loss.preset=srft_official", "train.steps=7", "cluster.nodes=2"])
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_cli_prints_one_line_error_for_unknown_key():
    out = subprocess.run(
        [sys.executable, "-m", "srft_openrlhf.cli", "train", "--set", "train.lrr=1", "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "unknown config key 'train.lrr'" in out.stderr
    assert "Traceback" not in out.stderr


def test_import_is_light():
    code = (
        "import sys, srft_openrlhf, srft_openrlhf.config, srft_openrlhf.algorithm, "
        "srft_openrlhf.reward, srft_openrlhf.data, srft_openrlhf.kernels, srft_openrlhf.cli, "
        "srft_openrlhf.openrlhf, srft_openrlhf.local, evaluation\n"
        "heavy = [m for m in ('ray', 'vllm', 'deepspeed', 'openrlhf') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
