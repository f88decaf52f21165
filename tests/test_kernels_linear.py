"""Fused LM-head log-probs + entropy, torch path, against float64 autograd."""

from __future__ import annotations

import pytest
import torch
from helpers import run_both

from srft_openrlhf.kernels import fused_linear, linear_logprobs_and_entropy
from srft_openrlhf.kernels.reference import rel_err
from srft_openrlhf.kernels.torch_chunked import CHUNK_ENV


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several token chunks and vocabulary slices, the last ones ragged."""
    monkeypatch.setenv(CHUNK_ENV, "0.01")
    monkeypatch.setattr(fused_linear, "V_TILE", 96)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_fp32_matches_float64(seed, small_tiles, temperature, entropy_grad):
    hidden, weight = torch.randn(37, 64), torch.randn(1001, 64) / 4
    targets = torch.randint(0, 1001, (37,))
    got, want = run_both(hidden, weight, targets, temperature, entropy_grad)
    assert got[1].requires_grad == entropy_grad
    for g, w in zip(got, want):
        assert g.dtype == (torch.float32)
        assert rel_err(g, w) < 1e-5


def test_bf16_matches_float64(seed, small_tiles):
    hidden, weight = torch.randn(29, 64).bfloat16(), (torch.randn(777, 64) / 4).bfloat16()
    targets = torch.randint(0, 777, (29,))
    got, want = run_both(hidden, weight, targets, 1.2, True)
    assert got[0].dtype == torch.float32 and got[2].dtype == got[3].dtype == torch.bfloat16
    # What remains is the bf16 rounding of dL/dlogits in the gradient matmuls.
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-2


@pytest.mark.parametrize("n", [0, 1])
def test_zero_and_one_token(seed, n):
    hidden, weight = torch.randn(n, 16), torch.randn(151936 + 7, 16) / 4
    got, want = run_both(hidden, weight, torch.randint(0, weight.shape[0], (n,)), 1.0, True)
    # dL/dhidden is an fp32 sum of 152k terms that nearly cancel (Σ_j dL/dz_j = 0 for log π):
    # measured ≈ 1e-5 relative, as for any fp32 matmul of that length.
    for g, w, tol in zip(got, want, (1e-5, 1e-5, 1e-4, 1e-5)):
        assert g.shape == w.shape and rel_err(g, w) < tol


def test_frozen_head_gets_no_gradient(seed, small_tiles):
    hidden = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(50, 8)  # e.g. a tied embedding kept frozen
    logp, _ = linear_logprobs_and_entropy(hidden, weight, torch.randint(0, 50, (6,)))
    logp.sum().backward()
    assert weight.grad is None and hidden.grad is not None


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="hidden"):
        linear_logprobs_and_entropy(torch.randn(3, 4), torch.randn(5, 6), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        linear_logprobs_and_entropy(torch.randn(3, 4), torch.randn(5, 4), torch.zeros(2, dtype=torch.long))
