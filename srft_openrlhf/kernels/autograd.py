"""The autograd function of the token path, shared by both row backends.

A row backend is a module with two functions over logits viewed as rows ``rows3 [B, L, V]``
(see ``torch_chunked.as_rows``) and flat targets [B·L]:

- ``forward_rows(rows3, targets, temperature)`` -> fp32 [B·L] (log π(y), H, row max, log Σ e^d);
- ``backward_rows(rows3, targets, temperature, row_max, log_sum_exp, entropy, grad_logp,
  grad_entropy, out3)`` writes dL/dlogits into ``out3`` (which may be ``rows3`` itself).

``torch_chunked`` (any device) and ``triton_logprobs`` (CUDA) are the two; the autograd
plumbing (what is saved, in-place gradients, a non-differentiable entropy) lives here once.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from .torch_chunked import as_rows


class LogprobEntropy(torch.autograd.Function):
    """Autograd function over ``rows3 [B, L, V]``, flat targets [B·L]; outputs fp32 [B·L]."""

    @staticmethod
    def forward(
        ctx: Any,  # torch's FunctionCtx, given attributes below
        rows3: torch.Tensor,
        targets: torch.Tensor,
        temperature: float,
        entropy_grad: bool,
        inplace_backward: bool,
        backend: ModuleType,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logprobs, entropy, row_max, log_sum_exp = backend.forward_rows(rows3, targets, temperature)
        ctx.save_for_backward(rows3, targets, row_max, log_sum_exp, entropy)
        ctx.backend, ctx.temperature = backend, temperature
        ctx.entropy_grad, ctx.inplace = entropy_grad, inplace_backward
        if not entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(
        ctx: Any, grad_logp: torch.Tensor, grad_entropy: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None, None, None]:
        rows3, targets, row_max, log_sum_exp, entropy = ctx.saved_tensors
        grad = rows3 if ctx.inplace else torch.empty(rows3.shape, dtype=rows3.dtype, device=rows3.device)
        ctx.backend.backward_rows(
            rows3, targets, ctx.temperature, row_max, log_sum_exp, entropy, grad_logp,
            grad_entropy if ctx.entropy_grad else None, grad,
        )  # fmt: skip
        return grad, None, None, None, None, None


def logprobs_and_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    entropy_grad: bool,
    inplace_backward: bool,
    backend: ModuleType,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-probs and entropies of ``logits [..., V]`` at ``targets [...]`` (fp32), by ``backend``."""
    rows3 = as_rows(logits)
    # torch.autograd.Function.apply is unannotated in torch's own types
    logprobs, entropy = LogprobEntropy.apply(  # type: ignore[no-untyped-call]
        rows3, targets.reshape(-1).long().contiguous(), float(temperature), entropy_grad, inplace_backward, backend
    )
    return logprobs.view(targets.shape), entropy.view(targets.shape)
