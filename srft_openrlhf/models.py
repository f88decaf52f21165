"""The causal LM as both backends and the analyses use it: the one torch dtype table, model
loading, and the token log-probs and entropies of a batch of sequences (through
``srft_openrlhf.kernels``, so the [tokens, vocab] logits are never materialised in fp32)."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from srft_openrlhf.config import DTYPES
from srft_openrlhf.data.example import TOY
from srft_openrlhf.errors import ConfigError
from srft_openrlhf.kernels import linear_logprobs_and_entropy, token_logprobs_and_entropy

if TYPE_CHECKING:
    from transformers import PreTrainedModel

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # a Hugging Face Hub model name: org/name
TORCH_DTYPES: dict[str, torch.dtype] = dict(zip(DTYPES, (torch.bfloat16, torch.float16, torch.float32), strict=True))


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def fused_head_supported(model: PreTrainedModel) -> bool:
    """Whether logits are exactly ``hidden @ lm_head.weight.T`` (no bias, scaling or capping)."""
    head = model.get_output_embeddings()
    config = model.config
    return (
        isinstance(head, torch.nn.Linear)
        and head.bias is None
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) is None
    )


def causal_token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    entropy_grad: bool = False,
    fused_head: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log πθ(input_ids[:, t+1] | input_ids[:, ≤t]) and the entropy H(πθ(· | ≤t)), [B, L−1].

    π = softmax(logits / temperature). Only positions whose context token and target are
    both real (attention_mask 1) are computed; the others are 0. ``fused_head`` computes
    them from the final hidden states and the LM head weight (``model`` is the HF causal
    LM); otherwise from the model's logits (``model`` may be a DeepSpeed engine).
    """
    positions = position_ids(attention_mask)
    targets = input_ids[:, 1:]
    valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    autocast = torch.autocast(input_ids.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    with autocast:
        if fused_head:
            hidden = model.base_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
            ).last_hidden_state
        else:
            logits = model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
            ).logits
    if fused_head:
        weight = model.get_output_embeddings().weight
        # Under autocast the hidden states are bf16 while the master weight is fp32; the
        # LM head matmul runs in the hidden dtype, as autocast would run it.
        logprobs, entropy = linear_logprobs_and_entropy(
            hidden[:, :-1][valid], weight.to(hidden.dtype), targets[valid], temperature, entropy_grad
        )
    else:
        logprobs, entropy = token_logprobs_and_entropy(logits[:, :-1][valid], targets[valid], temperature, entropy_grad)
    out_lp = torch.zeros(targets.shape, dtype=torch.float32, device=input_ids.device)
    out_ent = torch.zeros(targets.shape, dtype=torch.float32, device=input_ids.device)
    return out_lp.index_put((valid,), logprobs), out_ent.index_put((valid,), entropy)


def load_causal_lm(model_path: str, dtype: torch.dtype, device: torch.device) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    if not Path(model_path).exists():
        raise ConfigError(f"model.path: {model_path!r} does not exist")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    # transformers wraps PreTrainedModel.to in a decorator whose stub takes the model as its first argument
    return model.to(device)  # type: ignore[arg-type]


def model_folder(path: str, log: Callable[[str], object] = print) -> str:
    """``model.path`` as a folder: "toy" is the cached toy base model (built on first use)."""
    if path != TOY:
        return str(Path(path).expanduser())
    from srft_openrlhf.data import toy

    return str(toy.base_model_path(log=log))


def check_model_path(path: str, hub_ids: bool = False) -> None:
    """Refuse a ``model.path`` that is not a Hugging Face model folder ("toy" is built on use).
    ``hub_ids``: a path that does not exist and reads as ``org/name`` is a Hub model (OpenRLHF
    downloads it)."""
    if path == TOY:
        return
    folder = Path(path).expanduser()
    if hub_ids and not folder.exists() and HUB_ID.fullmatch(path):
        return
    if not (folder / "config.json").is_file():
        what = "does not exist" if not folder.exists() else "has no config.json"
        raise ConfigError(
            f"model.path: {path!r} {what} (expected a local Hugging Face model "
            "folder, or 'toy' for the toy task's base model)"
        )
