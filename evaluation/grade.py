"""Grading responses with the reward module's graders, and re-grading generations made elsewhere.

Math answers: ``srft_openrlhf.reward`` grades the last ``\\boxed{}`` after ``</think>`` with
math-verify and with the OAT-style grader; a sample is correct when either accepts it (the
reward of Eq. A2) and both verdicts are stored. Multiple choice: the option letter.

``python -m evaluation.grade FILE.jsonl [--out DIR]`` grades a JSON Lines file with the fields
``benchmark`` (a registry name or a LUFFY ``data_source`` such as ``aime``), ``answer`` (gold)
and ``response``; optional ``id``, ``sample``, ``n_tokens``, ``truncated``; a benchmark outside
the registry needs ``kind`` (math | choice). The ``samples.jsonl`` of an evaluation run is such a
file. It writes DIR/samples.jsonl with the verdicts, DIR/summary.json and DIR/results.md (DIR
defaults to FILE's name without suffix + ``_graded``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from srft_openrlhf.data.benchmarks import BENCHMARKS, benchmark_for_source
from srft_openrlhf.errors import DataError, UserError

KINDS = ("math", "choice")


@dataclass(frozen=True)
class Verdict:
    extracted: str | None
    correct: bool
    math_verify: bool | None  # math: math-verify's verdict (None: no answer found, or it did not finish)
    oat: bool | None  # math: the OAT-style grader's verdict
    choice: bool | None  # multiple choice: the letter matches
    grading: str  # "ok", or "timeout" / "error": the sample could not be graded and counts as wrong


def grade_responses(
    kind: str, responses: Sequence[str], answers: Sequence[str], timeout_s: float = 5.0
) -> list[Verdict]:
    """Verdicts for responses of one kind against their gold answers; math is graded in worker
    processes, each sample within ``timeout_s`` (the reward module's default)."""
    from srft_openrlhf.reward import batch_rewards

    details = batch_rewards(list(responses), list(answers), kind=kind, mode="either", timeout_s=timeout_s).details
    if kind == "choice":
        return [Verdict(d["extracted"], d["correct"], None, None, d["correct"], d["status"]) for d in details]
    return [Verdict(d["extracted"], d["correct"], d["math_verify"], d["oat"], None, d["status"]) for d in details]


# ----------------------------------------------------------------------------- re-grading CLI


def _kind(line: dict, where: str) -> str:
    bench = benchmark_for_source(str(line["benchmark"]))
    if bench is not None:
        return bench.kind
    if line.get("kind") in KINDS:
        return line["kind"]
    raise DataError(
        f"{where}: unknown benchmark '{line['benchmark']}' (known: {', '.join(BENCHMARKS)}); "
        'add a field "kind": "math" or "choice" to grade it anyway'
    )


def read_generations(path: Path) -> list[dict]:
    """The lines of FILE.jsonl, each with benchmark / answer / response, normalised to our record fields."""
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    lines: list[dict] = []
    per_problem: dict[tuple[str, str], int] = {}  # (benchmark, id) -> next sample index
    # Only \n ends a record: str.splitlines would also split at U+2028 / U+0085, which
    # json.dumps(ensure_ascii=False) (our samples.jsonl) leaves raw inside a response.
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        where = f"{path} line {lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the "
                "line); expected JSON Lines: UTF-8 text, one JSON object per line"
            ) from None
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{where}: not valid JSON ({e.msg}); expected JSON Lines, one object with "
                "benchmark, answer, response per line"
            ) from None
        missing = [k for k in ("benchmark", "answer", "response") if not isinstance(line, dict) or line.get(k) is None]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)} (needs benchmark, answer, response)")
        bench = benchmark_for_source(str(line["benchmark"]))
        line["kind"] = _kind(line, where)
        line["benchmark"] = bench.name if bench else str(line["benchmark"])
        line["answer"] = str(line["answer"])
        line["id"] = str(line.get("id", lineno))
        key = (line["benchmark"], line["id"])
        line.setdefault("sample", per_problem.get(key, 0))  # unnumbered: the next index of its problem
        if not isinstance(line["sample"], int) or isinstance(line["sample"], bool):
            raise DataError(f"{where}: field 'sample' must be an integer, got {line['sample']!r:.40}")
        per_problem[key] = line["sample"] + 1
        lines.append(line)
    if not lines:
        raise DataError(f"{path}: no generations")
    return lines


def regrade(lines: list[dict]) -> list[dict]:
    """Each line with fresh verdict fields, graded in one batch per kind."""
    for kind in KINDS:
        mine = [line for line in lines if line["kind"] == kind]
        if mine:
            for line, v in zip(mine, grade_responses(kind, [x["response"] for x in mine], [x["answer"] for x in mine])):
                line.update(asdict(v))
    return lines


def main(argv: list[str] | None = None) -> int:
    from evaluation.report import summarize, write_outputs, write_samples

    p = argparse.ArgumentParser(prog="python -m evaluation.grade", description=__doc__.split("\n\n")[0])
    p.add_argument("file", type=Path, help="JSON Lines with benchmark, answer, response per line")
    p.add_argument("--out", type=Path, help="output folder (default: FILE without suffix + _graded)")
    args = p.parse_args(argv)
    try:
        lines = regrade(read_generations(args.file))
        out = args.out or args.file.with_name(args.file.stem + "_graded")
        out.mkdir(parents=True, exist_ok=True)
        write_samples(out / "samples.jsonl", lines)
        summary = summarize(lines, model=str(args.file), settings={"regraded_from": str(args.file)})
        write_outputs(out, summary)
    except UserError as e:
        print(f"evaluation.grade: error: {e}", file=sys.stderr)
        return 2
    print((out / "results.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
