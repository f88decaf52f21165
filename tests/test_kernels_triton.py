"""Triton kernels on CPU: run under TRITON_INTERPRET=1, compiled for sm_90.

The CUDA tests at the end run the compiled kernels where a GPU is present.

The interpreter must be switched on before triton is first imported, and other tests in the
session may already have imported it, so the kernels run in one child process per module:
this process draws the inputs (fixed seed) and checks the child's outputs against the
float64 reference (``srft_openrlhf.kernels.reference``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import QWEN_VOCAB, SEED, check_against_reference, requires_cuda, requires_triton, run_both, seed_torch

from srft_openrlhf.kernels.reference import reference, rel_err

pytestmark = requires_triton

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, torch
from srft_openrlhf.kernels import linear_logprobs_and_entropy, token_logprobs_and_entropy
cases = torch.load(sys.argv[1])
for case in cases:
    if case["kind"] == "linear":
        hidden = case["hidden"].clone().requires_grad_()
        weight = case["weight"].clone().requires_grad_()
        logp, entropy = linear_logprobs_and_entropy(
            hidden, weight, case["targets"], case["temperature"], True, backend="triton")
        (logp * case["g_logp"] + entropy * case["g_entropy"]).sum().backward()
        case["out"] = (logp.detach(), entropy.detach(), hidden.grad, weight.grad)
        continue
    leaf = case["logits"].clone().requires_grad_()
    x = leaf * 1.0 if case["inplace"] else leaf
    logp, entropy = token_logprobs_and_entropy(
        x, case["targets"], case["temperature"], case["entropy_grad"],
        inplace_backward=case["inplace"], backend="triton")
    loss = (logp * case["g_logp"]).sum()
    if case["entropy_grad"]:
        loss = loss + (entropy * case["g_entropy"]).sum()
    loss.backward()
    case["out"] = (logp.detach(), entropy.detach(), leaf.grad, entropy.requires_grad)
torch.save(cases, sys.argv[2])
import triton
print("triton", triton.__version__)
"""


def token_case(logits, targets, temperature=1.0, entropy_grad=True, inplace=False) -> dict:
    return {
        "kind": "token",
        "logits": logits,
        "targets": targets,
        "temperature": temperature,
        "entropy_grad": entropy_grad,
        "inplace": inplace,
        "g_logp": torch.randn(targets.shape),
        "g_entropy": torch.randn(targets.shape),
    }


def make_cases() -> dict[str, dict]:
    odd = QWEN_VOCAB + 7
    shifted = torch.randn(2, 5, 777)[:, :-1]
    huge = torch.empty(3, 1025).uniform_(-1e4, 1e4)
    masked = torch.randn(3, 600)
    masked[:, 500:] = float("-inf")
    return {
        "fp32": token_case(3 * torch.randn(4, 1003), torch.randint(0, 1003, (4,)), 1.0, False),
        "fp32_t": token_case(3 * torch.randn(2, 3, 1003), torch.randint(0, 1003, (2, 3)), 0.6),
        "bf16_t": token_case((3 * torch.randn(5, 999)).bfloat16(), torch.randint(0, 999, (5,)), 1.7),
        "fp16": token_case((3 * torch.randn(5, 999)).half(), torch.randint(0, 999, (5,)), 1.0),
        "odd_fp32": token_case(4 * torch.randn(2, odd), torch.randint(0, odd, (2,)), 0.9),
        "odd_bf16": token_case((4 * torch.randn(1, odd)).bfloat16(), torch.randint(0, odd, (1,)), 1.0),
        "one_row": token_case(torch.randn(1, 31), torch.randint(0, 31, (1,))),
        "no_rows": token_case(torch.randn(0, 31), torch.randint(0, 31, (0,))),
        "huge": token_case(huge, torch.randint(0, 1025, (3,)), 0.7),
        "masked": token_case(masked, torch.randint(0, 500, (3,)), 1.0),
        "shifted": token_case(shifted, torch.randint(0, 777, (2, 4)), 1.0, False),
        "inplace": token_case(torch.randn(3, 515), torch.randint(0, 515, (3,)), 0.8, True, inplace=True),
        "linear": {
            "kind": "linear",
            "hidden": torch.randn(9, 24),
            "weight": torch.randn(301, 24) / 3,
            "targets": torch.randint(0, 301, (9,)),
            "temperature": 0.8,
            "g_logp": torch.randn(9),
            "g_entropy": torch.randn(9),
        },
    }


# The Triton the GPU image resolves, installed beside the CPU stack's by scripts/install_cpu.sh.
[GPU_TRITON_PIN] = [
    line.split("==")[1].strip()
    for line in (ROOT / "requirements-triton-gpu.txt").read_text().splitlines()
    if line.startswith("triton==")
]
GPU_TRITON_DIR = Path(sys.prefix) / "triton-gpu"


@pytest.fixture(scope="module", params=["cpu-stack", "gpu-image"], ids=lambda p: f"triton-{p}")
def interpreted(request, tmp_path_factory) -> dict[str, dict]:
    """The cases run by the Triton interpreter, with the CPU stack's Triton and with the GPU image's."""
    path = [str(ROOT)]
    if request.param == "gpu-image":
        if not (GPU_TRITON_DIR / "triton").is_dir():
            pytest.skip(f"triton {GPU_TRITON_PIN} is not installed in {GPU_TRITON_DIR} (scripts/install_cpu.sh)")
        path.insert(0, str(GPU_TRITON_DIR))
    seed_torch(SEED)
    cases = make_cases()
    folder = tmp_path_factory.mktemp("triton")
    torch.save(list(cases.values()), folder / "in.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder / "in.pt"), str(folder / "out.pt")],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    version = proc.stdout.split("triton ")[-1].strip()
    if request.param == "gpu-image":
        assert version == GPU_TRITON_PIN, f"the child ran triton {version}, not the GPU image's {GPU_TRITON_PIN}"
    return dict(zip(cases, torch.load(folder / "out.pt")))


TOKEN_CASES = [
    "fp32", "fp32_t", "bf16_t", "fp16", "odd_fp32", "odd_bf16", "one_row", "no_rows", "shifted", "inplace"
]  # fmt: skip


@pytest.mark.parametrize("name", TOKEN_CASES)
def test_interpreted_kernel_matches_float64(interpreted, name):
    case = interpreted[name]
    logp, entropy, grad, entropy_has_grad = case["out"]
    assert logp.dtype == entropy.dtype == torch.float32 and logp.shape == case["targets"].shape
    assert grad.dtype == case["logits"].dtype
    assert entropy_has_grad == case["entropy_grad"]
    x64 = case["logits"].double().requires_grad_()
    ref_logp, ref_entropy = reference(x64, case["targets"], case["temperature"])
    loss = (ref_logp * case["g_logp"]).sum()
    if case["entropy_grad"]:
        loss = loss + (ref_entropy * case["g_entropy"]).sum()
    loss.backward()
    assert rel_err(logp, ref_logp) < 1e-5
    assert rel_err(entropy, ref_entropy) < 1e-5
    assert rel_err(grad, x64.grad) < (1e-5 if grad.dtype == torch.float32 else 1e-2)


def test_interpreted_kernel_large_logits_and_masking(interpreted):
    logp, entropy, grad, _ = interpreted["huge"]["out"]
    assert torch.isfinite(logp).all() and torch.isfinite(entropy).all() and torch.isfinite(grad).all()
    ref_logp, ref_entropy = reference(interpreted["huge"]["logits"], interpreted["huge"]["targets"], 0.7)
    assert (logp.double() - ref_logp).abs().max() < 1e-3 * ref_logp.abs().max() + 1e-6
    assert (entropy.double() - ref_entropy).abs().max() < 1e-5
    case = interpreted["masked"]
    logp, entropy, grad, _ = case["out"]
    x64 = case["logits"][:, :500].double().requires_grad_()
    ref_logp, ref_entropy = reference(x64, case["targets"])
    ((ref_logp * case["g_logp"]).sum() + (ref_entropy * case["g_entropy"]).sum()).backward()
    assert rel_err(logp, ref_logp) < 1e-5 and rel_err(entropy, ref_entropy) < 1e-5
    assert rel_err(grad[:, :500], x64.grad) < 1e-5 and (grad[:, 500:] == 0).all()


def test_interpreted_linear_path(interpreted):
    case = interpreted["linear"]
    logp, entropy, grad_hidden, grad_weight = case["out"]
    hidden = case["hidden"].double().requires_grad_()
    weight = case["weight"].double().requires_grad_()
    ref_logp, ref_entropy = reference(hidden @ weight.t(), case["targets"], case["temperature"])
    ((ref_logp * case["g_logp"]).sum() + (ref_entropy * case["g_entropy"]).sum()).backward()
    assert rel_err(logp, ref_logp) < 1e-5 and rel_err(entropy, ref_entropy) < 1e-5
    assert rel_err(grad_hidden, hidden.grad) < 1e-5 and rel_err(grad_weight, weight.grad) < 1e-5


def test_kernels_compile_for_hopper():
    """Both kernels compile to an sm_90 cubin (bf16 and fp32 logits): catches what the
    interpreter forgives, e.g. loop-carried values changing type."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from srft_openrlhf.kernels import triton_logprobs as kernels

    block, warps = kernels.block_config(QWEN_VOCAB)
    scalars = {"stride_b": "i64", "stride_l": "i64", "n_l": "i32"}
    stats = {name: "*fp32" for name in ("row_max_ptr", "log_sum_exp_ptr", "entropy_ptr")}
    for dtype in ("*bf16", "*fp32"):
        forward = {"x_ptr": dtype, **scalars, "targets_ptr": "*i64", "logprobs_ptr": "*fp32", **stats}
        forward = {**forward, "vocab": "i32", "inv_temperature": "fp32", "BLOCK_V": "constexpr"}
        forward = {name: forward[name] for name in kernels._forward_kernel.arg_names}
        backward = {"x_ptr": dtype, **scalars, "out_ptr": dtype, "out_stride_b": "i64", "out_stride_l": "i64"}
        backward = {**backward, "targets_ptr": "*i64", **stats, "grad_logprobs_ptr": "*fp32"}
        backward = {**backward, "grad_entropy_ptr": "*fp32", "vocab": "i32", "inv_temperature": "fp32"}
        backward = {**backward, "ENTROPY_GRAD": "constexpr", "BLOCK_V": "constexpr"}
        backward = {name: backward[name] for name in kernels._backward_kernel.arg_names}
        sources = [
            ASTSource(kernels._forward_kernel, forward, constexprs={"BLOCK_V": block}),
            ASTSource(kernels._backward_kernel, backward, constexprs={"ENTROPY_GRAD": True, "BLOCK_V": block}),
        ]
        for source in sources:
            try:
                compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
            except RuntimeError as error:  # no ptxas in this triton build
                pytest.skip(f"cannot compile for sm_90 here: {error}")
            assert compiled.asm["cubin"]


@requires_cuda
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_cuda_matches_float64(seed, backend, dtype, entropy_grad):
    vocab = QWEN_VOCAB + 7
    logits = (4 * torch.randn(3, 6, vocab, device="cuda")).to(dtype)[:, :-1]
    targets = torch.randint(0, vocab, (3, 5), device="cuda")
    grad_tol = 1e-5 if dtype == torch.float32 else 1e-2
    check_against_reference(logits, targets, 0.8, entropy_grad, 1e-5, grad_tol, backend=backend)


@requires_cuda
@pytest.mark.parametrize("n", [0, 1, 3000])
def test_cuda_row_counts(seed, n):
    logits = 3 * torch.randn(n, 32000, device="cuda")
    check_against_reference(logits, torch.randint(0, 32000, (n,), device="cuda"), 1.0, True, 1e-5, 1e-5)


@requires_cuda
def test_cuda_inplace_backward(seed):
    leaf = torch.randn(64, 50257, device="cuda", requires_grad=True)
    buffer = leaf * 1.0
    targets = torch.randint(0, 50257, (64,), device="cuda")
    from srft_openrlhf.kernels import token_logprobs_and_entropy

    token_logprobs_and_entropy(buffer, targets, 1.1, inplace_backward=True)[0].sum().backward()
    x64 = leaf.detach().double().requires_grad_()
    reference(x64, targets, 1.1)[0].sum().backward()
    assert rel_err(leaf.grad, x64.grad) < 1e-5 and torch.equal(buffer.detach(), leaf.grad)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_linear(seed, dtype):
    hidden = torch.randn(300, 128, device="cuda").to(dtype)
    weight = (torch.randn(20011, 128, device="cuda") / 8).to(dtype)
    got, want = run_both(hidden, weight, torch.randint(0, 20011, (300,), device="cuda"), 0.9, True)
    # fp32: dL/dhidden sums 20k nearly cancelling terms; bf16: dL/dlogits rounded for the matmuls.
    for g, w in zip(got, want):
        assert rel_err(g, w) < (1e-4 if dtype == torch.float32 else 1e-2)
