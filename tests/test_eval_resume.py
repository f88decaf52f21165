"""Resuming an evaluation: finished samples are skipped, a torn last line is tolerated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.__main__ import RUN_KEYS, Task, evaluate, render_prompts
from evaluation.generate import EvalCompletion, prompt_seed
from evaluation.report import SAMPLES, read_samples
from srft_openrlhf.data.benchmarks import BENCHMARKS, Problem
from srft_openrlhf.errors import ConfigError, DataError

SETTINGS = {"model": "/models/tiny", "template": "none", "temperature": 0.6, "top_p": 1.0, "max_tokens": 16, "seed": 3}


class FakeGenerator:
    """Answers every prompt correctly, and records what it was asked."""

    default_batch_size = 2

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.calls: list[tuple[list[str], int, list[int]]] = []

    def generate(self, prompts, n, seeds):
        self.calls.append((list(prompts), n, list(seeds)))
        return [
            [EvalCompletion(f"</think> so \\boxed{{{self.answers[p]}}}", 7, False) for _ in range(n)] for p in prompts
        ]

    @property
    def samples(self) -> int:
        return sum(len(p) * n for p, n, _ in self.calls)


def tasks(k_math: int = 3, n_math: int = 4) -> list[Task]:
    math = [Problem("math500", f"m{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(n_math)]
    arc = [Problem("arc_c", "c0", "Pick B.\n\nA) no\nB) yes", "B")]
    return [Task(BENCHMARKS["math500"], math, k_math, "test"), Task(BENCHMARKS["arc_c"], arc, 1, "test")]


def run(out: Path, ts: list[Task], gen: FakeGenerator | None = None, settings: dict = SETTINGS):
    prompts = render_prompts(ts, "none", None)
    gen = gen or FakeGenerator({prompts[(t.bench.name, p.id)]: p.answer for t in ts for p in t.problems})
    made = []

    def make():
        made.append(1)
        return gen

    records = evaluate(ts, prompts, out, make, seed=settings["seed"], batch_size=None, settings=settings)
    return records, gen, len(made)


def test_rerun_skips_finished_samples(tmp_path):
    records, gen, made = run(tmp_path, tasks())
    assert made == 1 and gen.samples == 4 * 3 + 1
    assert len(records) == 13 and all(r["correct"] for r in records)
    assert {(r["benchmark"], r["id"]) for r in records if r["sample"] == 2} == {("math500", f"m{i}") for i in range(4)}
    assert len(read_samples(tmp_path / SAMPLES)) == 13

    again, gen2, made2 = run(tmp_path, tasks())
    assert made2 == 0 and gen2.calls == []  # no engine is even started
    assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, records))


def test_seeds_are_per_problem_and_continue_with_the_sample_index(tmp_path):
    _, gen, _ = run(tmp_path, tasks(k_math=2))
    first = {p: s for prompts, _, seeds in gen.calls for p, s in zip(prompts, seeds)}
    assert first["What is 1 + 1?"] == prompt_seed(3, "math500", "m1", 0)
    _, gen2, _ = run(tmp_path, tasks(k_math=5))  # more samples: only samples 2..4 are generated
    assert [(n, len(p)) for p, n, _ in gen2.calls] == [(3, 2), (3, 2)]
    later = {p: s for prompts, _, seeds in gen2.calls for p, s in zip(prompts, seeds)}
    assert later["What is 1 + 1?"] == prompt_seed(3, "math500", "m1", 0) + 2
    records = read_samples(tmp_path / SAMPLES)
    assert sorted(r["sample"] for r in records if r["id"] == "m1") == [0, 1, 2, 3, 4]


def test_a_killed_run_loses_only_the_torn_line(tmp_path, caplog):
    run(tmp_path, tasks())
    path = tmp_path / SAMPLES
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed while writing the last line
    lost = json.loads(lines[-1])
    records, gen, _ = run(tmp_path, tasks())
    assert "torn last line" in caplog.text
    assert gen.samples == 1 and gen.calls[0][0] == [lost["prompt"]]
    assert len(records) == 13
    assert len(read_samples(path)) == 13  # every line parses again


def test_a_limit_or_smaller_k_reports_only_the_requested_samples(tmp_path):
    run(tmp_path, tasks())
    records, gen, _ = run(tmp_path, tasks(k_math=2, n_math=2))
    assert gen.calls == []
    assert sorted((r["id"], r["sample"]) for r in records if r["benchmark"] == "math500") == [
        ("m0", 0),
        ("m0", 1),
        ("m1", 0),
        ("m1", 1),
    ]


def test_other_settings_or_prompts_refuse_to_mix(tmp_path):
    run(tmp_path, tasks())
    with pytest.raises(ConfigError, match="other max_tokens"):
        run(tmp_path, tasks(), settings={**SETTINGS, "max_tokens": 32})
    changed = tasks()
    changed[0].problems[0] = Problem("math500", "m0", "A different question?", "0")
    with pytest.raises(ConfigError, match="math500 problem m0 was generated from a different prompt"):
        run(tmp_path, changed)
    assert set(RUN_KEYS) <= set(json.loads((tmp_path / "run.json").read_text()))


def test_a_corrupt_line_inside_the_file_is_an_error(tmp_path):
    path = tmp_path / SAMPLES
    path.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        read_samples(path)
