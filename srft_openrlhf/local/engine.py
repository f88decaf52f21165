"""The policy under training for the local backend: plain torch or DeepSpeed.

A :class:`TrainEngine` gives the trainer loop four things: token log-probs and entropies
of πθ (through ``srft_openrlhf.kernels``), ``backward``, an optimizer ``step`` (AdamW,
gradient clipping, linear warm-up then constant LR; the paper trains at a constant 1e-6)
and the full weights for the generator, plus ``save``/``load`` for exact resume.

Log-probs come from ``srft_openrlhf.models.causal_token_logprobs``: from the final hidden
states and the LM head weight, so the [tokens, vocab] logits are never materialised. The fused
head runs as the LM head module's forward inside the model's (or the DeepSpeed engine's)
forward, so ZeRO-3 gathers its weight as it would for the logits (``models.fused_lm_head``).

Precision: "fp32" trains in fp32. "bf16" keeps fp32 master weights in both engines (torch:
fp32 parameters under bf16 autocast; DeepSpeed: bf16 parameters with fp32 master copies in
the optimizer), because at the paper's learning rate of 1e-6 an AdamW update is far below
bf16's resolution (2⁻⁸ relative) and would round away on bf16 weights. On CPU, autocast is
slow: use fp32 there.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from srft_openrlhf.errors import CheckpointError, ConfigError
from srft_openrlhf.models import (
    TORCH_DTYPES,
    causal_token_logprobs,
    default_device,
    fused_head_supported,
    load_causal_lm,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

OPTIMIZER_FILE = "optimizer.pt"
DEEPSPEED_TAG = "deepspeed"


def adam_betas(betas: Sequence[float]) -> tuple[float, float]:
    """``betas`` as the pair AdamW takes (a config built in code may hold a list)."""
    beta1, beta2 = betas
    return beta1, beta2


def adamw_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases and norm weights (1-D) are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def warmup_constant(warmup_steps: int):
    """LR factor: linear warm-up over ``warmup_steps`` optimizer steps, then constant 1."""

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0

    return factor


@dataclass(frozen=True)
class Optimization:
    """AdamW at ``lr`` after a linear warm-up, gradients clipped to norm ``grad_clip`` (0: off)."""

    lr: float
    weight_decay: float
    betas: tuple[float, float]
    grad_clip: float
    warmup_steps: int

    def build(self, model: torch.nn.Module) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
        """The optimizer over ``model``'s trainable parameters and its LR schedule."""
        params = adamw_param_groups(model, self.weight_decay)
        optimizer = torch.optim.AdamW(params, lr=self.lr, betas=adam_betas(self.betas))
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_constant(self.warmup_steps))


class TrainEngine:
    """The HF causal LM being trained, with its optimizer and LR schedule."""

    model: PreTrainedModel  # the HF causal LM (unwrapped)
    device: torch.device
    fused_head: bool  # log-probs from the hidden states and the LM head weight (see causal_token_logprobs)
    autocast_dtype: torch.dtype | None = None
    # saved next to the weights so that a checkpoint is a loadable model folder
    tokenizer: PreTrainedTokenizerBase | None = None

    def forward_module(self) -> torch.nn.Module:
        """What ``causal_token_logprobs`` calls: the HF model, or a wrapper that owns its forward."""
        return self.model

    def token_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        temperature: float = 1.0,
        entropy_grad: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log πθ(input_ids[:, 1:]) and entropy per position, [B, L−1] (see ``causal_token_logprobs``)."""
        return causal_token_logprobs(
            self.forward_module(),
            input_ids,
            attention_mask,
            temperature=temperature,
            entropy_grad=entropy_grad,
            fused_head=self.fused_head,
            autocast_dtype=self.autocast_dtype,
        )

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of ``loss`` (already scaled for accumulation by the caller)."""
        raise NotImplementedError

    def step(self) -> dict[str, float]:
        """Optimizer + scheduler step, zero grad. Returns the pre-clip ``grad_norm`` and the ``lr`` used."""
        raise NotImplementedError

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full weights under the HF state_dict names, for the generator.

        The tensors may alias the live parameters: copy them to keep them past a ``step``.
        """
        raise NotImplementedError

    def save(self, path: Path) -> None:
        """Model (HF format, loadable by vLLM) + optimizer + scheduler into the folder ``path``."""
        raise NotImplementedError

    def load(self, path: Path) -> None:
        """Restore what ``save`` wrote; the next step is then identical to the uninterrupted one."""
        raise NotImplementedError

    def save_model(self, path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        path = Path(path)
        self.model.save_pretrained(path, state_dict=state_dict, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)


class TorchEngine(TrainEngine):
    """Plain torch: AdamW on fp32 parameters, optional bf16 autocast."""

    def __init__(
        self, model: PreTrainedModel, optimization: Optimization, *, autocast_dtype: torch.dtype | None = None
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.grad_clip = optimization.grad_clip
        self.autocast_dtype = autocast_dtype
        self.fused_head = fused_head_supported(model)
        self.optimizer, self.scheduler = optimization.build(model)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> dict[str, float]:
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": float(grad_norm), "lr": lr}

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, param in self.model.named_parameters():
            yield name, param.detach()

    def save(self, path: Path) -> None:
        path = Path(path)
        self.save_model(path)
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}, path / OPTIMIZER_FILE
        )

    def load(self, path: Path) -> None:
        path = Path(path)
        load_model_weights(self.model, path)
        state = torch.load(path / OPTIMIZER_FILE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    """Copy the safetensors weights of an HF model folder into ``model`` in place.

    In place (not a new module) so that anything holding the module, such as a generator
    sharing it, sees the restored weights. Every parameter must be found.
    """
    from safetensors.torch import load_file

    state = model.state_dict()
    loaded: set[str] = set()
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors model weights to resume from")
    with torch.no_grad():
        for file in files:
            for name, tensor in load_file(file).items():
                state[name].copy_(tensor)
                loaded.add(name)
    missing = {name for name, _ in model.named_parameters()} - loaded
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks weights {sorted(missing)[:5]} (incomplete or another model)")


def init_single_process_group(device: torch.device) -> None:
    """A one-process torch.distributed world (gloo on CPU, nccl on GPU) unless one exists."""
    os.environ.setdefault("DS_BUILD_OPS", "0")
    import deepspeed

    if torch.distributed.is_initialized():
        return
    if device.type == "cpu":
        # DeepSpeed's CPU communication backend JIT-compiles a C++ shared-memory all-reduce
        # on first use (minutes on a laptop); a one-process world has nothing to reduce.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")


def deepspeed_config(zero_stage: int, dtype: str, grad_clip: float) -> dict:
    """One optimizer step per ``step()`` call, however many ``backward`` calls preceded it."""
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        # The caller decides when a step happens (batches vary in size), so DeepSpeed must
        # not count micro-batches: backward only accumulates, step() is the boundary.
        "managed_gradient_accumulation": False,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage, "overlap_comm": False},
        # Our optimizer is torch's AdamW: DeepSpeed's fused/CPU Adam compile C++ on first use.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": dtype == "bf16"},
        "fp16": {"enabled": dtype == "fp16"},
        "steps_per_print": 2**31 - 1,
    }


class DeepSpeedEngine(TrainEngine):
    """DeepSpeed ZeRO 0–3 in a single-process world, with a torch AdamW client optimizer."""

    def __init__(
        self, model: PreTrainedModel, optimization: Optimization, *, zero_stage: int, dtype: str, device: torch.device
    ) -> None:
        import deepspeed

        init_single_process_group(device)
        optimizer, scheduler = optimization.build(model)
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(zero_stage, dtype, optimization.grad_clip),
        )
        self.model = self.ds.module
        self.device = device
        self.zero_stage = zero_stage
        self.fused_head = fused_head_supported(self.model)

    def forward_module(self) -> torch.nn.Module:
        # DeepSpeed's forward: ZeRO-3 gathers each module's parameters in it, and the backward
        # prologue (gradient accumulation boundary, ZeRO's backward state) hangs on its outputs
        return self.ds

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss, scale_wrt_gas=False)

    def step(self) -> dict[str, float]:
        lr = self.ds.get_lr()[0]
        # With ZeRO 0 in fp32 DeepSpeed steps torch's optimizer directly and does not
        # record the gradient norm; measure it before the step clears the gradients.
        own_norm = None
        if not hasattr(self.ds.optimizer, "_global_grad_norm"):
            own_norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        self.ds.step()
        grad_norm = own_norm if own_norm is not None else self.ds.get_global_grad_norm()
        return {"grad_norm": float(grad_norm), "lr": lr}

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        if self.zero_stage < 3:
            for name, param in self.model.named_parameters():
                yield name, param.detach()
            return
        import deepspeed

        # ZeRO-3 keeps a shard of each parameter on each rank; gather one at a time.
        for name, param in self.model.named_parameters():
            with deepspeed.zero.GatheredParameters([param]):
                yield name, param.detach().clone()

    def save(self, path: Path) -> None:
        path = Path(path)
        state = dict(self.named_weights()) if self.zero_stage == 3 else None
        self.save_model(path, state_dict=state)
        self.ds.save_checkpoint(str(path), tag=DEEPSPEED_TAG, save_latest=False)

    def load(self, path: Path) -> None:
        load_path, _ = self.ds.load_checkpoint(
            str(Path(path)), tag=DEEPSPEED_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise CheckpointError(f"{path}: no DeepSpeed checkpoint ({DEEPSPEED_TAG}/) to resume from")


class ReferenceModel:
    """Frozen copy of the initial policy: token log-probs with no gradient (KL term)."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model.eval().requires_grad_(False)
        self.fused_head = fused_head_supported(model)

    @torch.no_grad()
    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, temperature: float = 1.0
    ) -> torch.Tensor:
        logprobs, _ = causal_token_logprobs(
            self.model, input_ids, attention_mask, temperature=temperature, fused_head=self.fused_head
        )
        return logprobs


def check_engine(engine: str, dtype: str) -> None:
    """The engines' own constraint on their arguments (``train.engine``, ``model.dtype``)."""
    if engine == "torch" and dtype == "fp16":
        raise ConfigError("model.dtype=fp16 needs loss scaling: use bf16 or fp32 with train.engine=torch, or deepspeed")


def make_engine(
    model_path: str,
    *,
    engine: str,
    zero_stage: int,
    dtype: str,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    grad_clip: float,
    warmup_steps: int,
    total_steps: int,
    seed: int,
    gradient_checkpointing: bool,
    device: str | None = None,
) -> TrainEngine:
    """The policy at ``model_path`` ready to train with ``engine`` "torch" or "deepspeed"."""
    from transformers import AutoTokenizer

    # Direct callers get the checks a built config has had on these arguments: the sections'
    # validators and the engine's own. The optimizer values are not checked here (lr=0 is a
    # valid direct call: a frozen model); SRFTConfig.validate checks them.
    from srft_openrlhf.config import ModelConfig, TrainConfig

    ModelConfig(dtype=dtype).validate()
    TrainConfig(engine=engine, zero_stage=zero_stage, lr_warmup_steps=warmup_steps, steps=total_steps).validate()
    check_engine(engine, dtype)
    torch_device = torch.device(device) if device else default_device()
    # Seeds anything the model builds randomly (e.g. weights missing from the checkpoint).
    torch.manual_seed(seed)
    # DeepSpeed casts the module to bf16/fp16 itself and keeps fp32 masters; the torch
    # engine keeps fp32 parameters and autocasts.
    model = load_causal_lm(model_path, torch.float32, torch_device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    optimization = Optimization(lr, weight_decay, adam_betas(betas), grad_clip, warmup_steps)
    if engine == "torch":
        autocast_dtype = None if dtype == "fp32" else TORCH_DTYPES[dtype]
        result: TrainEngine = TorchEngine(model, optimization, autocast_dtype=autocast_dtype)
    else:
        result = DeepSpeedEngine(model, optimization, zero_stage=zero_stage, dtype=dtype, device=torch_device)
    result.tokenizer = AutoTokenizer.from_pretrained(model_path)
    return result


def make_reference(model_path: str, dtype: str, device: str | None = None) -> ReferenceModel:
    """Frozen reference policy πref for the KL term (kl_coef > 0): ``ref(input_ids, mask)``."""
    from srft_openrlhf.config import ModelConfig

    ModelConfig(dtype=dtype).validate()
    torch_device = torch.device(device) if device else default_device()
    return ReferenceModel(load_causal_lm(model_path, TORCH_DTYPES[dtype], torch_device))
