"""The SRFT objective, Eq. 13: L = L_SFT^demo + L_RL^demo + L_RL^self-rollout.

Every term is a per-token loss [B, T] over its own token set (``token_sets``), reduced by
``aggregate``:

- demo tokens      = mask & is_demo                      (Eq. 8 SFT and Eq. 9-10 RL on demos)
- rollout tokens   = mask & ~is_demo, split by reward into positive (> 0.5) / negative (Eq. 12)

``srft_loss`` reads as Eq. 13: the token sets, one function per term (``sft_demo_term``,
``rl_demo_term``, the rollout objective from ``ROLLOUT_OBJECTIVES``, ``kl_term``,
``entropy_bonus_term``), their sum, then ``loss_metrics``.

Inputs are masked first (values outside ``mask`` are replaced by 0), so padding may hold
anything, even inf/NaN, without reaching the loss or its gradient. A term whose token set
is empty is exactly 0 with zero gradient.

Gradient accumulation: with ``totals`` (``StepTotals`` of the whole optimizer step) every
term divides by the step's counts and the batch-scope weights use the step's entropies, so
the caller SUMS the micro-batch losses to get the loss (and gradient) of the step in one
batch. Without it, each call is a complete loss of the sequences it is given.

Entropy: the weights w_SFT, w_RL and the Appendix A.2 quantile use ``entropy`` detached, so
it may be passed without grad. Only ``entropy_bonus > 0`` differentiates through it: then the
caller must pass the entropy computed with grad (``token_logprobs_and_entropy(...,
entropy_grad=True)``), else the bonus changes the loss value but not the update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from srft_openrlhf.algorithm.config import LossConfig
from srft_openrlhf.algorithm.token_sets import TokenSets, token_sets
from srft_openrlhf.algorithm.totals import StepTotals


def aggregate(
    token_loss: Tensor, token_set: Tensor, mode: str, constant: float, step: tuple[int, int, int] | None = None
) -> Tensor:
    """Reduce a per-token loss [B, T] over ``token_set`` (bool [B, T]) to a scalar.

    token_mean:          Σ_set ℓ / |set|
    constant:            (1/B) Σ_b Σ_t∈set ℓ_bt / constant   (B = all sequences of the batch;
                         verl "seq-mean-token-sum-norm" / Dr.GRPO)
    seq_mean_token_mean: mean over sequences b with set tokens of (Σ_t∈set ℓ_bt / |set_b|)  (Eq. 3)
    An empty set gives exactly 0.

    ``step`` = (|set|, sequences with set tokens, B) over the whole optimizer step
    (``StepTotals.counts``): the divisors are then the step's, not those of ``token_set``, so
    the results of the step's micro-batches add up to the step's value.
    """
    picked = torch.where(token_set, token_loss, torch.zeros_like(token_loss))
    per_seq_count = token_set.sum(-1)
    n_tokens: Tensor | int
    n_seqs: Tensor | int
    if step is None:
        n_tokens = token_set.sum().clamp(min=1)
        n_seqs = (per_seq_count > 0).sum().clamp(min=1)
        batch = token_loss.shape[0]
    else:
        n_tokens, n_seqs, batch = max(step[0], 1), max(step[1], 1), step[2]
    if mode == "token_mean":
        return picked.sum() / n_tokens
    if mode == "constant":
        return picked.sum() / (constant * batch)
    per_seq = picked.sum(-1) / per_seq_count.clamp(min=1)
    return per_seq.sum() / n_seqs


def masked_mean(values: Tensor, token_set: Tensor) -> Tensor:
    """Mean of ``values`` over ``token_set``; 0 for an empty set."""
    return aggregate(values.expand_as(token_set), token_set, "token_mean", 1.0)


def entropy_weight(
    entropy: Tensor,
    token_set: Tensor,
    scope: str,
    coef: float,
    sign: float,
    fixed: float | None,
    step_mean: float | None = None,
) -> Tensor:
    """Eq. 8 / Eq. 12 weight ``coef · exp(sign · H)`` with H detached; ``fixed`` overrides it.

    scope "batch": H = mean entropy over ``token_set`` (one scalar, the paper), or
    ``step_mean``, the mean over the set's tokens of the whole optimizer step, when given;
    "sequence": H per sequence, mean over its tokens in the set ([B, 1]);
    "token": H per token ([B, T], the official code).
    """
    entropy = entropy.detach()
    if fixed is not None:
        return torch.full((), fixed, dtype=entropy.dtype, device=entropy.device)
    if scope == "batch":
        h = masked_mean(entropy, token_set) if step_mean is None else entropy.new_tensor(step_mean)
    elif scope == "sequence":
        h = (torch.where(token_set, entropy, 0.0).sum(-1) / token_set.sum(-1).clamp(min=1))[:, None]
    else:
        h = entropy
    return coef * torch.exp(sign * h)


def sft_token_loss(log_probs: Tensor) -> Tensor:
    """Eq. 5 / 8: −log πθ(y_t) per demonstration token (the weight is applied by the caller)."""
    return -log_probs


def demo_rl_token_loss(log_probs: Tensor, advantages: Tensor, shaping_gamma: float | None) -> Tensor:
    """Eq. 9-10 with πβ = 1 and no clip: −Â · πθ(y_t), or −Â · π/(π+γ) with LUFFY's shaping."""
    prob = torch.exp(log_probs)
    if shaping_gamma is not None:
        prob = prob / (prob + shaping_gamma)
    return -advantages * prob


def self_rollout_token_loss(log_probs: Tensor, positive: Tensor, w_rl: Tensor) -> Tensor:
    """Eq. 12 per token: w_RL · (−log π) on positive rollouts, +log π on negative ones."""
    return torch.where(positive, -w_rl * log_probs, log_probs)


def importance_weight(log_probs: Tensor, old_log_probs: Tensor, cap: float | None) -> tuple[Tensor, Tensor]:
    """Off-policy correction of Eq. 12: the truncated importance weight sg(min(πθ/π_old, cap)).

    Eq. 12 is an expectation over the current policy's rollouts. On rollouts of an older
    policy π_old (asynchronous training) its gradient is biased: for the negative term,
    E_{y~π_old}[∇ log πθ(y)] = −∇ KL(π_old‖πθ), so minimising mean(log πθ(y⁻)) climbs that
    KL and drives πθ away from the policy that generated the batch, the further the larger
    each step is (on-policy the same expectation is exactly 0). Weighting each token by
    πθ/π_old turns the expectation back into one over πθ; truncation at ``cap`` bounds the
    variance. The weight is 1 on-policy, so the synchronous loss and gradient are Eq. 12's.
    ``cap`` None: weight 1 everywhere (Eq. 12 as written, whatever the staleness).

    Returns the weight and the tokens whose ratio exceeded ``cap`` (truncated).
    """
    if cap is None:
        return torch.ones_like(log_probs), torch.zeros_like(log_probs, dtype=torch.bool)
    ratio = torch.exp(log_probs.detach() - old_log_probs.detach())
    return ratio.clamp(max=cap), ratio > cap


def grpo_token_loss(
    log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip_low: float | None, clip_high: float | None
) -> tuple[Tensor, Tensor]:
    """Eq. 3 per token: −min(ratio·Â, clip(ratio, 1−ε_low, 1+ε_high)·Â), ratio = π/π_old.

    Returns the loss and a bool tensor marking tokens where the clipped branch is active.
    With both bounds None this is the unclipped −Â·ratio.
    """
    ratio = torch.exp(log_probs - old_log_probs)
    loss = -advantages * ratio
    if clip_low is None and clip_high is None:
        return loss, torch.zeros_like(loss, dtype=torch.bool)
    clipped = torch.clamp(
        ratio,
        min=None if clip_low is None else 1.0 - clip_low,
        max=None if clip_high is None else 1.0 + clip_high,
    )
    clipped_loss = -advantages * clipped
    return torch.maximum(loss, clipped_loss), clipped_loss > loss


def kl_token(log_probs: Tensor, ref_log_probs: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(πθ‖π_ref): k1 = logp − ref; k3 = e^(ref−logp) − (ref−logp) − 1."""
    if estimator == "k1":
        return log_probs - ref_log_probs
    d = ref_log_probs - log_probs
    return torch.exp(d) - d - 1.0


def low_entropy_tokens(entropy: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """Appendix A.2: response tokens whose entropy is below the batch's ``quantile`` entropy.

    The quantile interpolates linearly between order statistics (as ``torch.quantile``),
    written out because ``torch.quantile`` refuses inputs over 2^24 elements.
    """
    values = entropy.detach()[mask].sort().values
    if values.numel() == 0:
        return torch.zeros_like(mask)
    pos = quantile * (values.numel() - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, values.numel() - 1)
    threshold = values[lo] + (values[hi] - values[lo]) * (pos - lo)
    return mask & (entropy.detach() < threshold)


def _check_inputs(
    log_probs: Tensor,
    per_token: dict[str, Tensor | None],
    per_seq: dict[str, Tensor],
    config: LossConfig,
) -> None:
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must be [B, T], got shape {tuple(log_probs.shape)}")
    for name, t in per_token.items():
        if t is not None and t.shape != log_probs.shape:
            raise ValueError(f"{name} must have the shape of log_probs {tuple(log_probs.shape)}, got {tuple(t.shape)}")
    for name, t in per_seq.items():
        if t.shape != log_probs.shape[:1]:
            raise ValueError(f"{name} must be [B] = [{log_probs.shape[0]}], got {tuple(t.shape)}")
    if config.kl_coef > 0 and per_token["ref_log_probs"] is None:
        raise ValueError(
            f"loss.kl_coef = {config.kl_coef} > 0 needs ref_log_probs (the reference model's log-probs of the tokens)"
        )


class MaskedInputs(NamedTuple):
    """The loss inputs with every value outside the response mask replaced by 0 (see the module docstring).

    ``logp`` carries the gradient; ``logp_rl`` is ``logp`` with the Appendix A.2 dropped tokens
    detached (what the RL terms see); ``adv`` is [B, 1]; ``ref`` is None without a reference model.
    """

    logp: Tensor
    logp_rl: Tensor
    old: Tensor
    ent: Tensor
    adv: Tensor
    ref: Tensor | None


def masked_inputs(
    log_probs: Tensor,
    old_log_probs: Tensor,
    entropy: Tensor,
    advantages: Tensor,
    ref_log_probs: Tensor | None,
    response: Tensor,
) -> MaskedInputs:
    """Zero the inputs outside ``response`` and cast them to the dtype of ``log_probs``.

    ``logp_rl`` is ``logp`` until ``drop_low_entropy`` detaches the dropped tokens.
    """
    zero = torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)
    logp = torch.where(response, log_probs, zero)
    ref = None if ref_log_probs is None else torch.where(response, ref_log_probs.detach().to(logp.dtype), zero)
    return MaskedInputs(
        logp=logp,
        logp_rl=logp,
        old=torch.where(response, old_log_probs.detach().to(logp.dtype), zero),
        ent=torch.where(response, entropy.to(logp.dtype), zero),
        adv=advantages.detach().to(logp.dtype)[:, None],
        ref=ref,
    )


def drop_low_entropy(x: MaskedInputs, response: Tensor, quantile: float | None) -> tuple[MaskedInputs, Tensor]:
    """Appendix A.2: the RL terms see dropped tokens' log-probs as constants (no gradient, same value).

    Returns the inputs with ``logp_rl`` set, and the bool [B, T] mask of the dropped tokens.
    """
    dropped = torch.zeros_like(response)
    if quantile is not None:
        dropped = low_entropy_tokens(x.ent, response, quantile)
    return x._replace(logp_rl=torch.where(dropped, x.logp.detach(), x.logp)), dropped


# ``aggregate`` bound to the configured mode and (under gradient accumulation) the step's totals:
# (per-token loss [B, T], token set [B, T], name of the set in ``StepTotals.counts``) -> scalar.
Aggregate = Callable[[Tensor, Tensor, str], Tensor]


def step_aggregate(config: LossConfig, totals: StepTotals | None) -> Aggregate:
    """``aggregate`` with ``config``'s mode, dividing by the whole step's counts when ``totals`` is given."""

    def agg(token_loss: Tensor, token_set: Tensor, name: str) -> Tensor:
        step = None if totals is None else totals.counts(name)
        return aggregate(token_loss, token_set, config.loss_agg, config.loss_agg_constant, step)

    return agg


def entropy_weights(
    ent: Tensor, sets: TokenSets, config: LossConfig, totals: StepTotals | None
) -> tuple[Tensor, Tensor]:
    """(w_SFT of Eq. 8 over the demo tokens, w_RL of Eq. 12 over the rollout tokens)."""
    h_demo, h_roll = (None, None) if totals is None else (totals.h_demo, totals.h_roll)
    scope = config.entropy_scope
    w_sft = entropy_weight(ent, sets.demo, scope, config.w_sft_coef, config.w_sft_sign, config.w_sft_fixed, h_demo)
    w_rl = entropy_weight(ent, sets.rollout, scope, config.w_rl_coef, config.w_rl_sign, config.w_rl_fixed, h_roll)
    return w_sft, w_rl


def sft_demo_term(x: MaskedInputs, sets: TokenSets, w_sft: Tensor, agg: Aggregate) -> Tensor:
    """Eq. 8: L_SFT^demo = w_SFT · mean over demo tokens of −log πθ."""
    return agg(w_sft * sft_token_loss(x.logp), sets.demo, "demo")


def rl_demo_term(x: MaskedInputs, sets: TokenSets, shaping_gamma: float | None, agg: Aggregate) -> Tensor:
    """Eq. 9-10: L_RL^demo = mean over demo tokens of −Â · πθ (πβ = 1, no clip; optionally shaped)."""
    return agg(demo_rl_token_loss(x.logp_rl, x.adv, shaping_gamma), sets.demo, "demo")


def paper_rollout_term(
    x: MaskedInputs, sets: TokenSets, w_rl: Tensor, config: LossConfig, agg: Aggregate
) -> tuple[Tensor, Tensor]:
    """Eq. 12: L_RL^self-rollout, importance-weighted on stale rollouts; returns (loss, capped tokens).

    Two means, one per expectation of Eq. 12 (positive and negative rollouts), not one mean
    over all rollout tokens.
    """
    weight, capped = importance_weight(x.logp_rl, x.old, config.rollout_is_cap)
    per_token = weight * self_rollout_token_loss(x.logp_rl, sets.pos, w_rl)
    return agg(per_token, sets.pos, "pos") + agg(per_token, sets.neg, "neg"), capped & sets.rollout


def grpo_rollout_term(
    x: MaskedInputs, sets: TokenSets, w_rl: Tensor, config: LossConfig, agg: Aggregate
) -> tuple[Tensor, Tensor]:
    """Eq. 3 on the rollout tokens, w_RL on tokens of rollouts with Â > 0 (the official code);
    returns (loss, clipped tokens)."""
    per_token, clipped = grpo_token_loss(x.logp_rl, x.old, x.adv, config.clip_low, config.clip_high)
    per_token = torch.where(x.adv > 0, w_rl * per_token, per_token)
    return agg(per_token, sets.rollout, "rollout"), clipped & sets.rollout


# ``loss.rollout_objective`` -> the self-rollout term; a new objective is one function here
# plus its name in ``algorithm.config._CHOICES``.
RolloutObjective = Callable[[MaskedInputs, TokenSets, Tensor, LossConfig, Aggregate], tuple[Tensor, Tensor]]
ROLLOUT_OBJECTIVES: dict[str, RolloutObjective] = {"paper": paper_rollout_term, "grpo": grpo_rollout_term}


def kl_term(x: MaskedInputs, sets: TokenSets, config: LossConfig, agg: Aggregate) -> tuple[Tensor, Tensor]:
    """Eq. A1's penalty: kl_coef · mean over response tokens of KL(πθ‖π_ref); returns (loss, per-token KL).

    The per-token KL is 0 without a reference model; the loss is 0 when ``kl_coef`` is 0.
    """
    kl = torch.zeros_like(x.logp) if x.ref is None else kl_token(x.logp, x.ref, config.kl_estimator)
    loss = config.kl_coef * agg(kl, sets.response, "response") if config.kl_coef > 0 else x.logp.new_zeros(())
    return loss, kl


def entropy_bonus_term(x: MaskedInputs, sets: TokenSets, config: LossConfig, agg: Aggregate) -> Tensor:
    """The official code's entropy bonus: entropy_bonus · mean over response tokens of H (subtracted)."""
    if config.entropy_bonus > 0:
        return config.entropy_bonus * agg(x.ent, sets.response, "response")
    return x.logp.new_zeros(())


# The token count each mean of ``loss_metrics`` is taken over (``n_rollout_tokens`` =
# ``n_tokens`` − ``n_demo_tokens``): a step's value from its micro-batches' is their mean
# weighted by these counts.
METRIC_TOKENS = {
    "w_sft": "n_demo_tokens",
    "entropy_demo": "n_demo_tokens",
    "w_rl": "n_rollout_tokens",
    "entropy_rollout": "n_rollout_tokens",
    "clip_frac": "n_rollout_tokens",
    "entropy": "n_tokens",
    "kl": "n_tokens",
    "low_entropy_drop_frac": "n_tokens",
}


# ``ratio_stats``' means, each over the rollout tokens (its max is a max over them).
RATIO_METRIC_TOKENS = dict.fromkeys(("ratio_mean", "log_ratio_mean", "log_ratio_abs_mean"), "n_rollout_tokens")


def ratio_stats(log_probs: Tensor, old_log_probs: Tensor, rollout_tokens: Tensor) -> dict[str, float]:
    """Importance ratio πθ/π_old on rollout tokens: 1 on-policy, drifting with staleness.

    With π_old the rollout engine's sampling log-probs, ``log_ratio_mean`` and ``log_ratio_abs_mean``
    measured on the weights that generated the batch are the gap between the engine's and the
    trainer's numerics (vLLM's kernels and dtype against the training forward's); on a stale batch
    they add the policy's drift since. Empty if there is no rollout token."""
    if not bool(rollout_tokens.any()):
        return {}
    log_ratio = (log_probs.detach() - old_log_probs)[rollout_tokens].double()
    ratio = log_ratio.exp()
    values = torch.stack((ratio.mean(), ratio.max(), log_ratio.mean(), log_ratio.abs().mean())).tolist()
    return dict(zip(("ratio_mean", "ratio_max", "log_ratio_mean", "log_ratio_abs_mean"), values))


def loss_metrics(
    terms: dict[str, Tensor],
    x: MaskedInputs,
    sets: TokenSets,
    kl: Tensor,
    w_sft: Tensor,
    w_rl: Tensor,
    clipped: Tensor,
    dropped: Tensor,
) -> dict[str, float]:
    """The metrics of ``srft_loss`` as plain floats, fetched with one device-to-host copy."""
    with torch.no_grad():
        n_tokens = sets.response.sum()
        metric_tensors = {
            **terms,
            "kl": masked_mean(kl, sets.response),
            "w_sft": masked_mean(w_sft, sets.demo),
            "w_rl": masked_mean(w_rl, sets.rollout),
            "entropy_demo": masked_mean(x.ent, sets.demo),
            "entropy_rollout": masked_mean(x.ent, sets.rollout),
            "entropy": masked_mean(x.ent, sets.response),
            "clip_frac": clipped.sum().double() / sets.rollout.sum().clamp(min=1),
            "low_entropy_drop_frac": dropped.sum().double() / n_tokens.clamp(min=1),
            "n_tokens": n_tokens,
            "n_demo_tokens": sets.demo.sum(),
            "n_pos_tokens": sets.pos.sum(),
            "n_neg_tokens": sets.neg.sum(),
        }
        values = torch.stack([t.detach().to(torch.float64).reshape(()) for t in metric_tensors.values()]).tolist()
    return dict(zip(metric_tensors, values))


def _check_totals(metrics: dict[str, float], totals: StepTotals | None) -> None:
    # Checked on the metrics rather than up front: the token counts are then already on the
    # host, so the check costs no extra device synchronisation.
    if totals is not None and any(
        metrics[f"n_{name}_tokens"] > getattr(totals, f"{name}_tokens") for name in ("demo", "pos", "neg")
    ):
        raise ValueError(
            "totals: this micro-batch has more demo / positive / negative tokens than its step's "
            "StepTotals; compute step_totals over all the micro-batches of the step"
        )


def srft_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    entropy: Tensor,
    mask: Tensor,
    advantages: Tensor,
    rewards: Tensor,
    is_demo: Tensor,
    config: LossConfig | None = None,
    ref_log_probs: Tensor | None = None,
    *,
    totals: StepTotals | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Eq. 13 and its configured variants; returns (scalar loss, metrics of plain floats).

    Shapes: ``log_probs``, ``old_log_probs``, ``entropy``, ``mask`` [B, T] (mask = response
    tokens); ``advantages``, ``rewards``, ``is_demo`` [B]. ``old_log_probs`` (the generating policy's) is
    read by the rollout terms only: the GRPO ratio, or the importance weight of the paper
    objective (the demo term uses πβ = 1 by definition). Weight metrics
    (``w_sft``, ``w_rl``) are means over the demo / rollout tokens; metrics of an empty token
    set are 0.0.

    ``totals``: ``step_totals`` of the whole optimizer step that these sequences are a
    micro-batch of. Every term then divides by the step's counts and the batch-scope weights
    use the step's mean entropies (the micro-batch's when ``totals`` has none), so the sum of
    the micro-batch losses is the step's loss. The ``loss*`` metrics are then this
    micro-batch's share (they add up over the step); all other metrics, and the Appendix A.2
    entropy quantile, stay this micro-batch's own.
    """
    config = config or LossConfig()
    config.validate()
    _check_inputs(
        log_probs,
        {"old_log_probs": old_log_probs, "entropy": entropy, "mask": mask, "ref_log_probs": ref_log_probs},
        {"advantages": advantages, "rewards": rewards, "is_demo": is_demo},
        config,
    )
    sets = token_sets(mask, rewards, is_demo)
    x = masked_inputs(log_probs, old_log_probs, entropy, advantages, ref_log_probs, sets.response)
    x, dropped = drop_low_entropy(x, sets.response, config.low_entropy_clip_quantile)
    agg = step_aggregate(config, totals)
    w_sft, w_rl = entropy_weights(x.ent, sets, config, totals)
    zero = x.logp.new_zeros(())

    loss_sft = sft_demo_term(x, sets, w_sft, agg) if config.sft_demo else zero
    loss_rl_demo = rl_demo_term(x, sets, config.demo_shaping_gamma, agg) if config.rl_demo else zero
    loss_rl_rollout, clipped = zero, torch.zeros_like(sets.response)
    if config.rl_rollout:
        loss_rl_rollout, clipped = ROLLOUT_OBJECTIVES[config.rollout_objective](x, sets, w_rl, config, agg)
    loss_kl, kl = kl_term(x, sets, config, agg)
    loss_entropy_bonus = entropy_bonus_term(x, sets, config, agg)

    loss = loss_sft + loss_rl_demo + loss_rl_rollout + loss_kl - loss_entropy_bonus

    terms = {
        "loss": loss,
        "loss_sft_demo": loss_sft,
        "loss_rl_demo": loss_rl_demo,
        "loss_rl_rollout": loss_rl_rollout,
        "loss_kl": loss_kl,
        "loss_entropy_bonus": loss_entropy_bonus,
    }
    metrics = loss_metrics(terms, x, sets, kl, w_sft, w_rl, clipped, dropped)
    _check_totals(metrics, totals)
    return loss, metrics
