"""The cluster backend's update on 2 real DeepSpeed ranks equals the local backend's.

One SRFT step (groups of 3 rollouts + 1 demo, the engine's log-probs as π_old, the group
advantages and entropy sums of the SRFT experience maker) is trained

(a) on 2 DeepSpeed ranks (gloo on CPU, spawned processes, the CPU layer ``cpu_compat``), ZeRO-2
    and ZeRO-3: OpenRLHF's own ``get_strategy`` / ``DeepspeedStrategy.prepare`` (its AdamW),
    ``Actor``, ``NaiveReplayBuffer`` and ``ppo_train``, which pairs the micro-batches through
    ``srft_step_windows`` (``patches.install()``) for ``SRFTActorPPOTrainer.training_step``.
    Each rank gets the experiences that the driver's ``RayActorGroup.async_run_method_batch``
    sends it (consecutive chunks, ``rank_chunks``) and trains its samples in micro-batches of 2,
    one optimizer step: 4 prompts = 2 whole groups per rank (gas 4), or 3 prompts = one group
    split over both ranks (gas 3);
(b) by the local backend's ``optimize`` with ``TorchEngine`` on all samples in one micro-batch
    (its gradient, read before its optimizer step),

both in float32 from the same weights.

The update must be linear in the gradient, or a factor on it would not show: Adam's first step is
lr·g/(|g| + eps) ≈ lr·sign(g). DeepSpeed's AdamW (what OpenRLHF configures) is therefore run with
eps = 1e8 ≫ |g| and lr = ``STEP``·eps: its first step is then ``STEP``·g·(1 − O(|g|/eps)), a plain
gradient step (fp32 rounds |g| + eps to eps). ``STEP`` = 1000 makes the update large next to the
weights, so that fp32 rounding of the new weights (|w|·6e-8) stays far below the tolerance. Weight
decay and gradient clipping are off.
The check: for every parameter tensor, ‖Δ_deepspeed − (−STEP·g_local)‖ / ‖STEP·g_local‖ ≤ ``RTOL``
(1e-5; measured ≤ 7e-7); ZeRO-2's and ZeRO-3's updates agree to the same tolerance, and both ranks
hold the same weights.

Planted bugs (run in the same worker processes, after the exact case) must break the check by
more than 100 × ``RTOL``: ``no_dp_factor`` (the loss not multiplied by dp_size: the gradient halved
on 2 ranks only), ``one_rank_totals`` (``_with_totals`` without its all_gather: each rank normalises
by its own StepTotals), ``gas_off_by_one`` (``srft_step_windows`` pairing windows of gas − 1
micro-batches, off DeepSpeed's accumulation boundary).
"""

from __future__ import annotations

import contextlib
import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    cluster_strategy,
    cluster_trainer,
    full_weights,
    generate_step,
    gradient_step_trainer,
    local_train_batch,
    make_experiences,
    replay_items,
    requires_deepspeed,
    small_run,
    spawn_gloo_ranks,
)

from srft_openrlhf.openrlhf.cpu_compat import STUB_DIR

pytestmark = [pytest.mark.openrlhf, pytest.mark.deepspeed, pytest.mark.slow, requires_deepspeed]

WORLD = 2
STEP = 1e3  # the update is -STEP · gradient (Adam with lr = STEP · EPS, see the module docstring)
EPS = 1e8
RTOL = 1e-5  # per parameter tensor, relative to the norm of its reference update
PLANTED = ("no_dp_factor", "one_rank_totals", "gas_off_by_one")
CASES = ("exact", *PLANTED)


# ----------------------------------------------------------------------------- the step and the local reference


@dataclass
class Step:
    args: Any  # OpenRLHF's hierarchised argparse namespace, with .srft
    model_dir: Path
    rank_experiences: list[list]  # what each DP rank's replay buffer is given
    rank_groups: list[set[int]]  # the groups of each rank's samples
    local_loss: float
    reference: dict[str, torch.Tensor]  # -STEP · the local backend's gradient, float64


def rank_chunks(items: list, world: int) -> list[list]:
    """How ``RayActorGroup.async_run_method_batch`` (OpenRLHF 0.11.2, launcher.py) splits the
    driver's experiences over the actor ranks: consecutive chunks of ceil(n / world)."""
    size = -(-len(items) // world)
    return [items[r * size : (r + 1) * size] for r in range(world)]


def build_step(prompts: int, tmp_path: Path, tiny_tokenizer, tiny_model_dir: Path) -> Step:
    """``prompts`` groups of 3 rollouts + 1 demo as the experience maker hands them to the ranks,
    and the local backend's update of them."""
    from srft_openrlhf.local.engine import Optimization, TorchEngine
    from srft_openrlhf.local.step import optimize

    sys.path.insert(0, str(STUB_DIR))
    try:
        from srft_openrlhf.openrlhf.plan import openrlhf_parser

        with pytest.MonkeyPatch.context() as mp:
            cfg, args, files = small_run(
                tmp_path, tiny_tokenizer, openrlhf_parser(), f"train.prompts_per_step={prompts}"
            )
            samples, *_ = generate_step(mp, cfg, args, files, tiny_tokenizer)
            # π_old from the engine; the step's entropy sums from a forward with the step's weights
            trainer, policy = cluster_trainer(args, tiny_model_dir, gas=1)
            experiences, _ = make_experiences(mp, args, samples, tiny_tokenizer, policy)
            chunks = rank_chunks(experiences, WORLD)
            # groups of 4 consecutive samples; read before the replay buffer's split clears ``index``
            groups = [{i // 4 for e in chunk for i in e.index} for chunk in chunks]
            batch = local_train_batch(replay_items(copy.deepcopy(experiences)))
            assert len(batch) == 4 * prompts and batch.is_demo.sum() == prompts and (batch.advantages != 0).any()
            local_model = copy.deepcopy(trainer.actor.model)  # Actor(bf16 weights).float(), as the ranks load it
            optimization = Optimization(lr=0.1, weight_decay=0.0, betas=(0.9, 0.999), grad_clip=0.0, warmup_steps=0)
            engine = TorchEngine(local_model, optimization)
            grads: dict[str, torch.Tensor] = {}

            def read_gradient() -> dict:  # the step's gradient, before the optimizer
                params = local_model.named_parameters()
                grads.update({n: p.grad.detach().clone() for n, p in params if p.grad is not None})
                return {}

            mp.setattr(engine, "step", read_gradient)
            local = optimize(
                engine,
                batch,
                cfg.loss,
                micro_batch_size=len(batch),
                pad_id=tiny_tokenizer.pad_token_id,
                temperature=cfg.rollout.temperature,
            )
    finally:
        sys.path.remove(str(STUB_DIR))
    reference = {
        name: -STEP * grads.get(name, torch.zeros_like(p)).double() for name, p in local_model.named_parameters()
    }
    return Step(args, tiny_model_dir, chunks, groups, local["loss"], reference)


# the rank layouts: 2 whole groups per rank, or 1.5 groups per rank (group 1 on both ranks)
LAYOUTS = {"whole_groups": 4, "split_group": 3}  # -> prompts in the step


@pytest.fixture(scope="module")
def steps(tmp_path_factory, tiny_tokenizer, tiny_model_dir):
    for dep in ("openrlhf", "pylatexenc", "torchdata"):  # the last two: openrlhf imports them at import time
        pytest.importorskip(dep, reason=f"{dep} is not installed (requirements.txt / requirements-nodeps.txt)")
    cache: dict[str, Step] = {}

    def get(layout: str) -> Step:
        if layout not in cache:
            tmp_path = tmp_path_factory.mktemp(layout)
            cache[layout] = step = build_step(LAYOUTS[layout], tmp_path, tiny_tokenizer, tiny_model_dir)
            assert bool(step.rank_groups[0] & step.rank_groups[1]) == (layout == "split_group"), step.rank_groups
        return cache[layout]

    return get


def mismatch(update: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """max over parameter tensors of ‖update − reference‖ / ‖reference‖."""
    assert update.keys() == reference.keys()
    return max(float((update[n] - ref).norm() / ref.norm().clamp(min=1e-30)) for n, ref in reference.items())


# ----------------------------------------------------------------------------- the DeepSpeed ranks


@contextlib.contextmanager
def planted(case: str):
    """The SRFT step with ``case``'s bug in this process (nothing for "exact")."""
    from openrlhf.trainer.ray import ppo_actor

    from srft_openrlhf.openrlhf import actor as srft_actor

    windows, with_totals = ppo_actor.iter_grad_accum_global_norm, srft_actor._with_totals
    assert windows is srft_actor.srft_step_windows  # patches.install(): what ppo_train calls

    def dp_factor_removed(*args, **kwargs):
        for experience, info in windows(*args, **kwargs):
            yield experience, {**info, "dp_size": 1}

    def own_totals(window, dp_group, dp_size):  # no all_gather: this rank's StepTotals only
        for experience, info in with_totals(window, dp_group, 1):
            yield experience, {**info, "dp_size": dp_size}

    def gas_off_by_one(data_iter, strategy, accumulated_gradient, mask_fn=None):
        return windows(data_iter, strategy, accumulated_gradient - 1, mask_fn)

    if case == "no_dp_factor":
        ppo_actor.iter_grad_accum_global_norm = dp_factor_removed
    elif case == "one_rank_totals":
        srft_actor._with_totals = own_totals
    elif case == "gas_off_by_one":
        ppo_actor.iter_grad_accum_global_norm = gas_off_by_one
    else:
        assert case == "exact", case
    try:
        yield
    finally:
        ppo_actor.iter_grad_accum_global_norm, srft_actor._with_totals = windows, with_totals


def _train_one_step(strategy, args, model_dir: Path, experiences: list) -> tuple[dict, dict]:
    """A fresh actor from ``model_dir`` through OpenRLHF's prepare (DeepSpeed engine, its AdamW),
    ``experiences`` appended to the trainer's replay buffer, OpenRLHF's ppo_train: the update and
    the step's status."""
    # the weights the local reference starts from (cluster_trainer's)
    actor, trainer = gradient_step_trainer(strategy, args, model_dir, STEP, EPS)
    for experience in experiences:  # PolicyModelActor.append
        trainer.replay_buffer.append(copy.deepcopy(experience))
    before = full_weights(actor)
    torch.manual_seed(0)  # the replay buffer's shuffle: the same micro-batches in every case
    status = trainer.ppo_train(0.0)
    after = full_weights(actor)
    assert actor.model.global_steps == 1
    return {name: after[name] - before[name] for name in before}, status


def _rank_worker(rank: int, payload: Path, out_dir: Path) -> None:
    job = torch.load(payload, weights_only=False)
    args = job["args"]
    strategy = cluster_strategy(args, job["stage"])
    assert strategy.accumulated_gradient == job["gas"], strategy.accumulated_gradient
    results = {}
    for case in job["cases"]:
        with planted(case):
            results[case] = _train_one_step(strategy, args, job["model_dir"], job["experiences"][rank])
    torch.save(results, out_dir / f"rank{rank}.pt")


def train_on_ranks(step: Step, stage: int, tmp_path: Path) -> list[dict]:
    """Every case of ``CASES`` on ``WORLD`` spawned DeepSpeed ranks; per rank {case: (update, status)}."""
    micro_batch = step.args.train.micro_batch_size
    gas = sum(len(e.sequences) for e in step.rank_experiences[0]) // micro_batch  # one optimizer step
    payload = tmp_path / "job.pt"
    torch.save(
        {
            "args": step.args,
            "model_dir": step.model_dir,
            "stage": stage,
            "gas": gas,
            "experiences": step.rank_experiences,
            "cases": CASES,
        },
        payload,
    )
    spawn_gloo_ranks(_rank_worker, WORLD, payload, tmp_path)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def rank_results(steps, tmp_path_factory):
    cache: dict[tuple[int, str], list[dict]] = {}

    def results(stage: int, layout: str) -> list[dict]:
        if (stage, layout) not in cache:
            tmp_path = tmp_path_factory.mktemp(f"zero{stage}_{layout}")
            cache[stage, layout] = train_on_ranks(steps(layout), stage, tmp_path)
        return cache[stage, layout]

    return results


RUNS = [(2, "whole_groups"), (3, "whole_groups"), (3, "split_group")]  # (ZeRO stage, layout)


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("stage, layout", RUNS)
def test_two_deepspeed_ranks_make_the_local_backends_update(steps, rank_results, stage, layout):
    step, ranks = steps(layout), rank_results(stage, layout)
    update, status = ranks[0]["exact"]
    error = mismatch(update, step.reference)
    print(f"ZeRO-{stage} {layout}: max relative update mismatch vs the local backend {error:.3g}")
    assert error <= RTOL
    assert mismatch(ranks[1]["exact"][0], update) <= 1e-12  # both ranks hold the same weights
    assert status["policy_loss"] == pytest.approx(step.local_loss, rel=1e-4, abs=1e-6)  # ppo_train's mean
    assert status["srft/step_totals_ranks_agree"] == 1.0


@pytest.mark.parametrize("stage, layout", RUNS)
@pytest.mark.parametrize("bug", PLANTED)
def test_planted_bugs_break_the_update(steps, rank_results, stage, layout, bug):
    """The comparison has teeth: each planted bug moves the update far outside ``RTOL``."""
    update, _ = rank_results(stage, layout)[0][bug]
    error = mismatch(update, steps(layout).reference)
    print(f"ZeRO-{stage} {layout} with {bug}: relative update mismatch {error:.3g}")
    assert error > 100 * RTOL


def test_zero2_and_zero3_make_the_same_update(rank_results):
    zero2, zero3 = rank_results(2, "whole_groups")[0]["exact"][0], rank_results(3, "whole_groups")[0]["exact"][0]
    error = mismatch(zero3, zero2)
    print(f"ZeRO-3 vs ZeRO-2: max relative update mismatch {error:.3g}")
    assert error <= RTOL
