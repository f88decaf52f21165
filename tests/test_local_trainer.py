"""The local trainer: batches, the loss on them, and short end-to-end runs of `srft train`.

The end-to-end runs use the tiny Qwen2 of conftest.py on toy-task rows written to JSON
Lines, so a two-step run takes seconds. The vLLM and DeepSpeed runs start `srft train` as a
subprocess (vLLM spawns processes and needs a __main__ guard; DeepSpeed initialises
torch.distributed).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import (
    metrics,
    requires_deepspeed,
    requires_vllm,
    srft_train,
    subprocess_env,
    tiny_run_config,
    train_records,
)

from srft_openrlhf import cli
from srft_openrlhf.algorithm import LossConfig, Response, group_advantages, srft_loss
from srft_openrlhf.data.sampler import PromptSampler
from srft_openrlhf.local.rollout import PromptItem, RolloutBatch, build_train_batch
from srft_openrlhf.reward import math_reward

STEP_KEYS = {
    "reward_mean",
    "accuracy",
    "entropy_demo",
    "entropy_rollout",
    "w_sft",
    "w_rl",
    "loss",
    "loss_sft_demo",
    "loss_rl_demo",
    "loss_rl_rollout",
    "response_length",
    "truncation_rate",
    "clip_frac",
    "grad_norm",
    "lr",
    "staleness",
    "time_generate",
    "time_reward",
    "time_train",
    "time_sync",
    "time_step",
}


# ----------------------------------------------------------------------------- units


def test_prompt_sampler_covers_each_prompt_once_per_epoch():
    sampler = PromptSampler(10, 3, seed=5)
    stream = [i for step in range(10) for i in sampler.batch(step)]  # 3 epochs
    for epoch in range(3):
        assert sorted(stream[10 * epoch : 10 * (epoch + 1)]) == list(range(10))
    assert stream[:10] != stream[10:20]  # a new order each epoch
    assert PromptSampler(10, 3, seed=5).batch(7) == sampler.batch(7)  # a function of the step alone
    assert PromptSampler(10, 3, seed=6).batch(0) != sampler.batch(0)


def _items() -> list[PromptItem]:
    return [
        PromptItem([5, 6, 7], "1", [20, 21], "d0", False, "p0"),
        PromptItem([8, 9], "2", [30, 31, 32], "d1", False, "p1"),
    ]


def _rollout_batch() -> RolloutBatch:
    rollouts = [
        [Response([11, 12, 13], 1.0, [-0.1, -0.2, -0.3]), Response([14], 0.0, [-0.4])],
        [Response([15, 16], 0.0, [-0.5, -0.6]), Response([17, 18], 0.0, [-0.7, -0.8])],
    ]
    return RolloutBatch(step=0, prompt_indices=[0, 1], rollouts=rollouts, demo_rewards=[1.0, 0.0], policy_version=0)


def test_train_batch_layout_by_hand():
    batch = build_train_batch(_items(), _rollout_batch(), LossConfig())
    assert batch.sequences == [
        [5, 6, 7, 11, 12, 13],
        [5, 6, 7, 14],
        [5, 6, 7, 20, 21],
        [8, 9, 15, 16],
        [8, 9, 17, 18],
        [8, 9, 30, 31, 32],
    ]
    assert batch.is_demo.tolist() == [False, False, True, False, False, True]
    # group 0 rewards (1, 0, 1): mean 2/3, unbiased std 1/sqrt(3); group 1 rewards all 0
    s = 1 / math.sqrt(3)
    expected = [(1 - 2 / 3) / (s + 1e-6), (0 - 2 / 3) / (s + 1e-6), (1 - 2 / 3) / (s + 1e-6), 0, 0, 0]
    assert batch.advantages.tolist() == pytest.approx(expected, rel=1e-5)

    mb = batch.pad(range(len(batch)), pad_id=0, device=torch.device("cpu"))
    assert mb.input_ids.shape == (6, 6) and mb.mask.shape == (6, 5)
    # row 0: prompt of 3 tokens; targets at positions 2,3,4 are the response tokens 11,12,13
    assert mb.mask[0].tolist() == [False, False, True, True, True]
    assert mb.input_ids[0, 1:][mb.mask[0]].tolist() == [11, 12, 13]
    assert mb.old_log_probs[0].tolist() == pytest.approx([0, 0, -0.1, -0.2, -0.3])
    assert mb.old_log_probs[2].tolist() == [0.0] * 5  # demonstration: log πβ = 0
    for row, seq, plen in zip(range(6), batch.sequences, batch.prompt_lens):
        assert mb.input_ids[row, 1:][mb.mask[row]].tolist() == seq[plen:]
        assert mb.attention_mask[row].sum() == len(seq)


def test_train_batch_presets_shape_the_groups():
    grpo = build_train_batch(_items(), _rollout_batch(), LossConfig.from_preset("grpo"))
    assert not grpo.is_demo.any() and len(grpo) == 4
    replace = build_train_batch(_items(), _rollout_batch(), LossConfig.from_preset("srft_official"))
    assert replace.is_demo.tolist() == [False, True, False, True]  # 1 rollout + 1 demo per group
    assert replace.advantages.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0])  # equal rewards per group
    sft_rb = RolloutBatch(step=0, prompt_indices=[0, 1], rollouts=[[], []], demo_rewards=[1.0, 0.0], policy_version=0)
    sft = build_train_batch(_items(), sft_rb, LossConfig.from_preset("sft"))
    assert sft.is_demo.all() and sft.sequences == [[5, 6, 7, 20, 21], [8, 9, 30, 31, 32]]
    plus = build_train_batch(_items(), _rollout_batch(), LossConfig.from_preset("sft_plus_rl"))
    # demos are outside the groups: rollouts of group 0 are (1, 0)
    ref = group_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))
    assert plus.advantages[:2].tolist() == pytest.approx(ref.tolist())
    assert plus.advantages[plus.is_demo].tolist() == [0.0, 0.0]


def _reference_loss(model, batch, rows, loss_cfg, totals=None) -> float:
    """srft_loss on log-probs computed independently: full logits, float64 log-softmax."""
    seqs = [batch.sequences[i] for i in rows]
    width = max(map(len, seqs))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
    old = torch.zeros((len(rows), width - 1))
    for r, i in enumerate(rows):
        seq, p = batch.sequences[i], batch.prompt_lens[i]
        ids[r, : len(seq)], attn[r, : len(seq)] = torch.tensor(seq), 1
        for t in range(p, len(seq)):
            mask[r, t - 1] = True
            old[r, t - 1] = batch.old_logprobs[i][t - p]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits.double()[:, :-1]
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    idx = torch.tensor(rows)
    loss, _ = srft_loss(
        logp,
        old.double(),
        entropy,
        mask,
        batch.advantages[idx].double(),
        batch.rewards[idx],
        batch.is_demo[idx],
        loss_cfg,
        totals=totals,
    )
    return float(loss)


@pytest.mark.parametrize("weights", ["fixed", "batch_entropy"])
@pytest.mark.parametrize("micro_batch_size", [6, 4, 1])  # the batch has 6 sequences
def test_optimize_loss_matches_independent_computation(tiny_model_dir, micro_batch_size, weights):
    """The step's loss is srft_loss of the whole batch in one piece, however it is cut into
    micro-batches (the step's denominators and, for the paper's batch-scope w_SFT / w_RL, the
    step's mean entropies), with log-probs aligned to the right tokens."""
    from srft_openrlhf.local.engine import make_engine
    from srft_openrlhf.local.step import optimize

    engine = make_engine(
        str(tiny_model_dir),
        engine="torch",
        zero_stage=0,
        dtype="fp32",
        lr=0.0,
        weight_decay=0.0,
        betas=(0.9, 0.999),
        grad_clip=1.0,
        warmup_steps=0,
        total_steps=1,
        seed=0,
        gradient_checkpointing=False,
        device="cpu",
    )
    # A peaked LM head: a random tiny model's entropies are all about log V, so the micro-batch
    # and step mean entropies would agree to 1e-4 and per-micro-batch weights would go unnoticed.
    with torch.no_grad():
        engine.model.get_output_embeddings().weight.mul_(30.0)
    loss_cfg = LossConfig(w_sft_fixed=0.5, w_rl_fixed=0.1) if weights == "fixed" else LossConfig.from_preset("srft")
    assert loss_cfg.entropy_scope == "batch"
    batch = build_train_batch(_items(), _rollout_batch(), loss_cfg)
    expected = _reference_loss(engine.model, batch, list(range(len(batch))), loss_cfg)
    whole = optimize(engine, batch, loss_cfg, micro_batch_size=len(batch), pad_id=0, temperature=1.0)
    metrics = optimize(engine, batch, loss_cfg, micro_batch_size=micro_batch_size, pad_id=0, temperature=1.0)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # the step's metrics, however the step is cut: token-set means weighted by the set's tokens
    for key in ("w_sft", "w_rl", "entropy", "entropy_demo", "entropy_rollout", "ratio_mean", "kl", "n_pos_tokens"):
        assert metrics[key] == pytest.approx(whole[key], rel=1e-5), key
    assert metrics["n_tokens"] == sum(len(s) - p for s, p in zip(batch.sequences, batch.prompt_lens))


# ----------------------------------------------------------------------------- end to end


def test_two_steps_hf_end_to_end(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    config = tiny_run_config(tmp_path, tiny_model_dir, train={"micro_batch_size": 3})
    run = tmp_path / "run"
    assert srft_train("--config", config) == 0

    records = train_records(run)
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert STEP_KEYS <= set(r), STEP_KEYS - set(r)
        assert r["staleness"] == 0 and r["phase"] == "srft" and r["batch_size"] == 2 * 3
        assert r["ratio_mean"] == pytest.approx(1.0, abs=1e-3)  # on-policy: generator = trained weights
    evals = [r for r in metrics(run) if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [0, 2]

    summary = json.loads((run / "summary.json").read_text())
    assert {"accuracy_before", "accuracy_after", "wall_seconds"} <= set(summary)
    # the accuracies, recomputed from the saved held-out samples, each re-graded here
    eval_answers = [json.loads(line)["answer"] for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    for key, step in (("accuracy_before", 0), ("accuracy_after", 2)):
        samples = [json.loads(line) for line in (run / "eval" / f"step-{step:06d}.jsonl").read_text().splitlines()]
        assert [s["answer"] for s in samples] == eval_answers
        assert [s["correct"] for s in samples] == [
            math_reward(s["response"], s["answer"], "oat") == 1.0 for s in samples
        ]
        hits = sum(s["correct"] for s in samples)
        assert summary[key] == hits / len(eval_answers) == evals[step // 2]["eval_accuracy"], key
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000002"
    assert len(list((run / "checkpoints").glob("step-*"))) == 2  # keep_checkpoints default 2
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["micro_batch_size"] == 3

    trained = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step-000002")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [n for n, p in trained.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed, "two optimizer steps left every weight unchanged"


@pytest.mark.parametrize("algo", ["grpo", "sft", "srft_official", "sft_kl", "luffy"])
def test_presets_run(tmp_path, tiny_model_dir, algo):
    config = tiny_run_config(tmp_path, tiny_model_dir, train={"save_every": 0})
    assert srft_train("--config", config, "--algo", algo) == 0
    records = train_records(tmp_path / "run")
    assert [r["phase"] for r in records] == [algo, algo]
    if algo == "sft":
        assert "reward_mean" not in records[0] and records[0]["w_sft"] == 1.0
    if algo == "sft_kl":
        assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first step starts at the reference
    if algo == "grpo":
        assert records[0]["n_demo_tokens"] == 0


@pytest.mark.parametrize(
    "schedule,phases", [("sft_then_rl", ["sft", "grpo", "grpo"]), ("rl_then_sft", ["grpo", "sft", "sft"])]
)
def test_sequential_schedules(tmp_path, tiny_model_dir, schedule, phases):
    config = tiny_run_config(
        tmp_path, tiny_model_dir, train={"steps": 3, "schedule": schedule, "switch_step": 1, "save_every": 0}
    )
    assert srft_train("--config", config) == 0
    assert [r["phase"] for r in train_records(tmp_path / "run")] == phases


def test_tensorboard_and_plot_of_a_run(tmp_path, tiny_model_dir):
    config = tiny_run_config(tmp_path, tiny_model_dir, logging={"tensorboard": True}, train={"save_every": 0})
    assert srft_train("--config", config) == 0
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert cli.main(["plot", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dry_run_starts_nothing(tmp_path, tiny_model_dir, capsys):
    config = tiny_run_config(tmp_path, tiny_model_dir)
    assert srft_train("--config", config, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "[dry-run] 12 training prompts, 4 evaluation prompts" in out
    assert not (tmp_path / "run").exists()


def _run_subprocess(tmp_path: Path, config: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "srft_openrlhf.cli", "train", "--config", str(config), *extra]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.vllm
@requires_vllm
def test_two_steps_vllm_end_to_end(tmp_path, tiny_model_dir):
    config = tiny_run_config(tmp_path, tiny_model_dir, rollout={"generator": "vllm", "gpu_memory_utilization": 0.3})
    _run_subprocess(tmp_path, config)
    records = train_records(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2]
    # vLLM's behaviour log-probs match the trainer's to float precision, before and after the
    # first weight update (step 2 is generated by the updated engine)
    for r in records:
        assert r["log_ratio_abs_mean"] < 1e-3, r
    assert records[1]["policy_version"] == 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["accuracy_after"] is not None


@pytest.mark.slow
@pytest.mark.deepspeed
@requires_deepspeed
def test_two_steps_deepspeed_end_to_end(tmp_path, tiny_model_dir):
    config = tiny_run_config(tmp_path, tiny_model_dir, train={"engine": "deepspeed", "zero_stage": 2})
    _run_subprocess(tmp_path, config)
    records = train_records(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2] and all(math.isfinite(r["grad_norm"]) for r in records)
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "model.safetensors").is_file()
