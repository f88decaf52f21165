"""One training / evaluation example, as every data source yields it (a leaf: the loaders and
the toy task both build these)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# a model.path / --model naming a Hugging Face Hub model: ORG/NAME
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
TOY = "toy"  # model.path / data.train / data.eval / an analysis source: the toy task (data/toy.py)
# data.eval only: the toy task's validation split (training distribution, disjoint from held-out),
# on which scripts/reproduce_toy.sh picks each method's lr
TOY_VALIDATION = "toy:validation"


@dataclass
class Example:
    prompt: str | list[dict]  # a question, or chat messages [{"role", "content"}, ...]
    answer: str
    demonstration: str | None
    source: str  # the file or hub name it came from
    row: int  # 0-based row index in that source


@dataclass
class LoadedExamples:
    examples: list[Example]
    skipped: int  # invalid rows dropped because skip_invalid_rows=True
