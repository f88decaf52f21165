"""``python -m evaluation.compare DIR... [--names A,B] [--out compare.png]``: several runs side by side.

Prints one Table 2 style table (a row per run folder, read from its ``summary.json``) and
writes a grouped bar chart of the same numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from evaluation.report import TABLE2, table2, table2_values, title
from srft_openrlhf.errors import ConfigError, DataError, UserError


def load_summary(run: Path) -> dict:
    path = run / "summary.json"
    if not path.is_file():
        raise DataError(f"{run}: no summary.json (not an evaluation output folder, or the run has not finished)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg})") from None


def bar_chart(rows: Sequence[tuple[str, dict]], path: Path) -> None:
    """Grouped bars: Table 2's columns on the x axis, one bar per run; absent columns are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [table2_values(s) for _, s in rows]
    columns = [i for i in range(len(TABLE2)) if any(v[i] is not None for v in values)]
    averages = {"avg_in_distribution": "Avg. ID", "avg_out_of_distribution": "Avg. OOD"}
    labels = [averages.get(TABLE2[i], title(TABLE2[i])) for i in columns]
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(columns) + 2), 4))
    for j, (name, _) in enumerate(rows):
        xs = [c + (j - (len(rows) - 1) / 2) * width for c in range(len(columns))]
        ys = [100 * (values[j][i] or 0.0) for i in columns]
        ax.bar(xs, ys, width, label=name)
    ax.set_xticks(range(len(columns)), labels, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="evaluation output folders")
    p.add_argument("--names", help="comma-separated row names (default: the run folder names)")
    p.add_argument("--out", type=Path, default=Path("compare.png"), help="bar chart PNG (default compare.png)")
    args = p.parse_args(argv)
    try:
        summaries = [load_summary(r) for r in args.runs]
        names = args.names.split(",") if args.names else [r.resolve().name for r in args.runs]
        if len(names) != len(summaries):
            raise ConfigError(f"--names has {len(names)} names for {len(summaries)} runs")
        rows = list(zip(names, summaries))
        print(table2(rows))
        bar_chart(rows, args.out)
    except UserError as e:
        print(f"evaluation.compare: error: {e}", file=sys.stderr)
        return 2
    print(f"\nbar chart: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
