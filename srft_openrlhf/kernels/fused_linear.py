"""Token log-probs and entropy straight from the LM head: logits = hidden · Wᵀ, never whole.

Forward: a chunk of tokens at a time, build that chunk's logits [r, V] (in the input dtype,
as the LM head would), reduce it to per-row statistics (log π(y), H, row max, log Σ e^d)
and drop it.  Backward: recompute the logits tile by tile, vocabulary slices outer and token
chunks inner, turn each tile into dL/dlogits with the saved row statistics and accumulate
    dL/dhidden = Σ_v g_v · W_v,      dL/dW_v = Σ_t g_tᵀ · hidden_t
in fp32.  Slicing the vocabulary keeps the weight-gradient accumulator at one slice
[V_tile, H] instead of a second fp32 copy of W.  Extra memory: one logits tile and its fp32
work buffers, one fp32 [V_tile, H] slice and an fp32 [N, H] accumulator (only for non-fp32
hidden).
"""

from __future__ import annotations

from typing import Any

import torch

from .torch_chunked import Float32On, backward_block, chunk_rows, forward_block

# Vocabulary slice of the backward; small enough for its fp32 dW slice (V_TILE · H · 4 bytes,
# 112 MiB at H = 3584), large enough that the tile matmuls stay efficient.
V_TILE = 8192


def logits_tile(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """hidden [r, H] · weight[v0:v1]ᵀ → [r, v1 − v0], in the input dtype."""
    return hidden @ weight.t()


def forward_stats(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, use_triton: bool, work: list[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """(logprobs, entropy, row max, log Σ e^d) of one chunk of logits [r, V]."""
    if use_triton:
        from .triton_logprobs import forward_rows

        return forward_rows(logits.unsqueeze(0), targets, temperature)
    r = logits.shape[0]
    return forward_block(logits, targets, temperature, work[0][:r], work[1][:r])


def backward_tile(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    stats: tuple[torch.Tensor, ...],
    grad_logp: torch.Tensor,
    grad_entropy: torch.Tensor | None,
    use_triton: bool,
    work: list[torch.Tensor],
) -> torch.Tensor:
    """dL/dlogits of one tile [r, v] (targets relative to the tile's first column)."""
    row_max, log_sum_exp, entropy = stats
    if use_triton:
        from .triton_logprobs import backward_rows

        tile = logits.unsqueeze(0)
        backward_rows(tile, targets, temperature, row_max, log_sum_exp, entropy, grad_logp, grad_entropy, tile)
        return logits
    r, v = logits.shape
    d, e = (w.view(-1)[: r * v].view(r, v) for w in work)
    grad = backward_block(logits, targets, temperature, row_max, log_sum_exp, entropy, grad_logp, grad_entropy, d, e)
    return grad.to(logits.dtype)


def accumulate_product(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (fp32) += a · b, the product in the dtype of a and b (bf16 on tensor cores)."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    else:
        acc += a @ b


class LinearLogprobEntropy(torch.autograd.Function):
    """Autograd function for hidden [N, H], weight [V, H], targets [N]; outputs fp32 [N]."""

    @staticmethod
    def forward(
        ctx: Any,  # torch's FunctionCtx, given attributes below
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        temperature: float,
        entropy_grad: bool,
        use_triton: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, vocab = hidden.shape[0], weight.shape[0]
        f32 = Float32On(dtype=torch.float32, device=hidden.device)
        outs = [torch.empty(n, **f32) for _ in range(4)]
        rows = chunk_rows(vocab, hidden.device)
        work: list[torch.Tensor] = [] if use_triton else [torch.empty(min(rows, n), vocab, **f32) for _ in range(2)]
        for start in range(0, n, rows):
            chunk = slice(start, start + rows)
            logits = logits_tile(hidden[chunk], weight)
            for dst, src in zip(outs, forward_stats(logits, targets[chunk], temperature, use_triton, work)):
                dst[chunk] = src
            del logits
        logprobs, entropy, row_max, log_sum_exp = outs
        ctx.save_for_backward(hidden, weight, targets, row_max, log_sum_exp, entropy)
        ctx.temperature, ctx.entropy_grad, ctx.use_triton = temperature, entropy_grad, use_triton
        if not entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(
        ctx: Any, grad_logp: torch.Tensor, grad_entropy: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None, None]:
        hidden, weight, targets, row_max, log_sum_exp, entropy = ctx.saved_tensors
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        n, vocab = hidden.shape[0], weight.shape[0]
        grad_logp = grad_logp.float().contiguous()
        g_entropy_all = grad_entropy.float().contiguous() if ctx.entropy_grad else None
        f32 = Float32On(dtype=torch.float32, device=hidden.device)
        # fp32 accumulators; for fp32 inputs they are the returned gradients themselves.
        grad_hidden = torch.zeros(hidden.shape, **f32) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, **f32) if want_weight and weight.dtype == torch.float32 else None
        if want_weight and grad_weight is None:
            grad_weight = torch.empty_like(weight)
        v_tile = min(V_TILE, vocab)
        rows = chunk_rows(v_tile, hidden.device)
        work: list[torch.Tensor] = []
        if not ctx.use_triton:
            work = [torch.empty(min(rows, n) * v_tile, **f32) for _ in range(2)]
        for v0 in range(0, vocab, v_tile):
            w_slice = weight[v0 : v0 + v_tile]
            dw_slice = None
            if grad_weight is not None:  # exactly when want_weight
                dw_slice = grad_weight[v0 : v0 + v_tile]
                if dw_slice.dtype != torch.float32:
                    dw_slice = torch.zeros(w_slice.shape, **f32)
            for start in range(0, n, rows):
                chunk = slice(start, start + rows)
                stats = (row_max[chunk], log_sum_exp[chunk], entropy[chunk])
                g_entropy = g_entropy_all[chunk] if g_entropy_all is not None else None
                logits = logits_tile(hidden[chunk], w_slice)
                g = backward_tile(
                    logits, targets[chunk] - v0, ctx.temperature, stats, grad_logp[chunk], g_entropy,
                    ctx.use_triton, work,
                )  # fmt: skip
                if grad_hidden is not None:  # exactly when want_hidden
                    accumulate_product(grad_hidden[chunk], g, w_slice)
                if dw_slice is not None:
                    accumulate_product(dw_slice, g.t(), hidden[chunk])
            if grad_weight is not None and dw_slice is not None and dw_slice.data_ptr() != grad_weight[v0:].data_ptr():
                grad_weight[v0 : v0 + v_tile] = dw_slice
        if grad_hidden is not None:
            grad_hidden = grad_hidden.to(hidden.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def linear_chunked_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    entropy_grad: bool = False,
    use_triton: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(targets) and H(π) for π = softmax(hidden · weightᵀ / T); fp32 [N] each."""
    # torch.autograd.Function.apply is unannotated in torch's own types
    logprobs, entropy = LinearLogprobEntropy.apply(  # type: ignore[no-untyped-call]
        hidden, weight, targets.long().contiguous(), float(temperature), entropy_grad, use_triton
    )
    return logprobs, entropy
