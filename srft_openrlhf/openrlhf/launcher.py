"""``srft train --backend openrlhf``: SRFT config -> OpenRLHF's PPO Ray trainer, patched.

``run`` (1) checks the config and the cluster layout (``plan.check_config``), (2) writes into
the run folder the config, the data files OpenRLHF reads (``data_files``: rendered prompts with
JSON labels, demonstrations) and the reward-function file, (3) installs the SRFT patches, joins
or starts Ray, and runs ``openrlhf.cli.train_ppo_ray`` as ``__main__`` with the translated flags
(``flags.openrlhf_args``). ``--dry-run`` prints the equivalent command line, the hook points and
the resolved config (``flags.describe``), and touches nothing. Importing this module imports
neither openrlhf nor ray.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import runpy
import sys
import time
from pathlib import Path
from typing import Any

from srft_openrlhf.config import SRFTConfig, save_config
from srft_openrlhf.data import toy
from srft_openrlhf.data.example import TOY
from srft_openrlhf.errors import ConfigError, UserError
from srft_openrlhf.openrlhf import faults
from srft_openrlhf.openrlhf.data_files import data_rows, eval_examples, rendered_prompts, write_rows
from srft_openrlhf.openrlhf.flags import describe, openrlhf_args
from srft_openrlhf.openrlhf.plan import CLI_MODULE, check_config, check_extra_args, cluster_layout, openrlhf_options
from srft_openrlhf.openrlhf.reward_func import reward_func_file_text
from srft_openrlhf.reward import grade
from srft_openrlhf.runs import RunFiles, check_new_run, run_files, start_run_folder
from srft_openrlhf.runs.records import drop_records_after

# Forwarded to every Ray worker when set in the launching shell.
_PASS_THROUGH_ENV = (
    "WANDB_API_KEY",
    "HF_TOKEN",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "SRFT_KERNEL_BACKEND",
    *(faults.ENV, faults.MARKER_ENV),  # the fault tests' stop points (faults.py); unset in real runs
)


def absolute_output_dir(cfg: SRFTConfig) -> SRFTConfig:
    """A copy of ``cfg`` whose run folder is absolute: the Ray workers read it from other cwds."""
    out = str(Path(cfg.logging.output_dir).expanduser().resolve())
    return dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, output_dir=out))


def resolve_model(cfg: SRFTConfig) -> SRFTConfig:
    """``model.path: toy`` -> the cached toy base model folder (built on first use)."""
    if cfg.model.path != TOY:
        return cfg
    path = str(toy.base_model_path(log=lambda m: print(m, file=sys.stderr)))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=path))


def held_out_accuracy(cfg: SRFTConfig, model_path: str | Path, tokenizer: Any) -> float:
    """Greedy accuracy of the model at ``model_path`` on ``data.eval`` (prompts as OpenRLHF renders
    them), with the HF generator on CPU: the before / after numbers of the CPU path."""
    from srft_openrlhf.generation import HFGenerator  # imports torch: only the CPU path scores here

    pairs = rendered_prompts(eval_examples(cfg), tokenizer, cfg)
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for _, text in pairs]
    generator = HFGenerator.load(str(model_path), dtype="fp32", device="cpu", seed=cfg.train.seed)
    completions = generator.generate(prompts, 1, temperature=0.0, top_p=1.0, max_new_tokens=cfg.rollout.max_new_tokens)
    graded = grade([c[0].text for c in completions], [ex.answer for ex, _ in pairs], cfg.rollout)
    return sum(r >= 1.0 for r in graded.rewards) / len(graded.rewards)


class WorkerDied(UserError):
    """A training rank or rollout engine of the run died (a node lost, a process killed)."""


def dead_actor(error: Exception) -> str:
    """'SRFTPolicyModelActor (pid 123): <why>' from Ray's actor-died error, which may come wrapped
    in the error of the actor that was waiting on it (its own pid first)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # Ray colours the task names
    found = re.search(r"class_name: (\w+)", text)
    if not found:
        return text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
    after = text[found.end() :]
    pid = re.search(r"\bpid: (\d+)", after)
    why = next((line.strip() for line in after.splitlines()[1:] if line.strip() and ":" not in line[:20]), "")
    why = ". ".join(why.split(". ")[:2])[:200]  # what died and how; Ray's advice follows
    return f"{found[1]}{f' (pid {pid[1]})' if pid else ''}{f': {why}' if why else ''}"


def load_tokenizer(cfg: SRFTConfig) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as e:  # no tokenizer files, a Hub name not found or offline
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"model.path: {cfg.model.path!r}: cannot load its tokenizer ({first})") from e


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
    from srft_openrlhf.openrlhf import cpu_compat  # the CPU layer (imports torch): cluster.cpu only

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
    from srft_openrlhf.models import check_model_path

    cfg = absolute_output_dir(cfg)
    files = run_files(cfg.logging.output_dir)
    check_config(cfg)  # every refusal before anything is written, printed or started
    check_new_run(files, resume)
    if resume and not files.train_data.is_file():
        raise ConfigError(f"--resume {files.root}: no {files.train_data.relative_to(files.root)} there")
    if dry_run:  # may run away from the cluster's model folders
        print(describe(cfg, openrlhf_args(cfg, files, resume), files))
        return 0
    check_model_path(cfg.model.path, hub_ids=True)
    cfg = resolve_model(cfg)
    args = openrlhf_args(cfg, files, resume)
    tokenizer = load_tokenizer(cfg)
    # a resumed run keeps its data: OpenRLHF's saved dataloader state indexes it
    rows = None if resume else data_rows(cfg, tokenizer)  # every bad row before anything is written
    if cfg.cluster.cpu:  # before OpenRLHF is imported: flash-attn stub, torch.cuda redirects
        from srft_openrlhf.openrlhf import cpu_compat

        cpu_compat.install(rollout=cfg.rollout.generator)
    from srft_openrlhf.openrlhf import patches  # imports OpenRLHF
    from srft_openrlhf.openrlhf.hooks import check_hook_points

    check_hook_points()  # before anything is written or started (install_driver checks again)
    if cfg.cluster.cpu:
        cpu_compat.check_cpu_hook_points()
    check_extra_args(cfg.cluster.extra_args, openrlhf_options())

    start_run_folder(files, "openrlhf")
    save_config(cfg, files.config)
    if rows is not None:
        write_rows(files, rows)
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
    except ray.exceptions.RayActorError as e:
        raise WorkerDied(
            f"a Ray actor of the run died: {dead_actor(e)}. The run stopped; it continues from its last complete "
            f"checkpoint with: srft train --resume {files.root}"
        ) from e
    finally:
        sys.argv = argv
        ray.shutdown()
    summary["wall_seconds"] = round(summary.get("wall_seconds", 0.0) + time.time() - started, 1)
    if cfg.cluster.cpu and cfg.data.eval:
        summary["accuracy_after"] = held_out_accuracy(cfg, files.model, tokenizer)
        print(f"srft: held-out accuracy after training: {summary['accuracy_after']:.3f}", file=sys.stderr)
    files.summary.write_text(json.dumps(summary, indent=1) + "\n")
    return 0
