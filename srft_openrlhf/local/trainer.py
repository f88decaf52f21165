"""The one-machine SRFT trainer (``srft train``, local backend): CPU or one GPU.

One training step (paper Sec. 4, Eq. 13)::

    prompts of step k (seeded permutation)            data.sampler.PromptSampler
    → n rollouts per prompt + behaviour log-probs      generator (vLLM or HF)
    → rewards of rollouts and demonstrations          reward.batch_rewards
    → groups = rollouts ∪ demonstration (Eq. 6)        algorithm.augment_groups
    → advantages over each group (Eq. 7)               algorithm.batch_advantages
    → srft_loss per micro-batch, gradients summed     algorithm.srft_loss
    → optimizer step → new weights to the generator → log / evaluate / checkpoint

The optimizer step over micro-batches, and the loss of each schedule phase: ``local.step``.

Schedules (paper Table 1): ``joint`` trains with ``loss`` (a preset) at every step;
``sft_then_rl`` runs the ``sft`` preset for ``train.switch_step`` steps, then ``grpo``;
``rl_then_sft`` the reverse.

Old log-probs: a rollout's are the generating policy's, as returned by the generator
(stale ones included, under ``train.async_enable``); a demonstration's are 0 (πβ = 1).
Training log-probs use the sampling temperature (``rollout.temperature``), like the
generator's, so that the ratio compares like with like.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from srft_openrlhf.algorithm import (
    LossConfig,
)
from srft_openrlhf.config import SRFTConfig, save_config
from srft_openrlhf.data.sampler import PromptSampler, generation_seed
from srft_openrlhf.errors import ConfigError
from srft_openrlhf.generation import Generator, HFGenerator, make_generator, vllm_available
from srft_openrlhf.local.async_rollout import AsyncRollouts, SyncRollouts
from srft_openrlhf.local.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint
from srft_openrlhf.local.engine import check_engine, make_engine, make_reference
from srft_openrlhf.local.metrics import MetricsLogger, check_logging
from srft_openrlhf.local.rollout import (
    RolloutBatch,
    build_train_batch,
    collect_rollouts,
    rollout_stats,
)
from srft_openrlhf.local.run_data import RunData, load_data
from srft_openrlhf.local.step import optimize, phase_loss, phase_losses
from srft_openrlhf.models import check_model_path, model_folder
from srft_openrlhf.reward import grade
from srft_openrlhf.runs import check_new_run, run_files, start_run_folder

if TYPE_CHECKING:
    pass


# ----------------------------------------------------------------------------- checks


def check_config(cfg: SRFTConfig) -> None:
    """The local backend's constraints, each naming its key. The backend-independent value
    checks ran when the config was built (``SRFTConfig.validate``)."""
    t = cfg.train
    check_engine(t.engine, cfg.model.dtype)
    if t.engine == "deepspeed" and t.zero_stage == 3 and t.async_enable:
        raise ConfigError(
            "train.async_enable with train.zero_stage=3 is not supported by the local backend "
            "(one process has nothing to shard); use zero_stage 0-2"
        )
    check_logging(cfg.logging)


# ----------------------------------------------------------------------------- entry point


def run(cfg: SRFTConfig, resume: bool = False, dry_run: bool = False) -> int:
    """``srft train`` on this machine. Returns the exit code."""
    started = time.time()
    run_dir = Path(cfg.logging.output_dir).expanduser()
    check_config(cfg)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    check_model_path(cfg.model.path)
    check_new_run(run_files(run_dir), resume)
    data = load_data(cfg)
    if dry_run:
        import yaml

        print(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False), end="")
        print(
            f"[dry-run] {len(data.train)} training prompts, {len(data.eval)} evaluation prompts; "
            f"{cfg.train.steps} steps of {cfg.train.prompts_per_step} prompts; nothing started"
        )
        return 0
    summary_path = run_files(run_dir).summary
    if resume and summary_path.is_file() and json.loads(summary_path.read_text()).get("steps") == cfg.train.steps:
        print(f"{run_dir} is already finished:")
        print_summary(json.loads(summary_path.read_text()))
        return 0
    start_run_folder(run_files(run_dir), "local")
    save_config(cfg, run_files(run_dir).config)
    trainer = Trainer(cfg, data, run_dir, resume=resume, started=started)
    failed = True
    try:
        summary = trainer.fit()
        failed = False
    finally:
        trainer.close(failed)
    print_summary(summary)
    return 0


def print_summary(summary: dict[str, Any]) -> None:
    before, after = summary.get("accuracy_before"), summary.get("accuracy_after")
    n = summary.get("eval_size", 0)
    if before is not None:
        print(f"held-out accuracy before: {before:6.1%} ({round(before * n)}/{n})")
    if after is not None:
        gain = f"  ({(after - before) * 100:+.1f} points)" if before is not None else ""
        print(f"held-out accuracy after:  {after:6.1%} ({round(after * n)}/{n}){gain}")
    print(f"wall time {summary['wall_seconds']:.0f} s; run folder {summary['run_dir']}")


# ----------------------------------------------------------------------------- trainer


class Trainer:
    def __init__(self, cfg: SRFTConfig, data: RunData, run_dir: Path, *, resume: bool, started: float) -> None:
        self.cfg, self.data, self.run_dir, self.started = cfg, data, run_dir, started
        t = cfg.train
        self.async_enabled = t.async_enable and self.needs_generation()
        self.model_path = model_folder(self.cfg.model.path)
        self.engine = make_engine(
            self.model_path,
            engine=t.engine,
            zero_stage=t.zero_stage,
            dtype=cfg.model.dtype,
            lr=t.lr,
            weight_decay=t.weight_decay,
            betas=t.adam_betas,
            grad_clip=t.grad_clip,
            warmup_steps=t.lr_warmup_steps,
            total_steps=t.steps,
            seed=t.seed,
            gradient_checkpointing=cfg.model.gradient_checkpointing,
        )
        self.device = self.engine.device
        self.pad_id = (
            data.tokenizer.pad_token_id if data.tokenizer.pad_token_id is not None else data.tokenizer.eos_token_id
        )
        self.reference = None
        if any(loss.kl_coef > 0 for loss in phase_losses(cfg)):
            self.reference = make_reference(self.model_path, cfg.model.dtype, device=str(self.device))
        self.sampler = PromptSampler(len(data.train), t.prompts_per_step, t.seed)

        self.start_step, self.before, self.elapsed_before = 0, None, 0.0
        pending: dict[int, RolloutBatch] = {}
        checkpoint = latest_checkpoint(run_dir) if resume else None
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, self.engine)
            self.start_step, pending = state["step"], state["pending"]
            self.before, self.elapsed_before = state["eval_before"], state["elapsed"]
        self.logger = MetricsLogger(run_dir, cfg, self.start_step)
        if checkpoint is not None:
            self.logger.message(f"resumed from {checkpoint} (step {self.start_step})")
        elif resume:
            self.logger.message(f"{run_dir} has no checkpoint yet: starting from step 0")

        self.generator = self.rollout_generator() if (data.eval or self.needs_generation()) else None
        self.eval_generator: HFGenerator | None = None
        if self.async_enabled:
            assert self.generator is not None  # async_enabled implies needs_generation()
            self.rollouts: AsyncRollouts | SyncRollouts
            self.rollouts = AsyncRollouts(
                self.generator,
                self.produce,
                start_step=self.start_step,
                end_step=t.steps,
                max_staleness=t.max_staleness,
                pending=pending,
            )
        else:
            self.rollouts = SyncRollouts(self.generator, self.produce)
        # the generator starts from the model folder; after a resume it needs the restored weights
        if self.generator is not None and self.start_step > 0:
            self.rollouts.publish(self.start_step, self.engine.named_weights())

    # ---------------------------------------------------------------- set-up

    def needs_generation(self) -> bool:
        return any(loss.needs_rollouts for loss in phase_losses(self.cfg))

    def generator_kind(self) -> str:
        kind = self.cfg.rollout.generator
        return ("vllm" if vllm_available() else "hf") if kind == "auto" else kind

    def zero3(self) -> bool:
        return self.cfg.train.engine == "deepspeed" and self.cfg.train.zero_stage == 3

    def rollout_generator(self) -> Generator:
        """Synchronous HF generation shares the training module (no copy, no weight sync);
        vLLM, and any generator of the asynchronous thread, holds its own weights."""
        kind = self.generator_kind()
        if kind == "hf" and not self.async_enabled and not self.zero3():
            return HFGenerator.from_module(self.engine.model, self.data.tokenizer, seed=self.cfg.train.seed)
        return make_generator(
            kind,
            self.model_path,
            dtype=self.cfg.model.dtype,
            device=str(self.device),
            seed=self.cfg.train.seed,
            gpu_memory_utilization=self.cfg.rollout.gpu_memory_utilization,
            max_model_len=self.max_model_len(),
        )

    def max_model_len(self) -> int:
        with open(Path(self.model_path) / "config.json") as f:
            limit = json.load(f).get("max_position_embeddings")
        wanted = self.cfg.data.max_prompt_len + self.cfg.rollout.max_new_tokens
        return min(wanted, limit) if limit else wanted

    def produce(self, generator, step: int) -> RolloutBatch:
        """The rollout batch of ``step`` (runs in the background thread under async)."""
        indices = self.sampler.batch(step)
        return collect_rollouts(
            generator, self.data.train, indices, step, self.cfg.rollout, self.cfg.train.seed, phase_loss(self.cfg, step)
        )

    # ---------------------------------------------------------------- loop

    def fit(self) -> dict[str, Any]:
        t = self.cfg.train
        if self.data.eval and self.before is None:
            self.before = self.evaluate(0)
            self.logger.message(f"held-out accuracy before training: {self.before['eval_accuracy']:.1%}")
        for step in range(self.start_step, t.steps):
            record = self.train_step(step)
            done = step + 1
            self.logger.log(done, record)
            self.logger.advance({k: float(record[k]) for k in ("reward_mean", "loss") if k in record})
            if self.data.eval and t.eval_every and done % t.eval_every == 0 and done < t.steps:
                self.evaluate(done)
            if done == t.steps or (t.save_every and done % t.save_every == 0):
                started = time.perf_counter()
                self.checkpoint(done)
                self.logger.log(done, {"time_checkpoint": time.perf_counter() - started}, force=True)
        after = self.evaluate(t.steps) if self.data.eval else {}
        return self.write_summary(after)

    def train_step(self, step: int) -> dict[str, float | str]:  # "phase" is the preset's name
        loss_cfg = phase_loss(self.cfg, step)
        t0 = time.perf_counter()
        rb = self.rollouts.get(step)
        t1 = time.perf_counter()
        batch = build_train_batch(self.data.train, rb, loss_cfg)
        record: dict[str, float | str] = dict(
            optimize(
                self.engine,
                batch,
                loss_cfg,
                micro_batch_size=self.cfg.train.micro_batch_size,
                pad_id=self.pad_id,
                temperature=self.cfg.rollout.temperature,
                reference=self.reference,
            )
        )
        t2 = time.perf_counter()
        self.rollouts.publish(step + 1, self.engine.named_weights())
        t3 = time.perf_counter()
        record.update(rollout_stats(rb))
        record.update(
            phase=loss_cfg.preset,
            staleness=float(step - rb.policy_version),
            policy_version=float(rb.policy_version),
            demo_truncation_rate=self.demo_truncation(rb, loss_cfg),
            batch_size=float(len(batch)),
            time_generate=rb.timings["generate"],
            time_reward=rb.timings["reward"],
            time_train=t2 - t1,
            time_sync=t3 - t2,
            time_step=t3 - t0,
        )
        if self.async_enabled:  # generation ran in the background; this is what it still cost
            record["time_wait_rollouts"] = t1 - t0
        return record

    def demo_truncation(self, rb: RolloutBatch, loss_cfg: LossConfig) -> float:
        if not loss_cfg.needs_demos:
            return 0.0
        return sum(self.data.train[i].demo_truncated for i in rb.prompt_indices) / len(rb.prompt_indices)

    # ---------------------------------------------------------------- evaluation

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out accuracy of the current weights (greedy unless rollout.eval_temperature > 0)."""
        started = time.perf_counter()
        generator = self.generator_for_eval(step)
        r = self.cfg.rollout
        completions = generator.generate(
            [it.prompt_ids for it in self.data.eval],
            1,
            temperature=r.eval_temperature,
            top_p=1.0 if r.eval_temperature == 0 else r.top_p,
            max_new_tokens=r.max_new_tokens,
            seed=generation_seed(self.cfg.train.seed, -1),
        )
        texts = [c[0].text for c in completions]
        graded = grade(texts, [it.answer for it in self.data.eval], r)
        correct = [x >= 1.0 for x in graded.rewards]
        record = {
            "eval_accuracy": sum(correct) / len(correct),
            "eval_response_length": sum(len(c[0].token_ids) for c in completions) / len(completions),
        }
        if self.data.eval_groups:
            for group in sorted(set(self.data.eval_groups)):
                hits = [ok for ok, g in zip(correct, self.data.eval_groups) if g == group]
                record[f"eval_accuracy_{group}"] = sum(hits) / len(hits)
        out = run_files(self.run_dir).eval
        out.mkdir(exist_ok=True)
        with (out / f"step-{step:06d}.jsonl").open("w") as f:
            for item, text, ok in zip(self.data.eval, texts, correct):
                f.write(
                    json.dumps({"prompt": item.prompt_text, "answer": item.answer, "response": text, "correct": ok})
                    + "\n"
                )
        record["time_eval"] = time.perf_counter() - started
        self.logger.log(step, record, force=True)
        return record

    def generator_for_eval(self, step: int):
        """The rollout generator; under async (whose generator is busy in its thread) a
        generator over the training module itself."""
        if not self.async_enabled:
            return self.generator
        if self.eval_generator is None:
            self.eval_generator = HFGenerator.from_module(
                self.engine.model, self.data.tokenizer, seed=self.cfg.train.seed
            )
        self.eval_generator.policy_version = step
        return self.eval_generator

    # ---------------------------------------------------------------- state

    def checkpoint(self, step: int) -> None:
        state = {
            "step": step,
            "rng": rng_state(),
            "pending": self.rollouts.pending(step),  # async batches generated from older weights
            "eval_before": self.before,
            "elapsed": self.elapsed_before + time.time() - self.started,
        }
        save_checkpoint(self.run_dir, step, self.engine, state, self.cfg.train.keep_checkpoints)

    def write_summary(self, after: dict[str, float]) -> dict[str, Any]:
        latest = latest_checkpoint(self.run_dir)
        before = self.before or {}
        summary: dict[str, Any] = {
            "accuracy_before": before.get("eval_accuracy"),
            "accuracy_after": after.get("eval_accuracy"),
            "wall_seconds": round(self.elapsed_before + time.time() - self.started, 1),
            "steps": self.cfg.train.steps,
            "preset": self.cfg.loss.preset,
            "schedule": self.cfg.train.schedule,
            "seed": self.cfg.train.seed,
            "eval_size": len(self.data.eval),
            "model_path": self.model_path,
            "final_model": str(latest) if latest else None,
            "run_dir": str(self.run_dir),
        }
        for when, record in (("before", before), ("after", after)):
            summary.update(
                {f"{k.removeprefix('eval_')}_{when}": v for k, v in record.items() if k.startswith("eval_accuracy_")}
            )
        run_files(self.run_dir).summary.write_text(json.dumps(summary, indent=1) + "\n")
        return summary

    def close(self, failed: bool = False) -> None:
        self.rollouts.close()
        self.logger.close(failed)
        if self.generator is not None:
            self.generator.close()
