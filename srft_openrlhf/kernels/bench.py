"""Benchmark of the token log-prob + entropy paths (issue 4).

    python -m srft_openrlhf.kernels.bench [--quick] [--sizes 4096x152064,...] [--out FILE]

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
is given as a fraction of a device-to-device copy measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import linear_logprobs_and_entropy, token_logprobs_and_entropy

FULL_SIZES = [(4096, 32000), (4096, 152064), (16384, 32000), (16384, 152064)]
QUICK_SIZES = [(4096, 32000), (4096, 152064)]
# CPU bf16 matmuls run at a few GFLOP/s without AVX512-BF16: fp32 and few tokens there.
CPU_LINEAR_SIZES = [(64, 152064)]
HIDDEN = 3584
TARGET_SIZE = (4096, 152064)


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
    fn: Callable[[], None], device: torch.device, repeats: int, setup: Callable[[], None] = lambda: None
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
        return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))

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
    return int(re.search(r"MemAvailable:\s+(\d+)", meminfo).group(1)) * 1024


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

    def drop_grads() -> None:  # outside the measured call: freeing is not part of it
        for leaf in inputs:
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
    del inputs, targets, run
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def tune_triton(device: torch.device, dtype: torch.dtype, repeats: int) -> list[dict]:
    """fwd and fwd+bwd time of the Triton kernels per (BLOCK_V, num_warps) at the target size."""
    from . import triton_logprobs

    default = triton_logprobs.block_config
    n, vocab = TARGET_SIZE
    logits = torch.randn(n, vocab, dtype=dtype, device=device).mul_(3).requires_grad_()
    targets = torch.randint(0, vocab, (n,), device=device)
    rows = []
    try:
        for block, warps in ((2048, 4), (4096, 8), (8192, 8), (8192, 16), (16384, 16), (16384, 32)):
            triton_logprobs.block_config = lambda _vocab, c=(block, warps): c
            row = {"BLOCK_V": block, "num_warps": warps}
            for mode in ("fwd", "fwdbwd"):
                run = call("triton", mode, [logits], targets)
                row[f"{mode}_ms"] = median_ms(run, device, repeats, lambda: setattr(logits, "grad", None))[0]
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        triton_logprobs.block_config = default
    return rows


def find(rows: list[dict], method: str, mode: str, n: int, vocab: int) -> dict | None:
    for row in rows:
        if (row["method"], row["mode"], row["N"], row["V"]) == (method, mode, n, vocab) and "time_ms" in row:
            return row
    return None


def evaluate_targets(rows: list[dict], device: torch.device, copy: dict) -> dict:
    """The issue's targets, where the run measured what they need."""
    n, vocab = TARGET_SIZE
    out: dict[str, object] = {}
    if device.type == "cpu":
        for mode in ("fwd", "fwdbwd"):
            naive, chunked = find(rows, "naive", mode, n, vocab), find(rows, "chunked", mode, n, vocab)
            if not (naive and chunked):
                continue
            mem = chunked["peak_extra_bytes"] / naive["peak_extra_bytes"]
            out[f"cpu_{mode}_memory_ratio"] = mem
            out[f"cpu_{mode}_time_ratio"] = chunked["time_ms"] / naive["time_ms"]
            if mode == "fwdbwd":  # the gradient itself is an output every method must allocate
                grad = chunked["grad_bytes"]
                out["cpu_fwdbwd_memory_ratio_without_grad"] = (chunked["peak_extra_bytes"] - grad) / (
                    naive["peak_extra_bytes"] - grad
                )
            out[f"cpu_{mode}_met"] = mem <= 1 / 8 and out[f"cpu_{mode}_time_ratio"] <= 1.2
        naive, inplace = find(rows, "naive", "fwdbwd", n, vocab), find(rows, "chunked_inplace", "fwdbwd", n, vocab)
        if naive and inplace:
            out["cpu_fwdbwd_memory_ratio_inplace"] = inplace["peak_extra_bytes"] / naive["peak_extra_bytes"]
            out["cpu_fwdbwd_time_ratio_inplace"] = inplace["time_ms"] / naive["time_ms"]
    else:
        for size in {(r["N"], r["V"]) for r in rows}:
            fwd = find(rows, "triton", "fwd", *size)
            both, naive = find(rows, "triton", "fwdbwd", *size), find(rows, "naive", "fwdbwd", *size)
            key = f"{size[0]}x{size[1]}"
            if fwd and key in copy:
                out[f"gpu_fwd_copy_fraction_{key}"] = fwd["GBps"] / copy[key]
            if both and naive:
                out[f"gpu_fwdbwd_speedup_vs_naive_{key}"] = naive["time_ms"] / both["time_ms"]
    return out


def print_table(rows: list[dict], copy: dict) -> None:
    head = f"{'method':<16}{'mode':<8}{'N':>7}{'V':>8}{'ms':>11}{'extra MiB':>11}{'RSS MiB':>9}"
    head += f"{'GB/s':>8}{'of copy':>8}"
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
        )


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| / max |want|."""
    if want.numel() == 0:
        return 0.0
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def float64_reference(logits64: torch.Tensor, targets: torch.Tensor, temperature: float):
    """log π(y) and H in float64, both differentiable (the ``--check`` reference)."""
    log_probs = torch.log_softmax(logits64 / temperature, dim=-1)
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1), -(log_probs.exp() * log_probs).sum(-1)


def check_token_case(logits, targets, temperature, backend) -> dict[str, float]:
    """Relative errors of (log π, H, dL/dlogits) vs float64, L = Σ g·log π + Σ g'·H."""
    x = logits.detach().clone().requires_grad_()
    logp, entropy = token_logprobs_and_entropy(x, targets, temperature, True, backend=backend)
    x64 = logits.detach().double().requires_grad_()
    ref_logp, ref_entropy = float64_reference(x64, targets, temperature)
    g_logp, g_entropy = torch.randn_like(ref_logp), torch.randn_like(ref_entropy)
    ((logp * g_logp.float()).sum() + (entropy * g_entropy.float()).sum()).backward()
    ((ref_logp * g_logp).sum() + (ref_entropy * g_entropy).sum()).backward()
    return {
        "logp": rel_err(logp, ref_logp),
        "entropy": rel_err(entropy, ref_entropy),
        "grad": rel_err(x.grad, x64.grad),
    }


def check_linear_case(hidden, weight, targets, temperature, backend) -> dict[str, float]:
    """Like ``check_token_case`` for the fused LM head (reference at the emitted logits)."""
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, entropy = linear_logprobs_and_entropy(h, w, targets, temperature, True, backend=backend)
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    exact = h64 @ w64.t()
    emitted = exact + ((hidden @ weight.t()).double() - exact).detach()  # value: the head's dtype
    ref_logp, ref_entropy = float64_reference(emitted, targets, temperature)
    g_logp, g_entropy = torch.randn_like(ref_logp), torch.randn_like(ref_entropy)
    ((logp * g_logp.float()).sum() + (entropy * g_entropy.float()).sum()).backward()
    ((ref_logp * g_logp).sum() + (ref_entropy * g_entropy).sum()).backward()
    return {
        "logp": rel_err(logp, ref_logp),
        "entropy": rel_err(entropy, ref_entropy),
        "grad_hidden": rel_err(h.grad, h64.grad),
        "grad_weight": rel_err(w.grad, w64.grad),
    }


def run_checks(device: torch.device) -> list[dict]:
    """Correctness on ``device`` of every available path, without pytest (device script)."""
    odd = 151936 + 7
    huge = torch.empty(8, 4099, device=device).uniform_(-1e4, 1e4)
    token_cases = {
        "fp32_T0.7": ((3 * torch.randn(64, 1003, device=device)), 0.7, 1e-5, 1e-5),
        "bf16_odd_vocab": ((4 * torch.randn(3, odd, device=device)).bfloat16(), 1.0, 1e-5, 1e-2),
        "fp16_T1.3": ((3 * torch.randn(33, 5003, device=device)).half(), 1.3, 1e-5, 1e-2),
        "bf16_shifted_slice": ((3 * torch.randn(2, 9, 32000, device=device)).bfloat16()[:, :-1], 1.0, 1e-5, 1e-2),
        "one_row": (torch.randn(1, 31, device=device), 1.0, 1e-5, 1e-5),
        "no_rows": (torch.randn(0, 31, device=device), 1.0, 1e-5, 1e-5),
        "pm1e4": (huge, 0.7, 1e-3, 1e-3),
    }
    backends = ["torch"] + (["triton"] if device.type == "cuda" else [])
    results = []
    for backend in backends:
        for name, (logits, temperature, out_tol, grad_tol) in token_cases.items():
            targets = torch.randint(0, logits.shape[-1], logits.shape[:-1], device=device)
            errors = check_token_case(logits, targets, temperature, backend)
            ok = errors["logp"] < out_tol and errors["entropy"] < max(out_tol, 1e-5) and errors["grad"] < grad_tol
            if name == "pm1e4":  # entropies ≈ 0 there: the relative entropy error is meaningless
                ok = errors["logp"] < out_tol and errors["grad"] < grad_tol
            results.append({"path": backend, "case": name, **errors, "ok": bool(ok)})
        for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 1e-2)):
            hidden = torch.randn(37, 256, device=device).to(dtype)
            weight = (torch.randn(1001, 256, device=device) / 16).to(dtype)
            targets = torch.randint(0, 1001, (37,), device=device)
            errors = check_linear_case(hidden, weight, targets, 0.8, backend)
            ok = max(errors.values()) < tol
            results.append({"path": f"linear/{backend}", "case": str(dtype), **errors, "ok": ok})
    return results


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srft_openrlhf.kernels.bench", description=__doc__.split("\n")[0])
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
    parser.add_argument("--check", action="store_true", help="first check every path against float64 on the device")
    parser.add_argument("--tune", action="store_true", help="CUDA: time Triton block configs at the target size")
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

    checks = run_checks(device) if args.check else []
    for row in checks:
        print(json.dumps(row), flush=True)
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
    targets = evaluate_targets(rows, device, copy)
    for key, value in targets.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "memory_method": "cuda max_memory_allocated" if device.type == "cuda" else "torch.profiler allocator events",
        "copy_GBps": copy,
        "checks": checks,
        "tuning": tuning,
        "results": rows,
        "targets": targets,
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    failed = [f"{c['path']}:{c['case']}" for c in checks if not c["ok"]]
    if failed:
        print("FAILED checks:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
