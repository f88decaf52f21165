"""srft_loss against an independent pure-Python reference, hand-computed cases and finite differences."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from srft_openrlhf.algorithm import PRESETS, LossConfig, srft_loss
from srft_openrlhf.errors import ConfigError

# ---------------------------------------------------------------- reference (plain Python floats)


def reference(batch: dict, cfg: LossConfig, logp_rl: list | None = None) -> dict[str, float]:
    """Eq. 13 and every knob, token by token. ``logp_rl`` (default: the log-probs) is what the
    RL terms read, so a test can freeze the tokens that Appendix A.2 drops. The importance
    weight of stale rollout tokens is a constant: it is taken at ``batch["weight_log_probs"]``
    (default: the log-probs), so finite differences can hold it fixed."""
    lp, old, ent, mask = batch["log_probs"], batch["old_log_probs"], batch["entropy"], batch["mask"]
    lp_weight = batch.get("weight_log_probs", lp)
    adv, rew, demo, ref = batch["advantages"], batch["rewards"], batch["is_demo"], batch.get("ref_log_probs")
    logp_rl = lp if logp_rl is None else logp_rl
    B, T = len(lp), len(lp[0])
    tokens = [(b, t) for b in range(B) for t in range(T) if mask[b][t]]
    demo_toks = [(b, t) for b, t in tokens if demo[b]]
    roll_toks = [(b, t) for b, t in tokens if not demo[b]]
    pos_toks = [(b, t) for b, t in roll_toks if rew[b] > 0.5]
    neg_toks = [(b, t) for b, t in roll_toks if rew[b] <= 0.5]

    def mean(xs):
        xs = list(xs)
        return sum(xs) / len(xs) if xs else 0.0

    def reduce(items):  # items: [(b, value)]
        if cfg.loss_agg == "token_mean":
            return mean(v for _, v in items)
        if cfg.loss_agg == "constant":
            return sum(v for _, v in items) / cfg.loss_agg_constant / B
        per_seq = {}
        for b, v in items:
            per_seq.setdefault(b, []).append(v)
        return mean(mean(vs) for vs in per_seq.values())

    def weight(b, t, toks, coef, sign, fixed):
        if fixed is not None:
            return fixed
        if cfg.entropy_scope == "batch":
            h = mean(ent[bb][tt] for bb, tt in toks)
        elif cfg.entropy_scope == "sequence":
            h = mean(ent[b][tt] for tt in range(T) if mask[b][tt])
        else:
            h = ent[b][t]
        return coef * math.exp(sign * h)

    def w_sft(b, t):
        return weight(b, t, demo_toks, cfg.w_sft_coef, cfg.w_sft_sign, cfg.w_sft_fixed)

    def w_rl(b, t):
        return weight(b, t, roll_toks, cfg.w_rl_coef, cfg.w_rl_sign, cfg.w_rl_fixed)

    out = dict.fromkeys(["loss_sft_demo", "loss_rl_demo", "loss_rl_rollout", "loss_kl", "loss_entropy_bonus"], 0.0)
    if cfg.sft_demo:
        out["loss_sft_demo"] = reduce((b, -w_sft(b, t) * lp[b][t]) for b, t in demo_toks)
    if cfg.rl_demo:
        g = cfg.demo_shaping_gamma
        shaped = [(b, math.exp(logp_rl[b][t])) for b, t in demo_toks]
        out["loss_rl_demo"] = reduce((b, -adv[b] * (p if g is None else p / (p + g))) for b, p in shaped)
    clipped = 0
    if cfg.rl_rollout and cfg.rollout_objective == "paper":

        def is_weight(b, t):
            if cfg.rollout_is_cap is None:
                return 1.0
            return min(math.exp(lp_weight[b][t] - old[b][t]), cfg.rollout_is_cap)

        out["loss_rl_rollout"] = reduce(
            (b, -is_weight(b, t) * w_rl(b, t) * logp_rl[b][t]) for b, t in pos_toks
        ) + reduce((b, is_weight(b, t) * logp_rl[b][t]) for b, t in neg_toks)
        if cfg.rollout_is_cap is not None:
            clipped = sum(math.exp(lp_weight[b][t] - old[b][t]) > cfg.rollout_is_cap for b, t in roll_toks)
    elif cfg.rl_rollout:
        items = []
        for b, t in roll_toks:
            ratio = math.exp(logp_rl[b][t] - old[b][t])
            value = -adv[b] * ratio
            if cfg.clip_low is not None or cfg.clip_high is not None:
                lo = -math.inf if cfg.clip_low is None else 1 - cfg.clip_low
                hi = math.inf if cfg.clip_high is None else 1 + cfg.clip_high
                clipped_value = -adv[b] * min(max(ratio, lo), hi)
                if clipped_value > value:
                    value, clipped = clipped_value, clipped + 1
            items.append((b, value * (w_rl(b, t) if adv[b] > 0 else 1.0)))
        out["loss_rl_rollout"] = reduce(items)
    kls = []
    if ref is not None:
        for b, t in tokens:
            d = ref[b][t] - lp[b][t]
            kls.append((b, -d if cfg.kl_estimator == "k1" else math.exp(d) - d - 1))
    if cfg.kl_coef > 0:
        out["loss_kl"] = cfg.kl_coef * reduce(kls)
    if cfg.entropy_bonus > 0:
        out["loss_entropy_bonus"] = cfg.entropy_bonus * reduce((b, ent[b][t]) for b, t in tokens)
    out["loss"] = (
        out["loss_sft_demo"] + out["loss_rl_demo"] + out["loss_rl_rollout"] + out["loss_kl"] - out["loss_entropy_bonus"]
    )
    dropped = 0
    if cfg.low_entropy_clip_quantile is not None and tokens:
        threshold = np.quantile([ent[b][t] for b, t in tokens], cfg.low_entropy_clip_quantile)
        dropped = sum(ent[b][t] < threshold for b, t in tokens)
    out.update(
        kl=mean(v for _, v in kls),
        w_sft=mean(w_sft(b, t) for b, t in demo_toks),
        w_rl=mean(w_rl(b, t) for b, t in roll_toks),
        entropy_demo=mean(ent[b][t] for b, t in demo_toks),
        entropy_rollout=mean(ent[b][t] for b, t in roll_toks),
        clip_frac=clipped / len(roll_toks) if roll_toks else 0.0,
        low_entropy_drop_frac=dropped / len(tokens) if tokens else 0.0,
        n_demo_tokens=len(demo_toks),
        n_pos_tokens=len(pos_toks),
        n_neg_tokens=len(neg_toks),
    )
    return out


# ---------------------------------------------------------------- helpers


def random_batch(seed: int, B: int = 7, T: int = 5) -> dict[str, torch.Tensor]:
    """Two prompts of rollouts + a demo each, ragged lengths (one empty row), both reward signs."""
    g = torch.Generator().manual_seed(seed)
    log_probs = -3.0 * torch.rand(B, T, generator=g, dtype=torch.float64) - 0.01
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[3] = 0  # a sequence with no response tokens
    return dict(
        log_probs=log_probs,
        old_log_probs=log_probs + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64),
        entropy=2.0 * torch.rand(B, T, generator=g, dtype=torch.float64),
        mask=torch.arange(T)[None, :] < lengths[:, None],
        advantages=torch.randn(B, generator=g, dtype=torch.float64),
        rewards=torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0], dtype=torch.float64),
        is_demo=torch.tensor([False, False, False, True, False, False, True]),
        ref_log_probs=log_probs + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64),
    )


def as_lists(batch: dict[str, torch.Tensor]) -> dict[str, list]:
    return {k: v.tolist() for k, v in batch.items()}


def run(batch: dict[str, torch.Tensor], cfg: LossConfig, **replace):
    args = dict(batch, **replace)
    return srft_loss(
        args["log_probs"],
        args["old_log_probs"],
        args["entropy"],
        args["mask"],
        args["advantages"],
        args["rewards"],
        args["is_demo"],
        cfg,
        ref_log_probs=args.get("ref_log_probs"),
    )


def finite_difference(f, x: list[list[float]], h: float = 1e-6) -> list[list[float]]:
    grad = [[0.0] * len(row) for row in x]
    for b, row in enumerate(x):
        for t in range(len(row)):
            up = [r[:] for r in x]
            down = [r[:] for r in x]
            up[b][t] += h
            down[b][t] -= h
            grad[b][t] = (f(up) - f(down)) / (2 * h)
    return grad


KNOBS: list[tuple[str, dict]] = [(name, {}) for name in PRESETS] + [
    ("srft", dict(entropy_scope="sequence")),
    ("srft", dict(entropy_scope="token")),
    ("srft", dict(w_sft_coef=0.7, w_sft_sign=1.0, w_rl_coef=0.3, w_rl_sign=-1.0)),
    ("srft", dict(w_sft_fixed=2.0, w_rl_fixed=0.5)),
    ("srft", dict(demo_shaping_gamma=0.1)),
    ("srft", dict(rollout_objective="grpo")),
    ("srft", dict(rollout_is_cap=None)),
    ("srft", dict(rollout_is_cap=1.1)),
    ("srft", dict(rollout_objective="grpo", clip_low=0.2, clip_high=0.28)),
    ("srft", dict(rollout_objective="grpo", clip_low=0.1)),
    ("srft", dict(rollout_objective="grpo", clip_high=0.1, entropy_scope="sequence")),
    ("srft", dict(loss_agg="constant", loss_agg_constant=7.0)),
    ("srft", dict(loss_agg="seq_mean_token_mean")),
    ("srft", dict(entropy_bonus=0.01)),
    ("srft", dict(kl_coef=0.3, kl_estimator="k1")),
    ("srft", dict(kl_coef=0.3, kl_estimator="k3", loss_agg="seq_mean_token_mean")),
    ("srft", dict(low_entropy_clip_quantile=0.3)),
    ("srft", dict(sft_demo=False)),
    ("srft", dict(rl_demo=False)),
    ("srft", dict(rl_rollout=False)),
    ("srft_official", dict(low_entropy_clip_quantile=0.5, kl_coef=0.1, kl_estimator="k1", entropy_scope="sequence")),
    ("grpo", dict(low_entropy_clip_quantile=0.2, loss_agg="token_mean")),
    ("luffy", dict(clip_low=0.2, clip_high=0.2, loss_agg_constant=3.0)),
]
METRICS = [
    "loss",
    "loss_sft_demo",
    "loss_rl_demo",
    "loss_rl_rollout",
    "loss_kl",
    "loss_entropy_bonus",
    "kl",
    "w_sft",
    "w_rl",
    "entropy_demo",
    "entropy_rollout",
    "clip_frac",
    "low_entropy_drop_frac",
    "n_demo_tokens",
    "n_pos_tokens",
    "n_neg_tokens",
]


def config(preset: str, overrides: dict) -> LossConfig:
    return dataclasses.replace(LossConfig.from_preset(preset), **overrides)


# ---------------------------------------------------------------- against the reference


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("preset,overrides", KNOBS, ids=[f"{p}-{'-'.join(o) or 'preset'}" for p, o in KNOBS])
def test_matches_reference(preset, overrides, seed):
    cfg = config(preset, overrides)
    batch = random_batch(seed)
    loss, metrics = run(batch, cfg)
    expected = reference(as_lists(batch), cfg)
    for key in METRICS:
        assert metrics[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key
    assert loss.item() == pytest.approx(expected["loss"], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("preset,overrides", KNOBS, ids=[f"{p}-{'-'.join(o) or 'preset'}" for p, o in KNOBS])
def test_gradient_matches_reference_finite_differences(preset, overrides):
    """d loss / d log_probs equals central differences of the reference; tokens that A.2 drops
    are frozen inside the reference's RL terms, so they keep only SFT/KL gradients."""
    cfg = config(preset, overrides)
    batch = random_batch(2)
    log_probs = batch["log_probs"].clone().requires_grad_(True)
    loss, _ = run(batch, cfg, log_probs=log_probs)
    loss.backward()

    lists = as_lists(batch)
    x0 = lists["log_probs"]
    frozen = [[False] * len(row) for row in x0]
    if cfg.low_entropy_clip_quantile is not None:
        ent, mask = lists["entropy"], lists["mask"]
        threshold = np.quantile(
            [e for er, mr in zip(ent, mask) for e, m in zip(er, mr) if m], cfg.low_entropy_clip_quantile
        )
        frozen = [[m and e < threshold for e, m in zip(er, mr)] for er, mr in zip(ent, mask)]
        assert any(any(row) for row in frozen)

    def f(x):
        rl = [[x0[b][t] if frozen[b][t] else x[b][t] for t in range(len(x[b]))] for b in range(len(x))]
        return reference(dict(lists, log_probs=x, weight_log_probs=x0), cfg, logp_rl=rl)["loss"]

    expected = torch.tensor(finite_difference(f, x0), dtype=torch.float64)
    torch.testing.assert_close(log_probs.grad, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "preset,overrides",
    [
        ("srft", {}),
        ("srft_official", {}),
        ("grpo", {}),
        ("srft", dict(entropy_scope="sequence", kl_coef=0.2)),
        ("luffy", dict(loss_agg="seq_mean_token_mean", kl_coef=0.1, kl_estimator="k1")),
    ],
)
def test_gradcheck_log_probs(preset, overrides):
    # the importance weight of stale rollouts is a stop-gradient factor, which numerical
    # differentiation would see: checked against finite differences of the reference instead
    cfg = dataclasses.replace(config(preset, overrides), rollout_is_cap=None)
    batch = random_batch(3, B=7, T=3)
    f = lambda lp: run(batch, cfg, log_probs=lp)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (batch["log_probs"].clone().requires_grad_(True),))


def test_gradcheck_entropy_bonus():
    """With fixed weights the entropy reaches the loss only through the bonus: a full gradient."""
    cfg = config("srft_official", dict(w_sft_fixed=1.0, w_rl_fixed=1.0, entropy_bonus=0.05))
    batch = random_batch(4, B=7, T=3)
    f = lambda ent: run(batch, cfg, entropy=ent)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (batch["entropy"].clone().requires_grad_(True),))


# ---------------------------------------------------------------- hand-computed cases


def tiny_batch() -> dict[str, torch.Tensor]:
    """seq 0: demo (Â = 1.5); seq 1: correct rollout, one token; seq 2: wrong rollout."""
    return dict(
        log_probs=torch.tensor([[-1.0, -2.0], [-0.5, 9.9], [-0.25, -0.75]], dtype=torch.float64),
        old_log_probs=torch.tensor([[0.0, 0.0], [-0.7, 0.0], [-0.25, -0.5]], dtype=torch.float64),
        entropy=torch.tensor([[0.5, 1.5], [1.0, 7.0], [0.0, 2.0]], dtype=torch.float64),
        mask=torch.tensor([[True, True], [True, False], [True, True]]),
        advantages=torch.tensor([1.5, 0.5, -0.5], dtype=torch.float64),
        rewards=torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64),
        is_demo=torch.tensor([True, False, False]),
        ref_log_probs=torch.tensor([[-1.5, -2.0], [-0.5, 0.0], [-0.25, -0.75]], dtype=torch.float64),
    )


def test_paper_terms_by_hand():
    batch = tiny_batch()
    _, m = run(batch, LossConfig(), old_log_probs=batch["log_probs"])  # on-policy: Eq. 12 as written
    # H_demo = (0.5 + 1.5)/2 = 1 -> w_SFT = 0.5 e^-1 = 0.183940
    assert m["w_sft"] == pytest.approx(0.5 * math.exp(-1.0))
    # Eq. 8: w_SFT · mean(1, 2) = 0.183940 · 1.5 = 0.275910
    assert m["loss_sft_demo"] == pytest.approx(0.5 * math.exp(-1.0) * 1.5)
    # Eq. 9-10: −1.5 · mean(e^-1, e^-2) = −1.5 · 0.251607 = −0.377411
    assert m["loss_rl_demo"] == pytest.approx(-1.5 * (math.exp(-1) + math.exp(-2)) / 2)
    assert m["loss_rl_demo"] == pytest.approx(-0.377411, abs=1e-6)
    # H_roll = mean(1.0, 0.0, 2.0) = 1 (the padded 7.0 is ignored) -> w_RL = 0.1 e = 0.271828
    assert m["w_rl"] == pytest.approx(0.1 * math.e)
    # Eq. 12: w_RL · 0.5 + mean(−0.25, −0.75) = 0.135914 − 0.5 = −0.364086
    assert m["loss_rl_rollout"] == pytest.approx(0.1 * math.e * 0.5 - 0.5)
    # Eq. 13: 0.275910 − 0.377411 − 0.364086 = −0.465587
    assert m["loss"] == pytest.approx(-0.465587, abs=1e-6)
    assert (m["n_demo_tokens"], m["n_pos_tokens"], m["n_neg_tokens"]) == (2, 1, 2)


def test_stale_rollouts_importance_weighted_by_hand():
    """Rollouts of an older policy: each Eq. 12 token term times sg(min(π/π_old, cap))."""
    # seq 1 (positive): ratio e^(−0.5+0.7) = e^0.2 = 1.221403; seq 2 (negative): e^0 = 1, e^-0.25 = 0.778801
    # w_RL · 1.221403 · 0.5 + mean(−0.25 · 1, −0.75 · 0.778801) = 0.166005 − 0.417050 = −0.251045
    _, m = run(tiny_batch(), LossConfig())
    assert m["loss_rl_rollout"] == pytest.approx(
        0.1 * math.e * math.exp(0.2) * 0.5 - (0.25 + 0.75 * math.exp(-0.25)) / 2
    )
    assert m["loss_rl_rollout"] == pytest.approx(-0.251045, abs=1e-6) and m["clip_frac"] == 0.0
    # cap 1.1: the positive token's weight is truncated to 1.1 (one of three rollout tokens)
    _, m = run(tiny_batch(), LossConfig(rollout_is_cap=1.1))
    assert m["loss_rl_rollout"] == pytest.approx(0.1 * math.e * 1.1 * 0.5 - (0.25 + 0.75 * math.exp(-0.25)) / 2)
    assert m["clip_frac"] == pytest.approx(1 / 3)
    # no correction: Eq. 12 as written, whatever the staleness
    _, m = run(tiny_batch(), LossConfig(rollout_is_cap=None))
    assert m["loss_rl_rollout"] == pytest.approx(0.1 * math.e * 0.5 - 0.5)


def test_stale_negative_rollouts_are_unbiased():
    """Why the weight: over all sequences of a stale policy π_old, the expected gradient of
    Eq. 12's negative term is −∇KL(π_old‖πθ) ≠ 0 without the weight (it pushes πθ away from
    π_old), and exactly 0 with it (as on-policy). Exact expectation over a 4-token vocabulary."""
    logits = torch.tensor([1.0, 0.2, -0.5, 0.3], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([0.4, 0.6, -0.2, 0.1], dtype=torch.float64).log_softmax(-1)
    p_old = old.exp()

    def expected_gradient(cap):
        logp = logits.log_softmax(-1)
        per_token = []
        for y in range(4):  # every token as a one-token negative rollout, weighted by π_old(y)
            loss, _ = srft_loss(
                logp[y].reshape(1, 1),
                old[y].reshape(1, 1),
                torch.zeros(1, 1, dtype=torch.float64),
                torch.ones(1, 1, dtype=torch.bool),
                torch.zeros(1, dtype=torch.float64),
                torch.zeros(1, dtype=torch.float64),
                torch.zeros(1, dtype=torch.bool),
                LossConfig(rollout_is_cap=cap),
            )
            per_token.append(p_old[y] * loss)
        (grad,) = torch.autograd.grad(sum(per_token), logits)
        return grad

    kl = lambda z: (p_old * (old - z.log_softmax(-1))).sum()  # noqa: E731
    (grad_kl,) = torch.autograd.grad(kl(logits), logits)
    torch.testing.assert_close(expected_gradient(None), -grad_kl)
    assert grad_kl.abs().max() > 0.05
    torch.testing.assert_close(expected_gradient(100.0), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)


def test_demo_shaping_by_hand():
    cfg = LossConfig(sft_demo=False, rl_rollout=False, demo_shaping_gamma=0.1)
    _, m = run(tiny_batch(), cfg)
    # π = e^-1 = 0.367879 -> 0.367879/0.467879 = 0.786270; π = e^-2 = 0.135335 -> 0.575074
    # −1.5 · mean(0.786270, 0.575074) = −1.021008
    assert m["loss_rl_demo"] == pytest.approx(-1.021008, abs=1e-6)


def test_grpo_rollouts_by_hand():
    cfg = LossConfig(sft_demo=False, rl_demo=False, rollout_objective="grpo", clip_low=0.2, clip_high=0.2)
    _, m = run(tiny_batch(), cfg)
    # seq 1 (Â = 0.5): ratio = e^0.2 = 1.221403 > 1.2 -> clipped: −0.5 · 1.2 = −0.6, times w_RL = 0.271828
    #   -> −0.163097
    # seq 2 (Â = −0.5): ratios e^0 = 1 -> 0.5; e^-0.25 = 0.778801 -> clip at 0.8 is the max: 0.4
    # mean over 3 rollout tokens: (−0.163097 + 0.5 + 0.4) / 3 = 0.245634
    assert m["loss_rl_rollout"] == pytest.approx(0.245634, abs=1e-6)
    assert m["clip_frac"] == pytest.approx(2 / 3)
    unclipped = dataclasses.replace(cfg, clip_low=None, clip_high=None)
    _, m = run(tiny_batch(), unclipped)
    # (−0.5 · 1.221403 · 0.271828 + 0.5 + 0.5 · 0.778801) / 3 = (−0.166004 + 0.5 + 0.389400) / 3 = 0.241132
    assert m["loss_rl_rollout"] == pytest.approx(0.241132, abs=1e-6)
    assert m["clip_frac"] == 0.0


def test_kl_and_bonus_and_constant_by_hand():
    base = LossConfig(rl_demo=False, rl_rollout=False, w_sft_fixed=1.0)
    _, m = run(tiny_batch(), dataclasses.replace(base, kl_coef=0.2, kl_estimator="k1"))
    # k1 on the 5 tokens: logp − ref = 0.5, 0, 0, 0, 0 -> mean 0.1; term 0.2 · 0.1 = 0.02
    assert m["kl"] == pytest.approx(0.1) and m["loss_kl"] == pytest.approx(0.02)
    _, m = run(tiny_batch(), dataclasses.replace(base, kl_coef=0.2, kl_estimator="k3"))
    # k3: d = −0.5 -> e^-0.5 + 0.5 − 1 = 0.106531; mean over 5 = 0.021306; term 0.004261
    assert m["loss_kl"] == pytest.approx(0.2 * (math.exp(-0.5) - 0.5) / 5)
    _, m = run(tiny_batch(), dataclasses.replace(base, entropy_bonus=0.01))
    # entropies 0.5, 1.5, 1.0, 0.0, 2.0 -> mean 1.0; subtracted 0.01
    assert m["loss_entropy_bonus"] == pytest.approx(0.01)
    assert m["loss"] == pytest.approx(1.5 - 0.01)
    _, m = run(tiny_batch(), dataclasses.replace(base, loss_agg="constant", loss_agg_constant=4.0))
    # SFT: Σ over the demo's tokens (1 + 2) / 4, then mean over the B = 3 sequences: 0.25
    assert m["loss_sft_demo"] == pytest.approx(0.25)


def test_official_per_token_weights_by_hand():
    cfg = LossConfig.from_preset("srft_official")
    _, m = run(tiny_batch(), dataclasses.replace(cfg, rl_demo=False, rl_rollout=False, entropy_bonus=0.0))
    # per token w = 0.5 e^-H: 0.5 e^-0.5 · 1 + 0.5 e^-1.5 · 2 = 0.303265 + 0.223130 = 0.526395; / 8192 / 3
    assert m["loss_sft_demo"] == pytest.approx(0.526395 / 8192 / 3, rel=1e-5)


# ---------------------------------------------------------------- empty sets, padding, stop-gradient


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("case", ["no_demos", "no_positives", "no_negatives", "all_masked"])
def test_empty_token_sets(preset, case):
    batch = random_batch(5)
    if case == "no_demos":
        batch["is_demo"] = torch.zeros(7, dtype=torch.bool)
    elif case == "no_positives":
        batch["rewards"] = batch["rewards"] * batch["is_demo"]
    elif case == "no_negatives":
        batch["rewards"] = torch.ones(7, dtype=torch.float64)
    else:
        batch["mask"] = torch.zeros(7, 5, dtype=torch.bool)
    # padding holds garbage that must not leak
    batch["log_probs"] = torch.where(batch["mask"], batch["log_probs"], torch.tensor(-math.inf, dtype=torch.float64))
    nan = torch.tensor(math.nan, dtype=torch.float64)
    batch["old_log_probs"] = torch.where(batch["mask"], batch["old_log_probs"], nan)
    cfg = dataclasses.replace(LossConfig.from_preset(preset), kl_coef=0.1, low_entropy_clip_quantile=0.25)
    log_probs = batch["log_probs"].clone().requires_grad_(True)
    loss, m = run(batch, cfg, log_probs=log_probs)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(log_probs.grad).all()
    assert (log_probs.grad[~batch["mask"]] == 0).all()
    assert all(math.isfinite(v) for v in m.values())
    if case in ("no_demos", "all_masked"):
        assert m["loss_sft_demo"] == 0.0 and m["loss_rl_demo"] == 0.0 and m["n_demo_tokens"] == 0
    if case == "all_masked":
        assert loss.item() == 0.0 and (log_probs.grad == 0).all()
    if case == "no_positives":
        assert m["n_pos_tokens"] == 0
    if case == "no_negatives":
        assert m["n_neg_tokens"] == 0
    expected = reference(as_lists(batch), cfg)
    for key in METRICS:
        assert m[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key


def test_weights_are_stop_gradient():
    """Entropy computed from the same logits as the log-probs: the weights must not pass gradient,
    so the gradient equals that of the same loss with the weights frozen at their values."""
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 5, dtype=torch.float64)
    targets = torch.tensor([[1, 2], [3, 0], [4, 4]])
    batch = tiny_batch()

    def grads(cfg):
        x = logits.clone().requires_grad_(True)
        logp_all = torch.log_softmax(x, -1)
        log_probs = logp_all.gather(-1, targets[..., None])[..., 0]
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        loss, m = run(batch, cfg, log_probs=log_probs, entropy=entropy)
        loss.backward()
        return x.grad, m

    g, m = grads(LossConfig())
    frozen = LossConfig(w_sft_fixed=m["w_sft"], w_rl_fixed=m["w_rl"])
    g_frozen, _ = grads(frozen)
    torch.testing.assert_close(g, g_frozen, rtol=1e-12, atol=1e-12)


def test_sft_gradient_is_weight_times_inner_gradient():
    batch = tiny_batch()
    log_probs = batch["log_probs"].clone().requires_grad_(True)
    entropy = batch["entropy"].clone().requires_grad_(True)
    loss, m = run(batch, LossConfig(rl_demo=False, rl_rollout=False), log_probs=log_probs, entropy=entropy)
    loss.backward()
    # d/dlogp of w · mean(−logp) over the 2 demo tokens = −w/2 there, 0 elsewhere
    expected = torch.zeros(3, 2, dtype=torch.float64)
    expected[0] = -m["w_sft"] / 2
    torch.testing.assert_close(log_probs.grad, expected)
    assert entropy.grad is None or (entropy.grad == 0).all()


def test_low_entropy_clip_keeps_value_and_drops_rl_gradient():
    batch = tiny_batch()
    cfg = LossConfig(low_entropy_clip_quantile=0.5)
    log_probs = batch["log_probs"].clone().requires_grad_(True)
    loss, m = run(batch, cfg, log_probs=log_probs)
    loss.backward()
    loss_plain, _ = run(batch, LossConfig())
    assert loss.item() == pytest.approx(loss_plain.item())
    # entropies 0.5, 1.5 | 1.0 | 0.0, 2.0 -> median 1.0; dropped: 0.5 (demo) and 0.0 (negative)
    assert m["low_entropy_drop_frac"] == pytest.approx(2 / 5)
    # negative token 0: no RL gradient left
    assert log_probs.grad[2, 0].item() == 0.0
    # demo token 0: only SFT gradient −w/2 remains (the demo RL gradient −Â·π/2 is gone)
    assert log_probs.grad[0, 0].item() == pytest.approx(-m["w_sft"] / 2)
    # demo token 1 keeps both: −w/2 − 1.5 · e^-2 / 2
    assert log_probs.grad[0, 1].item() == pytest.approx(-m["w_sft"] / 2 - 1.5 * math.exp(-2) / 2)


# ---------------------------------------------------------------- errors


def test_kl_without_reference_is_an_error():
    batch = dict(tiny_batch(), ref_log_probs=None)
    with pytest.raises(ValueError, match="ref_log_probs"):
        run(batch, LossConfig.from_preset("sft_kl"))


def test_shape_errors():
    batch = tiny_batch()
    with pytest.raises(ValueError, match="entropy"):
        run(batch, LossConfig(), entropy=batch["entropy"][:, :1])
    with pytest.raises(ValueError, match="advantages"):
        run(batch, LossConfig(), advantages=batch["advantages"][:2])


@pytest.mark.parametrize(
    "field,value",
    [
        ("loss_agg", "sum"),
        ("entropy_scope", "global"),
        ("rollout_objective", "ppo"),
        ("kl_estimator", "k2"),
        ("low_entropy_clip_quantile", 1.5),
        ("clip_low", -0.1),
        ("demo_mode", "prepend"),
    ],
)
def test_invalid_config_is_a_config_error(field, value):
    with pytest.raises(ConfigError, match=f"loss.{field}"):
        run(tiny_batch(), dataclasses.replace(LossConfig(), **{field: value}))


def test_all_terms_off_is_a_config_error():
    with pytest.raises(ConfigError, match="all false"):
        run(tiny_batch(), LossConfig(sft_demo=False, rl_demo=False, rl_rollout=False))


def test_float32_inputs_and_float_mask():
    batch = {k: (v.float() if v.is_floating_point() else v) for k, v in tiny_batch().items()}
    loss, m = run(batch, LossConfig(), mask=batch["mask"].float())
    assert loss.dtype == torch.float32
    # test_paper_terms_by_hand with the stale rollouts' importance weights: 0.275910 − 0.377411 − 0.251045
    assert m["loss"] == pytest.approx(-0.352546, abs=1e-5)
