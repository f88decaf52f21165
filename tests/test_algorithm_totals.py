"""StepTotals: micro-batches summed with step-wide totals equal the whole step in one batch."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from srft_openrlhf.algorithm import METRIC_TOKENS, PRESETS, LossConfig, StepTotals, srft_loss, step_totals

B, T = 10, 6
IS_DEMO = [False, False, False, False, True, False, False, False, False, True]  # two groups of 4 + 1 demo
REWARDS = [0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
# uneven micro-batches: [0, 1] has no positives and no demos, [2, 3, 5] no demos, [6] is one sequence,
# [4, 7, 8, 9] holds both demos; OpenRLHF's replay buffer shuffles, so not in order
SPLITS = [[[0, 1], [2, 3, 5], [6], [4, 7, 8, 9]], [[9, 0, 1, 2, 3], [4, 5, 6, 7, 8]], [[i] for i in range(B)]]
KEYS = ("log_probs", "old_log_probs", "entropy", "mask", "advantages", "rewards", "is_demo", "ref_log_probs")


def random_step(seed: int) -> dict[str, torch.Tensor]:
    """A step of ragged float64 sequences; sequence 6 has no response tokens."""
    g = torch.Generator().manual_seed(seed)
    log_probs = -3.0 * torch.rand(B, T, generator=g, dtype=torch.float64) - 0.01
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[6] = 0
    return dict(
        log_probs=log_probs,
        old_log_probs=log_probs + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64),
        entropy=2.0 * torch.rand(B, T, generator=g, dtype=torch.float64),
        mask=torch.arange(T)[None, :] < lengths[:, None],
        advantages=torch.randn(B, generator=g, dtype=torch.float64),
        rewards=torch.tensor(REWARDS, dtype=torch.float64),
        is_demo=torch.tensor(IS_DEMO),
        ref_log_probs=log_probs + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64),
    )


def part(step: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    """The micro-batch of ``rows``, cut to its own longest response (backends pad per micro-batch)."""
    index = torch.tensor(rows)
    width = max(int(step["mask"][index].sum(-1).max()), 1)
    return {k: v[index][:, :width] if v.dim() == 2 else v[index] for k, v in step.items()}


def loss_of(batch: dict[str, torch.Tensor], cfg: LossConfig, totals: StepTotals | None = None):
    return srft_loss(*(batch[k] for k in KEYS[:7]), cfg, ref_log_probs=batch["ref_log_probs"], totals=totals)


CONFIGS = [(name, {}) for name in PRESETS] + [
    ("srft", dict(entropy_scope="sequence")),
    ("srft", dict(loss_agg="seq_mean_token_mean", kl_coef=0.1)),
    ("srft", dict(loss_agg="constant", loss_agg_constant=5.0, entropy_bonus=0.05)),
    ("grpo", dict(loss_agg="token_mean", kl_coef=0.2, kl_estimator="k1")),
]


@pytest.mark.parametrize("split", range(len(SPLITS)))
@pytest.mark.parametrize("preset,overrides", CONFIGS, ids=[f"{p}-{'-'.join(o) or 'preset'}" for p, o in CONFIGS])
def test_summed_micro_batches_equal_the_whole_step(preset, overrides, split):
    cfg = dataclasses.replace(LossConfig.from_preset(preset), **overrides)
    step = random_step(split)
    leaves = {k: step[k].clone().requires_grad_(True) for k in ("log_probs", "entropy")}

    whole = {k: step[k].clone().requires_grad_(True) for k in leaves}
    loss, metrics = loss_of({**step, **whole}, cfg)
    loss.backward()

    totals = step_totals(step["mask"], step["rewards"], step["is_demo"], step["entropy"])
    parts = [loss_of(part({**step, **leaves}, rows), cfg, totals) for rows in SPLITS[split]]
    summed = sum(p_loss for p_loss, _ in parts)
    summed.backward()  # gradients of the micro-batches accumulate into the step's leaves

    assert summed.item() == pytest.approx(loss.item(), rel=1e-12, abs=1e-14)
    for term in ("loss_sft_demo", "loss_rl_demo", "loss_rl_rollout", "loss_kl", "loss_entropy_bonus"):
        assert sum(m[term] for _, m in parts) == pytest.approx(metrics[term], rel=1e-12, abs=1e-14), term
    torch.testing.assert_close(leaves["log_probs"].grad, whole["log_probs"].grad, rtol=1e-12, atol=1e-14)
    if cfg.entropy_bonus > 0:  # the only path from the entropy to the loss
        torch.testing.assert_close(leaves["entropy"].grad, whole["entropy"].grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("split", range(len(SPLITS)))
@pytest.mark.parametrize("preset,overrides", CONFIGS, ids=[f"{p}-{'-'.join(o) or 'preset'}" for p, o in CONFIGS])
def test_token_weighted_micro_batch_metrics_are_the_step_metrics(preset, overrides, split):
    """Every mean metric of srft_loss is named in METRIC_TOKENS with the token set it averages,
    and the micro-batches' values weighted by those counts give the whole step's value."""
    cfg = dataclasses.replace(LossConfig.from_preset(preset), **overrides)
    step = random_step(split)
    _, whole = loss_of(step, cfg)
    means = {k for k in whole if not k.startswith(("loss", "n_"))}
    assert means == set(METRIC_TOKENS)
    totals = step_totals(step["mask"], step["rewards"], step["is_demo"], step["entropy"])
    parts = [loss_of(part(step, rows), cfg, totals)[1] for rows in SPLITS[split]]
    for m in [whole, *parts]:
        m["n_rollout_tokens"] = m["n_tokens"] - m["n_demo_tokens"]
    for key, count in METRIC_TOKENS.items():
        weight = sum(m[count] for m in parts)
        combined = sum(m[key] * m[count] for m in parts) / max(weight, 1)
        assert combined == pytest.approx(whole[key], rel=1e-12, abs=1e-14), key


def test_without_totals_the_averaged_micro_batches_differ():
    """What gradient accumulation gives without totals: the mean of the micro-batch losses. The
    one micro-batch holding the demos carries the SFT term, then divided by 4 micro-batches."""
    step = random_step(0)
    cfg = LossConfig()
    full, full_metrics = loss_of(step, cfg)
    parts = [loss_of(part(step, rows), cfg) for rows in SPLITS[0]]
    averaged = sum(p_loss.item() for p_loss, _ in parts) / len(parts)
    assert abs(averaged - full.item()) > 1e-3
    sft_averaged = sum(m["loss_sft_demo"] for _, m in parts) / len(parts)
    assert sft_averaged == pytest.approx(full_metrics["loss_sft_demo"] / 4, rel=1e-12)


def test_step_totals_by_hand():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    entropy = torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0], [9.0, 9.0, 9.0], [0.5, 0.5, 2.0]])
    totals = step_totals(mask, torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([False, False, False, True]), entropy)
    # rollouts: seq 0 positive (2 tokens), seq 1 negative (1 token), seq 2 positive but empty; seq 3 demo (3 tokens)
    assert (totals.sequences, totals.demo_tokens, totals.pos_tokens, totals.neg_tokens) == (4, 3, 2, 1)
    assert (totals.demo_seqs, totals.pos_seqs, totals.neg_seqs) == (1, 1, 1)
    assert (totals.rollout_tokens, totals.response_tokens, totals.rollout_seqs, totals.response_seqs) == (3, 6, 2, 3)
    assert totals.h_demo == pytest.approx(1.0) and totals.h_roll == pytest.approx(7.0 / 3)
    assert totals.counts("pos") == (2, 1, 4) and totals.counts("response") == (6, 3, 4)
    no_entropy = step_totals(mask, torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([False, False, False, True]))
    assert no_entropy.h_demo is None and no_entropy.h_roll is None


@pytest.mark.parametrize("split", range(len(SPLITS)))
def test_totals_of_parts_add_up_to_the_whole(split):
    step = random_step(split)

    def totals(batch, entropy=True):
        return step_totals(batch["mask"], batch["rewards"], batch["is_demo"], batch["entropy"] if entropy else None)

    parts = [totals(part(step, rows)) for rows in SPLITS[split]]
    merged, whole = sum(parts[1:], parts[0]), totals(step)
    for field in dataclasses.fields(StepTotals):
        assert getattr(merged, field.name) == pytest.approx(getattr(whole, field.name), rel=1e-12), field.name
    assert merged.h_demo == pytest.approx(whole.h_demo, rel=1e-12)
    # an entropy sum stays unknown if one part does not know it
    partial = parts[0] + totals(part(step, SPLITS[split][1]), entropy=False)
    assert partial.demo_entropy_sum is None and partial.rollout_entropy_sum is None
    assert partial.pos_tokens == parts[0].pos_tokens + parts[1].pos_tokens


def test_totals_without_entropies_keep_the_micro_batch_weights():
    """A backend that cannot know the step's entropies: w_SFT / w_RL are the micro-batch's own."""
    step = random_step(1)
    known = step_totals(step["mask"], step["rewards"], step["is_demo"], step["entropy"])
    counts_only = dataclasses.replace(known, demo_entropy_sum=None, rollout_entropy_sum=None)
    for rows in SPLITS[0]:
        micro = part(step, rows)
        mask, demo = micro["mask"], micro["is_demo"][:, None]
        h_demo = micro["entropy"][mask & demo].mean().nan_to_num().item()  # the micro-batch's own means
        h_roll = micro["entropy"][mask & ~demo].mean().nan_to_num().item()
        fixed = LossConfig(w_sft_fixed=0.5 * math.exp(-h_demo), w_rl_fixed=0.1 * math.exp(h_roll))
        got, metrics = loss_of(micro, LossConfig(), counts_only)
        expected, _ = loss_of(micro, fixed, counts_only)
        assert got.item() == pytest.approx(expected.item(), rel=1e-12, abs=1e-14)
        assert metrics["w_rl"] == pytest.approx(fixed.w_rl_fixed if h_roll else 0.0, rel=1e-12)


def test_totals_of_a_smaller_part_are_an_error():
    step = random_step(0)
    small = part(step, [0, 1])
    totals = step_totals(small["mask"], small["rewards"], small["is_demo"])
    with pytest.raises(ValueError, match="step_totals over all the micro-batches"):
        loss_of(step, LossConfig(), totals)


def test_ratio_stats_by_hand():
    """Two rollout tokens with log-ratios +0.2 and -0.4; the masked token (log-ratio 3) and a
    micro-batch without rollout tokens do not count."""
    from srft_openrlhf.algorithm import ratio_stats

    log_probs = torch.tensor([[-1.0, -2.0, -0.5]])
    old = torch.tensor([[-1.2, -1.6, -3.5]])
    stats = ratio_stats(log_probs, old, torch.tensor([[True, True, False]]))
    assert stats["log_ratio_mean"] == pytest.approx(-0.1)
    assert stats["log_ratio_abs_mean"] == pytest.approx(0.3)
    assert stats["ratio_mean"] == pytest.approx((math.exp(0.2) + math.exp(-0.4)) / 2)
    assert stats["ratio_max"] == pytest.approx(math.exp(0.2))
    assert ratio_stats(log_probs, old, torch.zeros(1, 3, dtype=torch.bool)) == {}
