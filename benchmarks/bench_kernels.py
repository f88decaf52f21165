"""Benchmark of the token log-prob + entropy paths: time and peak memory per method.

    python benchmarks/bench_kernels.py [--quick] [--sizes 4096x152064,...] [--tune] [--out FILE]

Methods, each returning fp32 (log π(y), H) per token:
- ``naive``: OpenRLHF style — logits.float(), log_softmax, gather, softmax · log_softmax;
- ``chunked``: the chunked torch path (``backend="torch"``);
- ``triton``: the Triton kernels (CUDA only);
- ``chunked_inplace``, ``triton_inplace``: the same with ``inplace_backward=True``;
- ``linear_naive``: hidden · Wᵀ (whole [N, V] logits), then ``naive``;
- ``linear_fused``: ``linear_logprobs_and_entropy`` (never builds [N, V]).
Modes: ``fwd`` (inputs require grad, as in training) and ``fwdbwd`` (plus backward of
Σ log π; the entropy carries no gradient, SRFT's default).

Time: median of ``--repeats`` runs after one warm-up.  Peak extra memory: the most bytes
held by torch's allocator during one call beyond what was held before it (inputs excluded;
outputs, saved tensors and the returned gradient included): on CUDA from
``torch.cuda.max_memory_allocated``, on CPU from the allocation/free events that
``torch.profiler`` records with ``profile_memory=True``.  On Linux CPUs the kernel's
high-water mark of resident memory (VmHWM after resetting it through /proc/self/clear_refs)
is reported next to it as an independent check.  On CUDA, achieved GB/s counts the bytes a
fused kernel must move (fwd: read logits once; fwd+bwd: read twice, write the gradient) and
is given as a fraction of a device-to-device copy measured in the same run.  ``rel_err`` is
the log-prob's error against the float64 reference (``srft_openrlhf.kernels.reference``) on
the first rows, recorded as a measurement: correctness is checked by tests/test_kernels*.py.
Prints a table and writes JSON. Not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srft_openrlhf.kernels import linear_logprobs_and_entropy, token_logprobs_and_entropy  # noqa: E402
from srft_openrlhf.kernels.reference import reference, rel_err  # noqa: E402

FULL_SIZES = [(4096, 32000), (4096, 152064), (16384, 32000), (16384, 152064)]
QUICK_SIZES = [(4096, 32000), (4096, 152064)]
# CPU bf16 matmuls run at a few GFLOP/s without AVX512-BF16: fp32 and few tokens there.
CPU_LINEAR_SIZES = [(64, 152064)]
HIDDEN = 3584
TUNE_SIZE = (4096, 152064)
ERR_ROWS = 64  # rows compared with the float64 reference (a few MiB of float64 at any vocabulary)


def naive_logprobs_and_entropy(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unfused baseline: several fp32 [N, V] tensors, the logits read several times."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(torch.softmax(logits, dim=-1) * log_probs).sum(dim=-1)
    return logp, entropy


TOKEN_METHODS: dict[str, Callable] = {
    "naive": naive_logprobs_and_entropy,
    "chunked": lambda x, t: token_logprobs_and_entropy(x, t, backend="torch"),
    "triton": lambda x, t: token_logprobs_and_entropy(x, t, backend="triton"),
    # The gradient overwrites the logits buffer: no [N, V] allocation in the backward (later
    # repeats then run on gradient values, which costs the same).
    "chunked_inplace": lambda x, t: token_logprobs_and_entropy(x, t, backend="torch", inplace_backward=True),
    "triton_inplace": lambda x, t: token_logprobs_and_entropy(x, t, backend="triton", inplace_backward=True),
}
LINEAR_METHODS: dict[str, Callable] = {
    "linear_naive": lambda h, w, t: naive_logprobs_and_entropy(h @ w.t(), t),
    "linear_fused": lambda h, w, t: linear_logprobs_and_entropy(h, w, t),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(
    fn: Callable[[], object], device: torch.device, repeats: int, setup: Callable[[], None] = lambda: None
) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` in ms after one warm-up run (``setup`` untimed before each)."""
    setup()
    fn()
    times = []
    for _ in range(repeats):
        setup()
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), times


def allocator_peak_extra(fn: Callable[[], None], device: torch.device) -> int:
    """Peak bytes held by torch's allocator during ``fn`` beyond those held before it."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        held += event.nbytes()
        peak = max(peak, held)
    return peak


def rss_peak_extra(fn: Callable[[], None]) -> int | None:
    """Rise of the resident-set high-water mark during ``fn`` (Linux), else None."""

    def status_kb(key: str) -> int:
        match = re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text())
        if match is None:
            raise RuntimeError(f"no {key} in /proc/self/status")
        return int(match.group(1))

    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = status_kb("VmRSS")
    except OSError:
        return None
    fn()
    return (status_kb("VmHWM") - before) * 1024


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo").read_text()
    match = re.search(r"MemAvailable:\s+(\d+)", meminfo)
    if match is None:
        raise RuntimeError("no MemAvailable in /proc/meminfo")
    return int(match.group(1)) * 1024


def needed_bytes(method: str, n: int, vocab: int, hidden: int, itemsize: int) -> int:
    """Rough peak of one call, to skip what cannot fit instead of crashing the machine."""
    logits = n * vocab * itemsize
    fp32 = n * vocab * 4
    return {
        "naive": 4 * fp32 + logits,
        "chunked": 2 * logits + (1 << 30),
        "triton": 2 * logits,
        "chunked_inplace": logits + (1 << 30),
        "triton_inplace": logits,
        "linear_naive": 4 * fp32 + 3 * logits,
        "linear_fused": 2 * vocab * hidden * itemsize + (1 << 30),
    }[method]


def make_inputs(method: str, n: int, vocab: int, hidden: int, dtype: torch.dtype, device: torch.device):
    """Leaf inputs (requiring grad) and targets; logits ~ N(0, 3²) like a trained head's."""
    targets = torch.randint(0, vocab, (n,), device=device)
    if method in TOKEN_METHODS:
        logits = torch.randn(n, vocab, dtype=dtype, device=device).mul_(3)
        return [logits.requires_grad_()], targets
    x = torch.randn(n, hidden, dtype=dtype, device=device)
    w = torch.randn(vocab, hidden, dtype=dtype, device=device).mul_(3 / math.sqrt(hidden))
    return [x.requires_grad_(), w.requires_grad_()], targets


def call(method: str, mode: str, inputs: list[torch.Tensor], targets: torch.Tensor) -> Callable[[], None]:
    fn = TOKEN_METHODS.get(method) or LINEAR_METHODS[method]

    def run() -> None:
        logp, _ = fn(*inputs, targets)
        if mode == "fwdbwd":
            logp.sum().backward()

    return run


def copy_gbps(n: int, vocab: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second) of an [n, V] tensor."""
    src = torch.randn(n, vocab, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    ms, _ = median_ms(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() * src.element_size() / ms / 1e6


def logprob_error(method: str, inputs: list[torch.Tensor], targets: torch.Tensor) -> float:
    """Relative error of the method's log π(y) against the float64 reference on the first rows."""
    fn = TOKEN_METHODS.get(method) or LINEAR_METHODS[method]
    rows = [leaf.detach()[:ERR_ROWS] for leaf in inputs]
    if method in LINEAR_METHODS:
        rows[1] = inputs[1].detach()  # the whole head, a few tokens
    with torch.no_grad():
        logp, _ = fn(*[r.clone() for r in rows], targets[:ERR_ROWS])
        logits = rows[0] if method in TOKEN_METHODS else rows[0] @ rows[1].t()
        return rel_err(logp, reference(logits, targets[:ERR_ROWS])[0])


def bench_one(method, mode, n, vocab, hidden, dtype, device, repeats, rss) -> dict:
    row = {"method": method, "mode": mode, "N": n, "V": vocab, "dtype": str(dtype).removeprefix("torch.")}
    if method in LINEAR_METHODS:
        row["H"] = hidden
    need = needed_bytes(method, n, vocab, hidden, dtype.itemsize)
    if need > 0.85 * available_bytes(device):
        row["skipped"] = f"needs ~{need / 2**30:.1f} GiB, {available_bytes(device) / 2**30:.1f} GiB free"
        return row
    inputs, targets = make_inputs(method, n, vocab, hidden, dtype, device)
    run = call(method, mode, inputs, targets)

    def drop_grads(leaves: Sequence[torch.Tensor] = inputs) -> None:  # outside the measured call
        for leaf in leaves:
            leaf.grad = None

    row["time_ms"], row["times_ms"] = median_ms(run, device, repeats, drop_grads)
    drop_grads()
    row["peak_extra_bytes"] = allocator_peak_extra(run, device)
    if mode == "fwdbwd":
        row["grad_bytes"] = sum(leaf.numel() * leaf.element_size() for leaf in inputs)
    if rss and device.type == "cpu":
        drop_grads()
        row["rss_peak_extra_bytes"] = rss_peak_extra(run)
    if device.type == "cuda" and method in TOKEN_METHODS:
        moved = n * vocab * dtype.itemsize * (1 if mode == "fwd" else 3)
        row["GBps"] = moved / row["time_ms"] / 1e6
    row["rel_err"] = logprob_error(method, inputs, targets)
    del inputs, targets, run, drop_grads
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def tune_triton(device: torch.device, dtype: torch.dtype, repeats: int) -> list[dict]:
    """fwd and fwd+bwd time of the Triton kernels per (BLOCK_V, num_warps) at ``TUNE_SIZE``."""
    from srft_openrlhf.kernels import triton_logprobs

    default = triton_logprobs.block_config
    n, vocab = TUNE_SIZE
    logits = torch.randn(n, vocab, dtype=dtype, device=device).mul_(3).requires_grad_()
    targets = torch.randint(0, vocab, (n,), device=device)
    rows = []
    try:
        for block, warps in ((2048, 4), (4096, 8), (8192, 8), (8192, 16), (16384, 16), (16384, 32)):

            def fixed_config(vocab: int, c: tuple[int, int] = (block, warps)) -> tuple[int, int]:
                return c

            triton_logprobs.block_config = fixed_config
            row: dict[str, float] = {"BLOCK_V": block, "num_warps": warps}
            for mode in ("fwd", "fwdbwd"):
                run = call("triton", mode, [logits], targets)
                row[f"{mode}_ms"] = median_ms(run, device, repeats, lambda: setattr(logits, "grad", None))[0]
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        triton_logprobs.block_config = default
    return rows


def cpu_info() -> dict[str, str]:
    """The CPU's model name and SIMD flags (as ``scripts/reproduce_toy_openrlhf.sh`` records
    them) and the vector ISA torch's CPU kernels dispatched to: CPU timings depend on all three."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""

    def field(name: str) -> str:
        return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith(name)), "")

    simd = sorted(f for f in field("flags").split() if f.startswith(("avx", "sse4", "amx", "fma")))
    return {
        "model": field("model name") or platform.processor() or "unknown",
        "simd": " ".join(simd),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def print_table(rows: list[dict], copy: dict) -> None:
    head = f"{'method':<16}{'mode':<8}{'N':>7}{'V':>8}{'ms':>11}{'extra MiB':>11}{'RSS MiB':>9}"
    head += f"{'GB/s':>8}{'of copy':>8}{'rel err':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if "skipped" in r:
            print(f"{r['method']:<16}{r['mode']:<8}{r['N']:>7}{r['V']:>8}  skipped: {r['skipped']}")
            continue
        rss = r.get("rss_peak_extra_bytes")
        gbps = r.get("GBps")
        frac = gbps / copy[f"{r['N']}x{r['V']}"] if gbps and f"{r['N']}x{r['V']}" in copy else None
        print(
            f"{r['method']:<16}{r['mode']:<8}{r['N']:>7}{r['V']:>8}{r['time_ms']:>11.1f}"
            f"{r['peak_extra_bytes'] / 2**20:>11.0f}{'' if rss is None else f'{rss / 2**20:.0f}':>9}"
            f"{'' if gbps is None else f'{gbps:.0f}':>8}{'' if frac is None else f'{frac:.2f}':>8}"
            f"{r['rel_err']:>10.1e}"
        )


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        if item:
            n, vocab = item.lower().split("x")  # a ValueError: argparse reports the bad --sizes value
            sizes.append((int(n), int(vocab)))
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_kernels.py", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help=f"token sizes {QUICK_SIZES} only")
    parser.add_argument("--sizes", type=parse_sizes, help="token-method sizes, e.g. 4096x152064,1024x32000")
    parser.add_argument("--linear-sizes", type=parse_sizes, help="linear-method sizes (default: --sizes on CUDA, "
                        f"{CPU_LINEAR_SIZES} on CPU)")  # fmt: skip
    parser.add_argument("--methods", default=",".join([*TOKEN_METHODS, *LINEAR_METHODS]))
    parser.add_argument("--modes", default="fwd,fwdbwd")
    parser.add_argument("--dtype", default="bfloat16", help="logits / hidden dtype (default bfloat16)")
    parser.add_argument("--linear-dtype", help="linear methods' dtype (default: --dtype on CUDA, float32 on CPU)")
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-rss", action="store_true", help="skip the CPU resident-memory cross-check")
    parser.add_argument("--tune", action="store_true", help=f"CUDA: time Triton block configs at {TUNE_SIZE}")
    parser.add_argument("--out", default="kernels_bench.json")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    linear_dtype = getattr(torch, args.linear_dtype or (args.dtype if device.type == "cuda" else "float32"))
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    linear_sizes = args.linear_sizes or (sizes if device.type == "cuda" else CPU_LINEAR_SIZES)
    methods = [m for m in args.methods.split(",") if m]
    if device.type != "cuda":  # compiled Triton needs a GPU; the interpreter is for tests
        methods = [m for m in methods if not m.startswith("triton")]
    torch.manual_seed(0)

    tuning = tune_triton(device, dtype, args.repeats) if args.tune and device.type == "cuda" else []

    copy: dict[str, float] = {}
    if device.type == "cuda":
        for n, vocab in sizes:
            copy[f"{n}x{vocab}"] = copy_gbps(n, vocab, dtype, device, args.repeats)
    rows = []
    for method in methods:
        linear = method in LINEAR_METHODS
        for n, vocab in linear_sizes if linear else sizes:
            for mode in args.modes.split(","):
                row = bench_one(
                    method, mode, n, vocab, args.hidden, linear_dtype if linear else dtype, device,
                    args.repeats, rss=not args.no_rss,
                )  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)

    print()
    print_table(rows, copy)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu": cpu_info(),
        "command": " ".join(["python benchmarks/bench_kernels.py", *(sys.argv[1:] if argv is None else argv)]),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "memory_method": "cuda max_memory_allocated" if device.type == "cuda" else "torch.profiler allocator events",
        "copy_GBps": copy,
        "tuning": tuning,
        "results": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
