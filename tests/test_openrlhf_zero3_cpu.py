"""ZeRO-3 on gloo: a model loaded under ``zero.Init`` holds exactly the checkpoint's weights.

DeepSpeed 0.19.6's ``GatheredParameters`` over several parameters launches one asynchronous
all-gather each and waits for the last only. On gloo the others may land after the caller wrote
the parameter, so ``from_pretrained`` under ``zero.Init`` (how OpenRLHF's ``Actor`` loads the
policy for ZeRO-3) left some weights holding their uninitialised partitions: a CPU cluster run
started from NaN / 1e34 in ``q_proj`` and trained to NaN (the async ZeRO-3 vLLM e2e test, about
1 run in 5). The CPU layer gathers one parameter at a time (``cpu_compat``).

Two checks, each on 2 spawned gloo ranks:
- ``gather``: under ``GatheredParameters(modifier_rank=0)`` rank 0 writes known values into a
  2-parameter module while the first parameter's all-gather completes 0.3 s after the second's
  (what gloo may do, made certain); the values must survive. Without the CPU layer's gather (``original``) they must
  not: the test sees the bug it guards against.
- ``load``: the tiny model loaded three times under ``zero.Init`` equals its checkpoint.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import requires_deepspeed, spawn_gloo_ranks

pytestmark = [pytest.mark.openrlhf, pytest.mark.deepspeed, pytest.mark.slow, requires_deepspeed]

WORLD = 2
LATE_S = 0.3  # how late the first of two all-gathers lands in the ``gather`` check
LOADS = 3


class _LateHandle:
    """An async collective's handle whose result is copied into place ``delay`` s after the call."""

    def __init__(self, result: torch.Tensor, targets: list[torch.Tensor], delay: float):
        def land():
            time.sleep(delay)
            for target, part in zip(targets, result.split([t.numel() for t in targets]), strict=True):
                target.copy_(part.view_as(target))

        self._thread = threading.Thread(target=land)
        self._thread.start()

    def wait(self) -> None:
        self._thread.join()


def _late_collectives(dist):
    """``deepspeed.comm`` whose asynchronous all-gathers complete out of order: the collective runs
    at once (same order on every rank) into a private buffer; the copy into the caller's tensor
    happens ``LATE_S`` later for the 1st, 3rd, ... call, at once for the others (so waiting for
    the last of two handles says nothing of the first)."""

    class Late:
        calls = 0

        def __getattr__(self, name):
            return getattr(dist, name)

        def _handle(self, result: torch.Tensor, targets: list[torch.Tensor]) -> _LateHandle:
            self.calls += 1
            return _LateHandle(result, targets, LATE_S if self.calls % 2 else 0.0)

        def all_gather_into_tensor(self, output, input_tensor, group=None, async_op=False):
            if not async_op:
                return dist.all_gather_into_tensor(output, input_tensor, group=group)
            result = torch.empty_like(output)
            dist.all_gather_into_tensor(result, input_tensor, group=group)
            return self._handle(result, [output])

        def all_gather(self, output_list, input_tensor, group=None, async_op=False):
            if not async_op:
                return dist.all_gather(output_list, input_tensor, group=group)
            result = [torch.empty_like(t) for t in output_list]
            dist.all_gather(result, input_tensor, group=group)
            return self._handle(torch.cat([r.reshape(-1) for r in result]), list(output_list))

    return Late()


def _gather_check(original: bool) -> float:
    """max |written − held| after a GatheredParameters write under late all-gathers."""
    import inspect

    import deepspeed
    from deepspeed.runtime.zero import partition_parameters

    init = partition_parameters.Init
    patched = init._allgather_params_coalesced
    if original:
        init._allgather_params_coalesced = inspect.unwrap(patched)
    real_dist = partition_parameters.dist
    partition_parameters.dist = _late_collectives(real_dist)
    try:
        with deepspeed.zero.Init(config_dict_or_path={"train_batch_size": WORLD, "zero_optimization": {"stage": 3}}):
            module = torch.nn.Linear(64, 48)
        params = list(module.parameters())
        written = [torch.arange(p.ds_numel, dtype=torch.float32).view(p.ds_shape) + 1 for p in params]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            if torch.distributed.get_rank() == 0:
                with torch.no_grad():
                    for p, w in zip(params, written, strict=True):
                        p.copy_(w)
            time.sleep(2 * LATE_S)  # let whatever lands late land before the broadcast
    finally:
        partition_parameters.dist = real_dist
        init._allgather_params_coalesced = patched
    with deepspeed.zero.GatheredParameters(params):
        return max(float((p.detach() - w).abs().max()) for p, w in zip(params, written, strict=True))


def _load_check(model_dir: str) -> float:
    """max |loaded − checkpoint| over ``LOADS`` loads of ``model_dir`` under zero.Init."""
    import deepspeed
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    checkpoint = load_file(str(Path(model_dir) / "model.safetensors"))
    worst = 0.0
    for _ in range(LOADS):
        ds_config = {"train_batch_size": WORLD, "zero_optimization": {"stage": 3}}
        keep = HfDeepSpeedConfig(ds_config)  # noqa: F841  # from_pretrained reads it through a weak reference
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        named = list(model.named_parameters())
        assert all(hasattr(p, "ds_id") for _, p in named)  # loaded under zero.Init, partitioned
        with deepspeed.zero.GatheredParameters([p for _, p in named]):
            for name, p in named:
                worst = max(worst, float((p.detach() - checkpoint[name]).abs().max()))
        del model, keep
    return worst


def _worker(rank: int, model_dir: str, out_dir: str) -> None:
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    results = {
        "gather": _gather_check(original=False),
        "gather_original": _gather_check(original=True),
        "load": _load_check(model_dir),
    }
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def results(tiny_model_dir, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("zero3")
    spawn_gloo_ranks(_worker, WORLD, str(tiny_model_dir), str(out))
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_gathered_write_survives_late_all_gathers(results):
    assert [r["gather"] for r in results] == [0.0, 0.0]
    # the planted bug: DeepSpeed's own gather loses rank 0's write to a late all-gather
    assert all(r["gather_original"] > 1.0 for r in results), [r["gather_original"] for r in results]


def test_model_loaded_under_zero_init_equals_its_checkpoint(results):
    assert [r["load"] for r in results] == [0.0, 0.0]
