"""Training / evaluation examples from a hub dataset or a local .json / .jsonl / .parquet file.

Each row gives a prompt (a string, or a list of chat messages as in LUFFY's parquet files),
an answer (the ground truth the reward grades against) and optionally a demonstration
(a string, or OpenR1's ``target`` list of messages whose assistant turn is the demo).
Keys may be dotted paths into nested columns (``reward_model.ground_truth``); list
positions are numbers (``target.0.content``).

A malformed row is an error naming file, row and field. ``skip_invalid_rows=True`` drops
such rows instead, counts them in ``LoadedExamples.skipped`` and logs a warning, so that
dropping data is never silent.

``read_rows`` is the local file reader underneath, shared with the evaluation harness: it
yields the rows as stored, for callers that need fields ``load_examples`` drops.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from srft_openrlhf.data.example import Example, LoadedExamples
from srft_openrlhf.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")

_MISSING = object()


# ----------------------------------------------------------------------------- readers
# Each reader yields (row index, row). A row the reader cannot decode arrives as the
# DataError describing it, so the caller's skip policy treats it like any other bad row
# (``read_rows`` raises it instead unless asked to yield it).


def _not_utf8(e: UnicodeDecodeError, where: str) -> str:
    return (
        f"not UTF-8 text (byte 0x{e.object[e.start]:02x} {where}); .json and .jsonl data must be "
        "UTF-8 text: save the file as UTF-8"
    )


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    index = 0
    # Bytes, decoded line by line: a bad byte is an error naming its line. Iterating a binary
    # file ends lines at b"\n" only; str.splitlines would also split at U+2028 / U+0085,
    # which JSON allows unescaped inside strings.
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problem = _not_utf8(e, f"at byte {e.start + 1} of the line")
                yield index, DataError(f"{path} row {index} (line {lineno}): {problem}")
                index += 1
                continue
            if not line.strip():
                continue
            try:
                yield index, json.loads(line)
            except json.JSONDecodeError as e:
                yield index, DataError(f"{path} row {index} (line {lineno}): not valid JSON ({e.msg})")
            index += 1


def _json_rows(path: Path, split: str | None) -> Iterator[tuple[int, Any]]:
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: {_not_utf8(e, f'at line {line}')}") from None
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines saved as .json, common on the hub
            yield from _jsonl_rows(path)
            return
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    keys = (split, "data") if split else ("data",)
    if isinstance(data, dict):
        data = next((data[k] for k in keys if k in data), None)
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a JSON array of rows, or an object holding one "
            f"under {' or '.join(repr(k) for k in keys)}"
        )
    yield from enumerate(data)


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow
    import pyarrow.parquet as pq

    # pyarrow reports a garbled footer or data page as OSError, a missing magic as ArrowInvalid.
    unreadable = (pyarrow.ArrowException, OSError)

    def reason(e: Exception) -> str:  # pyarrow's messages may span lines; the error is one
        return " ".join(str(e).split())

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
    except unreadable as e:
        raise DataError(f"{path}: not a readable parquet file ({reason(e)})") from None
    index = 0
    while True:  # batch by batch: a 46k-row demo set never sits in memory twice
        try:
            batch = next(batches, None)
        except unreadable as e:
            raise DataError(
                f"{path}: not a readable parquet file (rows from {index} on: {reason(e)}); "
                "the file is corrupt, write it again"
            ) from None
        if batch is None:
            break
        for row in batch.to_pylist():
            yield index, row
            index += 1


def _hub_rows(name: str, split: str) -> Iterator[tuple[int, Any]]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"'{name}' is not a local file, and loading hub datasets needs the "
            "'datasets' package; install it or point to a .json/.jsonl/.parquet file"
        ) from None
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, bad split, ...: all user-fixable
        raise DataError(
            f"cannot load dataset '{name}' (split '{split}'): {type(e).__name__}: {e}; "
            "for offline use point to a local .json/.jsonl/.parquet file"
        ) from e
    yield from enumerate(dataset)


def _raise_bad_rows(rows: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    for index, row in rows:
        if isinstance(row, DataError):
            raise row
        yield index, row


def read_rows(
    path: str | Path, split: str | None = None, *, bad_rows: Literal["raise", "yield"] = "raise"
) -> Iterator[tuple[int, Any]]:
    """``(row index, row)`` for each row of a local .json / .jsonl / .parquet file, as stored.

    The one file reader of training data (``load_examples``) and of the evaluation harness's
    ``--data`` files. Rows are the file's values (dicts for well-formed data; nothing checks
    their fields). A .json file holds an array of rows, JSON Lines, or an object holding the
    array under ``split`` (if given) or ``data``. A JSON Lines row ends at a newline only (not
    at U+2028 / U+0085 inside a string); blank lines are no rows. Parquet is read batch by batch.

    Raises ``DataError`` for a missing file or an unknown extension (at once), and for a file
    that cannot be read as a whole (a .json file that is not UTF-8 or not JSON, a corrupt
    parquet file) when iterated. A JSON Lines row that cannot be decoded (not UTF-8, not JSON)
    is a ``DataError`` naming file, row and line: raised, or with ``bad_rows="yield"``
    yielded in place of the row, for a caller that skips bad rows.
    """
    if bad_rows not in ("raise", "yield"):
        raise ValueError(f"bad_rows must be 'raise' or 'yield', got {bad_rows!r}")
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if suffix not in LOCAL_SUFFIXES:
        raise DataError(
            f"{path}: unknown data file extension '{path.suffix}' (expected one of {', '.join(LOCAL_SUFFIXES)})"
        )
    if suffix == ".jsonl":
        rows = _jsonl_rows(path)
    else:
        rows = _json_rows(path, split) if suffix == ".json" else _parquet_rows(path)
    return rows if bad_rows == "yield" else _raise_bad_rows(rows)


def _rows(source: str, split: str) -> Iterator[tuple[int, Any]]:
    """Dispatch on the source: a local file by its extension, a local folder or hub name via ``datasets``."""
    path = Path(source).expanduser()
    if path.suffix.lower() in LOCAL_SUFFIXES or path.is_file():
        return read_rows(path, split, bad_rows="yield")
    if not path.exists() and source.startswith(("/", "./", "../", "~")):
        raise DataError(f"data path not found: {path}")
    return _hub_rows(source, split)  # also a local folder of data files, as `datasets` reads it


# ----------------------------------------------------------------------------- fields


def _get(row: dict, key: str) -> Any:
    """``row[key]``, else the dotted path ``a.b.0.c`` through nested dicts and lists; None counts as missing."""
    if key in row:
        return _MISSING if row[key] is None else row[key]
    value: Any = row
    for part in key.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return _MISSING if value is None else value


def _missing(where: str, key: str, row: dict) -> DataError:
    return DataError(f"{where} has no field '{key}' (row keys: {', '.join(map(str, row))})")


def _prompt(value: Any, where: str, key: str) -> str | list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field '{key}' is empty")
        return value
    if not isinstance(value, (list, tuple)):
        raise DataError(
            f"{where}: field '{key}' must be a string or a list of chat messages, got {type(value).__name__}"
        )
    messages = []
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(
                f"{where}: field '{key}' message {i} is not a {{'role': str, 'content': str}} mapping: {m!r:.120}"
            )
        messages.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise DataError(f"{where}: field '{key}' has no non-empty user message")
    return messages


def _answer(value: Any, where: str, key: str) -> str:
    # Integer / float ground truths (e.g. AIME answers stored as numbers) become their text.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field '{key}' is empty")
    return value


def _demonstration(value: Any, where: str, key: str) -> str | None:
    """A string, or OpenR1's ``target`` list of messages (its first assistant turn, else its first entry)."""
    if isinstance(value, (list, tuple)) and value:
        turns = [m for m in value if isinstance(m, dict) and m.get("role") == "assistant"]
        value = turns[0] if turns else value[0]
    if isinstance(value, dict):
        value = value.get("content")
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return None
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field '{key}' must be a string or a list of messages with a "
            f"string 'content', got {type(value).__name__}"
        )
    return value if value.strip() else None


def _example(
    row: Any, index: int, source: str, prompt_key: str, answer_key: str, demo_key: str | None, require_demo: bool
) -> Example:
    where = f"{source} row {index}"
    if isinstance(row, DataError):
        raise row
    if not isinstance(row, dict):
        raise DataError(f"{where} is a {type(row).__name__}, not an object with fields")
    prompt = _get(row, prompt_key)
    if prompt is _MISSING:
        raise _missing(where, prompt_key, row)
    answer = _get(row, answer_key)
    if answer is _MISSING:
        raise _missing(where, answer_key, row)
    demo = None
    if demo_key is not None:
        raw = _get(row, demo_key)
        demo = None if raw is _MISSING else _demonstration(raw, where, demo_key)
    if require_demo and demo is None:
        raise DataError(
            f"{where} has no demonstration field '{demo_key}' (the preset needs "
            "demonstrations; set data.demo_key or choose a preset without demos)"
        )
    return Example(
        prompt=_prompt(prompt, where, prompt_key),
        answer=_answer(answer, where, answer_key),
        demonstration=demo,
        source=source,
        row=index,
    )


def load_examples(
    source: str,
    *,
    split: str = "train",
    prompt_key: str = "prompt",
    answer_key: str = "answer",
    demo_key: str | None = "demonstration",
    require_demo: bool = False,
    skip_invalid_rows: bool = False,
    limit: int | None = None,
) -> LoadedExamples:
    """Load up to ``limit`` valid examples from ``source`` (see the module docstring).

    ``split`` selects the hub split, or the key of a JSON object holding the rows; local
    .jsonl / .parquet files are one split each. A missing demonstration is ``None`` unless
    ``require_demo`` (then it is a malformed row). Raises ``DataError`` for a missing file,
    an unknown extension, a malformed row (unless skipped) or a source without valid rows.
    """
    if require_demo and demo_key is None:
        raise ConfigError("the preset needs demonstrations but data.demo_key is null; set data.demo_key")
    if limit is not None and limit < 1:
        raise ConfigError(f"the row limit must be at least 1, got {limit}")
    examples: list[Example] = []
    skipped, first_problem = 0, ""
    for index, row in _rows(source, split):
        if limit is not None and len(examples) >= limit:
            break
        try:
            examples.append(_example(row, index, source, prompt_key, answer_key, demo_key, require_demo))
        except DataError as e:
            if not skip_invalid_rows:
                raise
            skipped += 1
            first_problem = first_problem or str(e)
    if skipped:
        logger.warning("%s: skipped %d invalid row(s) (skip_invalid_rows); first: %s", source, skipped, first_problem)
    if not examples:
        detail = f" ({skipped} invalid rows skipped; first: {first_problem})" if skipped else ""
        raise DataError(f"{source}: no valid rows{detail}")
    return LoadedExamples(examples=examples, skipped=skipped)
