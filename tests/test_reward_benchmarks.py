"""Graders on real benchmark golds: the sample in tests/fixtures/benchmarks (always) and the full
files under ``-m benchmark_data`` (the ``benchmarks`` fixture of conftest.py).

1. Every gold answer, written as a model would ("... so the answer is \\boxed{GOLD}"),
   is graded correct, by each grader on its own, on >= 99% of rows.
2. The next row's answer is graded wrong on >= 99% of the rows where the two golds
   differ after normalisation.
Misses must be listed, with a reason, in tests/fixtures/grader_known_misses.json: an
unlisted miss fails the test even above 99%, so a regression is seen at once.
On the sample (257 math rows) 99% allows 2 misses; on the full files (~2200 rows), 22.
math-verify over ~1500 rows takes a minute or more on two busy cores: those are slow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import requires_pandas

from srft_openrlhf.reward import batch_rewards
from srft_openrlhf.reward.choice import gold_to_letter
from srft_openrlhf.reward.math_grader import clean_ground_truth
from srft_openrlhf.reward.oat_grader import normalize

pytestmark = requires_pandas  # the LUFFY benchmark copies are parquet

KNOWN_MISSES = Path(__file__).resolve().parent / "fixtures" / "grader_known_misses.json"
MATH_FILES = ("AIME24", "AMC23", "MATH-500", "Minerva", "Olympiad-Bench")
LUFFY_MATH_SOURCES = ("aime", "aime25", "amc", "math", "minerva", "olympiad_bench")

Row = tuple[str, str]  # (dataset, raw gold)


@pytest.fixture(scope="module")
def math_rows(benchmarks: Any) -> list[Row]:
    """hpt JSON rows, then LUFFY's valid.all.parquet rows (duplicates of avg@32 removed)."""
    rows: list[Row] = []
    for name in MATH_FILES:
        rows += [(name, str(r["answer"])) for r in json.loads((benchmarks.root / "hpt" / f"{name}.json").read_text())]
    import pandas

    frame = pandas.read_parquet(benchmarks.root / "luffy" / "valid.all.parquet")
    seen = set()
    for source, reward_model in zip(frame["data_source"], frame["reward_model"]):
        row = (f"luffy:{source}", str(reward_model["ground_truth"]))
        if source in LUFFY_MATH_SOURCES and row not in seen:
            seen.add(row)
            rows.append(row)
    return rows


def _known(check: str, grader: str) -> set[tuple[str, str, str]]:
    entries = json.loads(KNOWN_MISSES.read_text())["misses"]
    for entry in entries:
        assert entry.get("reason"), f"known miss without a reason: {entry}"
    return {
        (e["dataset"], e["gold"], e.get("other", "")) for e in entries if e["check"] == check and e["grader"] == grader
    }


def _as_model_would(gold: str) -> str:
    return f"<think>\nLet me compute this carefully.\n</think>\nSo the answer is \\boxed{{{gold}}}."


def _unique(rows: list[Row]) -> list[Row]:
    """One row per distinct gold: the LUFFY copies repeat most hpt golds, and math-verify
    is slow enough that grading each twice matters."""
    out, seen = [], set()
    for dataset, gold in rows:
        key = clean_ground_truth(gold)
        if key not in seen:
            seen.add(key)
            out.append((dataset, gold))
    return out


def _check_gold_correct(rows: list[Row], grader: str) -> None:
    # A generous timeout: this checks what the grader decides, not how fast (busy CI cores).
    result = batch_rewards(
        [_as_model_would(g) for _, g in rows], [g for _, g in rows], mode=grader, timeout_s=30.0, num_workers=2
    )
    misses = {(d, g, "") for (d, g), reward in zip(rows, result.rewards) if reward != 1.0}
    unlisted = misses - _known("gold_correct", grader)
    assert not unlisted, f"{grader}: golds graded wrong, not in {KNOWN_MISSES.name}: {sorted(unlisted)[:20]}"
    assert 1 - len(misses) / len(rows) >= 0.99


def _neighbour_pairs(rows: list[Row]) -> list[tuple[str, str, str]]:
    """(dataset, gold, next row's gold) within each dataset, when the golds really differ."""
    by_dataset: dict[str, list[str]] = {}
    for dataset, gold in rows:
        by_dataset.setdefault(dataset, []).append(gold)
    pairs = []
    for dataset, golds in by_dataset.items():
        for k, gold in enumerate(golds):
            other = golds[(k + 1) % len(golds)]
            if normalize(clean_ground_truth(gold)) != normalize(clean_ground_truth(other)):
                pairs.append((dataset, gold, other))
    return pairs


def _check_other_row_wrong(rows: list[Row], grader: str) -> None:
    pairs = _neighbour_pairs(rows)
    responses = [_as_model_would(other) for _, _, other in pairs]
    result = batch_rewards(responses, [gold for _, gold, _ in pairs], mode=grader, num_workers=2)
    wrongly_correct = {pair for pair, reward in zip(pairs, result.rewards) if reward != 0.0}
    unlisted = wrongly_correct - _known("other_row_wrong", grader)
    assert not unlisted, f"{grader}: other rows' answers graded correct: {sorted(unlisted)[:20]}"
    assert 1 - len(wrongly_correct) / len(pairs) >= 0.99


def test_row_counts(math_rows, benchmarks):
    datasets = {d for d, _ in math_rows}
    assert set(MATH_FILES) <= datasets and {f"luffy:{s}" for s in LUFFY_MATH_SOURCES} <= datasets
    assert len([1 for d, _ in math_rows if d == "MATH-500"]) == (500 if benchmarks.full else 24)
    if not benchmarks.full:  # 5 files × 24 rows; 6 LUFFY sources × 24 problems, a gold repeated in a source once
        assert all(sum(d == name for d, _ in math_rows) == 24 for name in MATH_FILES)
        assert len(math_rows) == 5 * 24 + 137


def test_oat_grades_every_gold_correct(math_rows):
    _check_gold_correct(math_rows, "oat")


def test_oat_grades_other_rows_answer_wrong(math_rows):
    _check_other_row_wrong(math_rows, "oat")


@pytest.mark.slow
def test_math_verify_grades_every_gold_correct(math_rows):
    _check_gold_correct(_unique(math_rows), "math_verify")


@pytest.mark.slow
def test_math_verify_grades_other_rows_answer_wrong(math_rows):
    _check_other_row_wrong(_unique(math_rows), "math_verify")


def test_choice_golds_graded_correct_and_other_letters_wrong(benchmarks):
    import pandas

    golds = [r["answer"] for r in json.loads((benchmarks.root / "hpt" / "GPQA.json").read_text())]
    for name in ("valid.arc_c.parquet", "valid.gpqa.parquet"):
        frame = pandas.read_parquet(benchmarks.root / "luffy" / name)
        golds += [str(rm["ground_truth"]) for rm in frame["reward_model"]]
    assert sum(g.isdigit() for g in golds) == 22  # ARC rows with numbered options
    styles = ("ANSWER: {}", "so the answer is \\boxed{{{}}}.", "The answer is ({})")
    responses = ["<think>hmm</think>\n" + styles[k % 3].format(g) for k, g in enumerate(golds)]
    assert batch_rewards(responses, golds, kind="choice").rewards == [1.0] * len(golds)
    others = golds[1:] + golds[:1]
    pairs = [(g, o) for g, o in zip(golds, others) if gold_to_letter(g) != gold_to_letter(o)]
    result = batch_rewards([f"\\boxed{{{gold_to_letter(o)}}}" for _, o in pairs], [g for g, _ in pairs], kind="choice")
    assert len(golds) == (198 + 1172 + 198 if benchmarks.full else 24 + 46 + 24)
    assert len(pairs) > len(golds) / 2 and result.rewards == [0.0] * len(pairs)
