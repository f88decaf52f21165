"""The CPU layer's weight sync: what replaces NCCL / CUDA-IPC broadcast into the rollout engines.
Every rank gathers the weights (ZeRO-3: parameter by parameter), rank 0 puts them into Ray's
object store once with a version, each engine loads them and returns a digest of every tensor it
received, which the trainer compares with what it sent. Shared by both CPU engines (the HF
stand-in in ``cpu_compat`` and OpenRLHF's vLLM engine in ``cpu_vllm``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

from srft_openrlhf.openrlhf.faults import reached


def tensor_digests(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, str]:
    """name -> SHA-256 of the tensor's dtype, shape and bytes: equal only for identical tensors."""
    out = {}
    for name, tensor in named_tensors:
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest = hashlib.sha256(f"{t.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
        out[name] = digest.hexdigest()
    return out


def check_digests(sent: dict[str, str], received: dict[str, str], engine: str, version: int) -> None:
    """Raise unless the engine received exactly the tensors the trainer sent."""
    bad = sorted(name for name in sent.keys() | received.keys() if sent.get(name) != received.get(name))
    if bad:
        raise RuntimeError(
            f"weight sync to {engine} (version {version}): {len(bad)} tensor(s) arrived different from what "
            f"the trainer sent or not at all: {', '.join(bad[:5])}"
        )


def gathered_weights(model: torch.nn.Module, zero_stage: int, keep: bool) -> dict[str, torch.Tensor]:
    """Every parameter of ``model`` in full, copied to CPU where ``keep`` (rank 0). Under ZeRO-3
    each is gathered from its partitions in turn, which every rank must take part in (as in
    OpenRLHF's ``broadcast_to_vllm``)."""
    import deepspeed

    state = {}
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param], enabled=zero_stage == 3):
            if keep:
                state[name] = param.detach().to("cpu", copy=True)
    return state


def send_weights(engines: list, state: dict[str, torch.Tensor], version: int) -> None:
    """Put ``state`` into Ray's object store once, load it into every engine as ``version`` and
    check the digests each engine computed from what it received."""
    import ray

    sent = tensor_digests(state.items())
    ref = ray.put(state)
    received = ray.get([engine.srft_load_weights.remote(ref, version) for engine in engines])
    for i, digests in enumerate(received):
        check_digests(sent, digests, f"rollout engine {i}", version)
    print(f"srft: weights version {version} verified on {len(engines)} rollout engine(s) ({len(sent)} tensors)")


def broadcast_to_cpu_engines(self) -> None:
    """``ActorPPOTrainer.broadcast_to_vllm`` on CPU: every rank gathers the weights (ZeRO-3),
    rank 0 sends them (``send_weights``). The version is the number of optimizer steps taken
    (restored on resume)."""
    import torch.distributed as dist

    rank0 = dist.get_rank() == 0
    state = gathered_weights(self.actor.model.module, self.strategy.args.ds.zero_stage, keep=rank0)
    version = int(self.actor_scheduler.last_epoch)
    reached("weight_sync", version, dist.get_rank())
    if rank0:
        send_weights(self.vllm_engines, state, version)
    dist.barrier()


def with_weights_version(outputs: list[dict], version: int) -> list[dict]:
    """Tag each rollout of a ``generate_responses`` answer with the weights version it was
    generated with (OpenRLHF turns ``extra_logs`` into ``Experience.info``)."""
    for output in outputs:
        output["extra_logs"] = {**(output.get("extra_logs") or {}), "weights_version": float(version)}
    return outputs
