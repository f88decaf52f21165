"""Result tables of many local runs: the toy's method comparison, tuned the way papers tune.

``python -m srft_openrlhf.runs.results best-lr SWEEP/METHOD``
    Prints the learning rate of the best run among ``SWEEP/METHOD/lr-*`` (accuracy after
    training on the runs' own ``data.eval``: ``reproduce_toy.sh`` evaluates its sweep on the
    toy validation split, never on the held-out problems it reports; ties go to the smaller
    lr, the more conservative choice).

``python -m srft_openrlhf.runs.results report ROOT``
    ROOT as ``scripts/reproduce_toy.sh`` writes it (``sweep/METHOD/lr-LR``,
    ``final/METHOD/seed-N``): writes ``ROOT/results.json`` (every run's numbers), the
    markdown tables ``ROOT/results.md`` (final runs mean ± std over seeds, each row with its
    lr, in the layout of the paper's Tables 2 and 3, then the lr sweep) and
    ``ROOT/curves.png`` (training curves, mean ± std over seeds).

``python -m srft_openrlhf.runs.results readme RESULTS_JSON README``
    Rewrites the part of README between the ``<!-- toy-results -->`` markers with the tables
    of RESULTS_JSON, so the README's numbers always come from a committed results file.

``python -m srft_openrlhf.runs.results cluster DOC RESULTS_JSON ...``
    The same for the ``<!-- cluster-results -->`` block of DOC: one row per results.json of
    ``scripts/reproduce_toy_openrlhf.sh`` (held-out accuracy over seeds, step time by phase).

``python -m srft_openrlhf.runs.results base-results DOC BASE_JSON``
    The same for the ``<!-- base-results -->`` block: the toy base model's accuracies
    (``docs/results/toy_base.json``: ``toy.base_stats`` of one build, the machine it ran on,
    and the sampled accuracy of other builds as a band).

``python -m srft_openrlhf.runs.results kernel-results DOC KERNELS_JSON``
    The same for the ``<!-- kernel-results -->`` block: the fused log-prob + entropy kernel's
    time and extra memory against the naive fp32 path, from ``benchmarks/bench_kernels.py``'s
    JSON (``docs/results/kernels_cpu.json``).

``python -m srft_openrlhf.runs.results cluster-step DOC CLUSTER_STEP_JSON``
    The same for the ``<!-- cluster-step -->`` block (README and docs/cluster.md): peak activation
    memory and time of one actor step at the real vocabulary, per sequence length and per token,
    for OpenRLHF's GRPO step and SRFT's steps, from ``benchmarks/bench_cluster_step.py``'s JSON
    (``docs/results/cluster_step_cpu.json``).

``python -m srft_openrlhf.runs.results quickstart-cpus DOC CPUS_JSON``
    The same for the ``<!-- quickstart-cpus -->`` block: the quick start's accuracy on each
    machine it was run on (``docs/results/toy_quickstart_other_cpus.json``) and the band.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from srft_openrlhf.data import toy
from srft_openrlhf.data.example import TOY, TOY_VALIDATION
from srft_openrlhf.errors import ConfigError
from srft_openrlhf.runs import CONFIG_FILE, method_runs, run_record
from srft_openrlhf.runs.plot import mean_std, plot_methods

# (method folder, display name); the paper's Table 2 groups, then its Table 3 ablations
PARADIGMS = (
    ("Supervised Fine-Tuning", (("sft", "SFT"),)),
    ("Reinforcement Learning", (("grpo", "GRPO"),)),
    ("SFT and RL", (("sft_then_rl", "SFT→RL"), ("luffy", "LUFFY"), ("srft", "SRFT"))),
)
ABLATIONS = (("srft", "SRFT"), ("srft_no_wsft", "w/o w_SFT"), ("srft_no_wrl", "w/o w_RL"))
CURVE_SMOOTHING = 10  # steps: per-step rewards of 16 prompts are too noisy to compare methods by eye
README_BEGIN, README_END = "<!-- toy-results:begin -->", "<!-- toy-results:end -->"
CLUSTER_BLOCK = "cluster-results"
BASE_BLOCK, KERNEL_BLOCK, CPUS_BLOCK = "base-results", "kernel-results", "quickstart-cpus"
STEP_BLOCK = "cluster-step"
# bench_cluster_step.py's methods, as the block names them; the first is what the others are compared with
STEP_METHODS = (
    ("openrlhf_grpo", "OpenRLHF's GRPO actor step (its `Actor`'s fp32 logits, `PolicyLoss`)"),
    ("openrlhf_logits", "SRFT cluster step before: OpenRLHF's fp32 logits, token kernel"),
    ("cluster_fused", "SRFT cluster step: fused LM head"),
    ("local_fused", "SRFT local backend: fused LM head"),
)
SAMPLE_TOKENS = 1024 + 8192  # one sample of the paper configs: data.max_prompt_len + data.max_response_len
STEP_PHASES = (("generation", "generation"), ("experience", "experience"), ("training", "training"),
               ("weight_sync", "weight sync"), ("wait", "waiting"))  # fmt: skip


# ----------------------------------------------------------------------------- collecting


def sweep_runs(method_dir: Path) -> dict[str, dict[str, Any]]:
    """``{lr: record}`` of the finished ``method_dir/lr-LR`` runs."""
    found = {
        p.parent.name.removeprefix("lr-"): run_record(p.parent)
        for p in sorted(Path(method_dir).glob("lr-*/summary.json"))
    }
    if not found:
        raise ConfigError(f"{method_dir}: no finished lr sweep runs (expected lr-LR/summary.json)")
    return found


def best_of(runs: dict[str, dict[str, Any]]) -> str:
    """The lr (as its folder spells it) with the highest accuracy after training on the runs'
    evaluation set (the validation split in ``reproduce_toy.sh``'s sweep); ties: the smaller."""
    return max(runs, key=lambda lr: (runs[lr]["accuracy_after"], -float(lr)))


def best_lr(method_dir: Path) -> str:
    """The best lr of the finished ``method_dir/lr-LR`` runs (``best_of``)."""
    return best_of(sweep_runs(method_dir))


def sweep_eval(sweep_root: Path) -> str:
    """The ``data.eval`` the sweep runs under ``sweep_root`` were evaluated on (``toy`` when a
    config leaves it unset: the toy task's held-out split), comma-joined if they differ."""
    import yaml

    found = set()
    for config in sorted(Path(sweep_root).glob(f"*/lr-*/{CONFIG_FILE}")):
        found.add((yaml.safe_load(config.read_text()).get("data") or {}).get("eval") or TOY)
    return ", ".join(sorted(found)) or TOY


def collect(root: Path) -> dict[str, Any]:
    """Everything the tables need, JSON-ready: ``final`` {method: [run records]}, ``sweep``
    {method: {lr: record}} and ``sweep_eval`` (the ``data.eval`` its accuracies are measured
    on) when ``ROOT/sweep`` exists."""
    root = Path(root)
    final_root = root / "final" if (root / "final").is_dir() else root
    results: dict[str, Any] = {
        "final": {m: [run_record(d) for d in dirs] for m, dirs in method_runs(final_root).items()}
    }
    if (root / "sweep").is_dir():
        results["sweep"] = {d.name: sweep_runs(d) for d in sorted((root / "sweep").iterdir()) if d.is_dir()}
        results["sweep_eval"] = sweep_eval(root / "sweep")
    return results


# ----------------------------------------------------------------------------- tables


def accuracy_columns(records: list[dict]) -> list[str]:
    """accuracy, then the per-group ones (accuracy_<group>) in a stable order."""
    groups = sorted(
        {
            k.removesuffix("_after")
            for r in records
            for k in r
            if k.startswith("accuracy_") and k.endswith("_after") and k != "accuracy_after"
        }
    )
    return ["accuracy", *groups]


def column_title(column: str) -> str:
    return "held-out" if column == "accuracy" else column.removeprefix("accuracy_").replace("_", " ")


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.1f} ± {std:.1f}"


def lr_text(lr: float) -> str:
    """2e-4 rather than 0.0002: learning rates read best in the notation they are swept in."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _lr_text(records: list[dict]) -> str | None:
    lrs = sorted({r["lr"] for r in records if "lr" in r})
    return ", ".join(map(lr_text, lrs)) if lrs else None


def markdown(results: dict[str, Any]) -> str:
    """Final runs in the layouts of the paper's Table 2 (paradigm groups) and Table 3
    (ablations), mean ± std over seeds; then the lr sweep (one seed) when there is one."""
    final = results["final"]
    every = [r for runs in final.values() for r in runs]
    columns = accuracy_columns(every)
    with_lr = any("lr" in r for r in every)
    titles = (["lr"] if with_lr else []) + [column_title(c) for c in columns]
    header = "| Model | " + " | ".join(titles) + " | runs |\n|---|" + "---|" * (len(titles) + 1) + "\n"
    blank = "|" * (len(titles) + 2)

    def row(name: str, records: list[dict], when: str = "after") -> str:
        cells = [_cell([r[f"{c}_{when}"] for r in records if r.get(f"{c}_{when}") is not None]) for c in columns]
        if with_lr:
            cells.insert(0, (_lr_text(records) or "–") if when == "after" else "–")
        return f"| {name} | " + " | ".join(cells) + f" | {len(records)} |\n"

    steps = sorted({r["steps"] for r in every if "steps" in r})
    seeds = sorted({r["seed"] for r in every if "seed" in r})
    lines = [
        f"Held-out accuracy (%), mean ± std over seeds {', '.join(map(str, seeds)) or '?'}; "
        f"{', '.join(map(str, steps)) or '?'} training steps each.\n\n",
        "**Main results (layout of the paper's Table 2)**\n\n",
        header,
        row("Base model", every, "before"),
    ]
    known = {m for _, methods in PARADIGMS for m, _ in methods} | {m for m, _ in ABLATIONS}
    for title, methods in PARADIGMS:
        present = [(m, name) for m, name in methods if m in final]
        if present:
            lines.append(f"| *{title}* {blank}\n")
            lines += [row(name, final[m]) for m, name in present]
    others = [m for m in final if m not in known]
    if others:
        lines.append(f"| *Other* {blank}\n")
        lines += [row(m, final[m]) for m in others]
    ablations = [(m, name) for m, name in ABLATIONS if m in final]
    if len(ablations) > 1:
        lines += ["\n**Ablations (layout of the paper's Table 3)**\n\n", header]
        lines += [row(name, final[m]) for m, name in ablations]
    if results.get("sweep"):
        lines.append(sweep_markdown(results["sweep"], results.get("sweep_eval", TOY)))
    if "command" in results:
        lines.append(provenance_markdown(results))
    return "".join(lines)


def provenance_markdown(results: dict[str, Any]) -> str:
    """Where a results file came from: the CPU (model, SIMD), commit, command."""
    return f"\nOn {cpu_text(results['cpu'])}; commit {results['commit']}; command: `{results['command']}`.\n"


def sweep_markdown(sweep: dict[str, dict[str, dict]], evaluated_on: str = TOY) -> str:
    """Accuracy of each method at each lr (one seed) on ``evaluated_on`` (the sweep runs'
    ``data.eval``); the chosen lr in bold."""
    lrs = sorted({lr for runs in sweep.values() for lr in runs}, key=float)
    if evaluated_on == TOY_VALIDATION:
        title = f"validation %: {toy.TASK.validation_size} problems of the training distribution"
        title += ", disjoint from the held-out ones"
    else:
        title = "held-out %" if evaluated_on == TOY else f"{evaluated_on} %"
    lines = [
        f"\n**Learning-rate sweep ({title}; one seed; bold: the lr of the final runs)**\n\n",
        "| Method | " + " | ".join(lrs) + " |\n|---|" + "---|" * len(lrs) + "\n",
    ]
    names = dict(m for _, methods in PARADIGMS for m in methods) | dict(ABLATIONS)
    for method, runs in sweep.items():
        best = best_of(runs)
        cells = []
        for lr in lrs:
            if lr not in runs:
                cells.append("–")
                continue
            text = f"{100 * runs[lr]['accuracy_after']:.1f}"
            cells.append(f"**{text}**" if lr == best else text)
        lines.append(f"| {names.get(method, method)} | " + " | ".join(cells) + " |\n")
    return "".join(lines)


def cluster_markdown(results: list[dict[str, Any]]) -> str:
    """One row per ``scripts/reproduce_toy_openrlhf.sh`` results.json: the rollout engine, the
    held-out accuracy before and after (each seed, mean ± std) and the mean seconds per step by
    phase over seeds (in async mode generation overlaps training: "waiting" is the step's wall
    time outside the trainer's own phases)."""
    lines = [
        "| rollout engine | held-out before | after, per seed | after, mean ± std | s/step: "
        + " | ".join(name for _, name in STEP_PHASES)
        + " | wall s/run |\n",
        "|---" * (5 + len(STEP_PHASES)) + "|\n",
    ]
    for result in results:
        runs = result["runs"]
        seeds = " / ".join(f"{100 * r['accuracy_after']:.1f}" for r in runs.values())
        phases = " | ".join(
            f"{statistics.fmean(r['step_seconds'][key] for r in runs.values()):.2f}" for key, _ in STEP_PHASES
        )
        wall = statistics.fmean(r["wall_seconds"] for r in runs.values())
        lines.append(
            f"| {result['generator']} | {result['held_out_before_percent']:.1f} | {seeds} "
            f"(seeds {', '.join(runs)}) | {result['held_out_after_percent_mean']:.1f} ± "
            f"{result['held_out_after_percent_std']:.1f} | {phases} | {wall:.0f} |\n"
        )
    simd = lambda r: "AVX-512" if "avx512f" in r["cpu"]["simd"].split() else "no AVX-512"  # noqa: E731
    cpus = sorted({f"{r['cpu']['model']} ({simd(r)})" for r in results})
    commits = sorted({r["commit"] for r in results})
    lines.append(f"\nOn {', '.join(cpus)}; commit {', '.join(commits)}; commands: "
                 + "; ".join(f"`{r['command']}`" for r in results) + ".\n")  # fmt: skip
    return "".join(lines)


def cpu_text(cpu: dict[str, str]) -> str:
    """``AMD EPYC (AVX-512)``: a CPU as the result files record it (model name, SIMD flags)."""
    simd = cpu.get("simd", "").split()
    return f"{cpu['model']} ({'AVX-512' if 'avx512f' in simd else 'AVX2, no AVX-512' if 'avx2' in simd else 'no AVX2'})"


def base_markdown(result: dict[str, Any], source: str = "docs/results/toy_base.json") -> str:
    """The toy base model's three accuracies (``toy.base_stats``) from ``docs/results/toy_base.json``,
    the machine and command of that build, and the sampled accuracy of every recorded build as a band."""
    stats = result["stats"]
    lines = [
        f"| base model ({result['pretrain_steps']} pre-training steps) | accuracy |\n",
        "|---|---|\n",
        f"| greedy, {result['heldout_problems']} held-out problems | {100 * stats['greedy_heldout']:.1f}% |\n",
        "| greedy, held-out problems with a chained carry (the teacher's flaw cases) | "
        f"{100 * stats['greedy_heldout_chained_carry']:.1f}% |\n",
        f"| one sample at temperature 1, {result['sampled_prompts']} training prompts | "
        f"{100 * stats['sampled_train']:.1f}% |\n",
    ]
    sampled = [stats["sampled_train"]] + [b["sampled_train"] for b in result.get("other_builds", [])]
    lines.append(
        f"\nOn {cpu_text(result['cpu'])}, torch {result['torch']}; commit {result['commit']}; "
        f"the command and how it was measured: `{source}`."
    )
    if len(sampled) > 1:
        others = "; ".join(f"{100 * b['sampled_train']:.1f}% on {b['where']}" for b in result["other_builds"])
        lines.append(
            f" The sampled accuracy moves with the build: {100 * min(sampled):.1f}–{100 * max(sampled):.1f}% "
            f"over the {len(sampled)} recorded builds (here; {others})."
        )
    return "".join(lines) + "\n"


def _percent(share: float) -> str:
    """85.25 and 70.0: two decimals where a share of 400 problems has them, else one."""
    text = f"{100 * share:.2f}"
    return text[:-1] if text.endswith("0") else text


def cpus_markdown(result: dict[str, Any]) -> str:
    """One row per machine of ``docs/results/toy_quickstart_other_cpus.json``: the quick start's
    held-out accuracy before and after training, per seed and mean, then the band over all runs."""
    lines = ["| CPU | commit | held-out before | after, per seed | after, mean |\n", "|---|---|---|---|---|\n"]
    after_all = []
    for machine in result["machines"]:
        after = machine["accuracy_after"]
        after_all += after.values()
        seeds = " / ".join(_percent(a) for a in after.values())
        lines.append(
            f"| {cpu_text(machine['cpu'])} | {machine['commit']} | {100 * machine['accuracy_before']:.1f} | "
            f"{seeds} (seeds {', '.join(after)}) | {100 * statistics.fmean(after.values()):.1f} |\n"
        )
    lines.append(
        f"\nBand: {_percent(min(after_all))}–{_percent(max(after_all))}% held-out after training, "
        f"{len(after_all)} runs on {len(result['machines'])} machines.\n"
    )
    return "".join(lines)


def _kernel_row(rows: list[dict], method: str, mode: str) -> dict:
    found = [r for r in rows if r["method"] == method and r["mode"] == mode and "skipped" not in r]
    if len(found) != 1:
        raise ConfigError(f"kernel results: expected one measured {method} {mode} row, found {len(found)}")
    return found[0]


def kernel_markdown(result: dict[str, Any]) -> str:
    """The README's sentences on the fused kernel: time and peak extra memory of the chunked path
    (and its in-place backward) as fractions of the naive fp32 path, from ``bench_kernels.py``'s JSON."""
    rows = result["results"]
    naive = {mode: _kernel_row(rows, "naive", mode) for mode in ("fwd", "fwdbwd")}
    fused = {mode: _kernel_row(rows, "chunked", mode) for mode in ("fwd", "fwdbwd")}
    inplace = _kernel_row(rows, "chunked_inplace", "fwdbwd")
    shapes = {(r["N"], r["V"], r["dtype"]) for r in (*naive.values(), *fused.values(), inplace)}
    if len(shapes) != 1:
        raise ConfigError(f"kernel results: the compared rows have different shapes {sorted(shapes)}")
    ((n, vocab, dtype),) = shapes
    time = lambda r, mode: r["time_ms"] / naive[mode]["time_ms"]  # noqa: E731
    memory = lambda r, mode: r["peak_extra_bytes"] / naive[mode]["peak_extra_bytes"]  # noqa: E731
    dtype_name = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)
    return (
        f"Measured on {cpu_text(result['cpu'])}, {result['threads']} threads, torch {result['torch']} "
        f"(N = {n:,}, V = {vocab:,}, {dtype_name} logits; median of {len(naive['fwd']['times_ms'])} runs"
        + (f"; {result['note']}" if result.get("note") else "")
        + f"): forward {time(fused['fwd'], 'fwd'):.2f}× the time and {memory(fused['fwd'], 'fwd'):.3f}× the "
        f"extra memory of the naive fp32 path (OpenRLHF-style); forward+backward "
        f"{time(fused['fwdbwd'], 'fwdbwd'):.2f}× the time, {memory(fused['fwdbwd'], 'fwdbwd'):.3f}× the memory "
        f"({memory(inplace, 'fwdbwd'):.3f}× with the in-place backward; the gradient tensor itself is "
        f"{fused['fwdbwd']['grad_bytes'] / naive['fwdbwd']['peak_extra_bytes']:.3f}×). "
        f"Command: `{result['command']}`.\n"
    )


def _step_cell(row: dict | None) -> str:
    if row is None or "time_s" not in row:
        return "did not fit" if row is not None and "skipped" in row else "–"
    return f"{row['peak_activation_bytes'] / 2**20:,.0f} MiB, {row['time_s']:.1f} s"


def cluster_step_markdown(result: dict[str, Any]) -> str:
    """The table of ``bench_cluster_step.py``'s JSON: per method and sequence length the peak
    activation memory and time of one step, the growth per token and one paper-config sample
    (both from the method's line through its lengths), then the fused cluster step's ratios to
    OpenRLHF's GRPO step at the longest length (memory) and the longest both ran (time)."""
    rows, fits = result["results"], result["linear_fits"]
    base, *_ = STEP_METHODS[0]
    lengths = sorted({r["T"] for r in rows})
    at = {(r["method"], r["T"]): r for r in rows}
    lines = [
        "| one step, T tokens | " + " | ".join(f"T = {t:,}" for t in lengths)
        + f" | per token | one {SAMPLE_TOKENS:,}-token sample |\n",
        "|---" * (len(lengths) + 3) + "|\n",
    ]  # fmt: skip
    for method, name in STEP_METHODS:
        if method not in fits:
            raise ConfigError(f"cluster step results: no line through the lengths of {method}")
        line = fits[method]
        sample = line["intercept_bytes"] + line["bytes_per_token"] * SAMPLE_TOKENS
        cells = " | ".join(_step_cell(at.get((method, t))) for t in lengths)
        lines.append(f"| {name} | {cells} | {line['bytes_per_token'] / 1024:,.1f} KiB | {sample / 2**30:.2f} GiB |\n")
    ratios = [q for q in result[f"vs_{base}"] if q["method"] == "cluster_fused"]
    memory = max(ratios, key=lambda q: q["T"])
    timed = max((q for q in ratios if "time" in q), key=lambda q: q["T"])
    skipped = sorted(t for t in lengths if "skipped" in at.get((base, t), {}))
    model = result["model"]
    load = result["load_average"]
    spread = max(max(r["times_s"]) / min(r["times_s"]) for r in rows if len(r.get("times_s", [])) > 1)
    bent = max(line["max_residual"] for line in fits.values())
    lines.append(
        f"\nPeak activation memory (what torch's allocator holds beyond the weights, their gradients and "
        f"the AdamW state) and time of one forward + backward, micro-batch 1 (T/8 prompt tokens); "
        f"a Qwen2-shaped model with V = {model['vocab']:,} and a {model['layers']}-layer body of hidden size "
        f"{model['hidden']}, {model['dtype']}; per token: the slope of a line through the lengths "
        f"(T·V·4 bytes of fp32 logits: {model['vocab'] * 4 / 1024:,.0f} KiB), whose value at {SAMPLE_TOKENS:,} "
        f"tokens is the sample's (the worst point is {100 * bent:.0f}% off its line: the fused kernel's backward "
        "tiles grow with the tokens up to 2,048 rows, then stay). "
        f"The fused cluster step holds {memory['memory']:.3f}× the peak activation memory of OpenRLHF's GRPO "
        f"step at T = {memory['T']:,}"
        + (
            f" (GRPO's peak from its line: at T = {', '.join(f'{t:,}' for t in skipped)} it did not fit "
            "into this machine's memory)"
            if memory.get("extrapolated")
            else ""
        )
        + f" and takes {timed['time']:.2f}× its time at T = {timed['T']:,}. On {cpu_text(result['cpu'])}, "
        f"{result['threads']} threads, torch {result['torch']}, load average {load['before'][0]:.1f} before and "
        f"{load['after'][0]:.1f} after (a shared machine: two timed runs of one case differ by up to "
        f"{spread:.1f}×, so the times are rough); commit {result['commit']}; "
        f"command: `{result['command']}`.\n"
    )
    return "".join(lines)


def fill_block(doc: Path, block: str, content: str, source: str) -> None:
    """Replace ``doc``'s text between ``<!-- BLOCK:begin -->`` and ``<!-- BLOCK:end -->``."""
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    text = doc.read_text()
    if begin not in text or end not in text:
        raise ConfigError(f"{doc}: no {begin} ... {end} block to fill")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    generated = f"<!-- generated from {source} by python -m srft_openrlhf.runs.results -->\n"
    doc.write_text(f"{head}{begin}\n{generated}{content}{end}{tail}")


def write_readme(results_json: Path, readme: Path) -> None:
    """Replace README's block between the toy-results markers by the tables of ``results_json``."""
    fill_block(readme, "toy-results", markdown(json.loads(Path(results_json).read_text())), str(results_json))


def write_cluster(doc: Path, results_jsons: list[Path]) -> None:
    """Replace ``doc``'s cluster-results block by the table of ``results_jsons``."""
    results = [json.loads(Path(p).read_text()) for p in results_jsons]
    fill_block(doc, CLUSTER_BLOCK, cluster_markdown(results), ", ".join(map(str, results_jsons)))


def write_base(doc: Path, base_json: Path) -> None:
    """Replace ``doc``'s base-results block by the base model's table of ``base_json``."""
    fill_block(doc, BASE_BLOCK, base_markdown(json.loads(Path(base_json).read_text()), str(base_json)), str(base_json))


def write_kernels(doc: Path, kernels_json: Path) -> None:
    """Replace ``doc``'s kernel-results block by the kernel ratios of ``kernels_json``."""
    fill_block(doc, KERNEL_BLOCK, kernel_markdown(json.loads(Path(kernels_json).read_text())), str(kernels_json))


def write_cluster_step(doc: Path, step_json: Path) -> None:
    """Replace ``doc``'s cluster-step block by the step table of ``step_json``."""
    fill_block(doc, STEP_BLOCK, cluster_step_markdown(json.loads(Path(step_json).read_text())), str(step_json))


def write_cpus(doc: Path, cpus_json: Path) -> None:
    """Replace ``doc``'s quickstart-cpus block by the per-machine table of ``cpus_json``."""
    fill_block(doc, CPUS_BLOCK, cpus_markdown(json.loads(Path(cpus_json).read_text())), str(cpus_json))


def report(root: Path) -> str:
    root = Path(root)
    results = collect(root)
    (root / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    (root / "results.md").write_text(table)
    final_root = root / "final" if (root / "final").is_dir() else root
    plot_methods(method_runs(final_root), root / "curves.png", smooth=CURVE_SMOOTHING)
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m srft_openrlhf.runs.results", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("best-lr", help="print the best lr of SWEEP/METHOD/lr-*").add_argument("method_dir", type=Path)
    sub.add_parser("report", help="results.json, results.md and curves.png of ROOT").add_argument("root", type=Path)
    readme = sub.add_parser("readme", help="fill README's toy-results block from a results.json")
    readme.add_argument("results_json", type=Path)
    readme.add_argument("readme", type=Path)
    cluster = sub.add_parser("cluster", help="fill DOC's cluster-results block from reproduce_toy_openrlhf.sh results")
    cluster.add_argument("doc", type=Path)
    cluster.add_argument("results_json", type=Path, nargs="+")
    base = sub.add_parser("base-results", help="fill DOC's base-results block from docs/results/toy_base.json")
    base.add_argument("doc", type=Path)
    base.add_argument("base_json", type=Path)
    kernels = sub.add_parser("kernel-results", help="fill DOC's kernel-results block from bench_kernels.py's JSON")
    kernels.add_argument("doc", type=Path)
    kernels.add_argument("kernels_json", type=Path)
    step = sub.add_parser("cluster-step", help="fill DOC's cluster-step block from bench_cluster_step.py's JSON")
    step.add_argument("doc", type=Path)
    step.add_argument("step_json", type=Path)
    cpus = sub.add_parser("quickstart-cpus", help="fill DOC's quickstart-cpus block (the quick start per machine)")
    cpus.add_argument("doc", type=Path)
    cpus.add_argument("cpus_json", type=Path)
    args = p.parse_args(argv)
    try:
        if args.command == "best-lr":
            print(best_lr(args.method_dir))
        elif args.command == "report":
            print(report(args.root))
            print(f"wrote {args.root / 'results.json'}, {args.root / 'results.md'}, {args.root / 'curves.png'}")
        elif args.command == "cluster":
            write_cluster(args.doc, args.results_json)
            print(f"wrote the cluster results of {', '.join(map(str, args.results_json))} into {args.doc}")
        elif args.command == "base-results":
            write_base(args.doc, args.base_json)
            print(f"wrote the base model results of {args.base_json} into {args.doc}")
        elif args.command == "quickstart-cpus":
            write_cpus(args.doc, args.cpus_json)
            print(f"wrote the per-machine quick-start results of {args.cpus_json} into {args.doc}")
        elif args.command == "cluster-step":
            write_cluster_step(args.doc, args.step_json)
            print(f"wrote the cluster step results of {args.step_json} into {args.doc}")
        elif args.command == "kernel-results":
            write_kernels(args.doc, args.kernels_json)
            print(f"wrote the kernel results of {args.kernels_json} into {args.doc}")
        else:
            write_readme(args.results_json, args.readme)
            print(f"wrote the toy results of {args.results_json} into {args.readme}")
    except ConfigError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
