"""The SRFT patches on the real OpenRLHF 0.11.2 (installed --no-deps), on CPU.

flash-attn cannot be built without CUDA: the CPU layer's import-only stub
(``cpu_compat.STUB_DIR``) stands in for the modules OpenRLHF imports from it, put on
``sys.path`` by this module only. OpenRLHF's Ray
trainer itself needs CUDA, so its pieces are driven directly: the launcher's flags through
OpenRLHF's real argument parser, rollouts through its real ``SingleTurnAgentExecutor`` (with
a stand-in vLLM engine) and the SRFT reward file, samples -> experiences through the SRFT
generator and experience maker, the replay buffer's split/re-batch, and the SRFT training
step on OpenRLHF's ``Actor`` with a tiny model and a CPU stand-in for DeepSpeed.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import (
    OPENRLHF_EXAMPLES,
    cluster_trainer,
    generate_step,
    local_train_batch,
    make_experiences,
    openrlhf_namespace,
    replay_items,
    small_run,
)

from srft_openrlhf.algorithm import srft_loss
from srft_openrlhf.config import load_config
from srft_openrlhf.errors import ConfigError
from srft_openrlhf.openrlhf import HookPoint
from srft_openrlhf.openrlhf.cpu_compat import STUB_DIR
from srft_openrlhf.openrlhf.flags import openrlhf_args
from srft_openrlhf.openrlhf.reward_func import decode_label
from srft_openrlhf.runs import run_files

ROOT = Path(__file__).resolve().parents[1]
STUB = STUB_DIR  # the CPU layer's flash-attn stub

pytestmark = pytest.mark.openrlhf


@pytest.fixture(scope="module")
def patches():
    for dep in ("openrlhf", "pylatexenc", "torchdata"):  # the last two: openrlhf imports them at import time
        pytest.importorskip(dep, reason=f"{dep} is not installed (requirements.txt / requirements-nodeps.txt)")
    sys.path.insert(0, str(STUB))
    from srft_openrlhf.openrlhf import patches as module

    yield module
    sys.path.remove(str(STUB))


@pytest.fixture(scope="module")
def openrlhf_parser(patches):
    """The ArgumentParser that ``python -m openrlhf.cli.train_ppo_ray`` builds."""
    from srft_openrlhf.openrlhf.plan import openrlhf_parser

    return openrlhf_parser()


@pytest.mark.parametrize(
    "extra, dest, message",
    [
        (["--ds.packing"], "ds.packing_samples", "--ds.packing is set by the launcher"),
        (["--rollout.n_samples", "4"], "rollout.n_samples_per_prompt", "--rollout.n_samples is set by the launcher"),
        (["--ds.ring_attn_s", "2"], "ds.ring_attn_size", "--ds.ring_attn_size 2 turns on OpenRLHF's packed"),
        (["--actor.eps_clip_low", "0.1", "0.3"], "actor.eps_clip_low_high", "use loss.clip_low / loss.clip_high"),
        (["--algo.advantage.is_correction_l", "seq"], "algo.advantage.is_correction_level", "π_old is already"),
        (["--algo.dynamic_filtering_e"], "algo.dynamic_filtering_enable", "is set by the launcher"),
    ],
)
def test_abbreviated_extra_args_are_read_as_openrlhf_reads_them(openrlhf_parser, extra, dest, message):
    """OpenRLHF's argparse takes unique prefixes: each abbreviation below sets the refused option in
    OpenRLHF's own parser, and the launcher, reading it against that parser, refuses it."""
    from srft_openrlhf.openrlhf.plan import check_extra_args, openrlhf_options

    parsed = vars(openrlhf_parser.parse_args(extra))
    default = vars(openrlhf_parser.parse_args([]))
    assert parsed[dest] != default[dest]  # OpenRLHF really takes the abbreviation for that option
    check_extra_args(extra)  # exact names only: the abbreviation passes (what the audit found)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_extra_args(extra, openrlhf_options())


@pytest.mark.parametrize(
    "flag, message",
    [("--ds.ring_attn", "ambiguous abbreviation"), ("--ds.no_such_flag", "not a flag of OpenRLHF 0.11.2")],
)
def test_unknown_or_ambiguous_extra_args_are_errors(patches, flag, message):
    from srft_openrlhf.openrlhf.plan import check_extra_args, openrlhf_options

    with pytest.raises(ConfigError, match=message):
        check_extra_args([flag, "1"], openrlhf_options())
    check_extra_args(["--ds.adam_offload", "--actor.aux_loss_coef", "0.01"], openrlhf_options())


# ----------------------------------------------------------------------------- hook points


def test_hook_points_match_openrlhf_0_11_2(patches):
    from srft_openrlhf.openrlhf.hooks import check_hook_points

    check_hook_points()


def test_cpu_layer_hook_points_match_openrlhf_0_11_2(patches):
    """Every place the CPU layer (cluster.cpu) redirects is where it expects it (without installing it)."""
    from srft_openrlhf.openrlhf import cpu_compat

    cpu_compat.check_cpu_hook_points()
    assert len(cpu_compat.REDIRECTS) >= 8


def test_moved_hook_points_fail_naming_them(patches, monkeypatch):
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    from openrlhf.trainer.ray import ppo_actor

    from srft_openrlhf.openrlhf.hooks import HookPointError, check_hook_points, unwrap

    monkeypatch.delattr(RemoteExperienceMaker, "compute_advantages_and_returns")
    monkeypatch.setattr(ppo_actor.ActorPPOTrainer, "training_step", lambda self, batch, step: None)
    policy_actor = unwrap(ppo_actor.PolicyModelActor)
    monkeypatch.setattr(
        policy_actor,
        "init_model_from_pretrained",
        lambda self, strategy, pretrain, max_steps=None, vllm_engines=None: None,
    )
    with pytest.raises(HookPointError) as error:
        check_hook_points()
    message = str(error.value)
    assert "RemoteExperienceMaker.compute_advantages_and_returns: not found" in message
    assert "ActorPPOTrainer.training_step: signature is (batch, step)" in message
    assert "PolicyModelActor.init_model_from_pretrained: no longer reads ActorPPOTrainer" in message
    assert "openrlhf==0.11.2" in message
    with pytest.raises(HookPointError, match="openrlhf.trainer.gone:X: not found"):
        check_hook_points((HookPoint("openrlhf.trainer.gone:X", "test"),))


def test_install_checks_the_hook_points_before_assigning_anything(patches, monkeypatch):
    """A moved hook point fails ``install()`` naming it, and OpenRLHF's modules keep their own classes."""
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

    from srft_openrlhf.openrlhf.hooks import HookPointError

    before = {(module, name): getattr(module, name) for module, name in patches.PATCHES}
    assert all(before[key] is not new for key, new in patches.PATCHES.items())  # not installed yet
    for (module, name), original in before.items():
        monkeypatch.setattr(module, name, original)  # restored after the test, should install() assign
    monkeypatch.delattr(RemoteExperienceMaker, "compute_advantages_and_returns")
    with pytest.raises(HookPointError, match="RemoteExperienceMaker.compute_advantages_and_returns: not found"):
        patches.install()
    assert all(getattr(*key) is original for key, original in before.items())


def test_patches_do_not_import_the_launcher(patches):
    code = "import sys, srft_openrlhf.openrlhf.patches; print('srft_openrlhf.openrlhf.launcher' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STUB), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_every_srft_ray_actor_installs_first(patches):
    from srft_openrlhf.openrlhf.hooks import unwrap

    actors = [new for new in patches.PATCHES.values() if hasattr(new, "__ray_metadata__")]
    assert len(actors) == 5
    for actor in actors:
        assert unwrap(actor).__mro__[1] is patches.InstallFirst


def test_install_assigns_the_subclasses_and_the_config(patches, monkeypatch):
    import openrlhf.utils

    from srft_openrlhf.openrlhf.hooks import unwrap

    for module, name in patches.PATCHES:
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    monkeypatch.setattr(openrlhf.utils, "get_strategy", openrlhf.utils.get_strategy)
    monkeypatch.setattr(patches, "_openrlhf_get_strategy", lambda args: ("strategy", args))
    cfg = load_config(None, [])
    patches.install_driver(cfg)
    for (module, name), new in patches.PATCHES.items():
        assert getattr(module, name) is new
        # importable by name from an SRFT module: Ray pickles it by reference
        cls = unwrap(new)
        assert cls.__module__.startswith("srft_openrlhf.openrlhf.")
        assert getattr(sys.modules[cls.__module__], cls.__qualname__) is cls
    patches.install()  # again (an SRFT actor in the driver's process): nothing to check or assign
    policy = patches.PATCHES[(patches.ppo_actor, "PolicyModelActor")]
    assert policy._default_options == {"num_gpus": 1}  # the original's Ray options
    args = SimpleNamespace()
    assert openrlhf.utils.get_strategy(args) == ("strategy", args) and args.srft is cfg


# ----------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("qwen2.5-math-7b", []),
        ("qwen2.5-math-1.5b", ["loss.preset=luffy"]),
        (
            "llama-3.1-8b",
            ["loss.preset=sft_kl", "logging.wandb_project=p", "data.eval=e.parquet", "train.eval_every=5"],
        ),
        ("qwen2.5-math-7b", ["train.async_enable=false", "cluster.colocate_all=true", "cluster.vllm_num_engines=8"]),
    ],
)
def test_openrlhf_parser_accepts_the_launcher_flags(openrlhf_parser, tmp_path, name, overrides):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", [f"logging.output_dir={tmp_path}", *overrides])
    args = openrlhf_namespace(openrlhf_parser, openrlhf_args(cfg, run_files(tmp_path), resume=True), cfg)
    group = 8 if cfg.loss.preset == "luffy" else 9
    assert args.rollout.n_samples_per_prompt == group and args.rollout.batch_size == 128
    assert args.train.batch_size == 128 * group and args.actor.adam.lr == cfg.train.lr
    assert args.data.max_len == 9216 and args.ckpt.load_enable
    assert args.reward.remote_url == str(tmp_path / "openrlhf" / "reward_func.py")
    assert args.algo.kl.init_coef == cfg.loss.kl_coef and args.algo.kl.use_loss == (cfg.loss.kl_coef > 0)
    assert args.train.async_enable == cfg.train.async_enable


# ----------------------------------------------------------------------------- a small run


@pytest.fixture
def run_step(openrlhf_parser, monkeypatch, tmp_path, tiny_tokenizer):
    def run(*overrides):
        cfg, args, files = small_run(tmp_path, tiny_tokenizer, openrlhf_parser, *overrides)
        return (cfg, args, files), generate_step(monkeypatch, cfg, args, files, tiny_tokenizer)

    return run


def test_samples_append_each_prompts_demonstration_to_its_rollouts(run_step, tiny_tokenizer):
    from openrlhf.trainer.ppo_utils.experience import Experience

    from srft_openrlhf.data import encode_example

    (cfg, args, _), (samples, asked, consumed, _, demo_threads) = run_step()
    assert asked == [3] and consumed == 4  # vLLM is asked for the rollouts only
    # graded while the engines generate (from dispatch on), not after: in async mode generate_samples
    # holds OpenRLHF's vLLM lock, which the weight broadcast waits for
    assert len(demo_threads) == 4 and all(name.startswith("srft-demos") for name in demo_threads)
    assert len(samples) == 4 * 4
    rows = [decode_label(samples[4 * g].labels[0])[1] for g in range(4)]  # the training file's seeded order
    assert sorted(rows) == [0, 1, 2, 3]
    for g, row in enumerate(rows):
        example = OPENRLHF_EXAMPLES[row]
        group = samples[4 * g : 4 * g + 4]
        assert len({s.prompts[0] for s in group}) == 1
        assert [bool(s.info["is_demo"]) for s in group] == [False, False, False, True]
        rollout, demo = group[0], group[3]
        assert decode_label(demo.labels[0]) == (example["answer"], row)
        encoded = encode_example(tiny_tokenizer, demo.prompts[0], example["demonstration"], 200, 64)
        prompt_len = int(torch.nonzero(rollout.action_mask[0])[0]) + 1  # the rollouts' prompt ids
        assert demo.sequences[0].tolist() == rollout.sequences[0, :prompt_len].tolist() + encoded.demo_ids
        assert demo.sequences[0, :prompt_len].tolist() == encoded.prompt_ids
        assert demo.action_mask[0].tolist() == [0] * (prompt_len - 1) + [1] * len(encoded.demo_ids)
        assert int(demo.response_length) == len(encoded.demo_ids)
        assert demo.rollout_log_probs.shape == demo.action_mask.shape and not demo.rollout_log_probs.any()  # πβ = 1
        assert set(demo.info) == set(rollout.info)
    assert [float(s.rewards) for s in samples[3::4]] == [0.0 if row == 2 else 1.0 for row in rows]  # wrong demo: 0
    assert [float(s.rewards) for s in samples[0:3]] == [1.0, 0.0, 1.0]
    assert [float(s.rewards) for s in samples[4:7]] == [0.0, 0.0, 0.0]
    batch = Experience.concat_experiences(samples, tiny_tokenizer.pad_token_id)  # OpenRLHF batches them next
    assert batch.info["is_demo"].tolist() == [False, False, False, True] * 4


def test_a_rollout_without_reward_is_reported_with_its_prompt(openrlhf_parser, monkeypatch, tmp_path, tiny_tokenizer):
    """OpenRLHF's executor logs and swallows a reward_func exception, leaving reward None."""
    cfg, args, files = small_run(tmp_path, tiny_tokenizer, openrlhf_parser)
    files.reward_func.write_text("def reward_func(queries, prompts, labels):\n    raise OSError('grader gone')\n")
    with pytest.raises(RuntimeError, match=r"What is .* came back without a reward"):
        generate_step(monkeypatch, cfg, args, files, tiny_tokenizer)


def test_rollouts_carry_the_engines_logprobs_and_demos_zero(run_step):
    (_, args, _), (samples, *_) = run_step()
    assert args.algo.advantage.is_correction_level != "off"  # how the launcher asks vLLM for them
    rollout, demo = samples[0], samples[3]
    assert rollout.rollout_log_probs[rollout.action_mask.bool()].eq(-0.5).all()  # vLLM's, from the fake engine
    assert demo.rollout_log_probs.shape == demo.action_mask.shape and not demo.rollout_log_probs.any()  # πβ = 1


def test_replace_mode_generates_fewer_rollouts(run_step):
    (_, args, _), (samples, asked, *_) = run_step("loss.preset=luffy")
    assert asked == [2] and args.rollout.n_samples_per_prompt == 3  # 2 rollouts + 1 demo in the 3 slots
    assert [bool(s.info["is_demo"]) for s in samples[:3]] == [False, False, True]


def reference_advantages(rewards: list[float], group: int, eps: float) -> list[float]:
    """Eq. 7 in float64, group by group of consecutive samples (0 where a group's rewards are equal)."""
    out = []
    for g in range(0, len(rewards), group):
        r = rewards[g : g + group]
        if len(set(r)) == 1:
            out += [0.0] * len(r)
            continue
        mean, std = statistics.fmean(r), statistics.stdev(r)
        out += [(x - mean) / (std + eps) for x in r]
    return out


@pytest.mark.parametrize("preset", ["srft", "sft_plus_rl"])
def test_experience_zeroes_demo_old_logprobs_and_normalises_the_augmented_group(
    monkeypatch, run_step, tiny_tokenizer, preset
):
    (cfg, args, _), (samples, *_) = run_step(f"loss.preset={preset}")
    rewards = [float(s.rewards) for s in samples]
    experiences, _ = make_experiences(monkeypatch, args, samples, tiny_tokenizer)
    assert [len(e.index) for e in experiences] == [2] * 8  # rollout.micro_batch_size
    if preset == "srft":  # the demo is in the group (Eq. 6-7)
        expected = reference_advantages(rewards, 4, cfg.loss.adv_eps)
    else:  # sft_plus_rl: groups of rollouts only, demos get 0
        roll = reference_advantages([r for i, r in enumerate(rewards) if i % 4 != 3], 3, cfg.loss.adv_eps)
        expected = [roll.pop(0) if i % 4 != 3 else 0.0 for i in range(len(rewards))]
    for e in experiences:
        mask = e.action_mask.bool()
        for row, position in enumerate(e.index):
            assert torch.allclose(e.advantages[row][mask[row]], torch.tensor(expected[position]), atol=1e-5)
            assert not e.advantages[row][~mask[row]].any()
        demo = e.info["is_demo"]
        assert not e.action_log_probs[demo].any() and (e.action_log_probs[~demo][mask[~demo]] < 0).all()
        assert torch.equal(e.returns, e.advantages)
    if preset == "srft":  # the demo-only signal: prompt 1 has no correct rollout, its demo is positive
        from srft_openrlhf.openrlhf.experience import sequence_advantages

        group1 = [a for e in experiences for a, i in zip(sequence_advantages(e), e.index) if 4 <= i < 8]
        assert group1[-1] > 0 and all(a < 0 for a in group1[:-1])


def test_broken_group_layout_is_an_error(monkeypatch, run_step, tiny_tokenizer):
    (_, args, _), (samples, *_) = run_step()
    within = list(samples)
    within[2], within[3] = within[3], within[2]  # order inside a group does not matter
    make_experiences(monkeypatch, args, within, tiny_tokenizer)
    for s in samples:  # make_experiences sets these; the next call starts from plain samples again
        s.info.pop("srft_entropy_sum", None)
    across = list(samples)
    across[3], across[4] = across[4], across[3]  # group 0 gets 4 rollouts, group 1 two demos
    with pytest.raises(RuntimeError, match="not groups of 3 rollouts"):
        make_experiences(monkeypatch, args, across, tiny_tokenizer)


def test_rollout_stats_leave_the_demos_out(patches, run_step):
    (_, args, _), (samples, *_) = run_step()
    from openrlhf.trainer.ppo_utils.experience import Experience

    for i, s in enumerate(samples):
        s.index = [i]
    batch = [Experience.concat_experiences(samples[i : i + 2], 0) for i in range(0, len(samples), 2)]
    trainer = object.__new__(patches.SRFTPPOTrainer)
    trainer.args = args
    stats = patches.SRFTPPOTrainer._compute_rollout_stats(trainer, batch)
    rewards = [float(s.rewards) for s in samples]
    rollout_rewards = [r for i, r in enumerate(rewards) if i % 4 != 3]
    assert stats["rollout/reward_mean"] == pytest.approx(statistics.fmean(rollout_rewards))
    assert stats["rollout/demo_reward_mean"] == pytest.approx(0.75)
    assert stats["rollout/num_samples"] == 12 and stats["rollout/num_demos"] == 4
    # the names OpenRLHF's status uses for every sample, merged over it by train_step: rollouts only
    lengths = [float(s.response_length) for i, s in enumerate(samples) if i % 4 != 3]
    assert stats["reward"] == pytest.approx(statistics.fmean(rollout_rewards))
    assert stats["response_length"] == pytest.approx(statistics.fmean(lengths))
    assert (stats["rollout/num_groups"], stats["rollout/min_group_rollouts"]) == (4, 3)
    assert stats["rollout/min_group_demos"] == stats["rollout/max_group_demos"] == 1


# ----------------------------------------------------------------------------- actor step


def reference_logprobs_and_entropy(model, experience):
    """log π and H of every response token, by plain log_softmax in float64."""
    seq, attention = experience.sequences, experience.attention_mask
    positions = attention.long().cumsum(-1) - 1
    positions.masked_fill_(attention == 0, 1)
    logp_all = model(seq, attention_mask=attention, position_ids=positions).logits.double().log_softmax(-1)
    width = experience.action_mask.shape[1]
    logp = logp_all[:, :-1].gather(-1, seq[:, 1:, None]).squeeze(-1)[:, -width:]
    entropy = -(logp_all.exp() * logp_all).sum(-1)[:, :-1][:, -width:]
    return logp, entropy


def reference_loss(model, experience, cfg, totals=None):
    """srft_loss in float64 on ``experience`` (one batch) with a float64 copy of the model."""
    logp, entropy = reference_logprobs_and_entropy(model, experience)
    from srft_openrlhf.openrlhf.experience import sequence_advantages
    from srft_openrlhf.openrlhf.samples import demo_flags

    return srft_loss(
        logp,
        experience.action_log_probs.double(),
        entropy,
        experience.action_mask,
        sequence_advantages(experience).double(),
        experience.rewards.double(),
        demo_flags(experience),
        cfg.loss,
        ref_log_probs=experience.base_action_log_probs.double() if cfg.loss.kl_coef > 0 else None,
        totals=totals,
    )


def train_cluster_step(trainer, micro_batches):
    """One optimizer step of the SRFT actor over ``micro_batches`` (ppo_train's pairing)."""
    from srft_openrlhf.openrlhf.actor import srft_step_windows

    gas = len(micro_batches)
    windows = srft_step_windows(iter(micro_batches), trainer.strategy, gas, lambda e: e.action_mask)
    statuses = [trainer.training_step(e, 0.0, step, info) for step, (e, info) in enumerate(windows)]
    assert trainer.strategy.steps == 1
    return statuses


@pytest.mark.parametrize("preset", ["srft", "srft_official", "grpo", "sft_kl", "srft_no_wrl"])
def test_micro_batched_training_steps_are_one_step_of_the_whole_batch(
    monkeypatch, run_step, tiny_tokenizer, tiny_model_dir, preset
):
    """Two groups (6 rollouts, 2 demos) in 4 micro-batches of 2, one DeepSpeed-style optimizer step:
    loss and update equal srft_loss of the 8 samples in one float64 batch, the batch-scope entropy
    weights included (the step's entropy comes from the experience maker's forward)."""
    from openrlhf.trainer.ppo_utils.experience import make_experience_batch

    from srft_openrlhf.openrlhf.samples import demo_flags

    (cfg, args, _), (samples, *_) = run_step(f"loss.preset={preset}")
    trainer, policy = cluster_trainer(args, tiny_model_dir, gas=4)
    reference_model = copy.deepcopy(trainer.actor.model).double()
    experiences, group = make_experiences(monkeypatch, args, samples, tiny_tokenizer, policy)
    assert bool(group.calls) == (preset in ("srft", "srft_no_wrl"))  # only for batch-scope weights
    items = replay_items(experiences)[:8]
    if cfg.loss.kl_coef > 0:
        for item in items:
            item.base_action_log_probs = item.action_log_probs - 0.05
    micro_batches = [make_experience_batch(items[i : i + 2]) for i in range(0, 8, 2)]
    assert isinstance(micro_batches[0].info["is_demo"], list)  # the replay buffer's re-batching leaves a list
    assert not any(demo_flags(micro_batches[0]))  # a micro-batch without demos
    whole = make_experience_batch(items)
    before = {n: p.detach().clone() for n, p in trainer.actor.model.named_parameters()}
    with torch.no_grad():  # the engine-vs-trainer gap on the rollout tokens, at θ_k, in float64
        rollout_tokens = whole.action_mask.bool() & ~demo_flags(whole)[:, None]
        gap = (reference_logprobs_and_entropy(reference_model, whole)[0] - whole.action_log_probs.double())[
            rollout_tokens
        ]

    statuses = train_cluster_step(trainer, micro_batches)

    loss, metrics = reference_loss(reference_model, whole, cfg)
    loss.backward()
    policy_losses = [float(s["metrics"]["policy_loss"]) for s in statuses]
    assert all(s["weights"]["policy_loss"] == "sample" and s["num_samples"] == 2 for s in statuses)
    assert statistics.fmean(policy_losses) == pytest.approx(loss.item(), rel=1e-4, abs=1e-6)  # ppo_train's mean
    moved = 0
    for name, param in trainer.actor.model.named_parameters():
        grad = dict(reference_model.named_parameters())[name].grad
        expected = before[name] - 0.1 * (grad.float() if grad is not None else 0.0)
        assert torch.allclose(param.detach(), expected, atol=2e-5), name
        moved += int(not torch.equal(param.detach(), before[name]))
    assert moved > 0
    assert "actor_grad_norm" in statuses[-1]["metrics"]
    assert not {"is_demo", "srft_entropy_sum"} & set(statuses[0]["metrics"])  # bookkeeping, not metrics
    logged = trainer._srft_step_metrics()
    for name in ("loss_sft_demo", "loss_rl_demo", "loss_rl_rollout", "loss_kl", "w_sft", "w_rl"):
        assert logged[f"srft/{name}"] == pytest.approx(metrics[name], rel=1e-4, abs=1e-6), name
    # the rollout log-prob gap: token means over the whole step (micro-batches without rollouts count 0)
    assert logged["srft/log_ratio_mean"] == pytest.approx(float(gap.mean()), rel=1e-4, abs=1e-6)
    assert logged["srft/log_ratio_abs_mean"] == pytest.approx(float(gap.abs().mean()), rel=1e-4, abs=1e-6)
    assert logged["srft/ratio_mean"] == pytest.approx(float(gap.exp().mean()), rel=1e-4, abs=1e-6)


def test_old_log_probs_are_the_rollout_engines(monkeypatch, run_step, tiny_tokenizer):
    """π_old of a rollout is what the engine sampled it with (not the trainer's current weights),
    a demo's is 0; written out of place (the samples' tensors may be Ray zero-copy buffers)."""
    from srft_openrlhf.openrlhf.samples import demo_flags

    (_, args, _), (samples, *_) = run_step("loss.preset=grpo", "cluster.extra_args=[]")
    engine_log_probs = [s.rollout_log_probs.clone() for s in samples]
    experiences, group = make_experiences(monkeypatch, args, samples, tiny_tokenizer)
    assert not group.calls  # grpo: no batch-scope entropy weight, no actor forward at all
    for e in experiences:
        mask = e.action_mask.bool()
        assert torch.equal(e.action_log_probs[mask], torch.full((int(mask.sum()),), -0.5))
    (_, args, _), (samples, *_) = run_step()
    engine_log_probs = [s.rollout_log_probs.clone() for s in samples]
    experiences, group = make_experiences(monkeypatch, args, samples, tiny_tokenizer)
    for e in experiences:
        demo, mask = demo_flags(e), e.action_mask.bool()
        assert not e.action_log_probs[demo].any()
        assert e.action_log_probs[~demo][mask[~demo]].eq(-0.5).all()
        assert e.action_log_probs.data_ptr() != e.rollout_log_probs.data_ptr()
    for s, kept in zip(samples, engine_log_probs):  # the engine's tensors are untouched
        assert torch.equal(s.rollout_log_probs, kept)


@pytest.mark.parametrize(
    "preset, demo_rows, rollout_rows",
    [("srft", True, True), ("srft_no_wsft", False, True), ("srft_no_wrl", True, False)],
)
def test_entropy_forward_covers_only_rows_a_weight_needs(
    monkeypatch, run_step, tiny_tokenizer, preset, demo_rows, rollout_rows
):
    from srft_openrlhf.openrlhf.actor import _known, experience_totals
    from srft_openrlhf.openrlhf.samples import demo_flags

    (_, args, _), (samples, *_) = run_step(f"loss.preset={preset}")
    experiences, group = make_experiences(monkeypatch, args, samples, tiny_tokenizer)
    [(method, batch)] = group.calls
    assert method == "srft_entropy_sums"
    for rows, e in zip(batch["rows"], experiences):
        demo = demo_flags(e)
        assert torch.equal(rows, torch.where(demo, demo_rows, rollout_rows))
        sums = e.info["srft_entropy_sum"]
        assert torch.equal(sums[rows], e.action_mask[rows].sum(-1).double()) and sums[~rows].isnan().all()
    totals = experience_totals(experiences[0])
    for e in experiences[1:]:
        totals = totals + experience_totals(e)
    totals = _known(totals)
    assert (totals.demo_entropy_sum is not None) == demo_rows
    assert (totals.rollout_entropy_sum is not None) == rollout_rows
    if demo_rows:
        assert totals.h_demo == pytest.approx(1.0)  # the stand-in entropy is 1 per token


def test_entropy_forward_runs_once_per_micro_batch_without_needed_rows(run_step, tiny_model_dir):
    """Under ZeRO-3 a forward is a collective: a micro-batch with no row a weight needs (srft_no_wrl
    on a micro-batch of rollouts only) still runs its one forward, like every other rank's, and
    returns no sum (audit N2: ranks ran 21 or 22 forwards and the run hung)."""
    (_, args, _), (samples, *_) = run_step("loss.preset=srft_no_wrl")
    trainer, policy = cluster_trainer(args, tiny_model_dir, gas=1)
    forward = trainer.response_logprobs_and_entropy
    calls = []
    trainer.response_logprobs_and_entropy = lambda *a, **k: calls.append(a[0].shape[0]) or forward(*a, **k)
    s = samples[0]
    none = torch.zeros(s.sequences.shape[0], dtype=torch.bool)
    sums = policy.srft_entropy_sums(s.sequences, s.action_mask, s.attention_mask, none)
    assert calls == [1] and sums.isnan().all()
    some = none.clone()
    some[-1] = True
    sums = policy.srft_entropy_sums(s.sequences, s.action_mask, s.attention_mask, some)
    assert calls == [1, 1] and not sums[-1].isnan() and sums[:-1].isnan().all()


@pytest.mark.parametrize("preset", ["srft", "srft_official", "grpo", "luffy"])
def test_both_backends_give_the_same_loss_and_gradient(monkeypatch, run_step, tiny_tokenizer, tiny_model_dir, preset):
    """The same step (4 groups of 3 rollouts + 1 demo, the engine's log-probs as π_old) through the
    local backend's optimize() in one micro-batch and through the cluster path (experience maker,
    replay buffer, 8 micro-batches of 2 under DeepSpeed-style accumulation): same loss and gradient."""
    from openrlhf.trainer.ppo_utils.experience import make_experience_batch

    from srft_openrlhf.local.engine import Optimization, TorchEngine
    from srft_openrlhf.local.step import optimize

    (cfg, args, _), (samples, *_) = run_step(f"loss.preset={preset}")
    trainer, policy = cluster_trainer(args, tiny_model_dir, gas=len(samples) // 2)
    local_model = copy.deepcopy(trainer.actor.model)
    experiences, _ = make_experiences(monkeypatch, args, samples, tiny_tokenizer, policy)
    items = replay_items(experiences)
    micro_batches = [make_experience_batch(items[i : i + 2]) for i in range(0, len(items), 2)]

    batch = local_train_batch(items)  # the local backend's batch of the same samples
    assert (batch.advantages != 0).any()
    engine = TorchEngine(
        local_model, Optimization(lr=0.1, weight_decay=0.0, betas=(0.9, 0.999), grad_clip=0.0, warmup_steps=0)
    )
    grads = {}
    monkeypatch.setattr(
        engine,
        "step",
        lambda: (
            grads.update({n: p.grad.detach().clone() for n, p in local_model.named_parameters() if p.grad is not None})
            or {}
        ),
    )
    local = optimize(
        engine,
        batch,
        cfg.loss,
        micro_batch_size=len(items),
        pad_id=tiny_tokenizer.pad_token_id,
        temperature=cfg.rollout.temperature,
    )

    before = {n: p.detach().clone() for n, p in trainer.actor.model.named_parameters()}
    statuses = train_cluster_step(trainer, micro_batches)
    assert statistics.fmean(float(s["metrics"]["policy_loss"]) for s in statuses) == pytest.approx(
        local["loss"], rel=1e-4, abs=1e-6
    )
    assert grads
    for name, param in trainer.actor.model.named_parameters():
        expected = before[name] - 0.1 * grads.get(name, torch.zeros_like(param))
        assert torch.allclose(param.detach(), expected, atol=2e-5), name


def test_training_step_without_step_totals_is_an_error(patches):
    from srft_openrlhf.openrlhf.actor import SRFTActorPPOTrainer

    trainer = SRFTActorPPOTrainer.__new__(SRFTActorPPOTrainer)
    with pytest.raises(RuntimeError, match="srft_step_windows"):
        trainer.training_step(None, 0.0, 0, {"dp_size": 1, "batch_num_tokens": 3.0})


# ----------------------------------------------------------------------------- Ray workers


@pytest.mark.slow
def test_ray_actor_processes_install_the_patches(patches):
    """An SRFT Ray actor is imported by reference in its worker and installs the patches
    there, so OpenRLHF's code in that process builds the SRFT classes."""
    import ray

    path = os.pathsep.join([str(STUB), str(ROOT), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=1, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        actor_class = patches.PATCHES[(patches.ppo_actor, "PolicyModelActor")]
        actor = actor_class.options(num_gpus=0, num_cpus=0.1).remote(1, 0, None, None)

        def probe(self):
            from openrlhf.trainer import ppo_trainer, ppo_trainer_async
            from openrlhf.trainer.ray import ppo_actor

            cls = type(self).__ray_actor_class__
            return {
                "actor": f"{cls.__module__}.{cls.__qualname__}",
                "ActorPPOTrainer": ppo_actor.ActorPPOTrainer.__qualname__,
                "SamplesGenerator": ppo_trainer_async.SamplesGenerator.__qualname__,
                "RemoteExperienceMaker": ppo_trainer.RemoteExperienceMaker.__qualname__,
            }

        seen = ray.get(actor.__ray_call__.remote(probe), timeout=600)
    finally:
        ray.shutdown()
    assert seen == {
        "actor": "srft_openrlhf.openrlhf.patches.SRFTPolicyModelActor",
        "ActorPPOTrainer": "SRFTActorPPOTrainer",
        "SamplesGenerator": "SRFTSamplesGenerator",
        "RemoteExperienceMaker": "SRFTExperienceMaker",
    }


# ----------------------------------------------------------------------------- launch


def test_run_writes_the_run_folder_then_runs_the_openrlhf_cli(patches, monkeypatch, tmp_path, tiny_model_dir):
    """launcher.run up to OpenRLHF's CLI (which needs GPUs): files, patches, Ray, argv."""
    import runpy as runpy_module

    import openrlhf.utils
    import ray

    from srft_openrlhf.config import load_config as load
    from srft_openrlhf.openrlhf import launcher
    from srft_openrlhf.openrlhf.hooks import unwrap

    for module, name in patches.PATCHES:
        monkeypatch.setattr(module, name, getattr(module, name))
    monkeypatch.setattr(openrlhf.utils, "get_strategy", openrlhf.utils.get_strategy)
    monkeypatch.setattr(patches, "_openrlhf_get_strategy", lambda args: "strategy")
    seen: dict = {}
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.setdefault("init", kwargs))
    monkeypatch.setattr(ray, "shutdown", lambda: seen.setdefault("shutdown", True))

    def cli(name, run_name=None, alter_sys=False):
        args = SimpleNamespace()
        assert openrlhf.utils.get_strategy(args) == "strategy"  # what train_ppo_ray calls first
        seen.update(run=(name, run_name, list(sys.argv)), srft=args.srft, policy=patches.ppo_actor.PolicyModelActor)

    options = launcher.openrlhf_options()  # read through runpy, which the test replaces next
    monkeypatch.setattr(launcher, "openrlhf_options", lambda: options)
    monkeypatch.setattr(runpy_module, "run_module", cli)
    monkeypatch.setenv("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")  # run() sets it for `ray job submit`
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in OPENRLHF_EXAMPLES))
    cfg = load(
        None,
        [
            f"model.path={tiny_model_dir}",
            f"data.train={data}",
            "data.template=qwen_math",
            "data.max_prompt_len=200",
            "data.max_response_len=64",
            "rollout.n_samples_per_prompt=3",
            "train.steps=2",
            "train.prompts_per_step=2",
            "train.micro_batch_size=1",
            "cluster.gpus_per_node=2",
            "cluster.vllm_num_engines=1",
            "logging.output_dir=run",
        ],
    )
    monkeypatch.chdir(tmp_path)
    argv = list(sys.argv)
    # an abbreviation of a refused flag (--ds.packing_samples) is refused before Ray starts
    packed = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, extra_args=["--ds.packing"]))
    with pytest.raises(ConfigError, match="--ds.packing is set by the launcher"):
        launcher.run(packed)
    assert not seen
    # an OpenRLHF that moved a hook point is refused before the run folder is written or Ray starts
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

    from srft_openrlhf.openrlhf.hooks import HookPointError

    with monkeypatch.context() as moved:
        moved.delattr(RemoteExperienceMaker, "compute_advantages_and_returns")
        with pytest.raises(HookPointError, match="compute_advantages_and_returns: not found"):
            launcher.run(cfg)
    assert not seen and not (tmp_path / "run").exists()
    assert launcher.run(cfg) == 0
    files = run_files(tmp_path / "run")
    assert load(files.config).logging.output_dir == str(files.root)
    assert len(files.train_data.read_text().splitlines()) == 4 and files.demos.is_file()
    assert "make_reward_func(kind='math'" in files.reward_func.read_text()
    name, run_name, cli_argv = seen["run"]
    assert (name, run_name) == ("openrlhf.cli.train_ppo_ray", "__main__") and sys.argv == argv
    assert cli_argv[1:] == openrlhf_args(seen["srft"], files, resume=False)
    assert seen["srft"].logging.output_dir == str(files.root)  # absolute, for workers in other cwds
    assert unwrap(seen["policy"]) is patches.SRFTPolicyModelActor
    assert {"TOKENIZERS_PARALLELISM", "NCCL_DEBUG"} <= set(seen["init"]["runtime_env"]["env_vars"])
    assert "worker_process_setup_hook" not in seen["init"]["runtime_env"]  # the CPU layer: only with cluster.cpu
    assert "num_gpus" not in seen["init"]
    assert seen["shutdown"]


def test_cpu_rollout_engine_samples_do_not_depend_on_request_order(tiny_model_dir, tiny_tokenizer):
    """OpenRLHF sends one request per prompt, concurrently: the CPU rollout engine's samples for
    a prompt are fixed by the seed, the weights version, the prompt and its repeat count (a
    shared random stream made two runs of the same config train on different rollouts)."""
    from srft_openrlhf.generation import HFGenerator
    from srft_openrlhf.openrlhf.cpu_rollout import CPURolloutActor

    class Executor:  # OpenRLHF's executor, reduced to what the engine hands it
        async def execute(self, prompt, label, sampling_params, max_length, hf_tokenizer, llm_engine):
            out = await llm_engine.generate(None, sampling_params)
            return {"tokens": out.outputs[0].token_ids}

    def engine(version: int = 0) -> CPURolloutActor:
        actor = CPURolloutActor.__new__(CPURolloutActor)
        actor.generator = HFGenerator.load(str(tiny_model_dir), dtype="fp32", device="cpu", seed=0)
        actor.executor, actor.seed, actor.version, actor.requests = Executor(), 3, version, {}
        return actor

    params = SimpleNamespace(max_tokens=8, temperature=1.0, top_p=1.0, logprobs=None)

    def rollouts(actor: CPURolloutActor, prompts: list[str]) -> dict[str, list]:
        out: dict[str, list] = {}
        for prompt in prompts:
            samples = asyncio.run(actor.generate_responses(prompt, "", params, 64, tiny_tokenizer, num_samples=3))
            out.setdefault(prompt, []).append([s["tokens"] for s in samples])
        return out

    prompts = ["1+2=", "35+47=", "100+999="]
    forward = rollouts(engine(), prompts + prompts[:1])
    backward = rollouts(engine(), prompts[::-1] + prompts[:1])
    assert forward == backward
    assert forward["1+2="][0] != forward["1+2="][1]  # a repeated request is sampled afresh
    assert rollouts(engine(version=1), prompts)["35+47="][0] != forward["35+47="][0]  # new weights, new draws
