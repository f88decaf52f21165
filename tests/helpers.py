"""Helpers shared by the test modules: fixed seeds, one way to gate optional dependencies,
the tiny tokenizer / model builders, the local-trainer run helpers and the kernel checks.

Test modules import from here (``from helpers import ...``), never from each other.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from srft_openrlhf import cli
from srft_openrlhf.analysis import scoring, sources
from srft_openrlhf.data import toy
from srft_openrlhf.kernels import linear_logprobs_and_entropy, token_logprobs_and_entropy
from srft_openrlhf.kernels.reference import reference, rel_err

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- seeds

# Random inputs are drawn from fixed seeds, so a failure reproduces by rerunning the test.
SEED = 0


def seed_torch(seed: int = SEED) -> int:
    torch.manual_seed(seed)
    return seed


# ----------------------------------------------------------------------------- optional dependencies


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def requires(package: str) -> pytest.MarkDecorator:
    """Skip the test (or, as ``pytestmark``, the module) when ``package`` is not installed.

    The category markers of pyproject.toml (``vllm``, ``deepspeed``, ...) select tests; this
    decides whether they can run here.
    """
    return pytest.mark.skipif(not installed(package), reason=f"{package} is not installed")


requires_vllm = requires("vllm")
requires_deepspeed = requires("deepspeed")
requires_triton = requires("triton")
requires_pandas = requires("pandas")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ----------------------------------------------------------------------------- tiny tokenizer and model

# Enough text for a byte-level BPE that spells digits, LaTeX and the templates compactly.
_CORPUS = [
    "Question: What is 12 + 35? Answer: <think>\n12 + 35 = 47</think>\nThe answer is \\boxed{47}.",
    "Your task is to follow a systematic, thorough reasoning process before providing the final solution.",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] { } \\frac{1}{2} \\sqrt{3} x y z",
    "system user assistant <|im_start|> <|im_end|>",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(chat_template: bool = True):
    """A byte-level BPE tokenizer trained on a few lines, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    if chat_template:
        hf.chat_template = CHAT_TEMPLATE
    return hf


def build_tiny_model(tokenizer, seed: int = 0, layers: int = 2):
    """Qwen2 architecture, head_dim 32 (vLLM CPU needs >= 32), ~0.1M parameters."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(cfg)


# ----------------------------------------------------------------------------- local-trainer runs


def write_toy_rows(path: Path, split: str, n: int, demo: bool = True) -> Path:
    rows = toy.examples(split)[:n]
    with path.open("w") as f:
        for ex in rows:
            row = {"prompt": ex.prompt, "answer": ex.answer}
            if demo:
                row["demonstration"] = ex.demonstration
            f.write(json.dumps(row) + "\n")
    return path


def tiny_run_config(tmp_path: Path, model_dir: Path, **sections) -> Path:
    """A config for the conftest tiny model: 2 steps of 2 prompts × 2 rollouts, seconds on CPU."""
    values = {
        "model": {"path": str(model_dir), "dtype": "fp32"},
        "data": {
            "train": str(write_toy_rows(tmp_path / "train.jsonl", "train", 12)),
            "eval": str(write_toy_rows(tmp_path / "eval.jsonl", "heldout", 4, demo=False)),
            "template": "none",
            "max_prompt_len": 32,
            "max_response_len": 24,
        },
        "rollout": {
            "n_samples_per_prompt": 2,
            "max_new_tokens": 10,
            "generator": "hf",
            "reward_mode": "oat",
            "reward_workers": 0,
        },
        "train": {"steps": 2, "prompts_per_step": 2, "lr": 1e-3, "micro_batch_size": 4, "save_every": 1, "seed": 0},
        "logging": {"output_dir": str(tmp_path / "run")},
    }
    for section, keys in sections.items():
        values.setdefault(section, {}).update(keys)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def openrlhf_test_config(tmp_path: Path, data: Path, *overrides: str):
    """An OpenRLHF-backend config on ``data`` (qwen_math template, 3 rollouts a prompt, one node of
    2 GPUs with one vLLM engine), run folder ``tmp_path/run``; ``overrides`` as ``--set``."""
    from srft_openrlhf.config import load_config

    return load_config(
        None,
        [
            f"model.path={tmp_path}",
            f"data.train={data}",
            "data.template=qwen_math",
            "data.max_prompt_len=200",
            "data.max_response_len=64",
            "rollout.n_samples_per_prompt=3",
            "rollout.max_new_tokens=32",
            "cluster.nodes=1",
            "cluster.gpus_per_node=2",
            "cluster.vllm_num_engines=1",
            f"logging.output_dir={tmp_path / 'run'}",
            *overrides,
        ],
    )


def srft_train(*args: str) -> int:
    return cli.main(["train", *map(str, args)])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in metrics(run_dir) if "loss" in r]


# In-process DeepSpeed tests (test_local_engine.py) export these and keep MASTER_PORT bound
# for the life of the pytest process: a child inheriting them would fail with EADDRINUSE.
_DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE")


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_ENV}
    return {
        **env,
        "PYTHONPATH": str(ROOT),
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


# ----------------------------------------------------------------------------- kernels

QWEN_VOCAB = 151936


def check_against_reference(logits, targets, temperature, entropy_grad, out_tol, grad_tol, **kwargs):
    """Outputs and gradients (random upstream grads) vs autograd of the float64 reference."""
    x = logits.detach().clone().requires_grad_()
    logp, entropy = token_logprobs_and_entropy(x, targets, temperature, entropy_grad, **kwargs)
    assert logp.dtype == entropy.dtype == torch.float32
    assert logp.shape == entropy.shape == targets.shape
    assert entropy.requires_grad == entropy_grad
    x64 = logits.detach().double().requires_grad_()
    ref_logp, ref_entropy = reference(x64, targets, temperature)
    assert rel_err(logp, ref_logp) < out_tol
    assert rel_err(entropy, ref_entropy) < out_tol
    g_logp, g_entropy = torch.randn_like(ref_logp), torch.randn_like(ref_entropy)
    loss = (logp * g_logp.float()).sum()
    ref_loss = (ref_logp * g_logp).sum()
    if entropy_grad:
        loss = loss + (entropy * g_entropy.float()).sum()
        ref_loss = ref_loss + (ref_entropy * g_entropy).sum()
    loss.backward()
    ref_loss.backward()
    assert x.grad.dtype == logits.dtype
    assert rel_err(x.grad, x64.grad) < grad_tol
    return x


def run_both(hidden, weight, targets, temperature, entropy_grad):
    """Outputs and grads (hidden, weight) of the fused path and of the float64 reference."""
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, entropy = linear_logprobs_and_entropy(h, w, targets, temperature, entropy_grad)
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    exact = h64 @ w64.t()
    # The head emits logits in the input dtype; evaluate at those, differentiate exactly.
    emitted = exact + ((hidden @ weight.t()).double() - exact).detach()
    ref_logp, ref_entropy = reference(emitted, targets, temperature)
    g_logp, g_entropy = torch.randn_like(ref_logp), torch.randn_like(ref_entropy)
    loss, ref_loss = (logp * g_logp.float()).sum(), (ref_logp * g_logp).sum()
    if entropy_grad:
        loss = loss + (entropy * g_entropy.float()).sum()
        ref_loss = ref_loss + (ref_entropy * g_entropy).sum()
    loss.backward()
    ref_loss.backward()
    return (logp, entropy, h.grad, w.grad), (ref_logp, ref_entropy, h64.grad, w64.grad)


# ----------------------------------------------------------------------------- srft analyze


def save_model(path: Path, tokenizer, seed: int = 0, model=None) -> Path:
    model = model if model is not None else build_tiny_model(tokenizer, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def ref(path: Path, name: str | None = None) -> sources.ModelRef:
    return sources.ModelRef(name or path.name, path, str(path))


def toy_prompts(n: int, split: str = "heldout") -> list[sources.Prompt]:
    return sources.load_prompts(["toy"], template="none", tokenizer=None, limit=n, toy_split=split)


def naive_logprobs(model_dir: Path, response: scoring.Response) -> np.ndarray:
    """log p(y_t | x, y_<t) from the full logits of one unpadded sequence (no kernel, no batch)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([list(response.prompt_ids) + list(response.token_ids)])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    start = len(response.prompt_ids) - 1
    targets = ids[0, start + 1 :]
    return logp[start : start + len(targets)].gather(1, targets[:, None])[:, 0].double().numpy()


def mixed_responses(tokenizer, n: int = 6) -> list[scoring.Response]:
    """Texts of different lengths (so batches need padding): solutions, and cut-off ones."""
    prompts = toy_prompts(n)
    out = []
    for i, p in enumerate(prompts):
        text = sources.toy_solver_text(p.question)
        out.append(scoring.encode_text_response(tokenizer, p, text[: 8 + 5 * i], ends=i % 2 == 0))
    return out


def analyze(*args) -> int:
    """``srft analyze ARGS`` through the CLI entry point."""
    return cli.main(["analyze", *map(str, args)])


# ----------------------------------------------------------------------------- OpenRLHF-backend steps
# One step of the cluster backend on the real OpenRLHF 0.11.2 (flash-attn stub on sys.path): a
# 4-prompt batch (3 rollouts + 1 demo each) through OpenRLHF's rollout executor and the SRFT
# samples generator and experience maker, with vLLM and Ray stood in for; the same samples as
# the local backend's TrainBatch. Used by test_openrlhf_patches.py and test_openrlhf_multirank.py.


def openrlhf_namespace(parser, argv, cfg):
    """``args`` as the OpenRLHF actors see them (``args.srft`` attached like install_driver does)."""
    from openrlhf.utils.config import hierarchize

    args = hierarchize(parser.parse_args(argv))
    args.srft = cfg
    return args


class FakeEngine:
    """What SingleTurnAgentExecutor needs of a vLLM engine: ``generate`` returning the given texts."""

    def __init__(self, tokenizer, texts):
        self.tokenizer, self.texts = tokenizer, iter(texts)

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        from types import SimpleNamespace

        ids = self.tokenizer(next(self.texts), add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        logprobs = None
        if sampling_params.logprobs is not None:
            logprobs = [{t: SimpleNamespace(logprob=-0.5)} for t in ids]
        output = SimpleNamespace(
            token_ids=ids, text=self.tokenizer.decode(ids), finish_reason="stop", logprobs=logprobs
        )
        return SimpleNamespace(outputs=[output])


OPENRLHF_EXAMPLES = [  # the third demonstration is wrong: demos are graded, not assumed correct
    {"prompt": "What is 12 + 35?", "answer": "47", "demonstration": "<think>\n12 + 35 = 47</think>\n\\boxed{47}"},
    {"prompt": "What is 2 + 3?", "answer": "5", "demonstration": "<think>\n2 + 3 = 5</think>\n\\boxed{5}"},
    {"prompt": "What is 1 + 1?", "answer": "2", "demonstration": "<think>\n1 + 1 = 3</think>\n\\boxed{3}"},
    {"prompt": "What is 4 + 4?", "answer": "8", "demonstration": "<think>\n4 + 4 = 8</think>\n\\boxed{8}"},
]


def rollout_texts(answer: str, n: int, prompt_index: int) -> list[str]:
    """n rollouts; prompt 1 gets no correct one (its group then rests on the demo alone)."""
    right, wrong = f"{answer}</think>\n\\boxed{{{answer}}}", "9</think>\n\\boxed{999}"
    return [right if j % 2 == 0 and prompt_index != 1 else wrong for j in range(n)]


def small_run(tmp_path: Path, tokenizer, parser, *overrides: str):
    """Config, OpenRLHF args and run files of a 4-prompt step of 3 rollouts + 1 demo each."""
    from srft_openrlhf.openrlhf.data_files import write_data
    from srft_openrlhf.openrlhf.flags import openrlhf_args
    from srft_openrlhf.openrlhf.reward_func import reward_func_file_text
    from srft_openrlhf.runs import run_files

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in OPENRLHF_EXAMPLES))
    # a generous grading timeout: the first grade imports the grader, which on busy cores can take
    # longer than the default 5 s and would turn a right rollout's reward into 0
    steps = (
        "rollout.reward_workers=0",
        "rollout.reward_timeout_s=120",
        "train.steps=1",
        "train.prompts_per_step=4",
        "train.micro_batch_size=2",
    )
    cfg = openrlhf_test_config(tmp_path, data, *steps, *overrides)
    files = run_files(cfg.logging.output_dir)
    write_data(cfg, files, tokenizer)
    r = cfg.rollout
    files.reward_func.write_text(reward_func_file_text(r.reward, r.reward_mode, r.reward_timeout_s, r.reward_workers))
    return cfg, openrlhf_namespace(parser, openrlhf_args(cfg, files, resume=False), cfg), files


def generate_step(monkeypatch, cfg, args, files, tokenizer):
    """One step of samples through SRFTSamplesGenerator.generate_samples, with vLLM stood in for.
    Returns the samples, the rollouts asked per prompt, the prompts consumed, whether the data ran
    out, and the names of the threads that graded the demos."""
    import asyncio
    import threading
    from types import SimpleNamespace

    from openrlhf.datasets import PromptDataset
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator, _collect_prompt_batch
    from openrlhf.utils.agent import SingleTurnAgentExecutor
    from vllm import SamplingParams

    from srft_openrlhf.openrlhf.reward_func import decode_label
    from srft_openrlhf.openrlhf.samples import SRFTSamplesGenerator

    strategy = SimpleNamespace(args=args, is_rank_0=lambda: True)
    rows = [json.loads(line) for line in files.train_data.read_text().splitlines()]
    dataset = PromptDataset(rows, tokenizer, strategy)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=dataset.collate_fn)
    generator = SRFTSamplesGenerator(strategy, loader, None, tokenizer, [])
    executor = SingleTurnAgentExecutor([str(files.reward_func)])  # loads the SRFT reward file as OpenRLHF does
    asked = []
    # OpenRLHF's dispatch sends the prompts to the engines (Ray); SRFT's extension of it runs
    monkeypatch.setattr(SamplesGenerator, "_dispatch_prompts_to_vllm", lambda self, prompts, labels, **kw: [])
    demo_threads = []
    grade = generator.reward_func
    generator.reward_func = lambda *a: demo_threads.append(threading.current_thread().name) or grade(*a)

    def fake_vllm(dataloader_iter, num_prompts, dynamic_filtering, **kwargs):
        prompts, labels, _, exhausted = _collect_prompt_batch(dataloader_iter, num_prompts)
        generator._dispatch_prompts_to_vllm(prompts, labels, **kwargs)
        n = kwargs["n_samples_per_prompt"]
        asked.append(n)
        params = SamplingParams(
            max_tokens=kwargs["max_new_tokens"],
            logprobs=1 if args.algo.advantage.is_correction_level != "off" else None,
        )
        samples = []
        for i, (prompt, label) in enumerate(zip(prompts, labels)):
            engine = FakeEngine(tokenizer, rollout_texts(decode_label(label)[0], n, i))
            for _ in range(n):
                response = asyncio.run(executor.execute(prompt, label, params, kwargs["max_len"], tokenizer, engine))
                samples.append(generator._process_response_into_experience(response, **kwargs))
        return samples, len(prompts), exhausted

    monkeypatch.setattr(generator, "_generate_vllm", fake_vllm)
    samples, _, consumed, exhausted = generator.generate_samples(
        max_len=args.data.max_len, max_new_tokens=args.rollout.max_new_tokens, temperature=1.0, top_p=1.0
    )
    return samples, asked, consumed, exhausted, demo_threads


class FakeActorGroup:
    """OpenRLHF's RayActorGroup in this process: ``async_run_method_batch`` runs ``method`` of
    ``policy`` (an SRFTPolicyModelActor without Ray) on each micro-batch and returns the results
    as the single rank's "ref". Without a policy, srft_entropy_sums is stood in for by 1 per
    response token."""

    def __init__(self, policy=None):
        self.policy, self.calls = policy, []

    def async_run_method_batch(self, method_name, **batch):
        self.calls.append((method_name, batch))
        if self.policy is not None:
            items = [dict(zip(batch, values)) for values in zip(*batch.values())]
            return [[getattr(self.policy, method_name)(**item) for item in items]]
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return [
            [torch.where(rows, mask.sum(-1).double(), nan) for mask, rows in zip(batch["action_mask"], batch["rows"])]
        ]

    def async_run_method(self, method_name, **kwargs):
        return []


def make_experiences(monkeypatch, args, samples, tokenizer, policy=None):
    """The experience maker on the step's samples, the actor group (Ray) stood in for by
    ``FakeActorGroup(policy)``; returns the experiences and the group."""
    from types import SimpleNamespace

    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    from srft_openrlhf.openrlhf.experience import SRFTExperienceMaker

    monkeypatch.setattr(
        RemoteExperienceMaker,
        "_flatten_results",
        lambda self, refs, duplicate: [r for chunk in refs[::duplicate] for r in chunk],
    )
    strategy = SimpleNamespace(args=args)
    group = FakeActorGroup(policy)
    maker = SRFTExperienceMaker(group, None, None, None, FixedKLController(0.0), strategy, tokenizer)
    return maker.make_experience_batch(samples), group


def replay_items(experiences):
    """What the actor's replay buffer holds: the experiences split into unpadded samples."""
    from openrlhf.trainer.ppo_utils.experience import remove_padding_in_sequences, split_experience_batch

    return [item for e in experiences for item in remove_padding_in_sequences(split_experience_batch(e))]


class CPUStrategy:
    """The part of OpenRLHF's DeepspeedStrategy the training step uses, in plain torch, with
    DeepSpeed's gradient accumulation: ``backward`` divides the loss by the engine's
    gradient_accumulation_steps and the optimizer steps at every gas-th ``optimizer_step`` only."""

    ring_attn_group = None

    def __init__(self, args):
        self.args, self.grad_norm, self.micro_steps, self.steps = args, 0.0, 0, 0

    def backward(self, loss, model, optimizer):
        (loss / model.model.gradient_accumulation_steps()).backward()

    def optimizer_step(self, optimizer, model, scheduler, name="model"):
        self.micro_steps += 1
        if self.micro_steps % model.model.gradient_accumulation_steps():
            return
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        self.steps += 1

    def get_grad_norm(self, model):
        return self.grad_norm

    def all_reduce(self, data, op="mean"):
        return data


def cluster_trainer(args, model_dir, gas):
    """SRFTActorPPOTrainer on OpenRLHF's Actor (float32) with a DeepSpeed-like CPU strategy and SGD
    (lr 0.1), and the SRFTPolicyModelActor around it (its __init__ needs Ray and NCCL)."""
    from openrlhf.models import Actor

    from srft_openrlhf.openrlhf.actor import SRFTActorPPOTrainer
    from srft_openrlhf.openrlhf.patches import SRFTPolicyModelActor

    actor = Actor(str(model_dir), attn_implementation="eager", param_dtype="bf16")
    actor.model.float()
    actor.model.gradient_accumulation_steps = lambda: gas  # what the DeepSpeed engine in actor.model answers
    trainer = SRFTActorPPOTrainer.__new__(SRFTActorPPOTrainer)  # its __init__ needs NCCL
    trainer.strategy, trainer.args, trainer.actor = CPUStrategy(args), args, actor
    trainer.actor_optim = torch.optim.SGD(actor.model.parameters(), lr=0.1)
    trainer.actor_scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.actor_optim, lambda step: 1.0)
    trainer.ema_model, trainer.aux_loss = None, False
    policy = SRFTPolicyModelActor.__new__(SRFTPolicyModelActor)
    policy.actor, policy.trainer = actor, trainer
    return trainer, policy


def local_train_batch(items):
    """The local backend's TrainBatch of the replay items (unpadded sequences, π_old per response
    token, the experiences' advantages, rewards and demo flags)."""
    from openrlhf.trainer.ppo_utils.experience import make_experience_batch

    from srft_openrlhf.local.rollout import TrainBatch
    from srft_openrlhf.openrlhf.experience import sequence_advantages
    from srft_openrlhf.openrlhf.samples import demo_flags

    whole = make_experience_batch(items)
    rows = []
    for b in range(len(items)):
        length = int(whole.attention_mask[b].sum())
        first = int(torch.nonzero(whole.action_mask[b])[0]) + 1  # the first response token
        rows.append((whole.sequences[b, :length].tolist(), first, whole.action_log_probs[b, first - 1 : length - 1]))
    return TrainBatch(
        sequences=[r[0] for r in rows],
        prompt_lens=[r[1] for r in rows],
        old_logprobs=[r[2].tolist() for r in rows],
        advantages=sequence_advantages(whole),
        rewards=whole.rewards.float(),
        is_demo=demo_flags(whole),
    )


# ----------------------------------------------------------------------------- DeepSpeed ranks on gloo


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_rank(rank: int, worker, world: int, port: int, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_SIZE=str(world),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    from srft_openrlhf.openrlhf import cpu_compat

    cpu_compat.install()
    worker(rank, *args)


def spawn_gloo_ranks(worker, world: int, *args) -> None:
    """``worker(rank, *args)`` in ``world`` spawned processes that form a torch.distributed group
    (the environment DeepSpeed reads; CPU layer installed; one thread each). ``worker`` must be a
    module-level function: spawn pickles it by reference."""
    import torch.multiprocessing as mp

    mp.start_processes(
        _gloo_rank, args=(worker, world, free_port(), args), nprocs=world, join=True, start_method="spawn"
    )


def cluster_strategy(args, zero_stage: int):
    """OpenRLHF's DeepSpeed strategy of ``args`` in a spawned rank, fp32, with the SRFT patches."""
    from openrlhf.utils import get_strategy

    from srft_openrlhf.openrlhf import patches

    patches.install()
    args.ds.zero_stage, args.ds.param_dtype = zero_stage, "fp32"
    if args.actor.eps_clip_low_high is None:  # train_ppo_ray's own default, set after it parses
        args.actor.eps_clip_low_high = (args.actor.eps_clip, args.actor.eps_clip)
    strategy = get_strategy(args)
    strategy.setup_distributed()
    return strategy


def full_weights(actor) -> dict[str, torch.Tensor]:
    """Every parameter of a DeepSpeed actor in full, float64 (gathered under ZeRO-3: a collective,
    every rank calls it)."""
    import deepspeed

    named = list(actor.model.module.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in named]):
        return {name: p.detach().double().clone() for name, p in named}


def gradient_step_trainer(strategy, args, model_dir: Path, step: float, eps: float, temperature: float = 1.0):
    """A fresh OpenRLHF ``Actor`` from ``model_dir`` (loaded in bf16, then fp32), prepared by
    ``strategy`` with DeepSpeed's AdamW at eps ≫ |g| and lr = step·eps, whose first update is then
    −step·g (test_openrlhf_multirank.py), and the SRFT actor trainer on it: (actor, trainer)."""
    from openrlhf.models import Actor

    from srft_openrlhf.openrlhf.actor import SRFTActorPPOTrainer

    actor = Actor(str(model_dir), attn_implementation="eager", param_dtype="bf16", temperature=temperature)
    actor.model.float()
    optim = {
        "optim": "adam",
        "adam": {"lr": step * eps, "betas": (0.9, 0.999), "eps": eps, "weight_decay": 0.0},
        "lr_scheduler": "constant",
        "lr_warmup_ratio": 0.0,
        "scheduler_steps": 1,
        "max_norm": 0.0,
    }
    actor, actor_optim, scheduler = strategy.prepare((actor, optim))
    trainer = SRFTActorPPOTrainer(
        strategy,
        actor,
        None,
        actor_optim,
        scheduler,
        micro_train_batch_size=args.train.micro_batch_size,
        dataloader_pin_memory=False,
    )
    return actor, trainer
