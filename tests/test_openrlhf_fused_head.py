"""The cluster step's fused LM head gives the numbers of OpenRLHF's fp32 logits, under ZeRO-2 and ZeRO-3.

One SRFT step (2 groups of 3 rollouts + 1 demo per rank, micro-batches of 2, one optimizer step) is
trained on 2 DeepSpeed ranks (gloo, spawned processes, the CPU layer), through OpenRLHF's own
``get_strategy`` / ``DeepspeedStrategy.prepare`` / ``Actor`` / ``ppo_train``, twice from the same
weights: by the logits path (``SRFTActorPPOTrainer.fused_head = False``: OpenRLHF's ``Actor`` returns
the [B, T, V] logits in fp32, divided by the temperature, and the token kernel reads them) and by the
fused head (the default: the actor's model stops at the final hidden state and the LM head module
computes log π and H chunk by chunk, ``models.fused_lm_head``). The actor's temperature is 0.7, so
that the temperature is checked, not just 1. Both paths agree on

- every response token's log π and H in the training step (``LOGP_ATOL``) and in the experience
  maker's entropy forward (``srft_entropy_sums``, ``SUM_RTOL``),
- the loss (``ppo_train``'s status, ``LOSS_RTOL``),
- the gradient of every parameter tensor (``GRAD_RTOL``), read from the update as in
  test_openrlhf_multirank.py: DeepSpeed's AdamW with eps = 1e8 ≫ |g| and lr = STEP·eps makes its
  first step −STEP·g,

for the tiny model with separate and with tied input / output embeddings (the toy model ties them).
Under ZeRO-3 DeepSpeed keeps parameters below ``stage3_param_persistence_threshold`` (1e5 elements)
whole on every rank, which is every parameter of the tiny model; the CPU layer sets it to 0, so the
LM head weight is a shard on each rank outside its module's forward (checked), and its gradient,
from the fused head, must still be the logits path's.

Planted bugs in the fused head (run in the same workers) must break the comparison by more than
100 × its tolerance: ``temperature_ignored`` (log π at T = 1), ``target_shift`` (each position scored
against the previous position's target: a one-token shift), ``head_weight_detached`` (no gradient
reaches the LM head weight).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    build_tiny_model,
    cluster_strategy,
    cluster_trainer,
    full_weights,
    generate_step,
    gradient_step_trainer,
    make_experiences,
    requires_deepspeed,
    save_model,
    small_run,
    spawn_gloo_ranks,
)

from srft_openrlhf.openrlhf.cpu_compat import STUB_DIR

pytestmark = pytest.mark.openrlhf

WORLD = 2
TEMPERATURE = 0.7
STEP, EPS = 1e3, 1e8  # the update is -STEP · gradient (see test_openrlhf_multirank.py)
LOGP_ATOL = 1e-5  # per response token, log π and H (nats)
SUM_RTOL = 1e-5  # the experience maker's Σ H per response
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-5  # per parameter tensor, relative to the norm of the logits path's gradient
PLANTED = ("temperature_ignored", "target_shift", "head_weight_detached")
CASES = ("logits", "fused", *PLANTED)
MODELS = ("untied", "tied")


@pytest.fixture(scope="module")
def step(tmp_path_factory, tiny_tokenizer, tiny_model_dir):
    """4 prompts of 3 rollouts + 1 demo as the experience maker hands them to the 2 ranks (2 whole
    groups each), and the two model folders."""
    for dep in ("openrlhf", "pylatexenc", "torchdata"):
        pytest.importorskip(dep, reason=f"{dep} is not installed (requirements.txt / requirements-nodeps.txt)")
    tmp_path = tmp_path_factory.mktemp("fused_head")
    from transformers import Qwen2ForCausalLM

    config = build_tiny_model(tiny_tokenizer).config
    config.tie_word_embeddings = True
    torch.manual_seed(1)
    tied = Qwen2ForCausalLM(config)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    tied_dir = save_model(tmp_path / "tied", tiny_tokenizer, model=tied)
    sys.path.insert(0, str(STUB_DIR))
    try:
        from srft_openrlhf.openrlhf.plan import openrlhf_parser

        with pytest.MonkeyPatch.context() as mp:
            cfg, args, files = small_run(tmp_path, tiny_tokenizer, openrlhf_parser(), "train.prompts_per_step=4")
            samples, *_ = generate_step(mp, cfg, args, files, tiny_tokenizer)
            _, policy = cluster_trainer(args, tiny_model_dir, gas=1)
            experiences, _ = make_experiences(mp, args, samples, tiny_tokenizer, policy)
    finally:
        sys.path.remove(str(STUB_DIR))
    size = -(-len(experiences) // WORLD)  # RayActorGroup's consecutive chunks
    chunks = [experiences[r * size : (r + 1) * size] for r in range(WORLD)]
    return args, {"untied": tiny_model_dir, "tied": tied_dir}, chunks


# ----------------------------------------------------------------------------- the DeepSpeed ranks


@contextlib.contextmanager
def planted(case: str):
    """The fused head with ``case``'s bug in this process (nothing for "logits" and "fused")."""
    from srft_openrlhf import models

    kernel = models.linear_logprobs_and_entropy

    def buggy(hidden, weight, targets, temperature, entropy_grad):
        if case == "temperature_ignored":
            temperature = 1.0
        elif case == "target_shift":
            targets = targets.roll(1)
        elif case == "head_weight_detached":
            weight = weight.detach()
        return kernel(hidden, weight, targets, temperature, entropy_grad)

    if case in PLANTED:
        models.linear_logprobs_and_entropy = buggy
    try:
        yield
    finally:
        models.linear_logprobs_and_entropy = kernel


def _train_one_step(strategy, args, model_dir: Path, experiences: list, fused: bool) -> dict:
    """A fresh actor through OpenRLHF's prepare, the experience maker's entropy forward, then
    ppo_train on ``experiences``: what each path computed."""
    from srft_openrlhf.openrlhf.patches import SRFTPolicyModelActor

    actor, trainer = gradient_step_trainer(strategy, args, model_dir, STEP, EPS, TEMPERATURE)
    trainer.fused_head = fused
    head = actor.model.module.get_output_embeddings().weight
    # a shard outside the head's forward under ZeRO-3 (ds_numel: the full size), the whole weight otherwise
    shard = (head.numel(), getattr(head, "ds_numel", head.numel()))
    scored = []
    forward = trainer.response_logprobs_and_entropy

    def recorded(sequences, attention_mask, action_mask, entropy_grad):
        log_probs, entropy, aux = forward(sequences, attention_mask, action_mask, entropy_grad)
        mask = action_mask.bool()
        scored.append((log_probs.detach()[mask].clone(), entropy.detach()[mask].clone()))
        return log_probs, entropy, aux

    trainer.response_logprobs_and_entropy = recorded
    policy = SRFTPolicyModelActor.__new__(SRFTPolicyModelActor)
    policy.actor, policy.trainer = actor, trainer
    entropy_sums = [
        policy.srft_entropy_sums(
            e.sequences, e.action_mask, e.attention_mask, torch.ones(len(e.sequences), dtype=torch.bool)
        )
        for e in experiences
    ]
    for experience in experiences:  # PolicyModelActor.append
        trainer.replay_buffer.append(copy.deepcopy(experience))
    before = full_weights(actor)
    torch.manual_seed(0)  # the replay buffer's shuffle: the same micro-batches in every case
    status = trainer.ppo_train(0.0)
    after = full_weights(actor)
    return {
        "update": {name: after[name] - before[name] for name in before},
        "loss": float(status["policy_loss"]),
        "train_scored": scored[len(experiences) :],  # after the experience maker's forwards
        "entropy_sums": torch.cat(entropy_sums),
        "head_shard": shard,
    }


def _rank_worker(rank: int, payload: Path, out_dir: Path) -> None:
    job = torch.load(payload, weights_only=False)
    args = job["args"]
    # ZeRO-3 partitions even the tiny model's parameters: the CPU layer sets the persistence threshold to 0
    strategy = cluster_strategy(args, job["stage"])
    results = {}
    for name, model_dir in job["models"].items():
        for case in CASES:
            with planted(case):
                results[name, case] = _train_one_step(
                    strategy, args, model_dir, job["experiences"][rank], fused=case != "logits"
                )
    torch.save(results, out_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def rank_results(step, tmp_path_factory):
    args, models, chunks = step
    cache: dict[int, dict] = {}

    def results(stage: int) -> dict:
        if stage not in cache:
            tmp_path = tmp_path_factory.mktemp(f"fused_zero{stage}")
            payload = tmp_path / "job.pt"
            torch.save({"args": args, "models": models, "stage": stage, "experiences": chunks}, payload)
            spawn_gloo_ranks(_rank_worker, WORLD, payload, tmp_path)
            cache[stage] = torch.load(tmp_path / "rank0.pt", weights_only=False)
        return cache[stage]

    return results


# ----------------------------------------------------------------------------- the comparison


def differences(got: dict, want: dict) -> dict[str, float]:
    """How far ``got`` is from ``want``, each in the unit of its tolerance."""
    logp = max(float((g[0] - w[0]).abs().max()) for g, w in zip(got["train_scored"], want["train_scored"]))
    entropy = max(float((g[1] - w[1]).abs().max()) for g, w in zip(got["train_scored"], want["train_scored"]))
    sums = float(((got["entropy_sums"] - want["entropy_sums"]) / want["entropy_sums"]).abs().max())
    loss = abs(got["loss"] - want["loss"]) / abs(want["loss"])
    grad = max(
        float((got["update"][n] - ref).norm() / ref.norm().clamp(min=1e-30)) for n, ref in want["update"].items()
    )
    return {
        "log_prob": logp / LOGP_ATOL,
        "entropy": entropy / LOGP_ATOL,
        "entropy_sum": sums / SUM_RTOL,
        "loss": loss / LOSS_RTOL,
        "gradient": grad / GRAD_RTOL,
    }


@pytest.mark.deepspeed
@pytest.mark.slow
@requires_deepspeed
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stage", [2, 3])
def test_fused_head_gives_the_logits_paths_step(rank_results, stage, model):
    results = rank_results(stage)
    logits, fused = results[model, "logits"], results[model, "fused"]
    assert len(fused["train_scored"]) == len(logits["train_scored"]) == 4  # gas 4: 8 samples, micro-batches of 2
    measured = differences(fused, logits)
    print(f"ZeRO-{stage} {model}: |fused - logits| in units of the tolerance {measured}")
    assert max(measured.values()) <= 1.0
    head = "lm_head.weight" if model == "untied" else "model.embed_tokens.weight"
    assert float(fused["update"][head].norm()) > 0
    numel, full = fused["head_shard"]
    assert (numel < full) == (stage == 3)  # ZeRO-3: the LM head weight is partitioned between forwards


@pytest.mark.deepspeed
@pytest.mark.slow
@requires_deepspeed
@pytest.mark.parametrize("bug", PLANTED)
@pytest.mark.parametrize("stage", [2, 3])
def test_planted_bugs_in_the_fused_head_are_caught(rank_results, stage, bug):
    """The comparison has teeth: each bug moves some quantity past 100 × its tolerance."""
    results = rank_results(stage)
    measured = differences(results["untied", bug], results["untied", "logits"])
    print(f"ZeRO-{stage} with {bug}: in units of the tolerance {measured}")
    assert max(measured.values()) > 100


def test_a_head_that_is_not_plain_linear_falls_back_to_the_logits_logged_once(step, tiny_model_dir, caplog):
    """An LM head with a bias (not ``hidden @ W.T``) is scored from OpenRLHF's logits, and why is
    logged once however many forwards follow."""
    args, _, chunks = step
    trainer, _ = cluster_trainer(args, tiny_model_dir, gas=1)
    model = trainer.actor.model
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.normal_()
    model.lm_head = head
    e = chunks[0][0]
    with caplog.at_level(logging.WARNING, logger="srft_openrlhf.openrlhf.actor"):
        scored = [
            trainer.response_logprobs_and_entropy(e.sequences, e.attention_mask, e.action_mask, False) for _ in range(2)
        ]
    assert [r.getMessage() for r in caplog.records] == [
        "SRFT: log-probs from OpenRLHF's fp32 logits, not the fused head: the LM head has a bias"
    ]
    trainer.fused_head = False
    log_probs, entropy, _ = trainer.response_logprobs_and_entropy(e.sequences, e.attention_mask, e.action_mask, False)
    assert torch.equal(scored[0][0], log_probs) and torch.equal(scored[1][1], entropy)
