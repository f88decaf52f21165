"""Benchmark of one actor training step at the real vocabulary: peak activation memory and time.

    python benchmarks/bench_cluster_step.py [--lengths 1024,4096,8192] [--methods ...] [--out FILE]

The model is Qwen2-shaped with Qwen2's vocabulary (151,936) and a small body (``--hidden``,
``--layers``; SDPA attention, fp32, untied embeddings, random weights), so that a step at 8k tokens
runs on a 2-core CPU while the [tokens, vocab] tensors are as large as a real model's. One sequence
of T tokens (micro-batch 1): a prompt of T/8 tokens, the rest response. One step is the forward and
the backward of the actor loss (no optimizer step):

- ``openrlhf_logits``: SRFT's cluster step as it was before the fused head
  (``SRFTActorPPOTrainer.fused_head = False``): OpenRLHF's ``Actor`` returns the fp32 logits, the
  token kernel reads them (in-place backward), ``srft_loss`` (the paper's defaults);
- ``cluster_fused``: the cluster step now (the actor's model with the fused LM head), ``srft_loss``;
- ``local_fused``: the local backend, ``models.causal_token_logprobs(..., fused_head=True)``, ``srft_loss``;
- ``openrlhf_grpo``: OpenRLHF's own GRPO actor step as its ``ActorPPOTrainer.training_step`` runs it:
  ``Actor.forward`` with the action mask (fp32 logits, ``log_probs_from_logits``), ``PolicyLoss``.

Each (method, length) runs in a fresh subprocess. The parameter gradients and the AdamW moments are
allocated first (zero gradients, one AdamW step); what torch's allocator then holds (model,
gradients, AdamW moments, inputs) is the baseline. Peak activation memory: the most bytes held by torch's CPU
allocator during one forward + backward beyond the baseline, from the allocation / free events that
``torch.profiler`` records with ``profile_memory=True``; the rise of the process's resident
high-water mark over the same call (VmHWM, reset through /proc/self/clear_refs; it includes the
profiler's own records) is reported next to it as an independent check. Time: median of
``--repeats`` forward + backward runs after that one, without the profiler. Prints a table, the growth of the peak
per token (a line through the lengths) and the ratios to ``openrlhf_grpo``, and writes JSON. A case
that would not fit into the free memory is skipped (OpenRLHF's step at 8k needs about 5 × the 5 GB
of fp32 logits); the ratio at that length is then against the baseline's line. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_kernels import allocator_peak_extra, available_bytes, cpu_info, rss_peak_extra  # noqa: E402

VOCAB = 151936
METHODS = ("openrlhf_logits", "cluster_fused", "local_fused", "openrlhf_grpo")
BASELINE = "openrlhf_grpo"


def build_model(hidden: int, layers: int, max_len: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=max_len,
        tie_word_embeddings=False,
        use_cache=False,
    )
    model = Qwen2ForCausalLM(config).train()
    # transformers' default: eager attention's [T, T] matrices would dwarf what is compared here
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"expected SDPA attention, got {model.config._attn_implementation}")
    return model


def make_batch(length: int) -> SimpleNamespace:
    """One sequence: a prompt of length/8 tokens, then the response; π_old and Â of a rollout."""
    generator = torch.Generator().manual_seed(1)
    response = length - length // 8
    return SimpleNamespace(
        sequences=torch.randint(0, VOCAB, (1, length), generator=generator),
        attention_mask=torch.ones(1, length, dtype=torch.long),
        action_mask=torch.ones(1, response, dtype=torch.bool),
        old_log_probs=-torch.rand(1, response, generator=generator) * 10,
        advantages=torch.ones(1),
        rewards=torch.ones(1),
        is_demo=torch.zeros(1, dtype=torch.bool),
    )


def step_fn(method: str, model, batch: SimpleNamespace) -> Callable[[], None]:
    """Forward + backward of one actor step by ``method`` (see the module docstring)."""
    from openrlhf.models import Actor, PolicyLoss

    from srft_openrlhf.algorithm import LossConfig, srft_loss
    from srft_openrlhf.models import causal_token_logprobs
    from srft_openrlhf.openrlhf.actor import SRFTActorPPOTrainer

    actor = Actor(model)  # an instance: OpenRLHF keeps it as the model (what DeepSpeed would wrap)
    actor.packing_samples = False  # set by Actor only when it loads the model from a path
    config = LossConfig()

    def srft_backward(log_probs: torch.Tensor, entropy: torch.Tensor) -> None:
        loss, _ = srft_loss(
            log_probs, batch.old_log_probs, entropy, batch.action_mask, batch.advantages, batch.rewards,
            batch.is_demo, config,
        )  # fmt: skip
        loss.backward()

    if method in ("openrlhf_logits", "cluster_fused"):
        trainer = SRFTActorPPOTrainer.__new__(SRFTActorPPOTrainer)  # its __init__ needs DeepSpeed
        trainer.actor, trainer.strategy = actor, SimpleNamespace(ring_attn_group=None)
        trainer.fused_head = method == "cluster_fused"

        def run() -> None:
            log_probs, entropy, _ = trainer.response_logprobs_and_entropy(
                batch.sequences, batch.attention_mask, batch.action_mask, entropy_grad=False
            )
            srft_backward(log_probs, entropy)

    elif method == "local_fused":
        width = batch.action_mask.shape[1]

        def run() -> None:
            log_probs, entropy = causal_token_logprobs(model, batch.sequences, batch.attention_mask, fused_head=True)
            srft_backward(log_probs[:, -width:], entropy[:, -width:])

    else:
        policy_loss = PolicyLoss()  # OpenRLHF's GRPO defaults: clip 0.2, token-mean
        advantages = batch.advantages[:, None] * batch.action_mask

        def run() -> None:
            # ``output`` (the fp32 logits) stays referenced through the backward, as in training_step
            log_probs, output = actor(
                batch.sequences, batch.action_mask, attention_mask=batch.attention_mask, return_output=True
            )
            loss = policy_loss(log_probs, batch.old_log_probs, advantages, action_mask=batch.action_mask)[0]
            loss.backward()
            del output

    return run


def run_case(method: str, length: int, hidden: int, layers: int, repeats: int) -> dict:
    """One (method, length) in this process: the peak over the baseline (profiled, also the warm-up), then the time."""
    from srft_openrlhf.openrlhf.cpu_compat import STUB_DIR

    sys.path.insert(0, str(STUB_DIR))  # openrlhf.models imports flash_attn.bert_padding
    model = build_model(hidden, layers, length)
    batch = make_batch(length)
    run = step_fn(method, model, batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    for param in model.parameters():  # the gradient buffers and the AdamW moments: the baseline
        param.grad = torch.zeros_like(param)
    optimizer.step()
    measured: dict[str, int] = {}
    # first, also the warm-up: the resident high-water mark over the same profiled call (the
    # profiler's event records included)
    rss = rss_peak_extra(lambda: measured.update(peak=allocator_peak_extra(run, torch.device("cpu"))))
    peak = measured["peak"]
    times = []
    for _ in range(repeats):
        optimizer.zero_grad(set_to_none=False)
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters())
    return {
        "method": method,
        "T": length,
        "response_tokens": int(batch.action_mask.sum()),
        "time_s": statistics.median(times),
        "times_s": times,
        "peak_activation_bytes": peak,
        "rss_peak_extra_bytes": rss,
        "parameters": params,
    }


def needed_bytes(method: str, length: int) -> int:
    """Rough peak of a case (measured at 1k: 1.25 and 4 × the fp32 logits), to skip what cannot fit
    instead of crashing a shared machine."""
    logits = length * VOCAB * 4
    return {"openrlhf_logits": 2 * logits, "openrlhf_grpo": 5 * logits}.get(method, 0) + (2 << 30)


def in_subprocess(method: str, length: int, args: argparse.Namespace) -> dict:
    if needed_bytes(method, length) > 0.85 * available_bytes(torch.device("cpu")):
        return {"method": method, "T": length, "skipped": f"needs ~{needed_bytes(method, length) / 2**30:.0f} GiB"}
    command = [
        sys.executable, __file__, "--case", f"{method}:{length}", "--hidden", str(args.hidden),
        "--layers", str(args.layers), "--repeats", str(args.repeats),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"method": method, "T": length, "failed": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def linear_fits(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per method, the least-squares line peak = a + b·T through the measured lengths: b is the
    peak activation memory per token (T·V·4 bytes would be 594 KiB), ``max_residual`` how far the
    worst point is off the line, relative to its peak."""
    out = {}
    for method in METHODS:
        done = [(r["T"], r["peak_activation_bytes"]) for r in rows if r["method"] == method and "time_s" in r]
        if len(done) < 2:
            continue
        mean_t = statistics.fmean(t for t, _ in done)
        mean_m = statistics.fmean(m for _, m in done)
        slope = sum((t - mean_t) * (m - mean_m) for t, m in done) / sum((t - mean_t) ** 2 for t, _ in done)
        intercept = mean_m - slope * mean_t
        residual = max(abs(m - intercept - slope * t) / m for t, m in done)
        out[method] = {"bytes_per_token": slope, "intercept_bytes": intercept, "max_residual": residual}
    return out


def ratios(rows: list[dict], fits: dict[str, dict[str, float]]) -> list[dict]:
    """Peak activation memory and time of each method over ``BASELINE``'s, per length. Where the
    baseline did not fit into memory, its peak is its line's (``linear_fits``; ``extrapolated``)."""
    out = []
    base = {r["T"]: r for r in rows if r["method"] == BASELINE and "time_s" in r}
    for r in rows:
        if "time_s" not in r or r["method"] == BASELINE:
            continue
        b = base.get(r["T"])
        if b is not None:
            out.append(
                {
                    "method": r["method"],
                    "T": r["T"],
                    "memory": r["peak_activation_bytes"] / b["peak_activation_bytes"],
                    "time": r["time_s"] / b["time_s"],
                }
            )
        elif BASELINE in fits:
            line = fits[BASELINE]
            peak = line["intercept_bytes"] + line["bytes_per_token"] * r["T"]
            out.append(
                {"method": r["method"], "T": r["T"], "memory": r["peak_activation_bytes"] / peak, "extrapolated": True}
            )
    return out


def print_table(rows: list[dict], fits: dict[str, dict[str, float]], vs_base: list[dict]) -> None:
    head = f"{'method':<17}{'T':>6}{'s':>9}{'activation MiB':>16}{'RSS MiB':>9}{'vs GRPO mem':>13}{'time':>7}"
    print(head)
    print("-" * len(head))
    ratio = {(r["method"], r["T"]): r for r in vs_base}
    for r in rows:
        if "time_s" not in r:
            print(f"{r['method']:<17}{r['T']:>6}  {r.get('skipped') or 'failed: ' + r['failed'][-300:]}")
            continue
        q = ratio.get((r["method"], r["T"]))
        rss = r["rss_peak_extra_bytes"]
        memory = "" if q is None else f"{q['memory']:.3f}" + ("*" if q.get("extrapolated") else "")
        time_ratio = "" if q is None or "time" not in q else f"{q['time']:.2f}"
        print(
            f"{r['method']:<17}{r['T']:>6}{r['time_s']:>9.2f}{r['peak_activation_bytes'] / 2**20:>16.0f}"
            f"{'' if rss is None else f'{rss / 2**20:.0f}':>9}{memory:>13}{time_ratio:>7}"
        )
    if any(q.get("extrapolated") for q in vs_base):
        print(f"* against {BASELINE}'s peak on its line through the lengths it was measured at")
    print()
    for method, line in fits.items():
        print(
            f"{method:<17} {line['bytes_per_token'] / 1024:8.1f} KiB per token (T·V·4 bytes would be "
            f"{VOCAB * 4 / 1024:.0f} KiB), worst point {100 * line['max_residual']:.1f}% off the line"
        )


def git_commit() -> str:
    """The checkout's commit, ``-dirty`` with uncommitted changes."""
    done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_cluster_step.py", description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="1024,2048,4096,8192", help="sequence lengths T (micro-batch 1)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--hidden", type=int, default=64, help="hidden size of the model body")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per case (median)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # METHOD:T, run in this process (the subprocess)
    parser.add_argument("--out", default="cluster_step_bench.json")
    args = parser.parse_args(argv)

    if args.case:
        method, length = args.case.split(":")
        print(json.dumps(run_case(method, int(length), args.hidden, args.layers, args.repeats)))
        return 0
    load_before = os.getloadavg()
    rows = []
    for length in [int(x) for x in args.lengths.split(",") if x]:
        for method in [m for m in args.methods.split(",") if m]:
            row = in_subprocess(method, length, args)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "times_s"}), flush=True)
    fits = linear_fits(rows)
    vs_base = ratios(rows, fits)
    print()
    print_table(rows, fits, vs_base)
    report = {
        "cpu": cpu_info(),
        "command": " ".join(["python benchmarks/bench_cluster_step.py", *(sys.argv[1:] if argv is None else argv)]),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "commit": git_commit(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "model": {
            "vocab": VOCAB,
            "hidden": args.hidden,
            "layers": args.layers,
            "dtype": "float32",
            "attention": "sdpa",
        },
        "memory_method": "torch.profiler allocator events, beyond model + gradients + AdamW state (fresh process)",
        "results": rows,
        "linear_fits": fits,
        f"vs_{BASELINE}": vs_base,
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
