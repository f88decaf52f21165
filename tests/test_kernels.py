"""Token log-prob + entropy: chunked torch path and dispatch against float64.

Inputs are drawn from the fixed seed of the ``seed`` fixture (conftest.py).
"""

from __future__ import annotations

import pytest
import torch
from helpers import QWEN_VOCAB, check_against_reference

from srft_openrlhf import kernels
from srft_openrlhf.kernels import resolve_backend, token_logprobs_and_entropy
from srft_openrlhf.kernels.reference import reference, rel_err
from srft_openrlhf.kernels.torch_chunked import CHUNK_ENV, as_rows


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of a few rows, so that every test crosses chunk boundaries."""
    monkeypatch.setenv(CHUNK_ENV, "0.01")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_matches_float64_reference(seed, small_chunks, dtype, temperature, entropy_grad):
    logits = (3 * torch.randn(3, 7, 1003)).to(dtype)
    targets = torch.randint(0, 1003, (3, 7))
    # Outputs are fp32 sums over exactly representable inputs, so 1e-5 holds for bf16 too;
    # the bf16/fp16 gradient is rounded to the input dtype.
    grad_tol = 1e-5 if dtype == torch.float32 else 1e-2
    check_against_reference(logits, targets, temperature, entropy_grad, 1e-5, grad_tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qwen_sized_odd_vocab(seed, dtype):
    vocab = QWEN_VOCAB + 7
    logits = (4 * torch.randn(2, vocab)).to(dtype)
    targets = torch.randint(0, vocab, (2,))
    check_against_reference(logits, targets, 0.9, True, 1e-5, 1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("shape", [(0,), (1,), (), (2, 0), (0, 3)])
def test_row_counts_zero_and_one(seed, shape):
    logits = torch.randn(*shape, 37)
    targets = torch.randint(0, 37, shape)
    check_against_reference(logits, targets, 1.3, True, 1e-5, 1e-5)


def test_large_magnitude_logits_stay_finite(seed, small_chunks):
    logits = torch.empty(6, 4099).uniform_(-1e4, 1e4)
    logits[0, 17] = logits[0].max() + 20  # a target that is near-certain: log π ≈ 0
    targets = torch.randint(0, 4099, (6,))
    targets[0] = 17
    x = logits.clone().requires_grad_()
    logp, entropy = token_logprobs_and_entropy(x, targets, 0.7, entropy_grad=True)
    (logp.sum() + entropy.sum()).backward()
    assert torch.isfinite(logp).all() and torch.isfinite(entropy).all() and torch.isfinite(x.grad).all()
    ref_logp, ref_entropy = reference(logits, targets, 0.7)
    # Entropies are ≈ 0 here, so compare absolutely: d = (x − max x) / T is rounded once.
    assert (logp.double() - ref_logp).abs().max() < 1e-3 * ref_logp.abs().max() + 1e-6
    assert (entropy.double() - ref_entropy).abs().max() < 1e-5
    assert abs(logp[0].item()) < 1e-3


def test_masked_minus_inf_logits(seed, small_chunks):
    logits = torch.randn(4, 300)
    logits[:, 250:] = float("-inf")  # padded vocabulary entries: π = 0 there
    targets = torch.randint(0, 250, (4,))
    x = logits.clone().requires_grad_()
    logp, entropy = token_logprobs_and_entropy(x, targets, 0.8, entropy_grad=True)
    (logp.sum() - 3 * entropy.sum()).backward()
    x64 = logits[:, :250].double().requires_grad_()  # the same distribution without padding
    ref_logp, ref_entropy = reference(x64, targets, 0.8)
    (ref_logp.sum() - 3 * ref_entropy.sum()).backward()
    assert rel_err(logp, ref_logp) < 1e-5 and rel_err(entropy, ref_entropy) < 1e-5
    assert rel_err(x.grad[:, :250], x64.grad) < 1e-5
    assert (x.grad[:, 250:] == 0).all()


def test_shifted_slice_is_not_copied(seed, small_chunks):
    full = torch.randn(2, 9, 513)
    shifted = full[:, :-1]  # the usual next-token slice: not viewable as [N, V]
    assert as_rows(shifted).data_ptr() == shifted.data_ptr()
    check_against_reference(shifted, torch.randint(0, 513, (2, 8)), 1.0, False, 1e-5, 1e-5)


def test_inplace_backward_reuses_logits_buffer(seed, small_chunks):
    logits = torch.randn(5, 211)
    targets = torch.randint(0, 211, (5,))
    leaf = logits.clone().requires_grad_()
    buffer = leaf * 1.0  # the LM head output; nothing else needs it after the call
    logp, _ = token_logprobs_and_entropy(buffer, targets, inplace_backward=True)
    logp.sum().backward()
    x64 = logits.double().requires_grad_()
    reference(x64, targets)[0].sum().backward()
    assert rel_err(leaf.grad, x64.grad) < 1e-5
    assert torch.equal(buffer.detach(), leaf.grad)  # the gradient was written over the logits


def test_entropy_has_no_gradient_by_default(seed):
    x = torch.randn(3, 50, requires_grad=True)
    logp, entropy = token_logprobs_and_entropy(x, torch.randint(0, 50, (3,)))
    assert logp.requires_grad and not entropy.requires_grad


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs_and_entropy(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="match"):
        token_logprobs_and_entropy(torch.randn(2, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="backend"):
        token_logprobs_and_entropy(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), backend="cuda")


def test_backend_resolution(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SRFT_KERNEL_BACKEND", raising=False)
    assert resolve_backend(torch.device("cpu")) == "torch"
    assert resolve_backend(torch.device("cpu"), "triton") == "triton"
    # auto picks Triton only for CUDA tensors and only when triton imports: pin that here
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    assert resolve_backend(torch.device("cuda")) == "triton"
    assert resolve_backend(torch.device("cpu")) == "torch"
    monkeypatch.setenv("SRFT_KERNEL_BACKEND", "torch")
    assert resolve_backend(torch.device("cuda")) == "torch"  # $SRFT_KERNEL_BACKEND over auto
    assert resolve_backend(torch.device("cuda"), "auto") == "triton"  # an explicit argument over the variable
    monkeypatch.setenv("SRFT_KERNEL_BACKEND", "triton")
    assert resolve_backend(torch.device("cpu")) == "triton"
    assert resolve_backend(torch.device("cpu"), "auto") == "torch"
    assert resolve_backend(torch.device("cuda"), "TORCH") == "torch"
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    assert resolve_backend(torch.device("cuda"), "auto") == "torch"
