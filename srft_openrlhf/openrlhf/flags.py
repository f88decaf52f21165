"""The SRFT config as OpenRLHF flags: the ``train_ppo_ray`` command line and what ``--dry-run`` prints.

One training step = ``train.prompts_per_step`` prompts, each a group of rollouts + demos
(``GroupLayout``), one optimizer step over all of them (the paper's on-policy setting).
OpenRLHF's ``--rollout.n_samples_per_prompt`` is the group size, so its batch accounting
(steps, micro-batches, DeepSpeed's gradient accumulation) counts the demos too; vLLM is asked
for the rollouts only. ``openrlhf_args`` and ``describe`` check nothing: they take a config
that ``plan.check_config`` accepted.
Importing this module imports neither openrlhf nor ray.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from srft_openrlhf.config import SRFTConfig
from srft_openrlhf.openrlhf import HOOK_POINTS, OPENRLHF_VERSION
from srft_openrlhf.openrlhf.layout import layout_of
from srft_openrlhf.openrlhf.plan import CLI_MODULE, cluster_layout
from srft_openrlhf.runs import RunFiles


def warmup_ratio(warmup_steps: int, steps: int) -> float:
    """``--actor.lr_warmup_ratio`` such that OpenRLHF's ``ceil(steps × ratio)`` is ``warmup_steps``
    (``warmup_steps / steps`` can round up to one step more in floating point)."""
    return 0.0 if warmup_steps <= 0 else (warmup_steps - 0.5) / steps


def openrlhf_args(cfg: SRFTConfig, files: RunFiles, resume: bool) -> list[str]:
    """The ``train_ppo_ray`` flags for this config (OpenRLHF 0.11.2's dotted names)."""
    layout, cluster = layout_of(cfg), cluster_layout(cfg)
    t, r, d, c, lg = cfg.train, cfg.rollout, cfg.data, cfg.cluster, cfg.logging
    args: list[Any] = [
        "--actor.model_name_or_path",
        cfg.model.path,
        "--actor.num_nodes",
        cluster.actor_nodes,
        "--actor.num_gpus_per_node",
        cluster.actor_gpus_per_node,
        "--vllm.num_engines",
        cluster.vllm_engines,
        "--vllm.tensor_parallel_size",
        cluster.vllm_tensor_parallel,
        "--vllm.gpu_memory_utilization",
        r.gpu_memory_utilization,
        # data: the files the launcher writes; one episode of exactly train.steps steps
        "--data.prompt_dataset",
        files.train_data,
        "--data.input_key",
        "prompt",
        "--data.label_key",
        "label",
        "--data.max_len",
        d.max_prompt_len + max(r.max_new_tokens, d.max_response_len),
        "--reward.remote_url",
        files.reward_func,
        # one step: prompts_per_step groups of layout.size samples, one optimizer step over all
        "--rollout.batch_size",
        t.prompts_per_step,
        "--rollout.n_samples_per_prompt",
        layout.size,
        "--train.batch_size",
        t.prompts_per_step * layout.size,
        "--rollout.micro_batch_size",
        t.micro_batch_size,
        "--train.micro_batch_size",
        t.micro_batch_size,
        "--train.max_epochs",
        1,
        "--train.num_episodes",
        1,
        "--train.seed",
        t.seed,
        "--rollout.temperature",
        r.temperature,
        "--rollout.top_p",
        r.top_p,
        "--rollout.max_new_tokens",
        r.max_new_tokens,
        # optimizer: AdamW, constant lr after warmup (the paper: 1e-6 constant)
        "--actor.adam.lr",
        t.lr,
        "--actor.adam.betas",
        *t.adam_betas,
        "--actor.adam.weight_decay",
        t.weight_decay,
        "--actor.max_norm",
        t.grad_clip,
        "--actor.lr_scheduler",
        "constant_with_warmup",
        "--actor.lr_warmup_ratio",
        warmup_ratio(t.lr_warmup_steps, t.steps),
        "--ds.zero_stage",
        t.zero_stage,
        "--ds.param_dtype",
        cfg.model.dtype,
        "--ds.attn_implementation",
        c.attn_implementation,
        # advantages and loss are SRFT's (patches); the estimator only keeps OpenRLHF critic-free
        "--algo.advantage.estimator",
        "group_norm",
        "--algo.kl.init_coef",
        cfg.loss.kl_coef,
        # The only switch of OpenRLHF 0.11.2 that makes vLLM return each token's sampling log-prob
        # (logprobs_mode processed_logprobs): SRFT uses them as π_old of the rollouts, stale ones
        # included under async. OpenRLHF's importance correction itself (PolicyLoss) is never called.
        "--algo.advantage.is_correction_level",
        "token",
        # checkpoints and logs
        "--ckpt.path",
        files.checkpoints,
        "--ckpt.output_dir",
        files.model,
        "--ckpt.save_steps",
        t.save_every or -1,
        "--ckpt.max_num",
        t.keep_checkpoints,
        "--logger.logging_steps",
        lg.log_every,
    ]
    flags: list[tuple[object, list[Any]]] = [
        (
            cfg.loss.kl_coef > 0,
            [
                "--algo.kl.use_loss",
                "--algo.kl.estimator",
                cfg.loss.kl_estimator,
                "--ref.num_nodes",
                cluster.actor_nodes,
                "--ref.num_gpus_per_node",
                cluster.actor_gpus_per_node,
                "--train.colocate_actor_ref",
            ],
        ),
        (t.async_enable, ["--train.async_enable", "--train.async_queue_size", t.max_staleness]),
        (cluster.colocated, ["--train.colocate_all", "--vllm.enable_sleep", "--ds.enable_sleep"]),
        (c.colocate_all and t.async_enable, ["--train.colocate_all"]),  # OpenRLHF then colocates DeepSpeed models only
        (c.enable_prefix_caching, ["--vllm.enable_prefix_caching"]),
        (c.enforce_eager or (c.cpu and r.generator == "vllm"), ["--vllm.enforce_eager"]),  # no graphs on CPU
        (c.adam_offload, ["--ds.adam_offload"]),
        (cfg.model.gradient_checkpointing, ["--actor.gradient_checkpointing_enable"]),
        (c.save_hf_checkpoints, ["--ckpt.save_hf"]),
        (resume, ["--ckpt.load_enable"]),
        (
            bool(d.eval) and t.eval_every > 0,
            [
                "--eval.dataset",
                files.eval_data,
                "--eval.steps",
                t.eval_every,
                "--eval.temperature",
                r.eval_temperature,
                "--eval.n_samples_per_prompt",
                1,
            ],
        ),
        (lg.tensorboard, ["--logger.tensorboard_dir", files.tensorboard]),
        # WandbLogger logs in only without an API key in the environment; the key itself
        # travels as WANDB_API_KEY (never on the command line, which OpenRLHF prints).
        (
            bool(lg.wandb_project),
            [
                "--logger.wandb.key",
                "WANDB_API_KEY",
                "--logger.wandb.project",
                lg.wandb_project,
                "--logger.wandb.run_name",
                lg.wandb_run_name or files.root.name,
            ],
        ),
    ]
    for on, extra in flags:
        if on:
            args += extra
    return [str(a) for a in args] + list(c.extra_args)


def command_line(args: list[str]) -> str:
    """``python -m openrlhf.cli.train_ppo_ray`` with one flag (and its values) per line."""
    lines, current = [], [f"python -m {CLI_MODULE}"]
    for a in args:
        if a.startswith("--"):
            lines.append(" ".join(current))
            current = []
        current.append(shlex.quote(a))
    lines.append(" ".join(current))
    return " \\\n  ".join(lines)


def describe(cfg: SRFTConfig, args: list[str], files: RunFiles) -> str:
    """What --dry-run prints."""
    layout, cluster = layout_of(cfg), cluster_layout(cfg)
    samples = cfg.train.prompts_per_step * layout.size
    mode = f"async (queue {cfg.train.max_staleness})" if cfg.train.async_enable else "sync"
    plain = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists for YAML
    lines = [
        f"# SRFT on OpenRLHF {OPENRLHF_VERSION} (dry run: nothing is written or started)",
        "",
        "## resolved SRFT config",
        yaml.safe_dump(plain, sort_keys=False).rstrip(),
        "",
        "## layout",
        f"group: {layout.rollouts} rollouts + {layout.demos} demonstration(s) = {layout.size} samples per prompt "
        f"(loss.preset = {cfg.loss.preset}, demo_mode = {cfg.loss.demo_mode})",
        f"step: {cfg.train.prompts_per_step} prompts -> {samples} samples, one optimizer step; "
        f"{cfg.train.steps} steps; generation {mode}",
        f"training: {cluster.actor_nodes} node(s) × {cluster.actor_gpus_per_node} GPU(s), DeepSpeed ZeRO-"
        f"{cfg.train.zero_stage}, micro-batch {cfg.train.micro_batch_size} -> "
        f"{samples // (cfg.train.micro_batch_size * cluster.actor_gpus)} accumulation steps",
        f"vLLM: {cluster.vllm_engines} engine(s) × tensor parallel {cluster.vllm_tensor_parallel}"
        + (" (colocated with training)" if cluster.colocated else ""),
        "",
        "## files",
        f"run folder: {files.root}",
        "written at launch: " + ", ".join(str(p.relative_to(files.root)) for p in written_files(cfg, files)),
        f"checkpoints: {files.checkpoints}; final model: {files.model}",
        "",
        "## patch points (checked against the installed OpenRLHF when the run starts)",
        *(f"- {h.target}: {h.srft}" for h in HOOK_POINTS),
        "",
        "## command",
        command_line(args),
    ]
    return "\n".join(lines)


def written_files(cfg: SRFTConfig, files: RunFiles) -> list[Path]:
    demos = [files.demos] if layout_of(cfg).demos else []
    evals = [files.eval_data] if cfg.data.eval and cfg.train.eval_every > 0 else []
    return [files.config, files.train_data, *demos, *evals, files.reward_func]
