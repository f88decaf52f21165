"""The CPU layer's HF stand-in for OpenRLHF's vLLM engines (``rollout.generator: hf`` / ``auto``
with ``cluster.cpu``): the project's HF generator behind the methods OpenRLHF calls on an engine,
rollouts through OpenRLHF's own agent executor and the run's reward file, weights loaded and
checked through ``weight_sync``. Each request is seeded by what it is, not by arrival order."""

from __future__ import annotations

import zlib
from types import SimpleNamespace

import torch

from srft_openrlhf.openrlhf.weight_sync import tensor_digests, with_weights_version


def rollout_seed(seed: int, version: int, prompt: str, repeat: int) -> int:
    """The sampling seed of one request: fixed by the engine's seed, the weights version, the
    prompt and how often it was requested before at that version, not by the order in which
    OpenRLHF's concurrent requests reach the engine (a shared random stream would make a run
    irreproducible)."""
    from srft_openrlhf.generation import request_seed

    key = zlib.crc32(f"{version}\x00{repeat}\x00{prompt}".encode())
    return request_seed(seed, key)


class _Replay:
    """The ``llm_engine`` handed to OpenRLHF's executor: returns precomputed completions in the
    shape of a vLLM ``RequestOutput``."""

    def __init__(self, completions, want_logprobs: bool):
        self.completions, self.want_logprobs = list(completions), want_logprobs

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        c = self.completions.pop(0)
        logprobs = (
            [{t: SimpleNamespace(logprob=lp)} for t, lp in zip(c.token_ids, c.logprobs)] if self.want_logprobs else None
        )
        output = SimpleNamespace(
            token_ids=list(c.token_ids), text=c.text, finish_reason=c.finish_reason, logprobs=logprobs
        )
        return SimpleNamespace(outputs=[output])


class CPURolloutActor:
    """The HF stand-in (``rollout.generator: hf`` or ``auto`` under ``cluster.cpu``): a rollout
    engine with the methods OpenRLHF calls on its vLLM ``RolloutRayActor``, for runs that should
    not wait for (or cannot start) a vLLM engine; ``rollout.generator: vllm`` runs OpenRLHF's own
    engine instead (``cpu_vllm``).

    Generation is the project's ``HFGenerator`` (sampling log-probs included, as vLLM's
    processed_logprobs); each prompt's n rollouts go through OpenRLHF's own
    ``SingleTurnAgentExecutor`` (tokenisation, truncation, reward file), so the samples are
    what vLLM's engine would hand back. Every rollout carries the weights version it was
    generated with (``extra_logs["weights_version"]``).
    """

    def __init__(self, pretrain: str, seed: int, remote_rm_url=None):
        from openrlhf.utils.agent import SingleTurnAgentExecutor

        from srft_openrlhf.generation import HFGenerator

        torch.set_num_threads(1)
        self.generator = HFGenerator.load(pretrain, dtype="fp32", device="cpu", seed=seed)
        self.executor = SingleTurnAgentExecutor(remote_rm_url)
        self.seed = seed
        self.version = 0
        self.requests: dict[tuple[int, str], int] = {}  # (version, prompt) -> requests so far

    async def generate_responses(
        self, prompt: str, label: str, sampling_params, max_length: int, hf_tokenizer, num_samples: int = 1, images=None
    ):
        prompt_ids = hf_tokenizer(text=prompt, add_special_tokens=False)["input_ids"]
        max_tokens = sampling_params.max_tokens or max(1, max_length - len(prompt_ids))
        version = self.version
        repeat = self.requests.get((version, prompt), 0)
        self.requests[(version, prompt)] = repeat + 1
        completions = self.generator.generate(
            [prompt_ids],
            num_samples,
            temperature=sampling_params.temperature,
            top_p=sampling_params.top_p,
            max_new_tokens=max_tokens,
            seed=rollout_seed(self.seed, version, prompt, repeat),
        )[0]
        engine = _Replay(completions, sampling_params.logprobs is not None)
        outputs = []
        for _ in range(num_samples):  # in order: each execute() takes the next completion
            outputs.append(
                await self.executor.execute(prompt, label, sampling_params, max_length, hf_tokenizer, engine)
            )
        return with_weights_version(outputs, version)

    def srft_load_weights(self, state: dict[str, torch.Tensor], version: int) -> dict[str, str]:
        """As ``SRFTCPUEngine.srft_load_weights``: the digests of what arrived; the generator's
        weights (fp32) are then checked to hold exactly those values."""
        digests = tensor_digests(state.items())
        self.requests.clear()  # no request of an older version comes after this
        self.generator.update_weights(state.items(), version)
        loaded = dict(self.generator.model.named_parameters())
        wrong = [name for name, t in state.items() if not torch.equal(loaded[name].to(t.dtype), t)]
        if wrong:
            got, sent = loaded[wrong[0]], state[wrong[0]]
            raise RuntimeError(
                f"CPU rollout engine: version {version} did not load into {', '.join(wrong[:5])} "
                f"(first: {tuple(got.shape)} {got.dtype} holds {got.flatten()[:3].tolist()}, "
                f"sent {tuple(sent.shape)} {sent.dtype} {sent.flatten()[:3].tolist()})"
            )
        self.version = version
        return digests

    def weights_version(self) -> int:
        return self.version

    def get_num_unfinished_requests(self) -> int:
        return 0

    async def reset_prefix_cache(self) -> None:
        return None

    async def sleep(self, level: int = 1) -> None:
        return None

    async def wake_up(self, tags=None) -> None:
        return None
