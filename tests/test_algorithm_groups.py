"""Group advantages (Eq. 2 / 7) and the demo-augmented group (Eq. 6)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from srft_openrlhf.algorithm import LossConfig, Response, augment_groups, batch_advantages, group_advantages

# ---------------------------------------------------------------- group_advantages


def test_hand_computed_group():
    # mean 0.5, unbiased std sqrt(4 · 0.25 / 3) = 0.577350 -> ±0.5 / 0.577350 = ±0.866025
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long), eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([0.866025, -0.866025, -0.866025, 0.866025]), atol=1e-6, rtol=0)
    with_eps = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long))
    assert with_eps[0].item() == pytest.approx(0.5 / (math.sqrt(1 / 3) + 1e-6), rel=1e-6)


def test_non_contiguous_unequal_groups_and_arbitrary_ids():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    groups = torch.tensor([7, -3, -3, 7, -3, 100])
    adv = group_advantages(rewards, groups, eps=0.0)
    # group 7 = {1, 0}: mean 0.5, std sqrt(0.5) = 0.707107 -> ±0.707107
    # group −3 = {0, 1, 0}: mean 1/3, std sqrt((1/9 + 4/9 + 1/9) / 2) = 0.577350 -> −0.577350, 1.154701
    # group 100 = {1}: size 1 -> 0
    expected = torch.tensor([0.707107, -0.577350, 1.154701, -0.707107, -0.577350, 0.0], dtype=torch.float64)
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)


def test_without_std_normalisation():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long), normalize_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_constant_groups_are_exactly_zero():
    # 0.1 · 3 / 3 != 0.1 in floating point: equality must be tested, not r − mean
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 0.0])
    adv = group_advantages(rewards, torch.tensor([0, 0, 0, 1, 1, 2]))
    assert (adv == 0).all()
    assert (group_advantages(rewards, torch.tensor([0, 0, 0, 1, 1, 2]), normalize_std=False) == 0).all()


def test_empty_batch():
    assert group_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_matches_loop_reference_on_random_groups():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (200,), generator=g).double()
    groups = torch.randint(0, 40, (200,), generator=g)
    r, gid = rewards.tolist(), groups.tolist()
    for normalize in (True, False):
        adv = group_advantages(rewards, groups, normalize_std=normalize, eps=1e-6).tolist()
        for i in range(200):
            members = [r[j] for j in range(200) if gid[j] == gid[i]]
            if len(set(members)) == 1:
                expected = 0.0
            else:
                expected = r[i] - statistics.mean(members)
                if normalize:
                    expected /= statistics.stdev(members) + 1e-6
            assert adv[i] == pytest.approx(expected, abs=1e-12)


def test_shape_error():
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.long))


# ---------------------------------------------------------------- augment_groups


def rollout(reward: float, n_tokens: int = 2, tag: int = 0) -> Response:
    return Response(token_ids=[tag] * n_tokens, reward=reward, logprobs=[-0.5 - tag] * n_tokens)


def demo(tag: int, n_tokens: int = 3) -> Response:
    return Response(token_ids=[100 + tag] * n_tokens, reward=1.0, text=f"demo {tag}")


def test_append_layout():
    rolls = [[rollout(0.0, tag=1), rollout(1.0, tag=2)], [rollout(0.0, tag=3), rollout(0.0, 1, tag=4)]]
    demos = [[demo(0)], [demo(1), demo(2)]]
    out = augment_groups(rolls, demos, demos_per_group=1, demo_mode="append")
    assert [r.token_ids[0] for r in out.responses] == [1, 2, 100, 3, 4, 101]
    assert out.prompt_index == [0, 0, 0, 1, 1, 1]
    assert out.group_ids.tolist() == [0, 0, 0, 1, 1, 1] and out.group_ids.dtype == torch.long
    assert out.is_demo.tolist() == [False, False, True, False, False, True]
    assert out.rewards.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0, 1.0] and out.rewards.dtype == torch.float32
    # rollouts keep their behaviour log-probs; demos get log πβ = 0 (πβ = 1) per token
    assert out.old_logprobs == [[-1.5, -1.5], [-2.5, -2.5], [0.0] * 3, [-3.5, -3.5], [-4.5], [0.0] * 3]
    assert all(r.is_demo for r in out.responses if r.token_ids[0] >= 100)
    assert not demos[0][0].is_demo  # the caller's objects are not modified


def test_replace_layout_keeps_group_size():
    rolls = [[rollout(0.0, tag=t) for t in range(1, 5)]]
    out = augment_groups(rolls, [[demo(0), demo(1)]], demos_per_group=2, demo_mode="replace")
    # 4 rollouts, 2 demos: the last two rollout slots go to the demos (official code: 7 + 1)
    assert [r.token_ids[0] for r in out.responses] == [1, 2, 100, 101]
    assert out.is_demo.tolist() == [False, False, True, True]
    assert out.old_logprobs[2:] == [[0.0] * 3, [0.0] * 3]


def test_no_demos_per_group():
    out = augment_groups([[rollout(1.0)], [rollout(0.0)]], [[], []], demos_per_group=0)
    assert out.is_demo.tolist() == [False, False] and out.group_ids.tolist() == [0, 1]


def test_errors_name_the_prompt():
    with pytest.raises(ValueError, match="prompt 1: 1 demonstration"):
        augment_groups([[rollout(1.0)], [rollout(0.0)]], [[demo(0)], []])
    no_logprobs = Response(token_ids=[1, 2], reward=1.0)
    with pytest.raises(ValueError, match="prompt 1, rollout 0"):
        augment_groups([[rollout(1.0)], [no_logprobs]], [[demo(0)], [demo(1)]])
    short = Response(token_ids=[1, 2], reward=1.0, logprobs=[-0.1])
    with pytest.raises(ValueError, match="prompt 0, rollout 1"):
        augment_groups([[rollout(1.0), short]], [[demo(0)]])
    with pytest.raises(ValueError, match="prompt 0: 1 rollouts"):
        augment_groups([[rollout(1.0)]], [[demo(0), demo(1)]], demos_per_group=2, demo_mode="replace")
    with pytest.raises(ValueError, match="2 prompts"):
        augment_groups([[rollout(1.0)], [rollout(1.0)]], [[demo(0)]])
    with pytest.raises(ValueError, match="demo_mode"):
        augment_groups([[rollout(1.0)]], [[demo(0)]], demo_mode="prepend")


# ---------------------------------------------------------------- advantages of the augmented batch


def test_demo_lifts_an_all_wrong_group():
    out = augment_groups([[rollout(0.0, tag=t) for t in range(3)]], [[demo(0)]])
    # {0, 0, 0, 1}: mean 0.25, unbiased std sqrt((3 · 0.0625 + 0.5625) / 3) = 0.5 -> −0.5 ×3, 1.5
    adv = batch_advantages(out.rewards, out.group_ids, out.is_demo, LossConfig(adv_eps=0.0))
    torch.testing.assert_close(adv, torch.tensor([-0.5, -0.5, -0.5, 1.5]))
    # sft_plus_rl: demos are not in the group -> the rollouts alone are all equal -> 0; demo 0
    adv = batch_advantages(out.rewards, out.group_ids, out.is_demo, LossConfig.from_preset("sft_plus_rl"))
    assert adv.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_rollout_only_advantages_ignore_demo_rewards():
    out = augment_groups([[rollout(1.0), rollout(0.0)]], [[demo(0)]])
    adv = batch_advantages(out.rewards, out.group_ids, out.is_demo, LossConfig.from_preset("sft_plus_rl"))
    # rollouts {1, 0}: ±0.5 / (0.707107 + 1e-6); the demo gets 0
    assert adv[0].item() == pytest.approx(0.5 / (math.sqrt(0.5) + 1e-6), rel=1e-6)
    assert adv[1].item() == pytest.approx(-adv[0].item()) and adv[2].item() == 0.0
