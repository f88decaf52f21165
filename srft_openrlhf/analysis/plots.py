"""Figures of the analyses (matplotlib, Agg backend) and the HTML token heatmap.

- ``plot_shift_distribution``: Fig. 2(b) — the distribution of Δp per model, and the shares
  of tokens with |Δp| above 0.1 / 0.3 / 0.5;
- ``heatmap_html`` / ``heatmap_png``: Fig. 2(a) / A1 — responses with every token's
  background shaded by Δp (blue: the model made the token more likely, red: less likely;
  full colour at |Δp| ≥ ``HEATMAP_VMAX``);
- ``plot_trajectory``: Fig. 3 — each pair of reference distances as a 2-D projection, one
  path per run with arrows along the steps, points coloured by held-out accuracy.
"""

from __future__ import annotations

import html
import itertools
from pathlib import Path

import numpy as np

HEATMAP_VMAX = 0.5
HEATMAP_CMAP = "RdBu"
WRAP = 80  # characters per heatmap line
FONT_SIZE = 9
CHAR_WIDTH = 0.602  # advance of DejaVu Sans Mono, in em


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------- Fig. 2(b)


def plot_shift_distribution(report: dict, path: Path) -> None:
    """Left: share of tokens per Δp bin, one curve per model (log scale, so the tails show).
    Right: share of tokens with |Δp| above each threshold, one bar group per model."""
    plt = _pyplot()
    edges = np.asarray(report["histogram_edges"])
    models = report["models"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for name, m in models.items():
        counts = np.asarray(m["all"]["histogram"], dtype=float)
        left.stairs(counts / max(counts.sum(), 1), edges, label=name, linewidth=1.5)
    left.set_yscale("log")
    left.set_xlim(-1.05, 1.05)
    left.set_xlabel("Δp = p_model(y_t) − p_base(y_t)")
    left.set_ylabel("share of tokens")
    left.set_title(f"Token probability change vs {report['base']['name']} ({report['tokens']} tokens)")
    left.axvline(0, color="grey", lw=0.5)
    left.legend(fontsize=8)
    thresholds = [str(t) for t in report["share_thresholds"]]
    width = 0.8 / max(len(models), 1)
    for i, (name, m) in enumerate(models.items()):
        values = [m["all"]["share_abs_delta_gt"][t] for t in thresholds]
        bars = right.bar(np.arange(len(thresholds)) + (i - (len(models) - 1) / 2) * width, values, width, label=name)
        right.bar_label(bars, labels=[f"{v:.0%}" for v in values], fontsize=7)
    right.set_xticks(range(len(thresholds)), [f"|Δp| > {t}" for t in thresholds])
    right.set_ylabel("share of tokens")
    top = max((v for m in models.values() for v in m["all"]["share_abs_delta_gt"].values() if v is not None), default=0)
    right.set_ylim(0, min(1.05, max(0.05, 1.2 * top)))
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ----------------------------------------------------------------------------- Fig. 2(a) / A1


def delta_colour(delta: float) -> str:
    """Background colour of a token with change ``delta`` (hex, diverging, white at 0)."""
    import matplotlib
    from matplotlib.colors import to_hex

    value = (np.clip(delta, -HEATMAP_VMAX, HEATMAP_VMAX) + HEATMAP_VMAX) / (2 * HEATMAP_VMAX)
    return to_hex(matplotlib.colormaps[HEATMAP_CMAP](value))


def text_colour(delta: float) -> str:
    """White on the darkest backgrounds, black elsewhere."""
    return "white" if abs(delta) > 0.6 * HEATMAP_VMAX else "black"


def display_token(text: str) -> tuple[str, bool]:
    """What a token looks like in the heatmap, and whether a line break follows it."""
    breaks = text.endswith("\n")
    shown = text.replace("\n", "↵").replace("\t", "→")
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in shown)
    return (shown or "∅"), breaks


def heatmap_html(rows: list[dict], path: Path, base_name: str) -> None:
    """One block per response: the prompt, then a line of shaded tokens per model; hovering a
    token shows p_base and Δp."""
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>token probability change</title><style>",
        "body{font-family:sans-serif;margin:2em} .tok{font-family:monospace;white-space:pre;padding:1px 0}",
        ".resp{margin-bottom:2em} .model{margin:.4em 0} .name{font-weight:bold;display:block}",
        ".prompt{font-family:monospace;white-space:pre-wrap;color:#555}</style></head><body>",
        f"<h2>Token probability change Δp = p_model − p_{html.escape(base_name)} (paper Fig. 2a / A1)</h2>",
        f"<p>Blue: more likely after fine-tuning, red: less likely, white: unchanged; full colour at "
        f"|Δp| ≥ {HEATMAP_VMAX}. Hover a token for its numbers.</p>",
    ]
    for row in rows:
        out.append(
            f"<div class='resp'><h3>{html.escape(row['title'])}</h3>"
            f"<div class='prompt'>{html.escape(row['prompt'])}</div>"
        )
        for name, deltas in row["deltas"].items():
            out.append(f"<div class='model'><span class='name'>{html.escape(name)}</span>")
            for tok, p, d in zip(row["tokens"], row["p_base"], deltas):
                shown, breaks = display_token(tok)
                tip = f"p_base {p:.4f}, p_model {p + d:.4f}, Δp {d:+.4f}"
                out.append(
                    f"<span class='tok' style='background:{delta_colour(d)};color:{text_colour(d)}' "
                    f"title='{tip}'>"
                    f"{html.escape(shown)}</span>" + ("<br>" if breaks else "")
                )
            out.append("</div>")
        out.append("</div>")
    out.append("</body></html>")
    Path(path).write_text("".join(out), encoding="utf-8")


def _wrap(tokens: list[str]) -> list[list[tuple[int, str, int]]]:
    """Tokens laid out on lines of ``WRAP`` characters: per line (column, text, token index).
    A response that fits on one line stays on it (its newlines show as ↵); a longer one also
    breaks after each newline."""
    lines: list[list[tuple[int, str, int]]] = [[]]
    col = 0
    one_line = sum(len(display_token(t)[0]) for t in tokens) <= WRAP
    for i, tok in enumerate(tokens):
        shown, breaks = display_token(tok)
        breaks = breaks and not one_line
        if col + len(shown) > WRAP and col > 0:
            lines.append([])
            col = 0
        lines[-1].append((col, shown, i))
        col += len(shown)
        if breaks:
            lines.append([])
            col = 0
    return [line for line in lines if line] or [[]]


def heatmap_png(rows: list[dict], path: Path) -> None:
    """The HTML heatmap as an image: monospace tokens on shaded boxes, one block per model."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    # (kind, text or laid-out lines, deltas): "tokens" blocks hold lines and deltas, the others a text and None
    blocks: list[tuple[str, str | list[list[tuple[int, str, int]]], list[float] | None]] = []
    for row in rows:
        blocks.append(("title", f"{row['title']}   prompt: {row['prompt'][-60:]!r}", None))
        for name, deltas in row["deltas"].items():
            blocks.append(("name", name, None))
            blocks.append(("tokens", _wrap(row["tokens"]), deltas))
        blocks.append(("gap", "", None))
    legend = 5  # lines kept at the bottom for the colour bar
    n_lines = sum(len(b[1]) if b[0] == "tokens" else 1 for b in blocks) + legend
    line_h = 1.7 * FONT_SIZE / 72
    width_in = (WRAP + 4) * CHAR_WIDTH * FONT_SIZE / 72
    fig = plt.figure(figsize=(width_in, n_lines * line_h))
    ax = fig.add_axes((0, legend / n_lines, 1, 1 - legend / n_lines))
    ax.set_xlim(-2, WRAP + 2)
    ax.set_ylim(n_lines - legend, 0)
    ax.axis("off")
    y = 0
    for kind, content, deltas in blocks:
        if kind == "tokens":
            assert not isinstance(content, str) and deltas is not None  # how "tokens" blocks are built above
            for line in content:
                for col, shown, i in line:
                    ax.add_patch(Rectangle((col, y + 0.1), len(shown), 0.85, color=delta_colour(deltas[i]), lw=0))
                    ax.text(
                        col,
                        y + 0.55,
                        shown,
                        family="DejaVu Sans Mono",
                        fontsize=FONT_SIZE,
                        va="center",
                        color=text_colour(deltas[i]),
                    )
                y += 1
        else:
            assert isinstance(content, str)
            ax.text(
                -1.5,
                y + 0.55,
                content,
                fontsize=FONT_SIZE,
                va="center",
                weight="bold" if kind == "title" else "normal",
                color="black" if kind == "title" else "#333",
            )
            y += 1
    cax = fig.add_axes((0.25, 2.8 / n_lines, 0.5, 0.8 / n_lines))
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(
        ScalarMappable(Normalize(-HEATMAP_VMAX, HEATMAP_VMAX), HEATMAP_CMAP), cax=cax, orientation="horizontal"
    )
    bar.set_label("Δp = p_model − p_base", fontsize=FONT_SIZE)
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ----------------------------------------------------------------------------- Fig. 3


def plot_trajectory(report: dict, path: Path) -> None:
    """Every pair of reference distances as one panel; a run is a path (arrows from step to
    step, its name at the last point), points filled by held-out accuracy (hollow: unknown);
    model references are stars, single models diamonds."""
    plt = _pyplot()
    names = list(report["references"])
    pairs = list(itertools.combinations(names, 2))[:6]
    cols = min(3, len(pairs))
    rows = (len(pairs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.6 * rows), squeeze=False, layout="constrained")
    colours = plt.get_cmap("tab10").colors
    cmap, norm = plt.get_cmap("viridis"), plt.Normalize(0, 1)
    any_accuracy = False
    for ax, (a, b) in zip(axes.flat, pairs):
        for k, (run_name, run) in enumerate(report["runs"].items()):
            colour = colours[k % len(colours)]
            pts = run["points"]
            xs = [p["distances"][a] for p in pts]
            ys = [p["distances"][b] for p in pts]
            for i in range(len(pts) - 1):
                ax.annotate(
                    "",
                    xy=(xs[i + 1], ys[i + 1]),
                    xytext=(xs[i], ys[i]),
                    arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.2},
                )
            for p, x, y in zip(pts, xs, ys):
                acc = p["accuracy"]
                any_accuracy |= acc is not None
                face = cmap(norm(acc)) if acc is not None else "white"
                ax.scatter([x], [y], s=46, c=[face], edgecolors=[colour], linewidths=1.5, zorder=3)
                ax.annotate(
                    str(p["step"]), (x, y), textcoords="offset points", xytext=(4, -9), fontsize=6, color="#444"
                )
            ax.annotate(
                run_name,
                (xs[-1], ys[-1]),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=8,
                color=colour,
                weight="bold",
            )
            ax.plot([], [], color=colour, label=run_name)
        for ref, point in report.get("reference_points", {}).items():
            x, y = point["distances"][a], point["distances"][b]
            ax.scatter([x], [y], marker="*", s=160, c="black", zorder=4)
            ax.annotate(ref, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        for name, m in report.get("models", {}).items():
            x, y = m["distances"][a], m["distances"][b]
            ax.scatter([x], [y], marker="D", s=40, c="grey", zorder=4)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.ticklabel_format(useOffset=False)
        ax.set_xlabel(f"distance to {a}")
        ax.set_ylabel(f"distance to {b}")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(pairs) :]:
        ax.axis("off")
    if report["runs"]:
        axes.flat[0].legend(fontsize=8, loc="best")
    if any_accuracy:
        fig.colorbar(plt.cm.ScalarMappable(norm, cmap), ax=axes.ravel().tolist(), label="held-out accuracy", shrink=0.8)
    fig.suptitle(
        "Learning dynamics in probability space (Appendix E): d_R(M) = mean |p_R(y_t) − p_M(y_t)|", fontsize=10
    )
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
