"""``srft train --backend openrlhf``: SRFT config -> OpenRLHF's PPO Ray trainer, patched.

``run`` (1) checks the config and the cluster layout, (2) writes into the run folder the
config, the training data as OpenRLHF reads it (rendered prompts, JSON labels), the
demonstrations and the reward-function file, (3) installs the SRFT patches, joins or starts
Ray, and runs ``openrlhf.cli.train_ppo_ray`` as ``__main__`` with the translated flags.
``--dry-run`` prints the equivalent command line, the hook points and the resolved config,
and touches nothing. Importing this module imports neither openrlhf nor ray.

One training step = ``train.prompts_per_step`` prompts, each a group of rollouts + demos
(``GroupLayout``), one optimizer step over all of them (the paper's on-policy setting).
OpenRLHF's ``--rollout.n_samples_per_prompt`` is the group size, so its batch accounting
(steps, micro-batches, DeepSpeed's gradient accumulation) counts the demos too; vLLM is asked
for the rollouts only. The training file holds exactly ``train.steps × prompts_per_step``
prompts in the order they are trained on (one seeded permutation of the examples per epoch,
as in the local backend), so one OpenRLHF episode is ``train.steps`` steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import runpy
import shlex
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from srft_openrlhf.config import SRFTConfig, save_config
from srft_openrlhf.data.example import TOY
from srft_openrlhf.errors import ConfigError
from srft_openrlhf.openrlhf import HOOK_POINTS, OPENRLHF_VERSION
from srft_openrlhf.openrlhf.layout import GroupLayout, layout_of
from srft_openrlhf.openrlhf.reward_func import encode_label, reward_func_file_text
from srft_openrlhf.runs import RunFiles, run_files
from srft_openrlhf.runs.records import drop_records_after

CLI_MODULE = "openrlhf.cli.train_ppo_ray"

# Flags the launcher derives from the group layout and the data it writes: overriding them
# through cluster.extra_args would break the layout the SRFT patches rely on. The last three
# change how OpenRLHF groups samples, which the SRFT samples generator and actor step assume.
_OWNED_FLAGS = (
    "--rollout.n_samples_per_prompt",
    "--rollout.batch_size",
    "--train.batch_size",
    "--data.prompt_dataset",
    "--data.input_key",
    "--data.label_key",
    "--reward.remote_url",
    "--ds.packing_samples",
    "--train.dynamic_batch_enable",
    "--rollout.vllm_generate_batch_size",
    # Each changes the step or the data volume: dynamic filtering draws replacement prompts (the
    # exactly sized training file runs out, ranks get unequal chunks) and drops the all-wrong
    # groups that SRFT's demonstrations are for; more epochs per batch reuse stale batch-scope
    # entropies; more episodes replay the file in the same order (train.steps sets the length).
    "--algo.dynamic_filtering_enable",
    "--algo.dynamic_filtering_reward_range",
    "--train.max_epochs",
    "--train.num_episodes",
)

# OpenRLHF flags whose job SRFT's own loss and advantages do: the SRFT training step never calls
# OpenRLHF's PolicyLoss, aggregate_loss, KL controller or advantage estimators, so these would be
# accepted and silently do nothing (`--algo.advantage.estimator gae` would even start a critic).
# Flag -> the SRFT config key that does the job.
_SRFT_LOSS_FLAGS = {
    "--actor.eps_clip": "loss.clip_low / loss.clip_high",
    "--actor.eps_clip_low_high": "loss.clip_low / loss.clip_high",
    "--actor.dual_clip": "loss.clip_low / loss.clip_high (SRFT's objectives have no dual clip)",
    "--actor.policy_loss_type": "loss.preset (or loss.rollout_objective)",
    "--actor.loss_agg_mode": "loss.loss_agg",
    "--actor.entropy_coef": "loss.entropy_bonus",
    "--algo.kl.init_coef": "loss.kl_coef",
    "--algo.kl.use_loss": "loss.kl_coef",
    "--algo.kl.estimator": "loss.kl_estimator",
    "--algo.kl.unbiased_gradient": "loss.kl_estimator",
    "--algo.kl.target": "loss.kl_coef (SRFT's KL coefficient is fixed, not adaptive)",
    "--algo.kl.horizon": "loss.kl_coef (SRFT's KL coefficient is fixed, not adaptive)",
    "--algo.advantage.estimator": "loss.preset / loss.normalize_std (Eq. 7 group advantages; gae would also "
    "train a critic)",
    "--algo.advantage.no_std_norm": "loss.normalize_std",
    "--algo.advantage.gamma": "nothing: SRFT's advantage is one value per sequence (Eq. 7)",
    "--algo.advantage.lambd": "nothing: SRFT's advantage is one value per sequence (Eq. 7)",
    "--algo.advantage.is_correction_level": "loss.clip_low / loss.clip_high (π_old is already the rollout "
    "engine's log-probs)",
    "--algo.advantage.is_correction_mode": "loss.clip_low / loss.clip_high",
    "--algo.advantage.is_correction_gating": "loss.clip_low / loss.clip_high",
    "--algo.advantage.is_correction_threshold": "loss.clip_low / loss.clip_high",
    "--reward.clip_range": "nothing: the verifiable reward is 0 or 1 (rollout.reward)",
    "--critic.model_name_or_path": "nothing: SRFT trains no critic",
}

# Turn on OpenRLHF's packed sequences, which the SRFT training step and group layout do not take
# (the loss would get packed logits). Flag -> the value that keeps packing off.
_PACKING_FLAGS = {"--ds.ring_attn_size": "1", "--ds.tensor_parallel_size": "1"}

# Forwarded to every Ray worker when set in the launching shell.
_PASS_THROUGH_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HF_HOME", "HF_HUB_OFFLINE", "SRFT_KERNEL_BACKEND")


@dataclass(frozen=True)
class ClusterLayout:
    actor_nodes: int
    actor_gpus_per_node: int
    vllm_engines: int
    vllm_tensor_parallel: int
    colocated: bool  # vLLM shares the training GPUs (sync mode only)

    @property
    def actor_gpus(self) -> int:
        return self.actor_nodes * self.actor_gpus_per_node


def cluster_layout(cfg: SRFTConfig) -> ClusterLayout:
    """Split ``cluster.nodes × cluster.gpus_per_node`` GPUs between vLLM and DeepSpeed.

    Colocated (``cluster.colocate_all`` in sync mode): every engine and every training rank
    share the GPUs, so engines × TP must equal the GPUs. Otherwise vLLM takes engines × TP GPUs
    and training ``cluster.actor_gpus`` (default: the rest). In async mode OpenRLHF colocates
    only the DeepSpeed models, so vLLM always gets its own GPUs there.
    """
    c = cfg.cluster  # its counts are >= 1 (ClusterConfig.validate)
    total = c.nodes * c.gpus_per_node
    vllm_gpus = c.vllm_num_engines * c.vllm_tensor_parallel_size
    colocated = c.colocate_all and not cfg.train.async_enable
    if colocated:
        if vllm_gpus != total:
            raise ConfigError(
                f"cluster.colocate_all: vllm_num_engines × vllm_tensor_parallel_size = {vllm_gpus} must "
                f"equal nodes × gpus_per_node = {total} (set cluster.vllm_num_engines = "
                f"{max(1, total // c.vllm_tensor_parallel_size)})"
            )
        actor = c.actor_gpus or total
    else:
        actor = c.actor_gpus or total - vllm_gpus
        if actor < 1 or actor + vllm_gpus > total:
            raise ConfigError(
                f"cluster: {vllm_gpus} GPUs for vLLM (vllm_num_engines × vllm_tensor_parallel_size) "
                f"and {actor} for training do not fit in nodes × gpus_per_node = {total}; lower "
                "cluster.vllm_num_engines or set cluster.colocate_all with train.async_enable=false"
            )
    if actor <= c.gpus_per_node:
        return ClusterLayout(1, actor, c.vllm_num_engines, c.vllm_tensor_parallel_size, colocated)
    if actor % c.gpus_per_node:
        raise ConfigError(
            f"cluster: {actor} training GPUs span nodes unevenly (gpus_per_node = {c.gpus_per_node}); "
            "set cluster.actor_gpus to a multiple of gpus_per_node"
        )
    return ClusterLayout(
        actor // c.gpus_per_node, c.gpus_per_node, c.vllm_num_engines, c.vllm_tensor_parallel_size, colocated
    )


def check_config(cfg: SRFTConfig) -> tuple[GroupLayout, ClusterLayout]:
    """Every OpenRLHF-backend constraint on the config, as ConfigErrors naming the key. The
    backend-independent value checks ran when the config was built (``SRFTConfig.validate``)."""
    if cfg.train.steps < 1:
        raise ConfigError(f"train.steps must be at least 1 for the openrlhf backend, got {cfg.train.steps}")
    if cfg.train.schedule != "joint":
        raise ConfigError(
            f"train.schedule = {cfg.train.schedule}: the openrlhf backend runs one phase per job; "
            "run the phases as two jobs (scripts/train_baseline.sh sft_rl does)"
        )
    if cfg.model.dtype != "bf16":
        # OpenRLHF creates every vLLM engine in bf16 and its engine asserts that each broadcast
        # weight has the engine's dtype: fp16 would die at the first weight sync, after a full step
        raise ConfigError(
            f"model.dtype = {cfg.model.dtype}: OpenRLHF 0.11.2 trains in bf16 or fp16 but its vLLM "
            "engines are bf16 and refuse fp16 weights at the first weight sync; use model.dtype=bf16"
        )
    if cfg.rollout.top_p < 1:
        # vLLM's processed log-probs (π_old) are then the truncated, renormalised distribution while
        # the trainer's log πθ is the full softmax: a systematic ratio below 1 on every token
        raise ConfigError(
            f"rollout.top_p = {cfg.rollout.top_p}: the openrlhf backend takes π_old from vLLM's sampling "
            "log-probs, which under top_p < 1 are of the truncated distribution, not of the policy the "
            "trainer scores; use rollout.top_p=1.0"
        )
    if cfg.cluster.cpu:
        if cfg.rollout.generator == "vllm" and cfg.cluster.colocate_all and not cfg.train.async_enable:
            raise ConfigError(
                "cluster.colocate_all (sync) with cluster.cpu and rollout.generator = vllm: vLLM on CPU has "
                "no sleep mode to share a device with training; set cluster.colocate_all=false"
            )
    elif cfg.rollout.generator == "hf":
        raise ConfigError(
            "rollout.generator = hf: the openrlhf backend generates with vLLM on GPUs; use auto or "
            "vllm (or cluster.cpu: true, the CPU layer, to try it without a GPU)"
        )
    check_extra_args(cfg.cluster.extra_args)
    if cfg.train.async_enable and cfg.train.max_staleness < 1:
        raise ConfigError(
            f"train.max_staleness = {cfg.train.max_staleness} with train.async_enable: OpenRLHF's "
            "asynchronous queue needs at least 1 batch; set train.max_staleness >= 1, or "
            "train.async_enable=false for on-policy training"
        )
    if "," in cfg.logging.output_dir:
        raise ConfigError(
            f"logging.output_dir = {cfg.logging.output_dir!r} contains a comma: OpenRLHF splits "
            "--reward.remote_url and --data.prompt_dataset (files in the run folder) on commas; "
            "choose a run folder without one"
        )
    layout, cluster = layout_of(cfg), cluster_layout(cfg)
    samples = cfg.train.prompts_per_step * layout.size
    per_pass = cfg.train.micro_batch_size * cluster.actor_gpus
    if samples % per_pass:
        raise ConfigError(
            f"train.prompts_per_step × group size = {cfg.train.prompts_per_step} × {layout.size} = "
            f"{samples} samples per step must be a multiple of train.micro_batch_size × training "
            f"GPUs = {cfg.train.micro_batch_size} × {cluster.actor_gpus}"
        )
    return layout, cluster


def check_extra_args(extra_args: list[str], options: Collection[str] | None = None) -> None:
    """ConfigError for a flag in ``cluster.extra_args`` that the launcher sets, that breaks the
    SRFT group layout, or that SRFT's loss would silently ignore (naming the SRFT key to use).

    ``options``: the option strings of OpenRLHF's parser (``openrlhf_options``). With them each
    flag is first read as that parser reads it, abbreviations included (``--ds.packing`` is
    ``--ds.packing_samples``), and a flag it does not know is an error before anything starts."""
    flags = [
        (a.split("=")[0], a, extra_args[i + 1] if "=" not in a and i + 1 < len(extra_args) else None)
        for i, a in enumerate(extra_args)
        if a.startswith("--")
    ]
    if options is not None:
        flags = [(resolve_flag(flag, options), arg, following) for flag, arg, following in flags]
    for flag, arg, following in flags:
        if flag in _OWNED_FLAGS:
            raise ConfigError(
                f"cluster.extra_args: {arg} is set by the launcher from the SRFT config (or breaks "
                "the SRFT group layout); set the corresponding SRFT key instead"
            )
        if flag in _SRFT_LOSS_FLAGS:
            raise ConfigError(
                f"cluster.extra_args: {arg} is an OpenRLHF loss/advantage flag that SRFT's loss does "
                f"not read; use {_SRFT_LOSS_FLAGS[flag]}"
            )
        value = arg.split("=", 1)[1] if "=" in arg else following
        if flag in _PACKING_FLAGS and value != _PACKING_FLAGS[flag]:
            raise ConfigError(
                f"cluster.extra_args: {flag} {value} turns on OpenRLHF's packed sequences, which the "
                f"SRFT training step does not support; leave it at {_PACKING_FLAGS[flag]}"
            )


def resolve_flag(flag: str, options: Collection[str]) -> str:
    """The option argparse takes ``flag`` for (OpenRLHF's parser allows abbreviations): itself, or
    the one option it is a prefix of; ConfigError if it is unknown or ambiguous."""
    if flag in options:
        return flag
    matches = sorted(o for o in options if o.startswith(flag))
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(
            f"cluster.extra_args: {flag} is an ambiguous abbreviation in OpenRLHF {OPENRLHF_VERSION}'s "
            f"train_ppo_ray (it could be {', '.join(matches)}); spell the flag out"
        )
    raise ConfigError(f"cluster.extra_args: {flag} is not a flag of OpenRLHF {OPENRLHF_VERSION}'s train_ppo_ray")


def openrlhf_parser() -> Any:
    """The ArgumentParser that ``python -m openrlhf.cli.train_ppo_ray`` builds, caught before it
    parses (it is built inside the module's ``__main__`` block). Imports OpenRLHF: on CPU only
    after ``cpu_compat.install()``."""
    import argparse

    class Caught(Exception):
        pass

    def catch(parser, *args, **kwargs):
        raise Caught(parser)

    parse_args, argv = argparse.ArgumentParser.parse_args, sys.argv
    argparse.ArgumentParser.parse_args = catch  # type: ignore[method-assign,assignment]
    sys.argv = [CLI_MODULE]
    sys.modules.pop(CLI_MODULE, None)  # imported as a module by the hook check; runpy runs it afresh
    try:
        runpy.run_module(CLI_MODULE, run_name="__main__")
    except Caught as caught:
        parser = caught.args[0]
    else:
        raise RuntimeError(f"{CLI_MODULE} built no ArgumentParser (OpenRLHF {OPENRLHF_VERSION} does)")
    finally:
        argparse.ArgumentParser.parse_args = parse_args  # type: ignore[method-assign]
        sys.argv = argv
        sys.modules.pop(CLI_MODULE, None)
    return parser


def openrlhf_options() -> frozenset[str]:
    """Every option string of OpenRLHF's parser (``openrlhf_parser``)."""
    return frozenset(o for action in openrlhf_parser()._actions for o in action.option_strings)


def warmup_ratio(warmup_steps: int, steps: int) -> float:
    """``--actor.lr_warmup_ratio`` such that OpenRLHF's ``ceil(steps × ratio)`` is ``warmup_steps``
    (``warmup_steps / steps`` can round up to one step more in floating point)."""
    return 0.0 if warmup_steps <= 0 else (warmup_steps - 0.5) / steps


def openrlhf_args(cfg: SRFTConfig, files: RunFiles, resume: bool) -> list[str]:
    """The ``train_ppo_ray`` flags for this config (OpenRLHF 0.11.2's dotted names)."""
    layout, cluster = check_config(cfg)
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
    layout, cluster = check_config(cfg)
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


def absolute_output_dir(cfg: SRFTConfig) -> SRFTConfig:
    """A copy of ``cfg`` whose run folder is absolute: the Ray workers read it from other cwds."""
    out = str(Path(cfg.logging.output_dir).expanduser().resolve())
    return dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, output_dir=out))


# ----------------------------------------------------------------------------- data files


def openrlhf_prompt(tokenizer: Any, question: Any, cfg: SRFTConfig, where: str) -> str:
    """The prompt text OpenRLHF tokenises (without special tokens) into what ``encode_example``
    gives: the rendered template, with the BOS text in front where our rules add a BOS."""
    from srft_openrlhf.data import encode_example, render_prompt

    text = render_prompt(question, cfg.data.template, tokenizer)
    ids = encode_example(
        tokenizer, text, None, cfg.data.max_prompt_len, cfg.data.max_response_len, where=where
    ).prompt_ids
    bos = tokenizer.bos_token_id
    if bos is not None and ids and ids[0] == bos and not text.startswith(tokenizer.bos_token):
        text = tokenizer.bos_token + text
    return text


def _rendered(examples: list, tokenizer: Any, cfg: SRFTConfig) -> list[tuple[Any, str]]:
    """(example, prompt text) for every example whose prompt fits; a long prompt is a
    DataError unless data.skip_invalid_rows (then it is dropped and counted)."""
    from srft_openrlhf.errors import DataError

    kept, skipped = [], 0
    for ex in examples:
        try:
            kept.append((ex, openrlhf_prompt(tokenizer, ex.prompt, cfg, f"{ex.source} row {ex.row}")))
        except DataError:
            if not cfg.data.skip_invalid_rows:
                raise
            skipped += 1
    if skipped:
        print(f"srft: skipped {skipped} example(s) whose prompt exceeds data.max_prompt_len", file=sys.stderr)
    if not kept:
        raise DataError(f"{cfg.data.train}: no example has a prompt within data.max_prompt_len")
    return kept


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_data(cfg: SRFTConfig, files: RunFiles, tokenizer: Any) -> None:
    """train.jsonl (steps × prompts_per_step prompts), demos.jsonl and eval.jsonl, as OpenRLHF reads them."""
    from srft_openrlhf.data.sampler import PromptSampler
    from srft_openrlhf.data.sources import config_examples

    d, layout = cfg.data, layout_of(cfg)
    train_examples = config_examples(
        d.train, d, demo_key=d.demo_key if layout.demos else None, require_demo=bool(layout.demos)
    )
    kept = _rendered(train_examples, tokenizer, cfg)
    if layout.demos:
        _write_jsonl(files.demos, ({"demonstrations": [ex.demonstration]} for ex, _ in kept))
    # The local backend's order: one seeded permutation of the examples per epoch, drawn step by
    # step (OpenRLHF reads the file in this order: patches.prepare_datasets_in_file_order).
    sampler = PromptSampler(len(kept), cfg.train.prompts_per_step, cfg.train.seed)
    order = [i for step in range(cfg.train.steps) for i in sampler.batch(step)]
    _write_jsonl(files.train_data, ({"prompt": kept[i][1], "label": encode_label(kept[i][0].answer, i)} for i in order))
    if d.eval and cfg.train.eval_every > 0:
        _write_jsonl(
            files.eval_data,
            (
                {"prompt": text, "label": encode_label(ex.answer), "datasource": Path(ex.source).stem}
                for ex, text in _rendered(eval_examples(cfg), tokenizer, cfg)
            ),
        )


def eval_examples(cfg: SRFTConfig) -> list:
    from srft_openrlhf.data.sources import config_examples

    if not cfg.data.eval:
        raise ConfigError("data.eval is not set: there are no held-out examples to read")
    return config_examples(cfg.data.eval, cfg.data, heldout=True)


def resolve_model(cfg: SRFTConfig) -> SRFTConfig:
    """``model.path: toy`` -> the cached toy base model folder (built on first use)."""
    if cfg.model.path != TOY:
        return cfg
    from srft_openrlhf.data import toy

    path = str(toy.base_model_path(log=lambda m: print(m, file=sys.stderr)))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=path))


def held_out_accuracy(cfg: SRFTConfig, model_path: str | Path, tokenizer: Any) -> float:
    """Greedy accuracy of the model at ``model_path`` on ``data.eval`` (prompts as OpenRLHF renders
    them), with the HF generator on CPU: the before / after numbers of the CPU path."""
    from srft_openrlhf.generation import HFGenerator
    from srft_openrlhf.reward import grade

    pairs = _rendered(eval_examples(cfg), tokenizer, cfg)
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for _, text in pairs]
    generator = HFGenerator.load(str(model_path), dtype="fp32", device="cpu", seed=cfg.train.seed)
    completions = generator.generate(prompts, 1, temperature=0.0, top_p=1.0, max_new_tokens=cfg.rollout.max_new_tokens)
    graded = grade([c[0].text for c in completions], [ex.answer for ex, _ in pairs], cfg.rollout)
    return sum(r >= 1.0 for r in graded.rewards) / len(graded.rewards)


# ----------------------------------------------------------------------------- launch


def ray_runtime_env() -> dict:
    """OpenRLHF's own worker environment (it sets it only when it starts Ray itself) plus
    the credentials/caches set in this shell."""
    env = {
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "true"),
        "NCCL_DEBUG": os.environ.get("NCCL_DEBUG", "WARN"),
        "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": os.environ.get("RAY_ENABLE_ZERO_COPY_TORCH_TENSORS", "1"),
    }
    env.update({k: os.environ[k] for k in _PASS_THROUGH_ENV if k in os.environ})
    return {"env_vars": env}


def resumed_step(files: RunFiles) -> int | None:
    """The optimizer step a ``--resume`` continues after: DeepSpeed's ``latest`` tag of the policy's
    checkpoints (``global_step<N>`` or OpenRLHF's ``best_global_step<N>``); 0 without any
    checkpoint (OpenRLHF then starts over), None if the tag is not one of these."""
    latest = files.checkpoints / "_actor" / "latest"
    if not latest.is_file():
        return 0
    match = re.fullmatch(r"(?:best_)?global_step(\d+)", latest.read_text().strip())
    return int(match[1]) if match else None


def init_ray(cfg: SRFTConfig) -> None:
    """Connect to (or start) Ray with the workers' environment.

    Under ``ray job submit`` Ray merges the job's runtime env with this one key by key: the
    job's ``working_dir``, ``py_modules``, ``pip`` stay, and of the environment variables both
    set, ours win (read from that same environment, so they are the job's values) instead of
    failing on the duplicate keys.
    """
    import ray

    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    if not cfg.cluster.cpu:
        ray.init(address=cfg.cluster.ray_address, runtime_env=ray_runtime_env())
        return
    from srft_openrlhf.openrlhf import cpu_compat

    cluster = cluster_layout(cfg)
    engines = cluster.vllm_engines * cluster.vllm_tensor_parallel  # OpenRLHF's vLLM engines take a GPU each
    resources: dict[str, Any] = (
        {}
        if cfg.cluster.ray_address
        else {"num_gpus": cluster.actor_gpus + engines, "num_cpus": cluster.actor_gpus + engines + 4}
    )  # logical, not cores
    ray.init(
        address=cfg.cluster.ray_address,
        runtime_env=cpu_compat.ray_runtime_env(ray_runtime_env()["env_vars"]),
        **resources,
    )


def run(cfg: SRFTConfig, resume: bool = False, dry_run: bool = False) -> int:
    """Train with OpenRLHF (see the module docstring); returns the exit code."""
    cfg = absolute_output_dir(cfg)
    files = run_files(cfg.logging.output_dir)
    if dry_run:
        print(describe(cfg, openrlhf_args(cfg, files, resume), files))
        return 0
    cfg = resolve_model(cfg)
    args = openrlhf_args(cfg, files, resume)
    if resume and not files.train_data.is_file():
        raise ConfigError(f"--resume {files.root}: no {files.train_data.relative_to(files.root)} there")
    if cfg.cluster.cpu:  # before OpenRLHF is imported: flash-attn stub, torch.cuda redirects
        from srft_openrlhf.openrlhf import cpu_compat

        cpu_compat.install(rollout=cfg.rollout.generator)
    from srft_openrlhf.openrlhf import patches  # imports OpenRLHF and checks the hook points

    if cfg.cluster.cpu:
        cpu_compat.check_cpu_hook_points()
    check_extra_args(cfg.cluster.extra_args, openrlhf_options())

    files.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, files.config)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    if not resume:  # a resumed run keeps its data: OpenRLHF's saved dataloader state indexes it
        write_data(cfg, files, tokenizer)
    elif (step := resumed_step(files)) is not None:
        drop_records_after(files.metrics, step)  # the steps after the checkpoint are logged again
    summary = json.loads(files.summary.read_text()) if files.summary.is_file() else {}
    if cfg.cluster.cpu and cfg.data.eval and "accuracy_before" not in summary:
        summary["accuracy_before"] = held_out_accuracy(cfg, cfg.model.path, tokenizer)
        print(f"srft: held-out accuracy before training: {summary['accuracy_before']:.3f}", file=sys.stderr)
        files.summary.write_text(json.dumps(summary, indent=1) + "\n")
    r = cfg.rollout
    files.reward_func.write_text(reward_func_file_text(r.reward, r.reward_mode, r.reward_timeout_s, r.reward_workers))
    patches.install_driver(cfg)
    if cfg.logging.wandb_project and "WANDB_API_KEY" not in os.environ:
        print(
            "srft: logging.wandb_project is set but WANDB_API_KEY is not; wandb needs it (or a `wandb login` "
            "on every node)",
            file=sys.stderr,
        )

    import ray

    init_ray(cfg)
    argv = sys.argv
    sys.argv = [CLI_MODULE, *args]
    sys.modules.pop(CLI_MODULE, None)  # imported as a module by the hook check; runpy runs it afresh
    started = time.time()
    try:
        runpy.run_module(CLI_MODULE, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = argv
        ray.shutdown()
    summary["wall_seconds"] = round(summary.get("wall_seconds", 0.0) + time.time() - started, 1)
    if cfg.cluster.cpu and cfg.data.eval:
        summary["accuracy_after"] = held_out_accuracy(cfg, files.model, tokenizer)
        print(f"srft: held-out accuracy after training: {summary['accuracy_after']:.3f}", file=sys.stderr)
    files.summary.write_text(json.dumps(summary, indent=1) + "\n")
    return 0
