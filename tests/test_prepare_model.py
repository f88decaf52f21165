"""srft prepare-model: a copy with edited rope_theta / max_position_embeddings; SRC untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from srft_openrlhf.data.prepare_model import edit_config, main
from srft_openrlhf.errors import ConfigError, DataError

EDIT = ["--rope-theta", "40000", "--max-position-embeddings", "16384"]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def src(tmp_path) -> Path:
    """A tiny saved Qwen2 config (hidden 64, 2 heads -> head_dim 32, 1 layer) plus stand-in files."""
    from transformers import Qwen2Config

    folder = tmp_path / "base"
    Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_hidden_layers=1,
        vocab_size=64,
        max_position_embeddings=4096,
        rope_theta=10000.0,
    ).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"\x00weights\x01" * 10)
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / "sub").mkdir()
    (folder / "sub" / "extra.txt").write_text("nested")
    return folder


def test_copy_has_new_values_and_src_is_untouched(src, tmp_path, capsys):
    from transformers import AutoConfig

    before = _digest(src)
    dst = tmp_path / "out" / "long"
    assert main([str(src), str(dst), *EDIT]) == 0
    assert _digest(src) == before
    cfg = AutoConfig.from_pretrained(dst)
    assert cfg.max_position_embeddings == 16384 and cfg.rope_parameters["rope_theta"] == 40000.0
    assert AutoConfig.from_pretrained(src).rope_parameters["rope_theta"] == 10000.0
    after = _digest(dst)
    assert after.keys() == before.keys()
    assert all(after[k] == before[k] for k in before if k != "config.json")
    # config.json is a new file (an in-place edit through a hard link would have reached SRC)
    assert (dst / "config.json").stat().st_ino != (src / "config.json").stat().st_ino
    assert (dst / "model.safetensors").stat().st_ino == (src / "model.safetensors").stat().st_ino
    out = capsys.readouterr().out
    assert "rope_parameters.rope_theta: 10000.0 -> 40000.0" in out
    assert "max_position_embeddings: 4096 -> 16384" in out
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_copy_flag_makes_independent_files(src, tmp_path):
    dst = tmp_path / "copied"
    assert main([str(src), str(dst), "--rope-theta", "40000", "--copy"]) == 0
    assert (dst / "model.safetensors").stat().st_ino != (src / "model.safetensors").stat().st_ino
    assert json.loads((dst / "config.json").read_text())["max_position_embeddings"] == 4096


def test_legacy_top_level_rope_theta(tmp_path):
    from transformers import AutoConfig

    folder = tmp_path / "legacy"
    folder.mkdir()
    legacy = {
        "model_type": "qwen2",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "num_hidden_layers": 1,
        "vocab_size": 64,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": None,
    }
    (folder / "config.json").write_text(json.dumps(legacy))
    assert main([str(folder), str(tmp_path / "new"), *EDIT]) == 0
    written = json.loads((tmp_path / "new" / "config.json").read_text())
    assert written == {**legacy, "rope_theta": 40000.0, "max_position_embeddings": 16384}
    assert AutoConfig.from_pretrained(tmp_path / "new").rope_parameters["rope_theta"] == 40000.0


def test_edit_config_touches_every_rope_theta_present():
    both = {
        "rope_theta": 1.0,
        "rope_parameters": {"rope_theta": 1.0, "rope_type": "default"},
        "rope_scaling": {"rope_theta": 1.0, "rope_type": "default"},
    }
    changes = edit_config(both, 40000.0, None)
    assert both == {
        "rope_theta": 40000.0,
        "rope_parameters": {"rope_theta": 40000.0, "rope_type": "default"},
        "rope_scaling": {"rope_theta": 40000.0, "rope_type": "default"},
    }
    assert len(changes) == 3
    yarn = {"rope_scaling": {"type": "yarn", "factor": 4.0}}  # no base inside: set it at top level
    edit_config(yarn, 40000.0, 16384)
    assert yarn == {
        "rope_scaling": {"type": "yarn", "factor": 4.0},
        "rope_theta": 40000.0,
        "max_position_embeddings": 16384,
    }


def test_errors(src, tmp_path):
    with pytest.raises(DataError, match="model folder not found: .*missing"):
        main([str(tmp_path / "missing"), str(tmp_path / "d1"), *EDIT])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty is not a model folder: it has no config.json"):
        main([str(tmp_path / "empty"), str(tmp_path / "d2"), *EDIT])
    with pytest.raises(ConfigError, match="nothing to change"):
        main([str(src), str(tmp_path / "d3")])
    with pytest.raises(ConfigError, match="must not contain each other"):
        main([str(src), str(src / "inner"), *EDIT])
    with pytest.raises(ConfigError, match="must not contain each other"):
        main([str(src), str(tmp_path), *EDIT, "--overwrite"])
    assert src.is_dir() and (src / "config.json").is_file()
    assert not any((tmp_path / d).exists() for d in ("d1", "d2", "d3"))


def test_existing_dst_needs_overwrite(src, tmp_path):
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="taken already exists .*--overwrite"):
        main([str(src), str(dst), *EDIT])
    assert (dst / "keep.txt").read_text() == "mine"
    assert main([str(src), str(dst), *EDIT, "--overwrite"]) == 0
    assert not (dst / "keep.txt").exists()
    assert json.loads((dst / "config.json").read_text())["max_position_embeddings"] == 16384


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "srft prepare-model" in out and "--rope-theta" in out and "--max-position-embeddings" in out
