"""``LossConfig``: every knob of the SRFT objective, and the paper's baselines as presets.

``LossConfig()`` is the paper (Eq. 7-13) exactly. The official code (a verl fork in the
LUFFY lineage) differs from the paper text in places; each difference is a field, so both
are reachable, and the baselines/ablations of the paper are presets of the same fields.

Presets (``LossConfig.from_preset(name)``; ``loss.preset`` in YAML, other ``loss.*`` keys override):

=============== ====================================================== ===========================================
preset          what it is                                             paper vs official code
=============== ====================================================== ===========================================
srft            Eq. 13: w_SFT·SFT(demo) + RL(demo, π/πβ, πβ=1, no      the paper text: batch-scalar entropy
                clip) + w_RL·(−log π) on positive rollouts + log π on  weights, token-mean of each term, Eq. 7
                negative rollouts; group = 8 rollouts + 1 demo         std normalisation, demo appended (8 + 1)
srft_official   srft as the official code runs it: rollouts by the     official code: GRPO surrogate −Â·ratio on
                GRPO surrogate (no clip) with w_RL on Â > 0 tokens,    rollouts, LUFFY shaping γ = 0.1, per-token
                demo term shaped π/(π+γ), γ = 0.1, per-token weights,  weights, normaliser 8192 (max response
                Σ tokens / 8192 per sequence, entropy bonus 0.001,     length), entropy bonus 0.001, no std, the
                Â = r − mean (no std), demo replaces a rollout (7 + 1) demo takes the last rollout slot
grpo            GRPO baseline, Eq. 3: clipped surrogate, ε = 0.2,      paper Eq. 3 literally (sequence mean of
                per-sequence token mean then mean over sequences,      token means); verl's default is a token
                no demonstrations                                      mean (``loss_agg=token_mean``)
luffy           LUFFY baseline: demo in the group, demo term           LUFFY's released script: reshape
                −Â·π/(π+γ), γ = 0.1, rollouts by GRPO without clip,    p_div_p_0.1, loss_remove_clip, no std,
                no SFT term, no entropy weights, Σ tokens / 8192,      loss_remove_token_mean (8192), entropy
                entropy bonus 0.001, Â = r − mean, 7 rollouts + 1 demo coeff 0.001, n = 8 with n_prefix = 1
sft             SFT on demonstrations only: mean(−log π), w = 1        Eq. 5 / Table 1 "SFT"
sft_kl          sft + 0.2·KL(πθ‖π_base) on demonstration tokens (k3)   Eq. A1, λ = 0.2; the paper does not name
                                                                       the estimator: k3 (verl's low_var_kl)
sft_plus_rl     plain sum: SFT (w = 1) on demos + GRPO (Eq. 3, ε =     Table 1 "SFT+RL": no entropy weights,
                0.2) on rollouts; demos are not in the group           demos only in the SFT term
srft_no_wsft    srft with w_SFT fixed at 1.0                           Table 3 ablation "w/o w_SFT"
srft_no_wrl     srft with w_RL fixed at 1.0                            Table 3 ablation "w/o w_RL"
=============== ====================================================== ===========================================

Entropy weights are ``coef · exp(sign · H)`` (detached): w_SFT = 0.5·exp(−H_demo),
w_RL = 0.1·exp(+H_roll) in the paper; ``*_fixed`` replaces the formula by a constant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from srft_openrlhf.errors import ConfigError

_CHOICES: dict[str, tuple[str, ...]] = {
    "rollout_objective": ("paper", "grpo"),
    "entropy_scope": ("batch", "sequence", "token"),
    "loss_agg": ("token_mean", "constant", "seq_mean_token_mean"),
    "kl_estimator": ("k1", "k3"),
    "demo_mode": ("append", "replace"),
}


@dataclass
class LossConfig:
    """All knobs of the SRFT loss; the defaults are the paper exactly (preset ``srft``).

    ``LossConfig.from_preset(name)`` builds a preset; ``validate()`` raises ConfigError on a
    bad value and is called by ``srft_loss``.
    """

    preset: str = "srft"  # name of the preset these values started from (recorded only)

    # which terms of Eq. 13 are on
    sft_demo: bool = True  # Eq. 8: w_SFT · mean(−log π) over demonstration tokens
    rl_demo: bool = True  # Eq. 9-10: −Â · π/πβ over demonstration tokens (πβ = 1, no clip)
    rl_rollout: bool = True  # Eq. 12 (or the GRPO surrogate) over self-rollout tokens

    # self-rollout objective: "paper" = Eq. 12 (w_RL·(−log π) on reward > 0.5, log π on the
    # others; no advantages); "grpo" = −Â·ratio, ratio = exp(logp − old_logp), tokens of
    # rollouts with Â > 0 multiplied by w_RL (official code), optional asymmetric clip
    rollout_objective: str = "paper"
    clip_low: float | None = None  # ratio clipped below at 1 − clip_low (None = no clip)
    clip_high: float | None = None  # ratio clipped above at 1 + clip_high (None = no clip)
    # "paper" objective on stale rollouts (async): each token's term is weighted by the
    # truncated importance weight sg(min(πθ/π_old, cap)), which is exactly 1 on-policy, so
    # the synchronous loss is Eq. 12 unchanged. Without it, Eq. 12 on rollouts of an older
    # policy pushes πθ away from that policy (see ``importance_weight``). None = no weight.
    rollout_is_cap: float | None = 2.0

    # demo term policy shaping: None = π (paper), γ → π/(π+γ) (LUFFY / official code, γ = 0.1)
    demo_shaping_gamma: float | None = None

    # entropy-aware weights w = coef · exp(sign · H), detached (Eq. 8, Eq. 12)
    entropy_scope: str = "batch"  # batch: one H per term | sequence: per-sequence H | token
    w_sft_coef: float = 0.5
    w_sft_sign: float = -1.0
    w_sft_fixed: float | None = None  # a constant instead of the formula (ablation: 1.0)
    w_rl_coef: float = 0.1
    w_rl_sign: float = 1.0
    w_rl_fixed: float | None = None

    # aggregation over tokens: "token_mean" = each term a mean over its own token set;
    # "constant" = per sequence Σ token losses / loss_agg_constant, then mean over all B
    # sequences of the batch (verl "seq-mean-token-sum-norm", Dr.GRPO);
    # "seq_mean_token_mean" = per sequence mean over its tokens in the set, then mean over
    # the sequences that have such tokens (GRPO Eq. 3)
    loss_agg: str = "token_mean"
    loss_agg_constant: float = 8192.0

    entropy_bonus: float = 0.0  # subtracts coef · mean entropy (needs entropy with grad)
    kl_coef: float = 0.0  # > 0: + kl_coef · KL(πθ‖π_ref) over all response tokens
    kl_estimator: str = "k3"  # k1: logp − ref | k3: exp(ref − logp) − (ref − logp) − 1

    # Appendix A.2: tokens whose entropy is below this quantile of the batch's response-token
    # entropies get no gradient from the RL terms (SFT and KL untouched). None = off.
    low_entropy_clip_quantile: float | None = None

    # group advantages (Eq. 7) and how demonstrations join the group
    normalize_std: bool = True  # divide by the group std (Eq. 7); False: Â = r − mean
    adv_eps: float = 1e-6
    demo_mode: str = "append"  # append: 8 rollouts + 1 demo (paper) | replace: 7 + 1 (official)
    demos_per_group: int = 1

    @classmethod
    def from_preset(cls, name: str) -> LossConfig:
        """The named paper baseline / ablation (the module docstring's table)."""
        if name not in _PRESETS:
            raise ConfigError(f"unknown loss preset {name!r}; known presets: {', '.join(PRESETS)}")
        return dataclasses.replace(cls(), preset=name, **_PRESETS[name])

    @property
    def needs_demos(self) -> bool:
        """Some term trains on demonstrations."""
        return self.sft_demo or self.rl_demo

    @property
    def needs_rollouts(self) -> bool:
        """Generation is needed: a rollout term is on, or the demo RL term needs the group."""
        return self.rl_rollout or self.rl_demo

    @property
    def demos_in_group(self) -> bool:
        """Demonstrations join their prompt's rollout group for the advantage (Eq. 6-7)."""
        return self.rl_demo

    def validate(self) -> None:
        """Raise ConfigError naming the ``loss.*`` key of the first invalid value."""
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"loss.{name}: {getattr(self, name)!r} is not one of {', '.join(choices)}")
        if not (self.sft_demo or self.rl_demo or self.rl_rollout):
            raise ConfigError("loss: sft_demo, rl_demo and rl_rollout are all false; turn one on")
        for name in ("clip_low", "clip_high", "demo_shaping_gamma", "rollout_is_cap"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"loss.{name}: must be > 0 or null, got {value}")
        q = self.low_entropy_clip_quantile
        if q is not None and not 0.0 <= q <= 1.0:
            raise ConfigError(f"loss.low_entropy_clip_quantile: must be in [0, 1] or null, got {q}")
        if self.loss_agg_constant <= 0:
            raise ConfigError(f"loss.loss_agg_constant: must be > 0, got {self.loss_agg_constant}")
        for name in ("entropy_bonus", "kl_coef", "adv_eps", "demos_per_group"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name}: must be >= 0, got {getattr(self, name)}")


_SRFT_OFFICIAL = dict(
    rollout_objective="grpo",
    demo_shaping_gamma=0.1,
    entropy_scope="token",
    loss_agg="constant",
    loss_agg_constant=8192.0,
    entropy_bonus=0.001,
    normalize_std=False,
    demo_mode="replace",
)
_GRPO_EQ3 = dict(rollout_objective="grpo", clip_low=0.2, clip_high=0.2, w_rl_fixed=1.0)
_SFT = dict(rl_demo=False, rl_rollout=False, w_sft_fixed=1.0)

_PRESETS: dict[str, dict[str, Any]] = {
    "srft": {},
    "srft_official": _SRFT_OFFICIAL,
    "grpo": dict(_GRPO_EQ3, sft_demo=False, rl_demo=False, loss_agg="seq_mean_token_mean"),
    "luffy": dict(_SRFT_OFFICIAL, sft_demo=False, entropy_scope="batch", w_rl_fixed=1.0),
    "sft": _SFT,
    "sft_kl": dict(_SFT, kl_coef=0.2, kl_estimator="k3"),
    "sft_plus_rl": dict(_GRPO_EQ3, rl_demo=False, w_sft_fixed=1.0),
    "srft_no_wsft": dict(w_sft_fixed=1.0),
    "srft_no_wrl": dict(w_rl_fixed=1.0),
}

PRESETS: tuple[str, ...] = tuple(_PRESETS)
