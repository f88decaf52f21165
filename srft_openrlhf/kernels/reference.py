"""The float64 reference for the kernels: what the tests check against and the benchmark measures against.

Unfused and in float64, so its own rounding is far below the fp32 kernels' tolerances.
"""

from __future__ import annotations

import torch


def reference(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (log π(y), H(π)), both differentiable: log p(y) = z_y − M − log Σ exp(z − M); H = Σ entr(p)."""
    z = logits.double() / temperature
    z = z - z.max(dim=-1, keepdim=True).values.detach()
    total = z.exp().sum(dim=-1, keepdim=True)
    logp = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - total.log().squeeze(-1)
    return logp, torch.special.entr(z.exp() / total).sum(dim=-1)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| / max |want| (norm-wise, so entries near 0 do not dominate)."""
    if want.numel() == 0:
        return 0.0
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
