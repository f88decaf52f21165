"""Training curves of runs (the result tables: ``runs.results``).

``srft plot RUN_DIR [RUN_DIR ...] [--out PNG] [--smooth K]``
    Three panels in the style of the paper's Fig. 6: training reward (mean reward of the
    self-rollouts), response length (mean tokens of the self-rollouts) and entropy (of the
    policy on the rollout tokens; on the demonstration tokens at steps without rollouts,
    e.g. SFT). Several runs are overlaid, with a legend. Run folders of either backend: the
    OpenRLHF backend's ``metrics.jsonl`` names the same series ``rollout/*`` and ``srft/*``.

``srft plot --aggregate ROOT [--out PNG]``
    ROOT holds ``METHOD/seed-N/`` run folders (as ``scripts/reproduce_toy.sh`` writes
    them): one curve per method (mean over seeds, ±1 std band). The held-out accuracy table
    of the same folders: ``python -m srft_openrlhf.runs.results report ROOT``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

from srft_openrlhf.errors import ConfigError
from srft_openrlhf.runs import method_runs
from srft_openrlhf.runs.records import read_metrics, step_record

PANELS = (
    ("reward_mean", "Training reward"),
    ("response_length", "Response length (tokens)"),
    ("entropy", "Entropy"),
)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a training metric; for "entropy", at each step the entropy on the
    rollout tokens when the step had rollouts, else on its demonstration tokens (SFT steps)."""
    points = []
    for r in filter(None, map(step_record, records)):
        name = ("entropy_rollout" if "reward_mean" in r else "entropy") if key == "entropy" else key
        if r.get(name) is not None:
            points.append((r["step"], r[name]))
    return [s for s, _ in points], [v for _, v in points]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over ``window`` points (fewer at the start)."""
    if window <= 1:
        return list(values)
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.8))
    for ax, (_, title) in zip(axes, PANELS):
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    return fig, axes


def _save(fig, axes, out: Path) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, lbl in zip(*ax.get_legend_handles_labels()):
            if lbl not in labels:
                handles.append(h)
                labels.append(lbl)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Folder names, or parent/name where names repeat (seed-1 of several methods)."""
    names = [p.resolve().name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{p.resolve().parent.name}/{p.resolve().name}" for p in run_dirs]


def plot_runs(run_dirs: Sequence[Path], out: Path, smooth: int = 1) -> None:
    fig, axes = _figure()
    for i, (run_dir, label) in enumerate(zip(run_dirs, run_labels(run_dirs))):
        records = read_metrics(run_dir)
        if not records:
            raise ConfigError(f"{run_dir}: no metrics.jsonl (is it a run folder?)")
        curves = {key: series(records, key) for key, _ in PANELS}
        if not any(steps for steps, _ in curves.values()):
            raise ConfigError(
                f"{run_dir}/metrics.jsonl has no training step records yet (lines with 'loss' or "
                "'policy_loss'): nothing to plot"
            )
        for ax, (steps, values) in zip(axes, curves.values()):
            if steps:  # one colour per run in every panel, though some runs lack some curves
                ax.plot(steps, moving_average(values, smooth), label=label, color=f"C{i % 10}")
    _save(fig, axes, out)


# ----------------------------------------------------------------------------- several seeds


def plot_methods(runs: dict[str, list[Path]], out: Path, smooth: int = 1) -> None:
    """Mean over seeds per method (steps every seed logged), with a ±1 std band."""
    fig, axes = _figure()
    for i, (method, dirs) in enumerate(runs.items()):
        records = [read_metrics(d) for d in dirs]
        for ax, (key, _) in zip(axes, PANELS):
            per_seed = [dict(zip(*series(r, key))) for r in records]
            steps = sorted(set.intersection(*(set(s) for s in per_seed)))
            if not steps:
                continue
            stats = [mean_std([s[k] for s in per_seed]) for k in steps]
            mean = moving_average([m for m, _ in stats], smooth)
            std = moving_average([d for _, d in stats], smooth)
            color = f"C{i % 10}"
            ax.plot(steps, mean, label=method, color=color)
            ax.fill_between(
                steps, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)], color=color, alpha=0.15
            )
    _save(fig, axes, out)


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="srft plot", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="run folders (each with metrics.jsonl)")
    p.add_argument(
        "--out",
        type=Path,
        help="PNG to write (default: RUN_DIR/curves.png for one run, "
        "ROOT/curves.png with --aggregate, else ./curves.png)",
    )
    p.add_argument("--smooth", type=int, default=1, help="moving-average window in steps (default 1: none)")
    p.add_argument("--aggregate", type=Path, metavar="ROOT", help="mean ± std over ROOT/METHOD/seed-N runs")
    args = p.parse_args(argv)
    if args.aggregate:
        runs = method_runs(args.aggregate)
        out = args.out or args.aggregate / "curves.png"
        plot_methods(runs, out, args.smooth)
        print(f"wrote {out}")
        return 0
    if not args.runs:
        p.error("give at least one RUN_DIR, or --aggregate ROOT")
    out = args.out or (args.runs[0] / "curves.png" if len(args.runs) == 1 else Path("curves.png"))
    plot_runs(args.runs, out, args.smooth)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
