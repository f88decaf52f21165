"""The causal LM as both backends and the analyses use it: the one torch dtype table, model
loading, and the token log-probs and entropies of a batch of sequences (through
``srft_openrlhf.kernels``, so the [tokens, vocab] logits are never materialised in fp32)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from srft_openrlhf.config import DTYPES
from srft_openrlhf.data.example import HUB_ID, TOY
from srft_openrlhf.errors import ConfigError
from srft_openrlhf.kernels import linear_logprobs_and_entropy, token_logprobs_and_entropy

if TYPE_CHECKING:
    from transformers import PreTrainedModel

TORCH_DTYPES: dict[str, torch.dtype] = dict(zip(DTYPES, (torch.bfloat16, torch.float16, torch.float32), strict=True))


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def fused_head_unsupported(model: PreTrainedModel) -> str | None:
    """Why the model's logits are not exactly ``hidden @ lm_head.weight.T`` (None: they are).

    ``model`` is the HF causal LM itself: a DeepSpeed engine's ``config`` is DeepSpeed's."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        return f"the LM head is a {type(head).__name__}, not a torch.nn.Linear"
    if head.bias is not None:
        return "the LM head has a bias"
    for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"):  # Gemma-2, Cohere, Granite
        value = getattr(model.config, key, None)
        if value is not None:
            return f"config.{key} = {value} transforms the logits after the LM head"
    return None


def fused_head_supported(model: PreTrainedModel) -> bool:
    """Whether logits are exactly ``hidden @ lm_head.weight.T`` (no bias, scaling or capping)."""
    return fused_head_unsupported(model) is None


@contextmanager
def fused_lm_head(
    model, targets: torch.Tensor, scored: torch.Tensor, temperature: float, entropy_grad: bool
) -> Iterator[None]:
    """While open, the LM head module of ``model`` maps the final hidden states h [B, T, H] to
    (log π(targets), H(π)) stacked [B, T−1, 2] instead of logits: for π = softmax(h_t Wᵀ / T)
    at each position t with ``scored[:, t]``, of ``targets[:, t]`` (the next token), 0 elsewhere;
    ``linear_logprobs_and_entropy``, so [tokens, vocab] logits are never materialised.

    The computation runs as the head module's own forward, inside the model's forward, so
    whatever wraps the model treats it as the head's: DeepSpeed ZeRO-3 gathers W for it with
    the module's hooks (and again before its backward, releasing it after), ZeRO-1/2 reduce
    W's gradient through the parameter's own hook, and the gradient reaches W, tied to the
    input embedding or not. Autocast is off inside: the logits are rebuilt in the backward,
    and forward and backward must see them in the same dtype, the hidden states' (an fp32
    master W is cast to it).
    """
    head = model.get_output_embeddings()

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            logprobs, entropy = linear_logprobs_and_entropy(
                hidden[:, :-1][scored], head.weight.to(hidden.dtype), targets[scored], temperature, entropy_grad
            )
        out = torch.zeros((*targets.shape, 2), dtype=torch.float32, device=hidden.device)
        return out.index_put((scored,), torch.stack((logprobs, entropy), dim=-1))

    head.forward = forward  # an instance attribute: nn.Module.__call__ runs it with every hook of the head
    try:
        yield
    finally:
        del head.forward


def fused_forward(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    scored: torch.Tensor,
    temperature: float,
    entropy_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """log πθ(input_ids[:, t+1] | input_ids[:, ≤t]) and H(πθ(· | ≤t)) [B, L−1] at the positions
    ``scored`` (0 elsewhere), and the model's output (its ``aux_loss``, for a mixture of experts),
    from one forward of ``model`` (the HF causal LM or a wrapper that owns its forward, such as
    a DeepSpeed engine) whose LM head is the fused one (``fused_lm_head``)."""
    with fused_lm_head(model, input_ids[:, 1:], scored, temperature, entropy_grad):
        output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False)
    logprobs, entropy = output.logits.unbind(-1)
    # stacked with log π, H would look differentiable; it is only under entropy_grad, as the kernel's
    return logprobs, entropy if entropy_grad else entropy.detach(), output


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
    them from the final hidden states and the LM head weight (``fused_forward``); otherwise
    from the model's logits. ``model`` is the HF causal LM or a wrapper that owns its
    forward (a DeepSpeed engine).
    """
    positions = position_ids(attention_mask)
    targets = input_ids[:, 1:]
    valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    autocast = torch.autocast(input_ids.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    if fused_head:
        with autocast:
            logprobs, entropy, _ = fused_forward(
                model, input_ids, attention_mask, positions, valid, temperature, entropy_grad
            )
        return logprobs, entropy
    with autocast:
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
        ).logits
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
