"""Throughput of the batched math reward: sequential (one process) vs the worker pool; with
``--hostile``, the delay one hostile sample adds to a batch.

    python benchmarks/bench_reward.py [--n 250] [--workers 2] [--modes either,oat,math_verify]
                                   [--benchmarks ../shared/benchmarks] [--out bench_reward.json]
    python benchmarks/bench_reward.py --hostile [--n 32] [--workers 2] [--timeout 5] [--repeats 2]
                                   [--out docs/results/reward_hostile_cpu.json]

Responses are built from the shared benchmark answers when that folder exists (half
correct: "... so the answer is \\boxed{GOLD}", half another row's answer), else from
synthetic arithmetic answers. Both paths are first warmed up on answers that are not
measured (a fresh process spends seconds importing sympy's lazy parts). Then, per mode,
sequential and pool grade the same fresh slice of answers; math-verify memoises parses
and sympy caches expressions, so this process's caches are cleared before its run and
the workers have not seen the slice. The load average is recorded: on cores shared with
other work the pool cannot beat the sequential loop.

``--hostile``: a batch of ``--n`` synthetic samples (a training step's grading) is graded
as it is, then with its first sample replaced by each hostile input of
tests/test_reward_hostile.py (and its gold by theirs), on the two paths a rollout engine grades on: the worker pool
and the in-process fallback in a worker thread (as OpenRLHF's ``asyncio.to_thread`` calls
it). Both batches are graded once untimed first (warm caches); the delay is the difference
of the two times, its worst over ``--repeats``.
Prints a table and writes JSON. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srft_openrlhf.reward.batch import batch_rewards, close_pool, score_math_sample  # noqa: E402
from srft_openrlhf.reward.math_grader import MODES, clean_ground_truth  # noqa: E402

HPT_FILES = ("AIME24", "AMC23", "MATH-500", "Minerva", "Olympiad-Bench")


def benchmark_golds(folder: Path) -> list[str]:
    golds = []
    for name in HPT_FILES:
        path = folder / "hpt" / f"{name}.json"
        if path.exists():
            golds += [row["answer"] for row in json.loads(path.read_text())]
    return golds


def synthetic_golds(n: int, rng: random.Random) -> list[str]:
    forms = [
        lambda: str(rng.randint(0, 999)),
        lambda: f"\\frac{{{rng.randint(1, 50)}}}{{{rng.randint(51, 99)}}}",
        lambda: f"{rng.randint(1, 9)}\\sqrt{{{rng.choice([2, 3, 5, 7])}}}",
        lambda: f"({rng.randint(-9, 9)}, {rng.randint(-9, 9)})",
        lambda: f"{rng.randint(1, 99)}^\\circ",
    ]
    return [rng.choice(forms)() for _ in range(n)]


def make_samples(golds: list[str], rng: random.Random) -> tuple[list[str], list[str]]:
    responses, truths = [], []
    for k, gold in enumerate(golds):
        said = gold if k % 2 == 0 else golds[rng.randrange(len(golds))]
        thinking = "Let me work through this carefully. " * rng.randint(5, 40)
        responses.append(f"<think>\n{thinking}</think>\nSo the answer is $\\boxed{{{clean_ground_truth(said)}}}$.")
        truths.append(gold)
    return responses, truths


def clear_caches() -> None:
    """Forget math-verify's memoised parses and sympy's expression cache in this process."""
    import sympy.core.cache
    from math_verify import parser

    parser.parse_latex_cached.cache_clear()
    parser.parse_expr_cached.cache_clear()
    sympy.core.cache.clear_cache()


def run(mode: str, workers: int, responses: list[str], truths: list[str], timeout_s: float) -> dict:
    start, cpu_start = time.perf_counter(), time.process_time()
    if workers == 0:
        scored = [score_math_sample(r, g, mode, timeout_s) for r, g in zip(responses, truths)]
        rewards = [reward for reward, _ in scored]
        timeouts = sum(d["status"] == "timeout" for _, d in scored)
    else:
        result = batch_rewards(responses, truths, mode=mode, timeout_s=timeout_s, num_workers=workers)
        rewards, timeouts = result.rewards, result.timeouts
    seconds = time.perf_counter() - start
    # CPU per sample of this process: the sequential cost, robust to other load on the cores.
    cpu_ms = (time.process_time() - cpu_start) * 1000 / len(responses) if workers == 0 else None
    return {
        "mode": mode,
        "method": "sequential" if workers == 0 else f"pool-{workers}",
        "samples": len(responses),
        "seconds": round(seconds, 3),
        "samples_per_s": round(len(responses) / seconds, 1),
        "mean_reward": round(sum(rewards) / len(rewards), 3),
        "timeouts": timeouts,
        "cpu_ms_per_sample": None if cpu_ms is None else round(cpu_ms, 2),
    }


def hostile_delays(args: argparse.Namespace, rng: random.Random) -> int:
    """``--hostile`` (module docstring): per path and hostile kind, the delay one sample adds."""
    sys.path.insert(0, str(ROOT / "tests"))  # not a package; a "tests" installed elsewhere would shadow it
    from test_reward_hostile import HOSTILE, HOSTILE_GOLD

    responses, truths = make_samples(synthetic_golds(args.n, rng), rng)
    thread = ThreadPoolExecutor(max_workers=1)
    paths = {
        f"pool-{args.workers}": lambda r, t: batch_rewards(r, t, timeout_s=args.timeout, num_workers=args.workers),
        # what grade_never_raising falls back to when the pool cannot start, in OpenRLHF's thread
        "in-process thread": lambda r, t: thread.submit(
            batch_rewards, r, t, timeout_s=args.timeout, num_workers=0
        ).result(),
    }
    rows = []
    load_before = os.getloadavg()[0]
    for path, grade in paths.items():
        for kind, (text, *_) in HOSTILE.items():
            # graded against the tests' gold: a tuple or interval gold can end math-verify early
            batch, golds = [text, *responses[1:]], [HOSTILE_GOLD, *truths[1:]]
            grade(responses, truths), grade(batch, golds)  # warm-up, untimed
            worst: dict = {}
            for _ in range(args.repeats):
                start = time.perf_counter()
                grade(responses, truths)
                normal_s = time.perf_counter() - start
                start = time.perf_counter()
                result = grade(batch, golds)
                hostile_s = time.perf_counter() - start
                if not worst or hostile_s - normal_s > worst["delay_s"]:
                    worst = {"normal_s": normal_s, "hostile_s": hostile_s, "delay_s": hostile_s - normal_s}
            rows.append(
                {
                    "path": path,
                    "kind": kind,
                    "status": result.details[0]["status"],
                    **{k: round(v, 3) for k, v in worst.items()},
                }
            )
    load_after = os.getloadavg()[0]
    close_pool()
    thread.shutdown()

    header = f"{'path':<18} {'kind':<14} {'status':<8} {'normal s':>8} {'hostile s':>9} {'delay s':>7}"
    print(
        f"delay of one hostile sample in a batch of {args.n} on {os.cpu_count()} CPUs (load average "
        f"{load_before:.1f} -> {load_after:.1f}), per-sample timeout {args.timeout} s, worst of {args.repeats}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['path']:<18} {r['kind']:<14} {r['status']:<8} {r['normal_s']:>8.2f} {r['hostile_s']:>9.2f} "
            f"{r['delay_s']:>7.2f}"
        )
    report = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "batch": args.n,
        "workers": args.workers,
        "timeout_s": args.timeout,
        "repeats": args.repeats,
        "worst_delay_s": {path: max(r["delay_s"] for r in rows if r["path"] == path) for path in paths},
        "results": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=250, help="samples per mode (--hostile: the batch)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--timeout", type=float, default=5.0, help="per-sample timeout (s)")
    parser.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench_reward.json"))
    parser.add_argument("--hostile", action="store_true", help="the delay one hostile sample adds (docstring)")
    parser.add_argument("--repeats", type=int, default=2, help="--hostile: timed repeats per kind")
    args = parser.parse_args(argv)
    if args.hostile:
        return hostile_delays(args, random.Random(args.seed))

    rng = random.Random(args.seed)
    golds = benchmark_golds(args.benchmarks)
    source = "shared benchmark answers" if golds else "synthetic answers"
    modes = args.modes.split(",")
    warmup = 100
    golds = golds or synthetic_golds(warmup + args.n * len(modes), rng)
    rng.shuffle(golds)
    if warmup + args.n * len(modes) > len(golds):
        parser.error(f"--n {args.n}: only {len(golds)} answers for {len(modes)} modes plus {warmup} to warm up")

    start = time.perf_counter()
    batch_rewards(["\\boxed{1}"] * args.workers, ["1"] * args.workers, num_workers=args.workers)
    pool_start_s = time.perf_counter() - start
    responses, truths = make_samples(golds[:warmup], rng)
    run("either", 0, responses, truths, args.timeout)
    run("either", args.workers, responses, truths, args.timeout)

    load_before = os.getloadavg()[0]
    rows = []
    for k, mode in enumerate(modes):
        responses, truths = make_samples(golds[warmup + k * args.n : warmup + (k + 1) * args.n], rng)
        clear_caches()
        rows.append(run(mode, 0, responses, truths, args.timeout))
        rows.append(run(mode, args.workers, responses, truths, args.timeout))
    load_after = os.getloadavg()[0]
    close_pool()

    header = (
        f"{'mode':<12} {'method':<11} {'samples':>7} {'seconds':>8} {'samples/s':>9} "
        f"{'cpu ms/sample':>13} {'reward':>6} {'timeouts':>8}"
    )
    print(
        f"math reward throughput on {os.cpu_count()} CPUs (load average {load_before:.1f} -> {load_after:.1f}), "
        f"{source}, pool start {pool_start_s:.2f} s"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        cpu = "-" if r["cpu_ms_per_sample"] is None else f"{r['cpu_ms_per_sample']:.2f}"
        print(
            f"{r['mode']:<12} {r['method']:<11} {r['samples']:>7} {r['seconds']:>8.2f} "
            f"{r['samples_per_s']:>9.1f} {cpu:>13} {r['mean_reward']:>6.3f} {r['timeouts']:>8}"
        )
    report = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "source": source,
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "timeout_s": args.timeout,
        "pool_start_s": round(pool_start_s, 3),
        "results": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
