"""Chunked torch path for token log-probs and entropy (any device, no Triton).

A row backend of ``autograd.LogprobEntropy`` (``forward_rows`` / ``backward_rows``); its
per-block functions also serve the fused linear path.

For a row of logits x and temperature T, with z = x / T:

    log π(y)  = z_y − logsumexp(z)              (the log πθ of Eq. 5, 6 and 12)
    H(π)      = logsumexp(z) − Σ_j π_j z_j     (the H(πθ) in w_SFT, w_RL of Eq. 8 and 12)
    ∂ log π(y) / ∂x_j = (1[j = y] − π_j) / T
    ∂ H / ∂x_j        = −π_j (log π_j + H) / T

Rows are processed a chunk at a time: each chunk is upcast to fp32 into a reusable buffer,
so the extra memory is two fp32 chunk buffers plus a few floats per row, whatever N is.
The forward saves only the logits themselves and, per row, the maximum and log Σ exp;
the backward recomputes the softmax chunk by chunk.

Numerics: the row maximum is subtracted *before* dividing by T, so d = (x − max x) / T is
rounded once and relative to itself; all sums run over d ≤ 0 and exp(d) ≤ 1.  This keeps
logits of magnitude 1e4 (and −inf entries) finite in fp32.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TypedDict

import torch

# Bytes of one fp32 working buffer (two are live at once).  On a shared 2-core CPU 64 MiB
# measured fastest among 1–256 MiB (smaller chunks mean more thread-pool round trips per
# row); a GPU wants larger chunks so that each kernel launch has enough rows.
DEFAULT_CHUNK_BYTES = {"cpu": 64 << 20, "cuda": 256 << 20}
CHUNK_ENV = "SRFT_KERNEL_CHUNK_MB"
FLOOR = 1e30  # finite stand-in for −inf: exp(−FLOOR) = 0 and FLOOR · |g| stays finite


class Float32On(TypedDict):
    """Keyword arguments of a torch factory for an fp32 tensor on ``device``."""

    dtype: torch.dtype
    device: torch.device


def chunk_rows(vocab: int, device: torch.device) -> int:
    """Rows per chunk so that one fp32 chunk buffer stays within the byte budget.

    The budget is ``$SRFT_KERNEL_CHUNK_MB`` MiB when set, else ``DEFAULT_CHUNK_BYTES``.
    """
    env = os.environ.get(CHUNK_ENV)
    budget = int(float(env) * (1 << 20)) if env else DEFAULT_CHUNK_BYTES.get(device.type, 256 << 20)
    return max(1, budget // (4 * max(vocab, 1)))


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """View ``x[..., V]`` as ``[B, L, V]`` rows with unit last stride, copying only if needed.

    A time-shifted slice such as ``logits[:, :-1]`` is not viewable as ``[N, V]`` but is as
    ``[B, L, V]``; keeping the two leading strides avoids copying the whole logits tensor.
    """
    vocab = x.shape[-1]
    if x.dim() > 0 and x.stride(-1) != 1:
        x = x.contiguous()
    lead = x.shape[:-1]
    for shape in ((1, -1, vocab), (-1, lead[-1] if lead else 1, vocab)):
        try:
            return x.view(shape)
        except RuntimeError:
            continue
    return x.contiguous().view(1, -1, vocab)


def row_blocks(rows3: torch.Tensor, max_rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first flat row, block [r, V])`` over ``rows3 [B, L, V]``, r ≤ max_rows."""
    n_b, n_l, _ = rows3.shape
    for b in range(n_b):
        for start in range(0, n_l, max_rows):
            yield b * n_l + start, rows3[b, start : start + max_rows]


def shifted_logits(block: torch.Tensor, temperature: float, out: torch.Tensor) -> torch.Tensor:
    """Write d = (x − max x) / T into ``out`` (fp32) and return the row maxima of x (fp32)."""
    out.copy_(block)
    row_max = out.amax(dim=1, keepdim=True)
    out.sub_(row_max)
    if temperature != 1.0:
        out.div_(temperature)
    return row_max.squeeze(1)


def forward_block(
    block: torch.Tensor, targets: torch.Tensor, temperature: float, d: torch.Tensor, e: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-prob of the target and entropy of one block of rows; d, e are fp32 work buffers.

    Returns (logprobs, entropy, row max of x, log Σ exp d), all fp32 [r].
    """
    row_max = shifted_logits(block, temperature, d)
    target_d = d.gather(1, targets.unsqueeze(1)).squeeze(1)
    torch.exp(d, out=e)
    sum_exp = e.sum(dim=1)
    log_sum_exp = sum_exp.log()
    # H = log Σe^d − Σ e^d·d / Σ e^d; nansum turns 0·(−inf) from masked logits into 0.
    entropy = log_sum_exp - e.mul_(d).nansum(dim=1) / sum_exp
    return target_d - log_sum_exp, entropy, row_max, log_sum_exp


def backward_block(
    block: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    row_max: torch.Tensor,
    log_sum_exp: torch.Tensor,
    entropy: torch.Tensor | None,
    grad_logp: torch.Tensor,
    grad_entropy: torch.Tensor | None,
    d: torch.Tensor,
    e: torch.Tensor,
) -> torch.Tensor:
    """Gradient wrt one block of logits, fp32, left in ``e`` (``d`` is clobbered).

    g_x = [g_lp (1[j=y] − π_j) − g_H π_j (log π_j + H)] / T, with log π_j = d_j − log Σe^d.
    The block may be a slice of the vocabulary (fused linear path): ``targets`` are column
    indices within the block, and rows whose target lies outside it get no one-hot term.
    """
    d.copy_(block)
    d.sub_(row_max.unsqueeze(1))
    if temperature != 1.0:
        d.div_(temperature)
    d.sub_(log_sum_exp.unsqueeze(1))  # d now holds log π
    torch.exp(d, out=e)  # π
    g_onehot = grad_logp / temperature
    if grad_entropy is None:
        e.mul_(g_onehot.neg().unsqueeze(1))
    else:
        if entropy is None:
            raise ValueError("backward_block: a gradient wrt the entropy needs the entropies")
        # A masked (−inf) logit has π = 0; a finite floor keeps 0·(−inf) out of the product.
        d.clamp_(min=-FLOOR).add_(entropy.unsqueeze(1)).mul_((grad_entropy / -temperature).unsqueeze(1))
        e.mul_(d.sub_(g_onehot.unsqueeze(1)))
    inside = (targets >= 0) & (targets < e.shape[1])
    g_onehot = torch.where(inside, g_onehot, torch.zeros_like(g_onehot))
    e.scatter_add_(1, targets.clamp(0, e.shape[1] - 1).unsqueeze(1), g_onehot.unsqueeze(1))
    return e


def forward_rows(
    rows3: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logprobs, entropy, row max, log Σ e^d), fp32 [B·L], of ``rows3 [B, L, V]``, a chunk at a time."""
    n_rows, vocab = rows3.shape[0] * rows3.shape[1], rows3.shape[2]
    f32 = Float32On(dtype=torch.float32, device=rows3.device)
    outs = [torch.empty(n_rows, **f32) for _ in range(4)]
    max_rows = chunk_rows(vocab, rows3.device)
    d = torch.empty(min(max_rows, rows3.shape[1]), vocab, **f32)
    e = torch.empty_like(d)
    for start, block in row_blocks(rows3, max_rows):
        r = block.shape[0]
        for dst, src in zip(outs, forward_block(block, targets[start : start + r], temperature, d[:r], e[:r])):
            dst[start : start + r] = src
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
    """Write the gradient wrt ``rows3 [B, L, V]`` into ``out3`` (may be ``rows3`` itself), a chunk at a time.

    In place is safe: each block is copied into an fp32 work buffer before its gradient is written.
    """
    if rows3.numel() == 0:
        return
    grad_logp = grad_logp.float()
    grad_entropy = grad_entropy.float() if grad_entropy is not None else None
    vocab = rows3.shape[2]
    max_rows = chunk_rows(vocab, rows3.device)
    d = torch.empty(min(max_rows, rows3.shape[1]), vocab, dtype=torch.float32, device=rows3.device)
    e = torch.empty_like(d)
    for (start, block), (_, out_block) in zip(row_blocks(rows3, max_rows), row_blocks(out3, max_rows)):
        rows = slice(start, start + block.shape[0])
        g = backward_block(
            block,
            targets[rows],
            temperature,
            row_max[rows],
            log_sum_exp[rows],
            entropy[rows] if grad_entropy is not None else None,
            grad_logp[rows],
            grad_entropy[rows] if grad_entropy is not None else None,
            d[: block.shape[0]],
            e[: block.shape[0]],
        )
        out_block.copy_(g)
