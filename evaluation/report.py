"""Per-sample records, ``summary.json`` and ``results.md`` in the layout of the paper's Table 2.

``samples.jsonl`` is append-only, one line per sample, flushed after every generation call, so a
killed run loses at most the call in flight; a torn last line is dropped on the next start.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

from evaluation.metrics import Sample, benchmark_metrics, group_average
from srft_openrlhf.data.benchmarks import BENCHMARKS, IN_DISTRIBUTION, OUT_OF_DISTRIBUTION
from srft_openrlhf.errors import DataError

logger = logging.getLogger(__name__)

SAMPLES = "samples.jsonl"
MISSING = "–"
# Table 2: five math columns and their Avg., then three out-of-distribution columns and theirs.
TABLE2 = (*IN_DISTRIBUTION, "avg_in_distribution", *OUT_OF_DISTRIBUTION, "avg_out_of_distribution")


def read_samples(path: Path) -> list[dict]:
    """The records of a samples file. A torn last line (the run was killed while writing it) is
    dropped with a warning and cut from the file, so that appending continues on a clean line."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    records, offset = [], 0
    for lineno, line in enumerate(raw.splitlines(keepends=True), 1):
        try:
            if line.strip():
                records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            if offset + len(line) < len(raw):  # not the last line: the file was edited, not torn
                raise DataError(f"{path} line {lineno}: not valid JSON; fix or delete the line") from None
            logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(line))
            with path.open("r+b") as f:
                f.truncate(offset)
            return records
        offset += len(line)
    if raw and not raw.endswith(b"\n"):  # complete record torn just before its newline
        with path.open("ab") as f:
            f.write(b"\n")
    return records


def append_samples(f: IO[str], records: Iterable[dict]) -> None:
    for r in records:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
    f.flush()


def write_samples(path: Path, records: Iterable[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        append_samples(f, records)


def _sample(r: dict) -> Sample:
    return Sample(bool(r["correct"]), r.get("n_tokens"), r.get("truncated"), r.get("math_verify"), r.get("oat"))


def summarize(records: Iterable[dict], *, model: str, settings: dict) -> dict:
    """Metrics per benchmark (in registry order, then others) and the two Table 2 averages."""
    problems: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        problems[r["benchmark"]][r["id"]].append(r)
    order = [b for b in BENCHMARKS if b in problems] + sorted(set(problems) - set(BENCHMARKS))
    benchmarks = {}
    for name in order:
        groups = {
            pid: [_sample(r) for r in sorted(rs, key=lambda r: r["sample"])] for pid, rs in problems[name].items()
        }
        math = all(r.get("kind", "math") == "math" for rs in problems[name].values() for r in rs)
        benchmarks[name] = benchmark_metrics(groups, math=math)
    scores = {name: m["score"] for name, m in benchmarks.items()}
    return {
        "model": model,
        "settings": settings,
        "benchmarks": benchmarks,
        "averages": {
            "in_distribution": group_average(scores, IN_DISTRIBUTION),
            "out_of_distribution": group_average(scores, OUT_OF_DISTRIBUTION),
        },
    }


def _pct(x: float | None) -> str:
    return MISSING if x is None else f"{100 * x:.1f}"


def title(name: str) -> str:
    return BENCHMARKS[name].title if name in BENCHMARKS else name


def table2_values(summary: dict) -> list[float | None]:
    """The row of Table 2 as fractions (None where the run has no such benchmark)."""
    averages = {f"avg_{k}": v for k, v in summary["averages"].items()}
    return [averages[c] if c in averages else summary["benchmarks"].get(c, {}).get("score") for c in TABLE2]


def table2(rows: Sequence[tuple[str, dict]]) -> str:
    """Markdown table with the paper's Table 2 columns, one row per (name, summary)."""
    header = ["Model", *(("Avg." if c.startswith("avg_") else title(c)) for c in TABLE2)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, summary in rows:
        lines.append("| " + " | ".join([name, *map(_pct, table2_values(summary))]) + " |")
    return "\n".join(lines)


def details_table(summary: dict) -> str:
    header = [
        "Benchmark",
        "Problems",
        "Samples/problem",
        "Metric",
        "Score",
        "pass@k",
        "math-verify",
        "OAT",
        "Mean tokens",
        "Truncated %",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in summary["benchmarks"].items():
        pass_k = ", ".join(f"@{k} {_pct(v)}" for k, v in m["pass_at_k"].items())
        tokens = MISSING if m["mean_tokens"] is None else f"{m['mean_tokens']:.0f}"
        cells = [
            title(name),
            str(m["problems"]),
            str(m["samples_per_problem"]),
            m["metric"],
            _pct(m["score"]),
            pass_k,
            _pct(m["math_verify"]),
            _pct(m["oat"]),
            tokens,
            _pct(m["truncation_rate"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_name(summary: dict) -> str:
    return Path(summary["model"].rstrip("/")).name or summary["model"]


def results_markdown(summary: dict) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in summary["settings"].items() if not isinstance(v, (dict, list)))
    return "\n".join(
        [
            f"# Evaluation of {summary['model']}",
            "",
            "Accuracy in %: avg@k over k samples per problem where k > 1 (the paper: avg@32 on AIME24 and AMC), "
            "else pass@1; Avg. is shown only when all of its benchmarks were run.",
            "",
            table2([(model_name(summary), summary)]),
            "",
            "## Per benchmark",
            "",
            "math-verify / OAT: the accuracy either grader alone gives "
            "(a sample counts as correct when either accepts it).",
            "",
            details_table(summary),
            "",
            f"Settings: {settings}",
            "",
        ]
    )


def write_outputs(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "results.md").write_text(results_markdown(summary), encoding="utf-8")
