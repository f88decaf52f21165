"""srft_openrlhf.data.benchmarks: registry, file layouts, field detection, multiple-choice shuffling."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from srft_openrlhf.data.benchmarks import (
    BENCHMARKS,
    LETTERS,
    PAPER_BENCHMARKS,
    Fields,
    benchmark_for_source,
    clean_math_answer,
    get_benchmark,
    load_benchmark,
    shuffle_options,
)
from srft_openrlhf.errors import ConfigError, DataError

SYSTEM = "Your task is to follow a systematic, thorough reasoning process"


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def luffy_rows(source: str, questions_answers, repeat: int = 1) -> list[dict]:
    return [
        {
            "data_source": source,
            "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
            "ability": "math",
            "reward_model": {"ground_truth": a, "style": "rule"},
            "extra_info": {"index": i, "split": "default"},
        }
        for i, (q, a) in enumerate(questions_answers)
        for _ in range(repeat)
    ]


# ----------------------------------------------------------------------------- registry


def test_registry_has_the_papers_benchmarks_with_their_defaults():
    assert PAPER_BENCHMARKS == ("aime24", "amc", "math500", "minerva", "olympiad", "arc_c", "gpqa_diamond", "mmlu_pro")
    assert set(PAPER_BENCHMARKS) | {"aime25"} == set(BENCHMARKS)
    assert {n: BENCHMARKS[n].samples for n in PAPER_BENCHMARKS} == {
        "aime24": 32,
        "amc": 32,
        "math500": 1,
        "minerva": 1,
        "olympiad": 1,
        "arc_c": 1,
        "gpqa_diamond": 1,
        "mmlu_pro": 1,
    }
    assert {n for n, b in BENCHMARKS.items() if b.kind == "choice"} == {"arc_c", "gpqa_diamond", "mmlu_pro"}
    assert "gated" in BENCHMARKS["gpqa_diamond"].hub.note


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown benchmark 'aime2024'.*aime24, amc, math500"):
        get_benchmark("aime2024")


@pytest.mark.parametrize(
    "source,name",
    [
        ("aime", "aime24"),
        ("math", "math500"),
        ("olympiad_bench", "olympiad"),
        ("gpqa", "gpqa_diamond"),
        ("AMC", "amc"),
        ("aime25", "aime25"),
    ],
)
def test_luffy_data_sources_map_to_benchmarks(source, name):
    assert benchmark_for_source(source) is BENCHMARKS[name]
    assert benchmark_for_source("gsm8k") is None


def test_hub_failure_is_a_one_line_error_pointing_to_local_files(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        load_benchmark(BENCHMARKS["gpqa_diamond"])
    assert "Idavidrein/gpqa" in str(e.value) and "gated" in str(e.value)
    assert "--data gpqa_diamond=PATH" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- math files


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("\\boxed{204}", "204"),
        ("27", "27"),
        (27.0, "27"),
        (0.5, "0.5"),
        ("$69$,$84$", "69,84"),
        ("\\$5", "\\$5"),
        ("\\boxed{a} + \\boxed{b}", "\\boxed{a} + \\boxed{b}"),  # not one box: kept
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        (["2", "3"], "2, 3"),
    ],
)
def test_clean_math_answer(raw, clean):
    assert clean_math_answer(raw) == clean


def test_prompt_answer_json_layout(tmp_path):
    path = write_json(
        tmp_path / "AIME24.json",
        [{"prompt": "What is 1+1?", "answer": "\\boxed{2}"}, {"prompt": "What is 2+2?", "answer": "\\boxed{4}"}],
    )
    problems = load_benchmark(BENCHMARKS["aime24"], path)
    assert [(p.id, p.question, p.answer) for p in problems] == [("0", "What is 1+1?", "2"), ("1", "What is 2+2?", "4")]


def test_luffy_parquet_mixed_sources_are_selected_and_32x_rows_deduplicated(tmp_path):
    rows = luffy_rows("aime", [("A1?", "1"), ("A2?", "2")], repeat=32) + luffy_rows(
        "math", [("M1?", "\\frac12"), ("M2?", "3"), ("M3?", "4")]
    )
    path = tmp_path / "valid.all.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    aime = load_benchmark(BENCHMARKS["aime24"], path)
    assert [(p.id, p.question, p.answer) for p in aime] == [("0", "A1?", "1"), ("1", "A2?", "2")]
    math = load_benchmark(BENCHMARKS["math500"], path, limit=2)
    assert [p.question for p in math] == ["M1?", "M2?"]  # the system turn is the template's business
    with pytest.raises(
        DataError, match="valid.all.parquet: none of its data_source values \\(aime, math\\) is minerva"
    ):
        load_benchmark(BENCHMARKS["minerva"], path)


def test_jsonl_with_hub_style_fields_and_numeric_answers(tmp_path):
    path = tmp_path / "amc.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "problem": f"P{i}", "answer": float(i)}) for i in range(3)) + "\n")
    problems = load_benchmark(BENCHMARKS["amc"], path)
    assert [(p.id, p.question, p.answer) for p in problems] == [("0", "P0", "0"), ("1", "P1", "1"), ("2", "P2", "2")]


def test_missing_fields_are_named_in_one_line(tmp_path):
    path = write_json(tmp_path / "bad.json", [{"text": "What?", "solution": "42"}])
    with pytest.raises(DataError) as e:
        load_benchmark(BENCHMARKS["math500"], path)
    msg = str(e.value)
    assert "bad.json" in msg and "question" in msg and "answer" in msg and "columns: text, solution" in msg
    assert "--fields math500=QUESTION_KEY,ANSWER_KEY" in msg and "\n" not in msg


def test_configured_fields(tmp_path):
    path = write_json(tmp_path / "custom.json", [{"text": "What?", "meta": {"gold": "42"}}])
    problems = load_benchmark(BENCHMARKS["math500"], path, fields=Fields("text", "meta.gold"))
    assert (problems[0].question, problems[0].answer) == ("What?", "42")
    with pytest.raises(DataError, match="custom.json: missing field\\(s\\) meta.answer"):
        load_benchmark(BENCHMARKS["math500"], path, fields=Fields("text", "meta.answer"))


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_benchmark(BENCHMARKS["math500"], tmp_path / "absent.json")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown data file extension"):
        load_benchmark(BENCHMARKS["math500"], tmp_path / "x.csv")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "answer": "1"}\n{"prompt": \n')
    with pytest.raises(DataError, match="broken.jsonl row 1 \\(line 2\\): not valid JSON"):
        load_benchmark(BENCHMARKS["math500"], tmp_path / "broken.jsonl")
    write_json(tmp_path / "scalars.json", [{"prompt": "a", "answer": "1"}, "b"])
    with pytest.raises(DataError, match="scalars.json row 1 is a str, not an object with fields"):
        load_benchmark(BENCHMARKS["math500"], tmp_path / "scalars.json")
    write_json(tmp_path / "keyed.json", {"rows": []})
    with pytest.raises(
        DataError, match="keyed.json: expected a JSON array of rows, or an object holding one under 'test' or 'data'"
    ):
        load_benchmark(BENCHMARKS["math500"], tmp_path / "keyed.json")


def test_files_that_are_not_utf8_or_corrupt_are_one_line_data_errors(tmp_path):
    """The training data reader's errors: a DataError naming file (and row and line), no traceback."""
    good = json.dumps({"prompt": "q", "answer": "1"}).encode()
    (tmp_path / "latin1.jsonl").write_bytes(good + b"\n" + '{"prompt": "café", "answer": "1"}\n'.encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_benchmark(BENCHMARKS["math500"], tmp_path / "latin1.jsonl")
    assert str(err.value).startswith(f"{tmp_path / 'latin1.jsonl'} row 1 (line 2): not UTF-8 text (byte 0xe9 ")
    (tmp_path / "latin1.json").write_bytes(b'[{"prompt": "q",\n  "answer": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"latin1.json: not UTF-8 text \(byte 0xe9 at line 2\)"):
        load_benchmark(BENCHMARKS["math500"], tmp_path / "latin1.json")
    (tmp_path / "footer.parquet").write_bytes(b"PAR1" + bytes(range(200)) + b"\x10\x00\x00\x00PAR1")
    with pytest.raises(DataError, match="footer.parquet: not a readable parquet file") as err:
        load_benchmark(BENCHMARKS["math500"], tmp_path / "footer.parquet")
    assert "\n" not in str(err.value)


def test_jsonl_lines_end_at_newline_only(tmp_path):
    """U+2028 / U+0085 are legal unescaped inside JSON strings; they do not end a JSON Lines row."""
    rows = [{"prompt": "first\u2028line and next\u0085line", "answer": "1"}, {"prompt": "two", "answer": "2"}]
    path = tmp_path / "sep.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    problems = load_benchmark(BENCHMARKS["math500"], path)
    assert [(p.question, p.answer) for p in problems] == [(rows[0]["prompt"], "1"), ("two", "2")]


def test_json_object_holds_rows_under_test_or_data(tmp_path):
    rows = [{"prompt": "q", "answer": "1"}]
    for key in ("test", "data"):
        path = write_json(tmp_path / f"{key}.json", {key: rows})
        assert [p.answer for p in load_benchmark(BENCHMARKS["math500"], path)] == ["1"]


def test_importing_the_harness_loads_neither_torch_nor_vllm():
    import subprocess
    import sys

    code = (
        "import sys, srft_openrlhf.data.benchmarks, evaluation.generate, evaluation.grade, evaluation.__main__\n"
        "print([m for m in ('torch', 'vllm', 'transformers', 'datasets') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- multiple choice


def mmlu_rows(n: int = 5) -> list[dict]:
    return [
        {
            "question_id": 100 + i,
            "question": f"Q{i}?",
            "options": [f"opt{i}-{j}" for j in range(10)],
            "answer": LETTERS[i % 10],
            "answer_index": i % 10,
        }
        for i in range(n)
    ]


def option_text(question: str, letter: str) -> str:
    line = next(x for x in question.splitlines() if x.startswith(f"{letter}) "))
    return line[3:]


def test_structured_options_are_shuffled_and_the_gold_letter_follows(tmp_path):
    path = write_json(tmp_path / "mmlu.json", mmlu_rows())
    problems = load_benchmark(BENCHMARKS["mmlu_pro"], path, seed=0)
    moved = 0
    for i, p in enumerate(problems):
        assert p.id == str(100 + i)
        assert option_text(p.question, p.answer) == f"opt{i}-{i % 10}"  # the gold option, wherever it went
        assert p.question.endswith(
            "Answer with the letter of the correct option (A, B, C, D, E, F, G, H, I or J) in \\boxed{}."
        )
        listed = sorted(option_text(p.question, letter) for letter in LETTERS)
        assert listed == sorted(f"opt{i}-{j}" for j in range(10))
        moved += p.answer != LETTERS[i % 10]
    assert moved >= 3  # a shuffle that never moves the gold would pass the checks above


def test_shuffle_is_deterministic_given_the_seed(tmp_path):
    path = write_json(tmp_path / "mmlu.json", mmlu_rows())
    first = load_benchmark(BENCHMARKS["mmlu_pro"], path, seed=0)
    assert load_benchmark(BENCHMARKS["mmlu_pro"], path, seed=0) == first
    assert load_benchmark(BENCHMARKS["mmlu_pro"], path, seed=1) != first
    # the order of a problem depends on its id, not on the problems loaded before it
    assert load_benchmark(BENCHMARKS["mmlu_pro"], write_json(tmp_path / "tail.json", mmlu_rows()[2:]))[0] == first[2]


def test_shuffle_options_is_a_permutation_keeping_the_gold():
    options = ["w", "x", "y", "z"]
    for seed in range(20):
        shuffled, gold = shuffle_options(options, 2, seed=str(seed))
        assert sorted(shuffled) == options and shuffled[gold] == "y"


def test_arc_hub_layout_with_numeric_labels(tmp_path):
    rows = [
        {
            "id": "Mercury_1",
            "question": "Which?",
            "choices": {"text": ["a", "b", "c", "d"], "label": ["1", "2", "3", "4"]},
            "answerKey": "3",
        },
        {
            "id": "Mercury_2",
            "question": "What?",
            "choices": {"text": ["p", "q", "r"], "label": ["A", "B", "C"]},
            "answerKey": "A",
        },
    ]
    problems = load_benchmark(BENCHMARKS["arc_c"], write_json(tmp_path / "arc.json", rows))
    assert option_text(problems[0].question, problems[0].answer) == "c"
    assert option_text(problems[1].question, problems[1].answer) == "p"
    assert "(A, B or C)" in problems[1].question


def test_gpqa_hub_layout(tmp_path):
    rows = [
        {
            "Record ID": "rec1",
            "Question": "Which particle?",
            "Correct Answer": "muon",
            "Incorrect Answer 1": "pion",
            "Incorrect Answer 2": "kaon",
            "Incorrect Answer 3": "eta",
        }
    ]
    p = load_benchmark(BENCHMARKS["gpqa_diamond"], write_json(tmp_path / "gpqa.json", rows))[0]
    assert p.id == "rec1" and option_text(p.question, p.answer) == "muon"


def test_embedded_options_are_used_as_given(tmp_path):
    q = "Which one?\n\nA. red\nB. green\nC. blue\nD. black"
    p = load_benchmark(BENCHMARKS["gpqa_diamond"], write_json(tmp_path / "GPQA.json", [{"prompt": q, "answer": "C"}]))[
        0
    ]
    assert p.answer == "C" and p.question.startswith(q)
    assert p.question.endswith("(A, B, C or D) in \\boxed{}.")
    # a text that already says how to answer gets no second instruction (LUFFY's gpqa prompts)
    q2 = "Answer the following. The last line should be 'ANSWER: $LETTER'.\n\nA) 1\nB) 2"
    p2 = load_benchmark(BENCHMARKS["gpqa_diamond"], write_json(tmp_path / "g2.json", [{"prompt": q2, "answer": "B"}]))[
        0
    ]
    assert p2.question == q2


def test_embedded_numbered_options_are_relabelled(tmp_path):
    rows = luffy_rows("arc_c", [("Which?\n\n1) up\n2) down\n3) left\n", "2"), ("Or?\n\nA) x\nB) y\n", "A")])
    path = tmp_path / "valid.arc_c.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    p, q = load_benchmark(BENCHMARKS["arc_c"], path)
    assert p.answer == "B" and "A) up\nB) down\nC) left" in p.question
    assert q.answer == "A" and q.question.startswith("Or?\n\nA) x\nB) y")
    bad = write_json(tmp_path / "bad.json", [{"prompt": "Which?\nA) x", "answer": "7"}])
    with pytest.raises(DataError, match="no option is labelled '7\\)'"):
        load_benchmark(BENCHMARKS["arc_c"], bad)


# ----------------------------------------------------------------------------- real benchmark files

# benchmark: (file, problems in the full file, problems in the sample); LUFFY's repeated rows dropped
HPT = {
    "aime24": ("AIME24.json", 30, 24),
    "aime25": ("AIME25.json", 30, 24),
    "amc": ("AMC23.json", 40, 24),
    "math500": ("MATH-500.json", 500, 24),
    "minerva": ("Minerva.json", 272, 24),
    "olympiad": ("Olympiad-Bench.json", 674, 24),
    "gpqa_diamond": ("GPQA.json", 198, 24),
}
LUFFY = {
    "aime24": ("valid.all.parquet", 30, 24),
    "aime25": ("valid.all.parquet", 30, 24),
    "amc": ("valid.all.parquet", 83, 24),
    "math500": ("valid.all.parquet", 500, 24),
    "minerva": ("valid.all.parquet", 272, 24),
    "olympiad": ("valid.all.parquet", 675, 24),
    "arc_c": ("valid.arc_c.parquet", 1172, 46),
    "gpqa_diamond": ("valid.gpqa.parquet", 198, 24),
}


@pytest.mark.parametrize("folder,table", [("hpt", HPT), ("luffy", LUFFY)])
def test_benchmark_files_load(benchmarks, folder, table):
    for name, (file, full_rows, sample_rows) in table.items():
        problems = load_benchmark(BENCHMARKS[name], benchmarks.root / folder / file)
        rows = full_rows if benchmarks.full else sample_rows
        assert len(problems) == rows, (folder, name)
        assert len({p.id for p in problems}) == rows
        assert all(p.question.strip() and p.answer.strip() for p in problems)
        if BENCHMARKS[name].kind == "choice":
            assert {p.answer for p in problems} <= set("ABCD")
        else:
            assert not any(p.answer.startswith("\\boxed") for p in problems)
