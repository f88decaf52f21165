"""Shared test fixtures: a tiny tokenizer and Qwen2 model built locally (no network), fixed seeds.

The plain helpers behind them live in helpers.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import SEED, build_tiny_model, build_tiny_tokenizer, save_model, seed_torch

from srft_openrlhf.data import toy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
# The full public benchmark files (not part of the project; tests/fixtures/benchmarks/README.md)
# and the sample of them that the project carries.
SHARED_BENCHMARKS = ROOT.parent / "shared" / "benchmarks"
BENCHMARK_SAMPLE = ROOT / "tests" / "fixtures" / "benchmarks"


class BenchmarkFiles(NamedTuple):
    root: Path  # holds hpt/*.json and luffy/*.parquet
    full: bool  # the full files, else the sample


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests on the full benchmark files run only when ``-m`` names ``benchmark_data``."""
    if "benchmark_data" in (config.getoption("markexpr") or ""):
        return
    full = [item for item in items if item.get_closest_marker("benchmark_data")]
    if full:
        config.hook.pytest_deselected(items=full)
        items[:] = [item for item in items if not item.get_closest_marker("benchmark_data")]


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


@pytest.fixture(
    scope="session",
    params=[pytest.param(False, id="sample"), pytest.param(True, id="full", marks=pytest.mark.benchmark_data)],
)
def benchmarks(request: pytest.FixtureRequest) -> BenchmarkFiles:
    """The benchmark files a test reads: the sample always, the full files under ``-m benchmark_data``."""
    if not request.param:
        return BenchmarkFiles(BENCHMARK_SAMPLE, full=False)
    if not SHARED_BENCHMARKS.is_dir():
        pytest.fail(f"-m benchmark_data needs the full benchmark files at {SHARED_BENCHMARKS}", pytrace=False)
    return BenchmarkFiles(SHARED_BENCHMARKS, full=True)


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
