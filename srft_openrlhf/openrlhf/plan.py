"""What the openrlhf backend accepts, checked before anything is written or started.

The cluster layout (``cluster_layout``: the GPUs split between vLLM and DeepSpeed), every
OpenRLHF-backend constraint on the config (``check_config``), and the ``cluster.extra_args``
flags it refuses: those the launcher sets itself, those that break the SRFT group layout, and
those SRFT's loss would silently ignore, read as OpenRLHF's own parser reads them
(``openrlhf_options``). Importing this module imports neither openrlhf nor ray.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from srft_openrlhf.config import SRFTConfig
from srft_openrlhf.errors import ConfigError
from srft_openrlhf.openrlhf import OPENRLHF_VERSION
from srft_openrlhf.openrlhf.layout import layout_of

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


def check_config(cfg: SRFTConfig) -> None:
    """Every OpenRLHF-backend constraint on the config, as ConfigErrors naming the key. The
    backend-independent value checks ran when the config was built (``SRFTConfig.validate``).
    ``launcher.run`` calls it once, before the config is translated (``flags``) or described."""
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
