"""Fused token log-probs and entropy for SRFT.

SRFT needs, for every response token, log πθ(y_t) (with gradient) and the entropy H(πθ)
(for the weights w_SFT, w_RL of Eq. 8 and 12; with gradient only under an entropy bonus).
Both functions here return fp32 tensors shaped like ``targets`` and never hold more than a
chunk of the vocabulary-wide tensors in fp32.

Backend (``backend=`` argument, else ``$SRFT_KERNEL_BACKEND``, else ``auto``):
- ``auto``: Triton for CUDA tensors when ``triton`` imports, the chunked torch path otherwise;
- ``torch``: always the chunked torch path;
- ``triton``: always Triton (on CPU only under ``TRITON_INTERPRET=1``, for tests).
``linear_logprobs_and_entropy`` has one autograd path, chunked over tokens with the LM-head
matmul inside each chunk; the per-chunk token kernel is Triton on CUDA under ``auto``/``triton``.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch

from . import torch_chunked
from .autograd import logprobs_and_entropy
from .fused_linear import linear_chunked_logprobs_and_entropy

BACKEND_ENV = "SRFT_KERNEL_BACKEND"
BACKENDS = ("auto", "torch", "triton")

__all__ = ["BACKENDS", "BACKEND_ENV", "linear_logprobs_and_entropy", "token_logprobs_and_entropy"]


@functools.cache
def triton_available() -> bool:
    """Whether ``triton`` imports (it is absent from CPU-only installs)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(device: torch.device, backend: str | None = None) -> str:
    """``torch`` or ``triton`` for tensors on ``device`` (see the module docstring)."""
    choice = (backend or os.environ.get(BACKEND_ENV) or "auto").lower()
    if choice not in BACKENDS:
        raise ValueError(f"kernel backend {choice!r} (from backend= or ${BACKEND_ENV}): use one of {BACKENDS}")
    if choice == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    return choice


def check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return float(temperature)


def token_logprobs_and_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    entropy_grad: bool = False,
    *,
    inplace_backward: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(targets) and H(π) for π = softmax(logits / temperature) over the last dim.

    logits: [..., V], any float dtype (bf16/fp16 are accumulated in fp32); targets: [...]
    indices in [0, V).  Returns fp32 ``(logprobs, entropy)`` shaped like ``targets``.
    logprobs carry gradient to ``logits``; entropy only when ``entropy_grad``.
    ``inplace_backward`` writes the gradient into the logits buffer (saves one [N, V]
    tensor; only when nothing else needs the logits after this call).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)} + (V,)")
    temperature = check_temperature(temperature)
    rows: ModuleType = torch_chunked
    if resolve_backend(logits.device, backend) == "triton":
        from . import triton_logprobs  # imported on use: triton is absent from CPU installs

        rows = triton_logprobs

    return logprobs_and_entropy(logits, targets, temperature, entropy_grad, inplace_backward, rows)


def linear_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    entropy_grad: bool = False,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like ``token_logprobs_and_entropy(hidden @ weight.T, targets)`` without the [N, V] logits.

    hidden: [N, H]; weight: [V, H] (the LM head); targets: [N].  Gradients flow to hidden
    and weight; the logits are rebuilt a chunk of tokens at a time in the backward.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} must be [N, H] and [V, H]")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets {tuple(targets.shape)} must be [N] for hidden {tuple(hidden.shape)}")
    temperature = check_temperature(temperature)
    use_triton = resolve_backend(hidden.device, backend) == "triton"
    return linear_chunked_logprobs_and_entropy(hidden, weight, targets, temperature, entropy_grad, use_triton)
