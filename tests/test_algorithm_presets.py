"""Presets: the paper's baselines and ablations as values of LossConfig's fields."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from srft_openrlhf.algorithm import PRESETS, LossConfig, srft_loss
from srft_openrlhf.config import build_config, load_config
from srft_openrlhf.errors import ConfigError

EXPECTED = {
    # name: (sft_demo, rl_demo, rl_rollout, rollout_objective, needs_demos, needs_rollouts, demos_in_group)
    "srft": (True, True, True, "paper", True, True, True),
    "srft_official": (True, True, True, "grpo", True, True, True),
    "grpo": (False, False, True, "grpo", False, True, False),
    "luffy": (False, True, True, "grpo", True, True, True),
    "sft": (True, False, False, "paper", True, False, False),
    "sft_kl": (True, False, False, "paper", True, False, False),
    "sft_plus_rl": (True, False, True, "grpo", True, True, False),
    "srft_no_wsft": (True, True, True, "paper", True, True, True),
    "srft_no_wrl": (True, True, True, "paper", True, True, True),
}


def test_preset_names():
    assert set(PRESETS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_terms_and_properties(name):
    cfg = LossConfig.from_preset(name)
    cfg.validate()
    assert cfg.preset == name
    got = (
        cfg.sft_demo,
        cfg.rl_demo,
        cfg.rl_rollout,
        cfg.rollout_objective,
        cfg.needs_demos,
        cfg.needs_rollouts,
        cfg.demos_in_group,
    )
    assert got == EXPECTED[name]


def test_default_is_the_paper():
    cfg = LossConfig()
    assert cfg == LossConfig.from_preset("srft")
    assert (cfg.w_sft_coef, cfg.w_sft_sign, cfg.w_sft_fixed) == (0.5, -1.0, None)
    assert (cfg.w_rl_coef, cfg.w_rl_sign, cfg.w_rl_fixed) == (0.1, 1.0, None)
    assert (cfg.entropy_scope, cfg.loss_agg, cfg.demo_shaping_gamma, cfg.clip_low, cfg.clip_high) == (
        "batch",
        "token_mean",
        None,
        None,
        None,
    )
    assert (cfg.normalize_std, cfg.demo_mode, cfg.demos_per_group, cfg.kl_coef, cfg.entropy_bonus) == (
        True,
        "append",
        1,
        0.0,
        0.0,
    )
    assert cfg.low_entropy_clip_quantile is None


def test_official_differences():
    cfg = LossConfig.from_preset("srft_official")
    assert (cfg.rollout_objective, cfg.demo_shaping_gamma, cfg.entropy_scope) == ("grpo", 0.1, "token")
    assert (cfg.loss_agg, cfg.loss_agg_constant, cfg.entropy_bonus) == ("constant", 8192.0, 0.001)
    assert (cfg.normalize_std, cfg.demo_mode) == (False, "replace")
    assert cfg.w_sft_fixed is None and cfg.w_rl_fixed is None


def test_baseline_values():
    grpo = LossConfig.from_preset("grpo")
    assert (grpo.clip_low, grpo.clip_high, grpo.w_rl_fixed, grpo.normalize_std) == (0.2, 0.2, 1.0, True)
    luffy = LossConfig.from_preset("luffy")
    assert (luffy.demo_shaping_gamma, luffy.w_rl_fixed, luffy.clip_low, luffy.clip_high) == (0.1, 1.0, None, None)
    assert LossConfig.from_preset("sft").w_sft_fixed == 1.0 and LossConfig.from_preset("sft").kl_coef == 0.0
    assert (LossConfig.from_preset("sft_kl").kl_coef, LossConfig.from_preset("sft_kl").w_sft_fixed) == (0.2, 1.0)
    plus = LossConfig.from_preset("sft_plus_rl")
    assert (plus.w_sft_fixed, plus.w_rl_fixed, plus.clip_low, plus.clip_high) == (1.0, 1.0, 0.2, 0.2)
    paper = LossConfig()
    assert LossConfig.from_preset("srft_no_wsft") == dataclasses.replace(paper, preset="srft_no_wsft", w_sft_fixed=1.0)
    assert LossConfig.from_preset("srft_no_wrl") == dataclasses.replace(paper, preset="srft_no_wrl", w_rl_fixed=1.0)


def test_presets_are_independent_copies():
    a = LossConfig.from_preset("srft_official")
    a.entropy_bonus = 5.0
    assert LossConfig.from_preset("srft_official").entropy_bonus == 0.001


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="unknown loss preset 'srtf'.*srft_official.*srft_no_wrl"):
        LossConfig.from_preset("srtf")


def test_config_file_preset_then_overrides():
    cfg = load_config(None, ["loss.preset=luffy", "loss.clip_low=0.2", "loss.demo_shaping_gamma=null"])
    assert cfg.loss.preset == "luffy" and cfg.loss.clip_low == 0.2 and cfg.loss.demo_shaping_gamma is None
    assert cfg.loss.sft_demo is False
    with pytest.raises(ConfigError, match="loss.preset"):
        build_config({"loss": {"preset": "nope"}})


def batch():
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(4, 3, generator=g, dtype=torch.float64)
    return dict(
        log_probs=lp,
        old_log_probs=lp.clone(),
        entropy=torch.rand(4, 3, generator=g, dtype=torch.float64),
        mask=torch.ones(4, 3, dtype=torch.bool),
        advantages=torch.tensor([0.5, -0.5, -0.5, 1.5], dtype=torch.float64),
        rewards=torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64),
        is_demo=torch.tensor([False, False, False, True]),
        ref_log_probs=lp - 0.1,
    )


def loss_of(name: str, **replace) -> float:
    b = dict(batch(), **replace)
    return srft_loss(
        b["log_probs"],
        b["old_log_probs"],
        b["entropy"],
        b["mask"],
        b["advantages"],
        b["rewards"],
        b["is_demo"],
        LossConfig.from_preset(name),
        ref_log_probs=b["ref_log_probs"],
    )[0].item()


def test_sft_preset_is_plain_negative_log_likelihood_of_demos():
    b = batch()
    assert loss_of("sft") == pytest.approx(-b["log_probs"][3].mean().item())


def test_grpo_preset_ignores_demonstrations():
    b = batch()
    changed = b["log_probs"].clone()
    changed[3] = -5.0
    assert loss_of("grpo") == loss_of("grpo", log_probs=changed)


def test_sft_kl_adds_the_kl_term():
    b = batch()
    d = b["ref_log_probs"] - b["log_probs"]  # = −0.1 everywhere: k3 = e^-0.1 + 0.1 − 1 = 0.0048374
    k3 = (d.exp() - d - 1).mean().item()
    assert loss_of("sft_kl") == pytest.approx(loss_of("sft") + 0.2 * k3)
