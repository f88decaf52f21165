"""Shared test fixtures: a tiny tokenizer and Qwen2 model built locally (no network), fixed seeds.

The plain helpers behind them live in helpers.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import SEED, build_tiny_model, build_tiny_tokenizer, save_model, seed_torch

from srft_openrlhf.data import toy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = ROOT.parent / "shared" / "benchmarks"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny Qwen2 model + tokenizer folder, loadable by HF and vLLM."""
    path = tmp_path_factory.mktemp("tiny_qwen2")
    model = build_tiny_model(tiny_tokenizer)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def shared_benchmarks() -> Path:
    if not SHARED_BENCHMARKS.is_dir():
        pytest.skip("../shared/benchmarks is absent (fresh clone)")
    return SHARED_BENCHMARKS


@pytest.fixture
def seed() -> int:
    """Seed torch's global generator with the fixed ``SEED``."""
    return seed_torch(SEED)


# srft analyze: the toy task's tokenizer and three tiny models that use it
@pytest.fixture(scope="session")
def toy_tokenizer():
    return toy.build_tokenizer()


@pytest.fixture(scope="session")
def toy_models(tmp_path_factory, toy_tokenizer) -> dict[str, Path]:
    """base, an exact copy of it in another folder, and an independently initialised model."""
    root = tmp_path_factory.mktemp("analysis_models")
    base = save_model(root / "base", toy_tokenizer, seed=0)
    shutil.copytree(base, root / "copy")
    return {"base": base, "copy": root / "copy", "other": save_model(root / "other", toy_tokenizer, seed=1)}
