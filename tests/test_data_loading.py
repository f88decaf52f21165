"""load_examples: LUFFY parquet, hpt JSON, OpenR1 demonstrations, and every DataError path."""

from __future__ import annotations

import json
import logging
import re
import sys
import types
from pathlib import Path

import pytest

from srft_openrlhf.data import Example, load_examples
from srft_openrlhf.data.loading import read_rows
from srft_openrlhf.errors import ConfigError, DataError

DEMO = "<think>\n12 + 35 = 47</think>\nThe answer is \\boxed{47}."
OPENR1_ROWS = [
    {
        "prompt": [{"role": "user", "content": "What is 12 + 35?"}],
        "answer": "47",
        "target": [{"role": "assistant", "content": DEMO}],
    },
    {
        "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "What is 2 + 2?"}],
        "answer": "4",
        "target": [{"role": "assistant", "content": "<think>\n2+2</think>\n4"}],
    },
]


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- real layouts


def test_luffy_parquet_layout(benchmarks):
    path = benchmarks.root / "luffy" / "valid.parquet"
    loaded = load_examples(str(path), answer_key="reward_model.ground_truth", demo_key=None)
    assert loaded.skipped == 0 and len(loaded.examples) == (2019 if benchmarks.full else 168)
    first = loaded.examples[0]
    assert first.answer == "204" and first.demonstration is None and first.row == 0
    assert [m["role"] for m in first.prompt] == ["system", "user"]
    assert first.prompt[1]["content"].startswith("Every morning Aya goes for a $9$-kilometer-long walk")
    assert [e.row for e in loaded.examples[:5]] == [0, 1, 2, 3, 4]
    assert len(load_examples(str(path), answer_key="reward_model.ground_truth", demo_key=None, limit=7).examples) == 7


def test_hpt_json_layout(benchmarks):
    path = benchmarks.root / "hpt" / "AIME24.json"
    loaded = load_examples(str(path), demo_key=None)
    assert len(loaded.examples) == (30 if benchmarks.full else 24)
    first = loaded.examples[0]
    assert first == Example(prompt=first.prompt, answer="\\boxed{204}", demonstration=None, source=str(path), row=0)
    assert first.prompt.startswith("Every morning Aya goes for a $9$-kilometer-long walk")


# ----------------------------------------------------------------------------- OpenR1 demos


@pytest.mark.parametrize("demo_key", ["target", "target.0.content"])
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_openr1_target_form(tmp_path, fmt, demo_key):
    path = tmp_path / f"openr1.{fmt}"
    if fmt == "parquet":
        _write_parquet(path, OPENR1_ROWS)
    else:
        _write_jsonl(path, OPENR1_ROWS)
    loaded = load_examples(str(path), demo_key=demo_key, require_demo=True)
    assert [e.demonstration for e in loaded.examples] == [DEMO, "<think>\n2+2</think>\n4"]
    assert [e.answer for e in loaded.examples] == ["47", "4"]
    assert loaded.examples[1].prompt == OPENR1_ROWS[1]["prompt"]


def test_demo_takes_first_assistant_turn_or_first_entry(tmp_path):
    rows = [
        {
            "prompt": "q0",
            "answer": "1",
            "target": [{"role": "user", "content": "no"}, {"role": "assistant", "content": "yes"}],
        },
        {"prompt": "q1", "answer": "1", "target": [{"content": "first"}, {"content": "second"}]},
        {"prompt": "q2", "answer": "1", "target": ["plain string"]},
        {"prompt": "q3", "answer": "1", "target": "just text"},
        {"prompt": "q4", "answer": "1", "target": []},
        {"prompt": "q5", "answer": "1", "target": ""},
        {"prompt": "q6", "answer": "1"},
    ]
    demos = [
        e.demonstration
        for e in load_examples(str(_write_jsonl(tmp_path / "d.jsonl", rows)), demo_key="target").examples
    ]
    assert demos == ["yes", "first", "plain string", "just text", None, None, None]


def test_json_object_forms_and_jsonl_named_json(tmp_path):
    rows = [{"prompt": "q", "answer": "1"}, {"prompt": "r", "answer": 2}]
    (tmp_path / "data.json").write_text(json.dumps({"data": rows}))
    (tmp_path / "split.json").write_text(json.dumps({"test": rows[:1], "data": rows}))
    _write_jsonl(tmp_path / "lines.json", rows)
    assert [e.answer for e in load_examples(str(tmp_path / "data.json")).examples] == ["1", "2"]
    assert len(load_examples(str(tmp_path / "split.json"), split="test").examples) == 1
    assert [e.prompt for e in load_examples(str(tmp_path / "lines.json")).examples] == ["q", "r"]


def test_nested_answer_and_literal_dotted_column(tmp_path):
    rows = [{"prompt": "q", "reward_model": {"ground_truth": "7"}}, {"prompt": "r", "reward_model.ground_truth": "8"}]
    loaded = load_examples(str(_write_jsonl(tmp_path / "n.jsonl", rows)), answer_key="reward_model.ground_truth")
    assert [e.answer for e in loaded.examples] == ["7", "8"]


def test_hub_dataset_via_datasets(monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        if name == "missing/set":
            raise FileNotFoundError("Dataset 'missing/set' doesn't exist on the Hub")
        return [{"problem": "q", "solution": "5"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    loaded = load_examples("org/math-set", split="validation", prompt_key="problem", answer_key="solution")
    assert calls == [("org/math-set", "validation")]
    assert loaded.examples[0].source == "org/math-set" and loaded.examples[0].answer == "5"
    with pytest.raises(DataError, match="cannot load dataset 'missing/set' \\(split 'train'\\).*local"):
        load_examples("missing/set")


# ----------------------------------------------------------------------------- read_rows


def test_read_rows_yields_the_stored_rows_of_every_format(tmp_path):
    """The reader the evaluation harness shares: whole row dicts, fields load_examples drops included."""
    rows = [
        {"prompt": "q", "answer": "1", "options": ["a", "b"], "meta": {"id": 7}},
        {"prompt": "r", "answer": "2", "options": ["c", "d"], "meta": {"id": 8}},
    ]
    _write_jsonl(tmp_path / "a.jsonl", rows)
    _write_jsonl(tmp_path / "lines.json", rows)
    _write_parquet(tmp_path / "a.parquet", rows)
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "split.json").write_text(json.dumps({"test": rows[:1], "data": rows}))
    for name in ("a.jsonl", "lines.json", "a.parquet", "a.json"):
        assert list(read_rows(tmp_path / name)) == list(enumerate(rows)), name
    assert list(read_rows(str(tmp_path / "split.json"), split="test")) == [(0, rows[0])]
    assert list(read_rows(tmp_path / "split.json")) == list(enumerate(rows))  # no split: 'data'


def test_read_rows_raises_bad_rows_or_yields_them(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": oops}\n{"a": "caf\xe9"}\n{"a": 4}\n')
    with pytest.raises(DataError, match="c.jsonl row 1 \\(line 3\\): not valid JSON"):
        list(read_rows(path))
    got = list(read_rows(path, bad_rows="yield"))
    assert [i for i, _ in got] == [0, 1, 2, 3] and got[0][1] == {"a": 1} and got[3][1] == {"a": 4}
    assert isinstance(got[1][1], DataError) and isinstance(got[2][1], DataError)
    assert str(got[2][1]).startswith(f"{path} row 2 (line 4): not UTF-8 text (byte 0xe9 ")
    with pytest.raises(DataError, match="data file not found: .*nope.json"):
        read_rows(tmp_path / "nope.json")  # at the call, before iteration
    (tmp_path / "rows.csv").write_text("a\n1\n")
    with pytest.raises(DataError, match="rows.csv: unknown data file extension '.csv'"):
        read_rows(tmp_path / "rows.csv")
    (tmp_path / "keyed.json").write_text('{"rows": []}')
    with pytest.raises(
        DataError, match="keyed.json: expected a JSON array of rows, or an object holding one under 'data'$"
    ):
        list(read_rows(tmp_path / "keyed.json"))


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085", "\x1c", "\r"])
def test_jsonl_rows_end_at_newline_only(tmp_path, separator):
    """JSON allows these unescaped inside strings; str.splitlines would cut the row there."""
    rows = [{"prompt": f"line one{separator}line two", "answer": "1"}, {"prompt": "q", "answer": "2"}]
    path = tmp_path / "sep.jsonl"
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    assert list(read_rows(path)) == list(enumerate(rows))
    assert [e.prompt for e in load_examples(str(path)).examples] == [rows[0]["prompt"], "q"]


# ----------------------------------------------------------------------------- errors


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*nope.jsonl"):
        load_examples(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="data path not found: .*nope"):
        load_examples(str(tmp_path / "nope"))
    csv = tmp_path / "rows.csv"
    csv.write_text("prompt,answer\nq,1\n")
    with pytest.raises(DataError, match="rows.csv: unknown data file extension '.csv'.*.parquet"):
        load_examples(str(csv))


@pytest.mark.parametrize(
    "bad_row, field, problem",
    [
        ({"answer": "1"}, "prompt", "has no field 'prompt' \\(row keys: answer\\)"),
        ({"prompt": "q"}, "answer", "has no field 'answer'"),
        ({"prompt": "  ", "answer": "1"}, "prompt", "field 'prompt' is empty"),
        ({"prompt": 5, "answer": "1"}, "prompt", "field 'prompt' must be a string or a list of chat messages, got int"),
        ({"prompt": "q", "answer": ["1"]}, "answer", "field 'answer' must be a string, got list"),
        ({"prompt": "q", "answer": ""}, "answer", "field 'answer' is empty"),
        ({"prompt": [{"role": "user"}], "answer": "1"}, "prompt", "field 'prompt' message 0 is not a"),
        ({"prompt": [{"role": "system", "content": "s"}], "answer": "1"}, "prompt", "no non-empty user message"),
        (
            {"prompt": "q", "answer": "1", "demonstration": 3},
            "demonstration",
            "field 'demonstration' must be a string or a list of messages",
        ),
        (["q", "1"], None, "is a list, not an object"),
    ],
)
def test_malformed_row_names_file_row_and_field(tmp_path, bad_row, field, problem):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "answer": "1"}, bad_row])
    with pytest.raises(DataError) as err:
        load_examples(str(path))
    message = str(err.value)
    assert f"{path} row 1" in message
    assert field is None or f"'{field}'" in message
    assert re.search(problem, message), message


def test_invalid_json(tmp_path):
    (tmp_path / "a.json").write_text('[{"prompt": "q", "answer": "1"},')
    with pytest.raises(DataError, match="a.json: not valid JSON"):
        load_examples(str(tmp_path / "a.json"))
    (tmp_path / "b.json").write_text('{"rows": []}')
    with pytest.raises(DataError, match="b.json: expected a JSON array of rows"):
        load_examples(str(tmp_path / "b.json"))
    (tmp_path / "c.jsonl").write_text('{"prompt": "q", "answer": "1"}\n\n{"prompt": oops}\n')
    with pytest.raises(DataError, match="c.jsonl row 1 \\(line 3\\): not valid JSON"):
        load_examples(str(tmp_path / "c.jsonl"))
    (tmp_path / "d.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="d.parquet: not a readable parquet file"):
        load_examples(str(tmp_path / "d.parquet"))


def test_file_that_is_not_utf8_text(tmp_path):
    """Latin-1 or binary data is a DataError naming the file (and line), not a UnicodeDecodeError."""
    good = json.dumps({"prompt": "q", "answer": "1"}).encode()
    (tmp_path / "latin1.jsonl").write_bytes(good + b"\n\n" + '{"prompt": "café", "answer": "1"}\n'.encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_examples(str(tmp_path / "latin1.jsonl"))
    assert str(err.value).startswith(f"{tmp_path / 'latin1.jsonl'} row 1 (line 3): not UTF-8 text (byte 0xe9 ")
    assert "save the file as UTF-8" in str(err.value)
    # a row that cannot be decoded is a bad row like any other: skip_invalid_rows drops and counts it
    loaded = load_examples(str(tmp_path / "latin1.jsonl"), skip_invalid_rows=True)
    assert [e.row for e in loaded.examples] == [0] and loaded.skipped == 1
    (tmp_path / "latin1.json").write_bytes(b'[{"prompt": "q",\n  "answer": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"latin1.json: not UTF-8 text \(byte 0xe9 at line 2\).*save the file as UTF-8"):
        load_examples(str(tmp_path / "latin1.json"))
    binary = bytes(range(128, 256)) * 4
    for name in ("random.jsonl", "random.json"):
        (tmp_path / name).write_bytes(binary)
        with pytest.raises(DataError, match=f"{name}.*not UTF-8 text"):
            load_examples(str(tmp_path / name))
    (tmp_path / "utf16.json").write_text('[{"prompt": "q", "answer": "1"}]', encoding="utf-16")
    with pytest.raises(DataError, match="utf16.json: not UTF-8 text"):
        load_examples(str(tmp_path / "utf16.json"))


def test_corrupt_parquet(tmp_path):
    """Beyond a file without parquet magic: a garbled footer, and data pages that fail to decode."""
    (tmp_path / "footer.parquet").write_bytes(b"PAR1" + bytes(range(200)) + b"\x10\x00\x00\x00PAR1")
    with pytest.raises(DataError, match="footer.parquet: not a readable parquet file") as err:
        load_examples(str(tmp_path / "footer.parquet"))
    assert "\n" not in str(err.value)  # pyarrow's message ends in a newline; the CLI prints one line
    path = _write_parquet(
        tmp_path / "pages.parquet", [{"prompt": f"question {i} " * 20, "answer": str(i)} for i in range(2000)]
    )
    data = bytearray(path.read_bytes())
    for i in range(100, len(data) // 2):  # garble the column chunks, keep the footer intact
        data[i] = (data[i] * 7 + 13) % 256
    path.write_bytes(bytes(data))
    with pytest.raises(
        DataError, match=r"pages.parquet: not a readable parquet file \(rows from 0 on: .*write it again"
    ):
        load_examples(str(path))


def test_require_demo(tmp_path):
    path = _write_jsonl(
        tmp_path / "nodemo.jsonl", [{"prompt": "q", "answer": "1", "target": "d"}, {"prompt": "r", "answer": "2"}]
    )
    with pytest.raises(DataError) as err:
        load_examples(str(path), demo_key="target", require_demo=True)
    assert str(err.value) == (
        f"{path} row 1 has no demonstration field 'target' (the preset needs demonstrations; "
        "set data.demo_key or choose a preset without demos)"
    )
    with pytest.raises(ConfigError, match="data.demo_key"):
        load_examples(str(path), demo_key=None, require_demo=True)
    loaded = load_examples(str(path), demo_key="target", require_demo=True, skip_invalid_rows=True)
    assert [e.row for e in loaded.examples] == [0] and loaded.skipped == 1


def test_skip_invalid_rows_counts_and_warns(tmp_path, caplog):
    rows = [
        {"prompt": "a", "answer": "1"},
        {"answer": "2"},
        {"prompt": "", "answer": "3"},
        {"prompt": "d", "answer": "4"},
        {"prompt": "e", "answer": None},
    ]
    path = _write_parquet(tmp_path / "mixed.parquet", rows)
    with caplog.at_level(logging.WARNING, logger="srft_openrlhf.data.loading"):
        loaded = load_examples(str(path), skip_invalid_rows=True)
    assert [e.row for e in loaded.examples] == [0, 3] and loaded.skipped == 3
    assert "skipped 3 invalid row(s)" in caplog.text and f"{path} row 1" in caplog.text
    with pytest.raises(DataError, match="row 1 has no field 'prompt'"):
        load_examples(str(path))


def test_no_valid_rows_and_bad_limit(tmp_path):
    path = _write_jsonl(tmp_path / "allbad.jsonl", [{"x": 1}, {"y": 2}])
    with pytest.raises(DataError, match="no valid rows \\(2 invalid rows skipped; first: .*row 0 has no field"):
        load_examples(str(path), skip_invalid_rows=True)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: no valid rows$"):
        load_examples(str(tmp_path / "empty.jsonl"))
    with pytest.raises(ConfigError, match="at least 1"):
        load_examples(str(path), limit=0)
