"""Triton path for token log-probs and entropy (CUDA; CPU only under ``TRITON_INTERPRET=1``).

Same quantities and row-backend interface (``forward_rows`` / ``backward_rows``, used by
``autograd.LogprobEntropy``) as ``torch_chunked``; see its docstring for the formulas.
One program per row of logits:

- forward: a single pass over the vocabulary in blocks keeps the running row maximum m (a
  scalar, in logit units) and two per-lane sums over d = (x − m) / T,
      s = Σ e^d,   a = Σ e^d · d,
  rescaling both when m grows; then log π(y) = d_y − log s and H = log s − a / s.
  The target logit is one extra scalar load.
- backward: one more pass that writes
      g_x = [g_lp (1[j=y] − π_j) − g_H π_j (log π_j + H)] / T
  into a separate buffer or, with ``inplace``, over the logits themselves (each element is
  read before it is overwritten, by the same program).

Inputs of any float dtype are read as is and accumulated in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK_V = 8192
FLOOR: tl.constexpr = tl.constexpr(1e30)  # finite stand-in for −inf: exp(−FLOOR) = 0


def block_config(vocab: int) -> tuple[int, int]:
    """(BLOCK_V, num_warps) for a row of ``vocab`` logits."""
    # 16 warps at the largest block: 64 registers a thread (ptxas, sm_90), so four programs
    # share an SM and keep enough loads in flight to saturate HBM.
    block = min(MAX_BLOCK_V, triton.next_power_of_2(max(vocab, 16)))
    return block, 16 if block >= 8192 else 8 if block >= 2048 else 4


@triton.jit
def _forward_kernel(  # type: ignore[no-untyped-def]  # Triton kernel: Triton reads parameter annotations
    x_ptr,
    stride_b,
    stride_l,
    n_l,
    targets_ptr,
    logprobs_ptr,
    entropy_ptr,
    row_max_ptr,
    log_sum_exp_ptr,
    vocab,
    inv_temperature,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + (row // n_l) * stride_b + (row % n_l) * stride_l
    cols = tl.arange(0, BLOCK_V)
    m = tl.max(tl.full([BLOCK_V], -float("inf"), tl.float32), axis=0)
    s = tl.zeros([BLOCK_V], dtype=tl.float32)
    a = tl.zeros([BLOCK_V], dtype=tl.float32)
    for start in range(0, vocab, BLOCK_V):
        x = tl.load(x_row + start + cols, mask=start + cols < vocab, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        # Rescale the sums to the new maximum: d_old = d_new + shift, shift ≤ 0.
        # Clamping at −FLOOR keeps −inf − (−inf) and 0 · (−inf) (first block, masked lanes,
        # −inf logits) out of the sums: exp(−FLOOR) = 0 and 0 · (−FLOOR) = 0.
        shift = tl.where(m == m_new, 0.0, tl.maximum((m - m_new) * inv_temperature, -FLOOR))
        scale = tl.exp(shift)
        d = tl.maximum((x - m_new) * inv_temperature, -FLOOR)
        e = tl.exp(d)
        a = scale * (a + shift * s) + e * d
        s = scale * s + e
        m = m_new
    sum_exp = tl.sum(s, axis=0)
    log_sum_exp = tl.log(sum_exp)
    target = tl.load(targets_ptr + row)
    valid = (target >= 0) & (target < vocab)
    x_target = tl.load(x_row + target, mask=valid, other=float("nan")).to(tl.float32)
    tl.store(logprobs_ptr + row, (x_target - m) * inv_temperature - log_sum_exp)
    tl.store(entropy_ptr + row, log_sum_exp - tl.sum(a, axis=0) / sum_exp)
    tl.store(row_max_ptr + row, m)
    tl.store(log_sum_exp_ptr + row, log_sum_exp)


@triton.jit
def _backward_kernel(  # type: ignore[no-untyped-def]  # Triton kernel: Triton reads parameter annotations
    x_ptr,
    stride_b,
    stride_l,
    n_l,
    out_ptr,
    out_stride_b,
    out_stride_l,
    targets_ptr,
    row_max_ptr,
    log_sum_exp_ptr,
    entropy_ptr,
    grad_logprobs_ptr,
    grad_entropy_ptr,
    vocab,
    inv_temperature,
    ENTROPY_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + (row // n_l) * stride_b + (row % n_l) * stride_l
    out_row = out_ptr + (row // n_l) * out_stride_b + (row % n_l) * out_stride_l
    cols = tl.arange(0, BLOCK_V)
    m = tl.load(row_max_ptr + row)
    log_sum_exp = tl.load(log_sum_exp_ptr + row)
    target = tl.load(targets_ptr + row)
    g_lp = tl.load(grad_logprobs_ptr + row)
    if ENTROPY_GRAD:
        entropy = tl.load(entropy_ptr + row)
        g_h = tl.load(grad_entropy_ptr + row)
    for start in range(0, vocab, BLOCK_V):
        mask = start + cols < vocab
        x = tl.load(x_row + start + cols, mask=mask, other=-float("inf")).to(tl.float32)
        log_p = tl.maximum((x - m) * inv_temperature - log_sum_exp, -FLOOR)
        p = tl.exp(log_p)
        grad = -g_lp * p
        if ENTROPY_GRAD:
            grad -= g_h * p * (log_p + entropy)
        grad = tl.where(start + cols == target, grad + g_lp, grad) * inv_temperature
        tl.store(out_row + start + cols, grad.to(out_ptr.dtype.element_ty), mask=mask)


def forward_rows(
    rows3: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logprobs, entropy, row max, log Σ e^d), fp32 [B·L], of ``rows3 [B, L, V]``."""
    n_b, n_l, vocab = rows3.shape
    outs = [torch.empty(n_b * n_l, dtype=torch.float32, device=rows3.device) for _ in range(4)]
    if n_b * n_l:
        block, warps = block_config(vocab)
        _forward_kernel[(n_b * n_l,)](
            rows3, rows3.stride(0), rows3.stride(1), n_l, targets, *outs, vocab, 1.0 / temperature,
            BLOCK_V=block, num_warps=warps,
        )  # fmt: skip
    return outs[0], outs[1], outs[2], outs[3]


def backward_rows(
    rows3: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    row_max: torch.Tensor,
    log_sum_exp: torch.Tensor,
    entropy: torch.Tensor,
    grad_logp: torch.Tensor,
    grad_entropy: torch.Tensor | None,
    out3: torch.Tensor,
) -> None:
    """Write the gradient wrt ``rows3 [B, L, V]`` into ``out3`` (may be ``rows3`` itself).

    ``targets`` are column indices within ``rows3``; a target outside [0, V) adds no one-hot
    term (the fused linear path passes vocabulary slices).
    """
    n_b, n_l, vocab = rows3.shape
    if n_b * n_l == 0:
        return
    block, warps = block_config(vocab)
    _backward_kernel[(n_b * n_l,)](
        rows3, rows3.stride(0), rows3.stride(1), n_l, out3, out3.stride(0), out3.stride(1),
        targets, row_max, log_sum_exp, entropy, grad_logp.float().contiguous(),
        grad_logp if grad_entropy is None else grad_entropy.float().contiguous(),
        vocab, 1.0 / temperature, ENTROPY_GRAD=grad_entropy is not None, BLOCK_V=block, num_warps=warps,
    )  # fmt: skip
