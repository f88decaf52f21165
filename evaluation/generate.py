"""Sampling k responses per prompt: vLLM (tensor parallel, seeded) or Hugging Face ``generate``.

Both generators (``VLLMEvalGenerator``, ``HFEvalGenerator``; distinct from the training
generators of ``srft_openrlhf.generation``, which take token ids) take prompts as
rendered text and tokenise them the same way (``encode_prompt``), so a template renders
identically whichever engine runs it. Seeds are per prompt: vLLM gives the i-th of the n
samples of a request the seed ``seed + i``, so a prompt's seed plus its first sample index
makes every sample reproducible on its own, however the prompts are batched and wherever a
resumed run restarts.

vllm is imported only when its generator is built, and that must happen under
``if __name__ == "__main__":`` (or a function called from it): the engine spawns processes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeSettings:
    """How the harness decodes every benchmark (the per-call count k and seed come with each call)."""

    temperature: float = 0.6
    top_p: float = 1.0
    max_tokens: int = 8192


@dataclass(frozen=True)
class EvalCompletion:
    text: str
    n_tokens: int
    truncated: bool  # stopped by max_tokens before the end-of-sequence token


class EvalGenerator(Protocol):
    default_batch_size: int  # prompts per call when --batch-size is not given

    def generate(self, prompts: Sequence[str], n: int, seeds: Sequence[int]) -> list[list[EvalCompletion]]:
        """``n`` completions for each prompt; ``seeds[i]`` seeds prompt i's first sample."""


def prompt_seed(seed: int, benchmark: str, problem_id: str, first_sample: int) -> int:
    """The sampling seed of a request: fixed by the run seed, the problem and its first sample index."""
    digest = hashlib.sha256(f"{seed}/{benchmark}/{problem_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % 2**30 + first_sample


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt: the tokenizer's special tokens are added unless the chat
    template already wrote its BOS token (adding it again would double it)."""
    bos = getattr(tokenizer, "bos_token", None)
    return tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]


class VLLMEvalGenerator:
    """vLLM engine; one request per prompt with ``SamplingParams(n=k, seed=...)``."""

    default_batch_size = 256  # prompts per call; vLLM schedules inside, results are flushed per call

    def __init__(
        self, model: str, tokenizer: Any, sampling: DecodeSettings, *, seed: int = 0, tensor_parallel_size: int = 1
    ):
        from vllm import LLM

        self.tokenizer = tokenizer
        self.sampling = sampling
        self.llm = LLM(model=model, tensor_parallel_size=tensor_parallel_size, seed=seed)

    def generate(self, prompts: Sequence[str], n: int, seeds: Sequence[int]) -> list[list[EvalCompletion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                n=n,
                temperature=self.sampling.temperature,
                top_p=self.sampling.top_p,
                max_tokens=self.sampling.max_tokens,
                seed=s,
            )
            for s in seeds
        ]
        inputs = [TokensPrompt(prompt_token_ids=encode_prompt(self.tokenizer, p)) for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [
            [
                EvalCompletion(o.text, len(o.token_ids), o.finish_reason == "length")
                for o in sorted(out.outputs, key=lambda o: o.index)
            ]
            for out in outputs
        ]


class HFEvalGenerator:
    """Hugging Face ``generate`` fallback (no vLLM, or a model it cannot run): left-padded batches.

    Sampling is seeded per call with the first prompt's seed, so samples depend on the batching;
    use vLLM for numbers to report.
    """

    default_batch_size = 4

    def __init__(self, model: str, tokenizer: Any, sampling: DecodeSettings, *, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        # transformers wraps PreTrainedModel.to in a decorator whose stub takes the model as its first argument
        loaded = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
        self.model = loaded.to(self.device).eval()  # type: ignore[arg-type]
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        return ids | ({self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set())

    def _completion(self, ids: list[int]) -> EvalCompletion:
        """Cut after the first end-of-sequence token (the rest is padding). Without one the sequence
        ran to max_new_tokens: generation only stops early once every sequence has ended."""
        end = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        text = self.tokenizer.decode(ids if end is None else ids[:end], skip_special_tokens=True)
        return EvalCompletion(text, len(ids) if end is None else end + 1, end is None)

    def generate(self, prompts: Sequence[str], n: int, seeds: Sequence[int]) -> list[list[EvalCompletion]]:
        import torch

        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        width = max(map(len, encoded))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=self.device)
        attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=self.device)
        torch.manual_seed(seeds[0])
        greedy = self.sampling.temperature <= 0
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=self.sampling.max_tokens,
                do_sample=not greedy,
                temperature=None if greedy else self.sampling.temperature,
                top_p=None if greedy else self.sampling.top_p,
                top_k=0,  # no top-k cut, as in vLLM (the generation config may default to 50)
                num_return_sequences=n,
                pad_token_id=pad,
            )
        new = out[:, width:].tolist()
        return [[self._completion(new[i * n + j]) for j in range(n)] for i in range(len(prompts))]


def resolve_generator(kind: str) -> str:
    """auto | vllm | hf -> vllm | hf (auto: vLLM when it is installed)."""
    import importlib.util

    if kind == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    return kind


def build_generator(
    kind: str, model: str, tokenizer: Any, sampling: DecodeSettings, *, seed: int, tensor_parallel_size: int = 1
) -> EvalGenerator:
    """``kind``: vllm | hf (see ``resolve_generator``)."""
    if kind == "vllm":
        return VLLMEvalGenerator(model, tokenizer, sampling, seed=seed, tensor_parallel_size=tensor_parallel_size)
    if tensor_parallel_size != 1:
        logger.warning("--tensor-parallel-size is ignored by the Hugging Face generator")
    return HFEvalGenerator(model, tokenizer, sampling)
