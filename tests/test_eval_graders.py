"""The reward module's graders on real benchmark rows, loaded by evaluation's loaders (the sample in
tests/fixtures/benchmarks always, the full files under ``-m benchmark_data``: the ``benchmarks``
fixture of conftest.py), and the re-grading command ``python -m evaluation.grade``.

Every gold answer written as a model would (``... \\boxed{gold}``) must be graded correct on at
least 99% of the rows of each math set (known misses are listed, with the reason, in
tests/fixtures/eval_grader_misses.json), and the neighbouring row's answer must be graded wrong.
On the sample's 24-row sets 99% allows no miss at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.grade import grade_responses
from evaluation.grade import main as grade_main
from srft_openrlhf.data.benchmarks import BENCHMARKS, LETTERS, load_benchmark

KNOWN = json.loads((Path(__file__).parent / "fixtures" / "eval_grader_misses.json").read_text())

MATH_SETS = [
    ("hpt", "math500", "MATH-500.json"),
    ("hpt", "aime24", "AIME24.json"),
    ("hpt", "amc", "AMC23.json"),
    ("hpt", "minerva", "Minerva.json"),
    ("hpt", "olympiad", "Olympiad-Bench.json"),
] + [("luffy", name, "valid.all.parquet") for name in ("math500", "aime24", "amc", "minerva", "olympiad")]
CHOICE_SETS = [
    ("hpt", "gpqa_diamond", "GPQA.json"),
    ("luffy", "gpqa_diamond", "valid.gpqa.parquet"),
    ("luffy", "arc_c", "valid.arc_c.parquet"),
]


def as_model_would(answer: str) -> str:
    return (
        f"<think>\nLet me work it out... maybe \\boxed{{0}}?\n</think>\nSo the final answer is $\\boxed{{{answer}}}$."
    )


def problems(benchmarks, folder: str, name: str, file: str):
    return load_benchmark(BENCHMARKS[name], benchmarks.root / folder / file)


def neighbour_answers(golds: list[str]) -> list[str]:
    """For each row, the answer of the next row whose gold is written differently."""
    out = []
    for i, gold in enumerate(golds):
        j = (i + 1) % len(golds)
        while golds[j] == gold:
            j = (j + 1) % len(golds)
        out.append(golds[j])
    return out


@pytest.mark.slow  # about a minute per large set: math-verify's symbolic comparisons
@pytest.mark.parametrize("folder,name,file", MATH_SETS, ids=[f"{f}/{n}" for f, n, _ in MATH_SETS])
def test_gold_answers_are_graded_correct_and_other_rows_wrong(benchmarks, folder, name, file):
    rows = problems(benchmarks, folder, name, file)
    golds = [p.answer for p in rows]
    key = f"{folder}/{name}"

    # a generous timeout: the CPU is shared, and a grader that is slow is not a grader that is wrong
    verdicts = grade_responses("math", [as_model_would(g) for g in golds], golds, timeout_s=60)
    misses = {p.id for p, v in zip(rows, verdicts) if not v.correct}
    assert misses <= set(KNOWN["misses"].get(key, {})), f"unlisted misses: {sorted(misses)}"
    assert 1 - len(misses) / len(rows) >= 0.99
    assert all(v.extracted is not None and v.grading == "ok" for v in verdicts)
    # the stored per-grader verdicts agree with the combined one
    assert all(v.correct == bool(v.math_verify or v.oat) for v in verdicts)

    wrong = grade_responses("math", [as_model_would(a) for a in neighbour_answers(golds)], golds, timeout_s=60)
    assert all(v.grading == "ok" for v in wrong)  # rejected by the graders, not by the clock
    accepted = {p.id for p, v in zip(rows, wrong) if v.correct}
    assert accepted <= set(KNOWN["equivalent"].get(key, {})), f"other rows' answers accepted: {sorted(accepted)}"


@pytest.mark.parametrize("folder,name,file", CHOICE_SETS, ids=[f"{f}/{n}" for f, n, _ in CHOICE_SETS])
def test_choice_letters(benchmarks, folder, name, file):
    rows = problems(benchmarks, folder, name, file)
    golds = [p.answer for p in rows]
    right = grade_responses("choice", [as_model_would(g) for g in golds], golds)
    assert all(v.correct and v.choice and v.extracted == g for v, g in zip(right, golds))
    others = [LETTERS[(LETTERS.index(g) + 1) % 4] for g in golds]
    assert not any(v.correct for v in grade_responses("choice", [as_model_would(o) for o in others], golds))


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_regrade_generations_made_elsewhere(tmp_path, capsys):
    lines = [
        {"benchmark": "aime", "answer": "204", "response": as_model_would("204")},  # LUFFY data_source name
        {"benchmark": "aime", "answer": "204", "response": as_model_would("205")},
        {"benchmark": "gpqa_diamond", "id": "q1", "answer": "C", "response": "ANSWER: C"},
        {"benchmark": "my_quiz", "kind": "math", "answer": "\\frac12", "response": as_model_would("0.5")},
    ]
    src = write_jsonl(tmp_path / "gens.jsonl", lines)
    assert grade_main([str(src)]) == 0
    out = tmp_path / "gens_graded"
    graded = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [g["correct"] for g in graded] == [True, False, True, True]
    assert [g["benchmark"] for g in graded] == ["aime24", "aime24", "gpqa_diamond", "my_quiz"]
    assert [(g["id"], g["sample"]) for g in graded[:2]] == [("1", 0), ("2", 0)]
    assert graded[0]["math_verify"] is True and graded[0]["extracted"] == "204" and graded[2]["choice"] is True
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmarks"]["aime24"]["score"] == 0.5 and summary["benchmarks"]["my_quiz"]["score"] == 1.0
    assert "| AIME24 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "line,message",
    [
        ({"benchmark": "aime", "response": "x"}, "line 1: missing field(s) answer"),
        ({"benchmark": "quiz", "answer": "1", "response": "x"}, "unknown benchmark 'quiz'"),
        ({"benchmark": "amc", "answer": "1", "response": "x", "sample": "first"}, "field 'sample' must be an integer"),
    ],
)
def test_regrade_bad_lines_are_one_line_errors(tmp_path, capsys, line, message):
    assert grade_main([str(write_jsonl(tmp_path / "g.jsonl", [line]))]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "content,message",
    [
        (
            b'{"benchmark": "amc", "answer": "1", "response": "x"}\n'
            + '{"benchmark": "amc", "answer": "é"}\n'.encode("latin-1"),
            "g.jsonl line 2: not UTF-8 text (byte 0xe9 ",
        ),
        (bytes(range(128, 256)) * 4, "g.jsonl line 1: not UTF-8 text (byte 0x80 "),
        (b"the model said 42\n", "g.jsonl line 1: not valid JSON (Expecting value); expected JSON Lines"),
    ],
)
def test_regrade_a_file_that_is_not_jsonl_text(tmp_path, capsys, content, message):
    (tmp_path / "g.jsonl").write_bytes(content)
    assert grade_main([str(tmp_path / "g.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"evaluation.grade: error: {tmp_path / 'g.jsonl'}") and err.count("\n") == 1, err
    assert message in err, err


def test_regrade_keeps_unicode_line_separators_inside_a_response(tmp_path, capsys):
    """samples.jsonl is written with ensure_ascii=False, so U+2028 / U+0085 in a response stay raw;
    only \\n ends a JSON Lines record."""
    lines = [{"benchmark": "amc", "answer": "1", "response": "a\u2028b\x85c \\boxed{1}"}]
    src = tmp_path / "g.jsonl"
    src.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    assert grade_main([str(src)]) == 0, capsys.readouterr().err
    graded = [
        json.loads(x) for x in (tmp_path / "g_graded" / "samples.jsonl").read_text(encoding="utf-8").split("\n") if x
    ]
    assert [g["response"] for g in graded] == [lines[0]["response"]] and graded[0]["correct"] is True
