"""Benchmark registry and loaders: the paper's eight evaluation sets (Table 2) and AIME25.

Every benchmark loads from its hub dataset (lazily, through ``datasets``) or from a local
.json / .jsonl / .parquet file given with ``--data NAME=PATH``. Field names are detected
(``prompt`` / ``problem`` / ``question``, ``answer`` / ``reward_model.ground_truth`` / ...),
or given with ``--fields NAME=QUESTION_KEY,ANSWER_KEY`` (dotted keys reach nested columns).
Layouts known to work:

- hub datasets of the registry below;
- ``{prompt, answer}`` JSON arrays (Unify-Post-Training ``data/<NAME>/test.json``);
- LUFFY parquet files (``prompt`` = chat messages, ``reward_model.ground_truth``,
  ``data_source``). Only the user question is kept: the evaluation template supplies the
  system turn. A file holding several benchmarks (``valid.all.parquet``) is filtered by
  ``data_source``. That file repeats every AIME / AMC row 32 times, which is how LUFFY
  computed avg@32; repeated rows (same id, question, answer) are dropped here and
  ``--samples NAME=K`` sets k instead.

Multiple-choice sets: structured options (hub ARC-C, GPQA, MMLU-Pro, or a file with an
``options`` / ``choices`` column) are shuffled with a seed derived from the run seed and the
problem id, the gold letter follows its option, and the question lists the options as
``A) ...`` and asks for the letter in ``\\boxed{}``. Files whose options are already written
into the question (Unify-Post-Training GPQA, LUFFY gpqa / arc_c) are used as given: their
options cannot be reshuffled; options numbered ``1)``..``4)`` are relabelled ``A)``..``D)``
so that one letter grader serves every row, and the ``\\boxed{}`` request is appended unless
the text already says how to answer.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srft_openrlhf.data.loading import read_rows
from srft_openrlhf.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# Table 2 of the paper: five in-distribution math sets, three out-of-distribution sets.
IN_DISTRIBUTION = ("aime24", "amc", "math500", "minerva", "olympiad")
OUT_OF_DISTRIBUTION = ("arc_c", "gpqa_diamond", "mmlu_pro")

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class HubSource:
    path: str
    config: str | None
    split: str
    note: str = ""


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str  # column header of Table 2
    kind: str  # "math": graded by math equivalence | "choice": graded by the option letter
    hub: HubSource
    samples: int  # default samples per problem (the paper: avg@32 on AIME24 / AMC, else 1)
    aliases: tuple[str, ...]  # ``data_source`` values that mean this benchmark


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "aime24",
            "AIME24",
            "math",
            HubSource("HuggingFaceH4/aime_2024", None, "train"),
            32,
            ("aime24", "aime", "aime_2024", "aime2024"),
        ),
        # 83 problems of AMC 2022 + 2023, the set LUFFY / SRFT report as "AMC" (math-ai/amc23 and
        # the Unify-Post-Training AMC23.json hold the 40 problems of 2023 only).
        Benchmark(
            "amc",
            "AMC",
            "math",
            HubSource("AI-MO/aimo-validation-amc", None, "train"),
            32,
            ("amc", "amc23", "amc22", "amc2023"),
        ),
        Benchmark(
            "math500",
            "MATH500",
            "math",
            HubSource("HuggingFaceH4/MATH-500", None, "test"),
            1,
            ("math500", "math", "math-500", "math_500"),
        ),
        Benchmark(
            "minerva",
            "Minerva",
            "math",
            HubSource("math-ai/minervamath", None, "test"),
            1,
            ("minerva", "minervamath", "minerva_math"),
        ),
        Benchmark(
            "olympiad",
            "Olympiad",
            "math",
            HubSource("math-ai/olympiadbench", None, "test"),
            1,
            ("olympiad", "olympiad_bench", "olympiadbench"),
        ),
        Benchmark(
            "arc_c",
            "ARC-C",
            "choice",
            HubSource("allenai/ai2_arc", "ARC-Challenge", "test"),
            1,
            ("arc_c", "arc", "arc_challenge", "ai2_arc"),
        ),
        Benchmark(
            "gpqa_diamond",
            "GPQA-D",
            "choice",
            HubSource(
                "Idavidrein/gpqa",
                "gpqa_diamond",
                "train",
                note="gated: accept its terms on the hub and log in (huggingface-cli login)",
            ),
            1,
            ("gpqa_diamond", "gpqa", "gpqa-diamond"),
        ),
        Benchmark(
            "mmlu_pro",
            "MMLU-Pro",
            "choice",
            HubSource("TIGER-Lab/MMLU-Pro", None, "test"),
            1,
            ("mmlu_pro", "mmlu-pro", "mmlupro"),
        ),
        Benchmark(
            "aime25",
            "AIME25",
            "math",
            HubSource("math-ai/aime25", None, "test"),
            32,
            ("aime25", "aime_2025", "aime2025"),
        ),
    )
}
PAPER_BENCHMARKS = IN_DISTRIBUTION + OUT_OF_DISTRIBUTION

# Auto-detected fields, first match wins.
QUESTION_KEYS = ("prompt", "problem", "question", "Question", "input")
ANSWER_KEYS = ("answer", "reward_model.ground_truth", "final_answer", "ground_truth", "answerKey", "gold", "target")
ID_KEYS = ("id", "unique_id", "question_id", "Record ID", "extra_info.index", "idx")
SOURCE_KEYS = ("data_source", "source")
GPQA_KEYS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


@dataclass(frozen=True)
class Problem:
    benchmark: str
    id: str
    question: str  # what the template wraps; multiple choice: options and the \boxed{} request included
    answer: str  # gold: a LaTeX answer, or a letter for multiple choice


@dataclass(frozen=True)
class Fields:
    question: str
    answer: str


def get_benchmark(name: str) -> Benchmark:
    """The registry entry, or a ConfigError listing the known names."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark '{name}' (known: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]


def benchmark_for_source(source: str) -> Benchmark | None:
    """The benchmark a ``data_source`` / benchmark name refers to (LUFFY's ``aime``, ``math``, ...)."""
    key = source.strip().lower()
    return next((b for b in BENCHMARKS.values() if key == b.name or key in b.aliases), None)


# ----------------------------------------------------------------------------- rows


def _get(row: Mapping[str, Any], key: str) -> Any:
    """``row[key]``, else the dotted path ``a.b`` through nested mappings; None when absent."""
    if key in row:
        return row[key]
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def file_rows(path: Path) -> list[dict]:
    """All rows of a local .json / .jsonl / .parquet file, through the training data reader
    (``srft_openrlhf.data.loading.read_rows``): the same one-line DataErrors for a missing,
    non-UTF-8 or malformed file. A .json object holds its rows under ``test`` or ``data``."""
    rows = []
    for index, row in read_rows(path, split="test"):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {index} is a {type(row).__name__}, not an object with fields")
        rows.append(row)
    return rows


def hub_rows(bench: Benchmark) -> list[dict]:
    """The benchmark's hub dataset as rows (needs network or the ``datasets`` cache)."""
    src = bench.hub
    try:
        import datasets

        return datasets.load_dataset(src.path, src.config, split=src.split).to_list()
    except Exception as e:  # offline, gated, renamed: all fixable by pointing to a local file
        note = f" ({src.note})" if src.note else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(
            f"cannot load {bench.name} from the hub ({src.path}{note}): {type(e).__name__}: "
            f"{first}; or give a local file with --data {bench.name}=PATH"
        ) from None


def select_source(rows: list[dict], bench: Benchmark, origin: str) -> list[dict]:
    """Keep the rows of ``bench`` when the file mixes benchmarks (a ``data_source`` column)."""
    key = next((k for k in SOURCE_KEYS if rows and all(isinstance(r.get(k), str) for r in rows)), None)
    if key is None:
        return rows
    values = sorted({r[key] for r in rows})
    mine = [r for r in rows if benchmark_for_source(r[key]) is bench]
    if mine:
        return mine
    if len(values) == 1:  # a single-benchmark file under its own name: the user chose it for this one
        return rows
    raise DataError(
        f"{origin}: none of its {key} values ({', '.join(values)}) is {bench.name} "
        f"(accepted: {', '.join(bench.aliases)})"
    )


def detect_fields(rows: list[dict], bench: Benchmark, origin: str, fields: Fields | None) -> Fields:
    """The question / answer keys: given, or the first known name present in the first row."""
    first = rows[0]
    if fields is not None:
        missing = [k for k in (fields.question, fields.answer) if _get(first, k) is None]
        if missing:
            raise DataError(f"{origin}: missing field(s) {', '.join(missing)} (columns: {', '.join(map(str, first))})")
        return fields
    question = next((k for k in QUESTION_KEYS if _get(first, k) is not None), None)
    answer = next((k for k in ANSWER_KEYS if _get(first, k) is not None), None)
    if answer is None and bench.kind == "choice" and all(k in first for k in GPQA_KEYS):
        answer = GPQA_KEYS[0]
    missing = [
        f"{what} (one of {', '.join(keys)})"
        for what, key, keys in (("question", question, QUESTION_KEYS), ("answer", answer, ANSWER_KEYS))
        if key is None
    ]
    if question is None or answer is None:
        raise DataError(
            f"{origin}: no {' and no '.join(missing)} field; columns: "
            f"{', '.join(map(str, first))}; name them with --fields {bench.name}=QUESTION_KEY,ANSWER_KEY"
        )
    return Fields(question, answer)


def _question_text(value: Any, where: str) -> str:
    """A question string, or the last user turn of LUFFY's chat messages."""
    if isinstance(value, (list, tuple)):
        users = [m.get("content") for m in value if isinstance(m, Mapping) and m.get("role") == "user"]
        value = users[-1] if users else None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: the question is empty or not text: {value!r:.80}")
    return value


def _scalar_text(value: Any) -> str:
    """Numbers as written in the answer key: 27.0 from a float column is 27."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):  # several final answers (OlympiadBench): all of them
        return ", ".join(_scalar_text(v) for v in value)
    return str(value).strip()


# ----------------------------------------------------------------------------- math answers


def _strip_box(text: str) -> str:
    """``\\boxed{X}`` -> ``X`` when the whole text is one box (Unify-Post-Training writes AIME golds so)."""
    m = re.fullmatch(r"\\(?:boxed|fbox)\s*\{(.*)\}", text, flags=re.S)
    if not m:
        return text
    depth = 0
    for ch in m.group(1):  # the outer braces must pair up, or "\boxed{a} + \boxed{b}" would lose its ends
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return text
    return m.group(1).strip() if depth == 0 else text


def clean_math_answer(value: Any) -> str:
    """The gold answer a grader compares with: no outer ``\\boxed{}``, no ``$`` math delimiters."""
    text = _strip_box(_scalar_text(value))
    # "$69$,$84$" (OlympiadBench) -> "69,84"; an escaped "\$" is a currency sign and stays.
    return re.sub(r"(?<!\\)\$", "", text).strip()


# ----------------------------------------------------------------------------- multiple choice


def choice_instruction(n_options: int) -> str:
    letters = LETTERS[:n_options]
    return f"Answer with the letter of the correct option ({', '.join(letters[:-1])} or {letters[-1]}) in \\boxed{{}}."


def shuffle_options(options: Sequence[str], gold: int, seed: str) -> tuple[list[str], int]:
    """Options in a random order determined by ``seed``, and the gold option's new position."""
    order = list(range(len(options)))
    random.Random(seed).shuffle(order)  # str seeds are hashed with SHA-512: same order on every run
    return [options[i] for i in order], order.index(gold)


def structured_options(row: Mapping[str, Any], gold: Any, where: str) -> tuple[list[str], int] | None:
    """(options, gold index) from an ``options`` / ``choices`` column or GPQA's answer columns."""
    if all(k in row for k in GPQA_KEYS):
        return [str(row[k]).strip() for k in GPQA_KEYS], 0
    raw = row.get("options", row.get("choices"))
    if raw is None:
        return None
    labels: list[str] = []
    if isinstance(raw, Mapping):  # ARC: {"text": [...], "label": ["A", ...] or ["1", ...]}
        labels, raw = [str(x) for x in raw.get("label", [])], raw.get("text")
    if not isinstance(raw, (list, tuple)) or not 2 <= len(raw) <= len(LETTERS):
        raise DataError(f"{where}: options must be a list of 2 to {len(LETTERS)} strings, got {raw!r:.80}")
    options = [_scalar_text(o) for o in raw]
    text = _scalar_text(gold)
    if isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < len(options):
        return options, gold
    for candidates in (labels, list(LETTERS[: len(options)]), options):
        if text in candidates:
            return options, candidates.index(text)
    raise DataError(f"{where}: gold answer {text!r:.40} is neither an option label, letter, index nor option text")


def structured_question(question: str, options: Sequence[str]) -> str:
    lines = "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(options))
    return f"{question.rstrip()}\n\n{lines}\n\n{choice_instruction(len(options))}"


def embedded_question(question: str, gold: str, where: str) -> tuple[str, str]:
    """A question with its options in the text, used as given; returns (question, gold letter)."""
    gold = gold.strip().strip("()").upper()
    if gold.isdigit():  # ARC rows numbered 1)..4): relabel to letters so the letter grader applies
        if not re.search(rf"^\s*{gold}[).]", question, flags=re.M):
            raise DataError(f"{where}: gold '{gold}' is a number but no option is labelled '{gold})'")
        question = re.sub(
            r"^(\s*)([1-9])([).])",
            lambda m: m.group(1) + LETTERS[int(m.group(2)) - 1] + m.group(3),
            question,
            flags=re.M,
        )
        gold = LETTERS[int(gold) - 1]
    if len(gold) != 1 or gold not in LETTERS:
        raise DataError(f"{where}: gold answer '{gold}' is not an option letter A-J")
    if "\\boxed" not in question and "ANSWER:" not in question.upper():
        n = len(set(re.findall(r"^\s*([A-J])[).]", question, flags=re.M))) or 4
        question = f"{question.rstrip()}\n\n{choice_instruction(n)}"
    return question, gold


# ----------------------------------------------------------------------------- problems


def build_problem(row: Mapping[str, Any], bench: Benchmark, fields: Fields, pid: str, seed: int, where: str) -> Problem:
    question = _question_text(_get(row, fields.question), where)
    gold = _get(row, fields.answer)
    if gold is None or _scalar_text(gold) == "":
        raise DataError(f"{where}: field '{fields.answer}' is empty")
    if bench.kind == "math":
        return Problem(bench.name, pid, question, clean_math_answer(gold))
    found = structured_options(row, gold, where)
    if found is None:
        question, letter = embedded_question(question, _scalar_text(gold), where)
        return Problem(bench.name, pid, question, letter)
    options, index = shuffle_options(*found, seed=f"{seed}/{bench.name}/{pid}")
    return Problem(bench.name, pid, structured_question(question, options), LETTERS[index])


def _explicit_id(row: Mapping[str, Any]) -> str | None:
    value = next((v for v in (_get(row, k) for k in ID_KEYS) if v is not None and not isinstance(v, Mapping)), None)
    return _scalar_text(value) if value is not None else None


def load_benchmark(
    bench: Benchmark,
    path: str | Path | None = None,
    *,
    fields: Fields | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> list[Problem]:
    """The benchmark's problems from ``path`` (or the hub), repeated rows dropped, first ``limit`` kept.

    ``seed`` fixes the option order of structured multiple-choice rows.
    """
    origin = str(path) if path is not None else f"hub:{bench.hub.path}"
    rows = file_rows(Path(path).expanduser()) if path is not None else hub_rows(bench)
    if not rows:
        raise DataError(f"{origin}: no rows")
    rows = select_source(rows, bench, origin)
    fields = detect_fields(rows, bench, origin, fields)
    seen: set[str] = set()
    kept: list[tuple[str, dict]] = []
    for i, row in enumerate(rows):
        # The same problem again: same id (if the file has ids), question, answer and options.
        # Not the whole row: LUFFY's repeats differ in a leftover pandas index column.
        key = json.dumps(
            [
                _explicit_id(row),
                *(_get(row, k) for k in (fields.question, fields.answer)),
                row.get("options"),
                row.get("choices"),
            ],
            default=str,
        )
        if key not in seen:
            seen.add(key)
            kept.append((_explicit_id(row) or str(i), row))
    if len(kept) < len(rows):
        logger.warning(
            "%s: %d repeated %s rows dropped (use --samples %s=K for k samples per problem)",
            origin,
            len(rows) - len(kept),
            bench.name,
            bench.name,
        )
    if len({pid for pid, _ in kept}) < len(kept):  # ids not unique: number the problems instead
        kept = [(str(i), row) for i, (_, row) in enumerate(kept)]
    kept = kept[:limit] if limit is not None else kept
    return [build_problem(row, bench, fields, pid, seed, f"{origin} row {pid}") for pid, row in kept]
