"""``python -m evaluation`` (also ``srft eval``): evaluate a model on the paper's benchmarks.

    python -m evaluation --model PATH --out DIR \\
        --benchmarks aime24,amc,math500,minerva,olympiad,arc_c,gpqa_diamond,mmlu_pro

Defaults follow the paper: temperature 0.6, at most 8192 new tokens, avg@32 on AIME24 and
AMC, pass@1 (one sample) elsewhere, prompts in the SRFT template. DIR receives
``samples.jsonl`` (one graded sample per line), ``summary.json``, ``results.md`` (Table 2
layout) and ``run.json`` (the sampling settings). Running again with the same DIR generates
only the samples it lacks, so an interrupted evaluation resumes and a larger ``--samples`` or
``--limit`` extends a finished one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from evaluation.generate import DecodeSettings, EvalGenerator, build_generator, prompt_seed, resolve_generator
from evaluation.grade import grade_responses
from evaluation.report import SAMPLES, append_samples, read_samples, results_markdown, summarize, write_outputs
from srft_openrlhf.data.benchmarks import (
    BENCHMARKS,
    PAPER_BENCHMARKS,
    Benchmark,
    Fields,
    Problem,
    get_benchmark,
    load_benchmark,
)
from srft_openrlhf.data.example import HUB_ID
from srft_openrlhf.errors import ConfigError, UserError

# --template names -> srft_openrlhf.data templates ("own": the model's chat template, Table A1).
TEMPLATES = {"srft": "srft", "qwen_math": "qwen_math", "none": "none", "own": "chat"}
# Settings that change what a sample is; a resumed run must keep them.
RUN_KEYS = ("model", "template", "temperature", "top_p", "max_tokens", "seed")


@dataclass
class Task:
    bench: Benchmark
    problems: list[Problem]
    k: int  # samples per problem
    source: str  # the local file, or hub:NAME


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluation",
        description="Evaluate a model on the paper's benchmarks; writes samples.jsonl, summary.json and results.md "
        "(Table 2 layout) to --out, and resumes from them when run again.",
    )
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument(
        "--benchmarks",
        default=",".join(PAPER_BENCHMARKS),
        help=f"comma-separated (default: the paper's eight); known: {', '.join(BENCHMARKS)}",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (reused to resume)")
    p.add_argument(
        "--samples",
        action="append",
        default=[],
        metavar="NAME=K",
        help="samples per problem for a benchmark (default 32 for aime24/amc/aime25, else 1)",
    )
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="local .json/.jsonl/.parquet for a benchmark instead of its hub dataset",
    )
    p.add_argument(
        "--fields",
        action="append",
        default=[],
        metavar="NAME=QUESTION_KEY,ANSWER_KEY",
        help="field names of a benchmark's file when not detected (dotted keys reach nested columns)",
    )
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=8192, help="maximum new tokens per response")
    p.add_argument(
        "--template",
        choices=list(TEMPLATES),
        default="srft",
        help="srft (paper Fig. A3), qwen_math, none (bare question), own (the model's chat template)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed; also orders multiple-choice options")
    p.add_argument("--limit", type=int, help="first N problems of each benchmark (smoke tests)")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument(
        "--generator",
        choices=["auto", "vllm", "hf"],
        default="auto",
        help="auto: vLLM when installed, else Hugging Face generate",
    )
    p.add_argument("--batch-size", type=int, help="prompts per generation call (default: vLLM 256, HF 4)")
    return p


def assignments(values: Sequence[str], flag: str, names: Sequence[str]) -> dict[str, str]:
    """``NAME=VALUE`` flags as a dict; NAME must be one of the benchmarks being run."""
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not rest:
            raise ConfigError(f"{flag} {value!r}: expected NAME=VALUE")
        if name not in names:
            raise ConfigError(f"{flag} {value!r}: '{name}' is not among --benchmarks ({', '.join(names)})")
        out[name] = rest
    return out


def check_model(model: str) -> str:
    """A model folder (made absolute) or something shaped like a hub id (ORG/NAME)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"--model {model}: the folder has no config.json (not a Hugging Face model folder)")
        return str(path.resolve())
    hub_id = HUB_ID.fullmatch(model)
    if hub_id and not Path(model.split("/")[0]).exists():
        return model
    raise ConfigError(f"--model {model}: no such model folder (and not a hub id like ORG/NAME)")


def load_tasks(args: argparse.Namespace) -> list[Task]:
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: must be at least 1")
    names = list(dict.fromkeys(n.strip() for n in args.benchmarks.split(",") if n.strip()))
    benches = [get_benchmark(n) for n in names]
    samples = assignments(args.samples, "--samples", names)
    data = assignments(args.data, "--data", names)
    fields = assignments(args.fields, "--fields", names)
    tasks = []
    for bench in benches:
        k = samples.get(bench.name, str(bench.samples))
        if not k.isdigit() or int(k) < 1:
            raise ConfigError(f"--samples {bench.name}={k}: K must be a positive integer")
        keys = None
        if bench.name in fields:
            q, sep, a = fields[bench.name].partition(",")
            if not sep:
                raise ConfigError(f"--fields {bench.name}={fields[bench.name]}: expected QUESTION_KEY,ANSWER_KEY")
            keys = Fields(q.strip(), a.strip())
        problems = load_benchmark(bench, data.get(bench.name), fields=keys, seed=args.seed, limit=args.limit)
        tasks.append(Task(bench, problems, int(k), data.get(bench.name, f"hub:{bench.hub.path}")))
    return tasks


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model)
    except OSError as e:
        raise ConfigError(f"--model {model}: cannot load its tokenizer ({str(e).splitlines()[0]})") from None


def render_prompts(tasks: Sequence[Task], template: str, tokenizer) -> dict[tuple[str, str], str]:
    from srft_openrlhf.data import render_prompt

    if template == "own" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("--template own: the model's tokenizer has no chat template; use srft, qwen_math or none")
    return {
        (t.bench.name, p.id): render_prompt(p.question, TEMPLATES[template], tokenizer)
        for t in tasks
        for p in t.problems
    }


def check_resume(out: Path, settings: dict, records: Sequence[dict], prompts: dict[tuple[str, str], str]) -> None:
    """A folder's earlier samples must come from the same model, sampling settings and prompts."""
    run_file = out / "run.json"
    if run_file.is_file():
        before = json.loads(run_file.read_text(encoding="utf-8"))
        changed = [k for k in RUN_KEYS if before.get(k) != settings[k]]
        if changed:
            raise ConfigError(
                f"{out} holds samples made with other {', '.join(changed)} "
                f"({', '.join(f'{k}={before.get(k)!r}' for k in changed)}); use a new --out"
            )
    for r in records:
        prompt = prompts.get((r["benchmark"], r["id"]))
        if prompt is not None and prompt != r["prompt"]:
            raise ConfigError(
                f"{out / SAMPLES}: {r['benchmark']} problem {r['id']} was generated from a different "
                "prompt (other data file, template or tokenizer?); use a new --out"
            )


def missing_samples(tasks: Sequence[Task], records: Sequence[dict]) -> dict[str, list[tuple[Problem, list[int]]]]:
    """For each benchmark, the problems with samples still to generate and those sample indices."""
    done = {(r["benchmark"], r["id"], r["sample"]) for r in records}
    todo = {}
    for t in tasks:
        wanted = [(p, [s for s in range(t.k) if (t.bench.name, p.id, s) not in done]) for p in t.problems]
        todo[t.bench.name] = [(p, s) for p, s in wanted if s]
    return todo


def generate_batch(
    task: Task,
    batch: Sequence[tuple[Problem, list[int]]],
    generator: EvalGenerator,
    prompts: dict[tuple[str, str], str],
    seed: int,
) -> list[dict]:
    """Generate and grade one batch (all its problems miss the same number of samples)."""
    name = task.bench.name
    texts = [prompts[(name, p.id)] for p, _ in batch]
    seeds = [prompt_seed(seed, name, p.id, missing[0]) for p, missing in batch]
    completions = generator.generate(texts, len(batch[0][1]), seeds)
    flat = [(p, s, c, text) for (p, missing), cs, text in zip(batch, completions, texts) for s, c in zip(missing, cs)]
    verdicts = grade_responses(task.bench.kind, [c.text for _, _, c, _ in flat], [p.answer for p, _, _, _ in flat])
    return [
        {
            "benchmark": name,
            "id": p.id,
            "sample": s,
            "kind": task.bench.kind,
            "prompt": text,
            "response": c.text,
            "answer": p.answer,
            **asdict(v),
            "n_tokens": c.n_tokens,
            "truncated": c.truncated,
        }
        for (p, s, c, text), v in zip(flat, verdicts)
    ]


def evaluate(
    tasks: Sequence[Task],
    prompts: dict[tuple[str, str], str],
    out: Path,
    make_generator: Callable[[], EvalGenerator],
    *,
    seed: int,
    batch_size: int | None,
    settings: dict,
) -> list[dict]:
    """Generate the missing samples (appended to ``out/samples.jsonl`` after every batch) and
    return the records of the requested problems and sample indices."""
    from tqdm import tqdm

    path = out / SAMPLES
    records = read_samples(path)
    check_resume(out, settings, records, prompts)
    (out / "run.json").write_text(json.dumps({k: settings[k] for k in RUN_KEYS}, indent=2) + "\n", encoding="utf-8")
    todo = missing_samples(tasks, records)
    generator = make_generator() if any(todo.values()) else None
    size = batch_size or (generator.default_batch_size if generator else 1)
    with path.open("a", encoding="utf-8") as f:
        for t in tasks:
            pending = todo[t.bench.name]
            total = t.k * len(t.problems)
            bar = tqdm(total=total, initial=total - sum(len(s) for _, s in pending), desc=t.bench.name, unit="sample")
            for n in sorted({len(s) for _, s in pending}):  # one n per generation call
                same = [item for item in pending if len(item[1]) == n]
                for i in range(0, len(same), size):
                    assert generator is not None  # there is pending work, so make_generator() ran
                    new = generate_batch(t, same[i : i + size], generator, prompts, seed)
                    append_samples(f, new)
                    records.extend(new)
                    bar.update(len(new))
            bar.close()
    wanted = {(t.bench.name, p.id): t.k for t in tasks for p in t.problems}
    unique: dict[tuple, dict] = {}
    for r in records:  # a sample recorded twice (a hand-merged file) counts once
        unique.setdefault((r["benchmark"], r["id"], r["sample"]), r)
    return [r for r in unique.values() if r["sample"] < wanted.get((r["benchmark"], r["id"]), 0)]


def run(args: argparse.Namespace) -> int:
    model = check_model(args.model)
    tasks = load_tasks(args)  # every data problem surfaces before minutes of engine start
    tokenizer = load_tokenizer(model)
    prompts = render_prompts(tasks, args.template, tokenizer)
    sampling = DecodeSettings(args.temperature, args.top_p, args.max_tokens)
    kind = resolve_generator(args.generator)
    settings = {
        "model": model,
        "template": args.template,
        **asdict(sampling),
        "seed": args.seed,
        "generator": kind,
        "tensor_parallel_size": args.tensor_parallel_size,
        "limit": args.limit,
        "samples": {t.bench.name: t.k for t in tasks},
        "data": {t.bench.name: t.source for t in tasks},
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def make_generator() -> EvalGenerator:
        return build_generator(
            kind, model, tokenizer, sampling, seed=args.seed, tensor_parallel_size=args.tensor_parallel_size
        )

    records = evaluate(
        tasks, prompts, args.out, make_generator, seed=args.seed, batch_size=args.batch_size, settings=settings
    )
    summary = summarize(records, model=model, settings=settings)
    write_outputs(args.out, summary)
    print(results_markdown(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except UserError as e:
        print(f"evaluation: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
