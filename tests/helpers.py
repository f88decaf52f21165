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
