"""``metrics.jsonl``: one JSON object per line, written and read the same way by both backends.

Training records ``{"step": k, ...}`` (k = optimizer steps done) and evaluation records
``{"step": k, "eval_...": ...}``. A line cut by a kill mid-write is skipped when read; on
resume, the records after the checkpoint's step are dropped first, so the file reads as if
the run had never been interrupted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from srft_openrlhf.runs import METRICS_FILE


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_records(Path(run_dir) / METRICS_FILE)


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
    return records


def drop_records_after(path: Path, step: int) -> None:
    """Rewrite the metrics file ``path`` without the records of steps after ``step``, which a run
    resumed from ``step`` logs again (and without lines cut by a kill mid-write)."""
    kept = [r for r in read_records(path) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def plain(value: Any) -> Any:
    """JSON-safe: a one-element tensor becomes its number, NaN / inf become null."""
    if hasattr(value, "numel") and value.numel() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append_record(path: Path, record: dict[str, Any]) -> None:
    """One record as one line at the end of ``path`` (created with its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({k: plain(v) for k, v in record.items()}) + "\n")


# The OpenRLHF backend's names of the local backend's series (its step records hold
# ``policy_loss``; the SRFT loss metrics are ``srft/*``, the rollout-only statistics ``rollout/*``).
OPENRLHF_NAMES = {
    "reward_mean": "rollout/reward_mean",
    "response_length": "rollout/response_length_mean",
    "entropy_rollout": "srft/entropy_rollout",
    "entropy": "srft/entropy",
}


def step_record(record: dict) -> dict | None:
    """A training step's record under the local backend's names; None for evaluation and timing
    records."""
    if "loss" in record:
        return record
    if "policy_loss" in record:
        return {"step": record["step"], **{k: record[v] for k, v in OPENRLHF_NAMES.items() if v in record}}
    return None
