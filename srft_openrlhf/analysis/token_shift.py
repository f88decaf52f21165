"""``srft analyze token-shift``: how far fine-tuning moved each token's probability (paper
Sec. 3.1.1, Fig. 2 for SFT and RL, Fig. A1 for SRFT).

Responses to the prompts are produced once (by ``--responses-from``: the base by default, any
other model, a fixed text source, or an evaluation ``samples.jsonl``). Every model then scores
the same tokens by teacher forcing, and for each response token

    Δp_t = p_model(y_t | x, y_<t) − p_base(y_t | x, y_<t)      (probabilities, temperature 1)

The paper's finding is that SFT moves Δp across the whole response while RL leaves most tokens
near 0 (numbers and formula tokens untouched), SRFT in between. Outputs in ``--out``:

- ``token_shift.json``: per model, overall and per benchmark when there are several: the
  histogram of Δp (fixed bins ``histogram_edges``), the share of tokens with |Δp| > 0.1, 0.3,
  0.5, the mean |Δp| and the mean Δp;
- ``token_shift.png``: the distribution of Δp per model (as Fig. 2b) and the shares;
- ``token_shift_heatmap.html`` / ``.png``: a few responses with each token's background shaded
  by its Δp, one line per model (as Fig. 2a / A1).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from srft_openrlhf.analysis import plots, scoring, sources
from srft_openrlhf.analysis.scoring import Response
from srft_openrlhf.errors import ConfigError

SHARE_THRESHOLDS = (0.1, 0.3, 0.5)
# 41 bins of width 0.05 centred on -1.00, -0.95, ..., 1.00: Δp = 0 falls in the middle bin.
HISTOGRAM_EDGES = np.round(np.linspace(-1.025, 1.025, 42), 3)


# ----------------------------------------------------------------------------- quantities


def token_probability_shift(
    model_logprobs: Sequence[np.ndarray], base_logprobs: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Δp_t = exp(log p_model(y_t)) − exp(log p_base(y_t)) for every token of every response
    (paper Fig. 2 / A1). Identical log-probs give exactly 0."""
    return [np.exp(m) - np.exp(b) for m, b in zip(model_logprobs, base_logprobs)]


def shift_histogram(deltas: np.ndarray) -> list[int]:
    """Token counts of Δp in the bins of ``HISTOGRAM_EDGES`` (Fig. 2b); they sum to the token count."""
    counts, _ = np.histogram(np.clip(deltas, -1.0, 1.0), bins=HISTOGRAM_EDGES)
    return counts.tolist()


def shift_summary(deltas: Sequence[np.ndarray]) -> dict:
    """Fig. 2b as numbers: token and response counts, mean |Δp|, mean Δp, the share of tokens
    with |Δp| above each of ``SHARE_THRESHOLDS`` and the histogram."""
    flat = np.concatenate(list(deltas)) if deltas else np.zeros(0)
    n = int(flat.size)
    magnitude = np.abs(flat)
    return {
        "responses": len(deltas),
        "tokens": n,
        "mean_abs_delta": float(magnitude.mean()) if n else None,
        "mean_delta": float(flat.mean()) if n else None,
        "share_abs_delta_gt": {str(t): float((magnitude > t).mean()) if n else None for t in SHARE_THRESHOLDS},
        "histogram": shift_histogram(flat),
    }


def shift_report(deltas: Sequence[np.ndarray], benchmarks: Sequence[str]) -> dict:
    """``shift_summary`` over all responses, plus one per benchmark when there are several."""
    report = {"all": shift_summary(deltas)}
    names = list(dict.fromkeys(benchmarks))
    if len(names) > 1:
        report["benchmarks"] = {b: shift_summary([d for d, x in zip(deltas, benchmarks) if x == b]) for b in names}
    return report


# ----------------------------------------------------------------------------- the command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="the model before fine-tuning (model folder, run folder, 'toy')")
    p.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="[NAME=]MODEL",
        help="fine-tuned models: model folders, run folders (their last checkpoint), RUN_DIR@STEP",
    )
    p.add_argument(
        "--responses-from",
        default="base",
        metavar="SOURCE",
        help="who writes the responses every model scores: 'base' (default), a name of --models, "
        "another model, 'demos' (the data's demonstrations), 'toy:solver', or the "
        "samples.jsonl of `srft eval` (then --data is not used)",
    )
    p.add_argument("--heatmap", type=int, default=4, metavar="K", help="responses shown in the heatmap (default 4)")


def response_source(value: str, models: dict[str, sources.ModelRef]) -> str | Path | sources.ModelRef:
    """What ``--responses-from`` names: a text source, a samples.jsonl path or a model."""
    if value in models:
        return models[value]
    if value in sources.TEXT_SOURCES:
        return value
    if value.endswith(".jsonl"):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"--responses-from {value}: {path} does not exist")
        return path
    return sources.resolve_model(value, "--responses-from")


def run(args: argparse.Namespace) -> dict:
    """Produce the responses, score them with every model, write the outputs; returns the report."""
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "cache"
    base = sources.resolve_model(args.base, "--base")
    models = [sources.resolve_model(m, "--models") for m in args.models]
    sources.unique_names([base, *models], "--base/--models")
    named = {"base": base, **{m.name: m for m in [base, *models]}}
    source = response_source(args.responses_from, named)
    if isinstance(source, Path) and args.data:
        raise ConfigError("--responses-from a samples.jsonl brings its own prompts: drop --data")
    if not isinstance(source, Path) and not args.data:
        raise ConfigError("--data is required (toy, a .json/.jsonl/.parquet file or a benchmark name)")
    toy_task = sources.fill_task_defaults(args)
    everyone = [base, *models]
    if isinstance(source, sources.ModelRef) and source not in named.values():
        everyone.append(source)
    tokenizer, prompts, responses = prepare(args, source, everyone, toy_task, cache)
    score = sources.scoring_options(args, tokenizer, cache)
    base_lp = scoring.score_responses(base, responses, **score)
    benchmarks = [r.benchmark for r in responses]
    report: dict = {
        "base": {"name": base.name, "path": str(base.path)},
        "responses_from": source.name if isinstance(source, sources.ModelRef) else str(source),
        "responses": len(responses),
        "tokens": int(sum(len(r.token_ids) for r in responses)),
        "settings": settings(args, toy_task),
        "histogram_edges": HISTOGRAM_EDGES.tolist(),
        "share_thresholds": list(SHARE_THRESHOLDS),
        "models": {},
    }
    deltas = {}
    for m in models:
        lp = scoring.score_responses(m, responses, **score)
        deltas[m.name] = token_probability_shift(lp, base_lp)
        report["models"][m.name] = {"path": str(m.path), **shift_report(deltas[m.name], benchmarks)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "token_shift.json").write_text(json.dumps(report, indent=1) + "\n")
    plots.plot_shift_distribution(report, out / "token_shift.png")
    rows = heatmap_rows(tokenizer, prompts, responses, base_lp, deltas, args.heatmap)
    plots.heatmap_html(rows, out / "token_shift_heatmap.html", base.name)
    plots.heatmap_png(rows, out / "token_shift_heatmap.png")
    print_summary(report, out)
    return report


def prepare(args, source, everyone: list[sources.ModelRef], toy_task: bool, cache: Path):
    """The shared tokenizer (checked across models), the prompts and the responses."""
    if isinstance(source, Path):
        tokenizer = (
            sources.shared_tokenizer(everyone, [], toy_task) if toy_task else sources.load_tokenizer(everyone[0])
        )
        prompts, responses = scoring.samples_file_responses(source, tokenizer, args.limit)
        probes = [p.text for p in prompts[:16]]
        if not toy_task:
            sources.shared_tokenizer(everyone, probes + [tokenizer.decode(r.token_ids) for r in responses[:16]], False)
        return tokenizer, prompts, responses
    prompts = sources.command_prompts(args, everyone[0], toy_task)
    texts = sources.reference_texts(source, prompts) if isinstance(source, str) else []
    tokenizer = sources.shared_tokenizer(everyone, [p.text for p in prompts[:16]] + texts[:16], toy_task)
    if isinstance(source, str):
        responses = scoring.text_responses(tokenizer, prompts, texts)
    else:
        responses = scoring.generate_responses(source, tokenizer, prompts, **sources.generation_options(args, cache))
    return tokenizer, prompts, responses


def settings(args, toy_task: bool) -> dict:
    keys = ("data", "limit", "template", "temperature", "max_new_tokens", "seed", "dtype")
    return {k: getattr(args, k, None) for k in keys} | {"toy_tokenizer": toy_task}


def token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token on its own, as text (a byte-level piece of a multi-byte character shows as �)."""
    return [tokenizer.decode([i]) for i in ids]


def heatmap_rows(tokenizer, prompts, responses: Sequence[Response], base_lp, deltas: dict, k: int) -> list[dict]:
    """The first ``k`` responses with, per model, each token's p_base and Δp (Fig. 2a / A1)."""
    by_key = {(p.benchmark, p.id): p for p in prompts}
    rows = []
    for i, r in enumerate(responses[: max(k, 0)]):
        rows.append(
            {
                "title": f"{r.benchmark} #{r.prompt_id}" + (f" sample {r.sample}" if r.sample else ""),
                "prompt": by_key[(r.benchmark, r.prompt_id)].text,
                "tokens": token_texts(tokenizer, r.token_ids),
                "p_base": np.exp(base_lp[i]).tolist(),
                "deltas": {name: d[i].tolist() for name, d in deltas.items()},
            }
        )
    return rows


def print_summary(report: dict, out: Path) -> None:
    print(
        f"token shift vs {report['base']['name']} on {report['tokens']} tokens of {report['responses']} responses "
        f"(from {report['responses_from']}):"
    )
    for name, m in report["models"].items():
        s = m["all"]
        shares = ", ".join(f"|Δp|>{t}: {v:.1%}" for t, v in s["share_abs_delta_gt"].items())
        print(f"  {name:<20} mean |Δp| {s['mean_abs_delta']:.4f}  {shares}")
    print(f"wrote {out / 'token_shift.json'}, token_shift.png, token_shift_heatmap.html, token_shift_heatmap.png")
