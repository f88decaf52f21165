"""Generators of the local backend: HF sampling loop (fast) and vLLM (one slow subprocess)."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import requires_vllm

from srft_openrlhf.errors import ConfigError
from srft_openrlhf.generation import HFGenerator, make_generator, sampling_logprobs

PROMPTS = [[19, 358, 21], [323, 333, 288, 28, 377, 284, 278, 373, 272, 310, 33], [40, 41, 42, 43, 44, 45]]


@pytest.fixture(scope="module")
def generator(tiny_model_dir) -> HFGenerator:
    return HFGenerator.load(str(tiny_model_dir), dtype="fp32", device="cpu", seed=0)


def nucleus_reference(logits: list[float], temperature: float, top_p: float) -> list[float]:
    """Written the textbook way: sort descending, keep the shortest prefix reaching top_p."""
    z = [x / temperature for x in logits]
    top = max(z)
    probs = [math.exp(x - top) for x in z]
    total = sum(probs)
    probs = [p / total for p in probs]
    kept, mass = set(), 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        kept.add(i)
        mass += probs[i]
        if mass >= top_p:
            break
    kept_mass = sum(probs[i] for i in kept)
    return [math.log(probs[i] / kept_mass) if i in kept else -math.inf for i in range(len(probs))]


def test_sampling_logprobs_hand_computed_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    out = sampling_logprobs(logits, 1.0, 0.7)[0]
    assert out[0].item() == pytest.approx(math.log(0.5 / 0.8), abs=1e-6)
    assert out[1].item() == pytest.approx(math.log(0.3 / 0.8), abs=1e-6)
    assert out[2].item() == -math.inf


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (0.7, 0.9), (1.3, 0.5)])
def test_sampling_logprobs_match_reference(temperature, top_p):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    got = sampling_logprobs(logits, temperature, top_p)
    for row, out in zip(logits.tolist(), got.tolist()):
        ref = nucleus_reference(row, temperature, top_p)
        for a, b in zip(out, ref):
            assert (a == b == -math.inf) or a == pytest.approx(b, abs=1e-5)


def test_greedy_logprobs_are_unscaled():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    assert torch.allclose(sampling_logprobs(logits, 0.0, 0.5), logits.log_softmax(-1))


def test_shapes_and_lengths(generator):
    rows = generator.generate(PROMPTS, 3, temperature=1.0, top_p=1.0, max_new_tokens=7, seed=1)
    assert [len(r) for r in rows] == [3, 3, 3]
    for row in rows:
        for c in row:
            assert 1 <= len(c.token_ids) <= 7
            assert len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs)
            assert c.finish_reason in ("stop", "length")
            assert c.text == generator.tokenizer.decode(c.token_ids, skip_special_tokens=True)


def test_seeded_determinism(generator):
    def tokens(seed):
        rows = generator.generate(PROMPTS, 2, temperature=1.0, top_p=0.9, max_new_tokens=6, seed=seed)
        return [[c.token_ids for c in row] for row in rows]

    assert tokens(5) == tokens(5)
    assert tokens(5) != tokens(6)
    # Without a seed the generator's private stream advances from call to call ...
    assert tokens(None) != tokens(None)


def test_unseeded_generation_leaves_global_rng_alone(generator):
    state = torch.random.get_rng_state()
    generator.generate(PROMPTS, 2, temperature=1.0, top_p=1.0, max_new_tokens=4)
    assert torch.equal(state, torch.random.get_rng_state())


@torch.no_grad()
def teacher_forced(model, prompt, tokens, temperature, top_p) -> torch.Tensor:
    """Log-probs of ``tokens`` from one unpadded fp64 forward of prompt + tokens."""
    model64 = copy.deepcopy(model).double()
    logits = model64(input_ids=torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
    logp = sampling_logprobs(logits, temperature, top_p).double()
    return logp.gather(1, torch.tensor(tokens)[:, None]).squeeze(1)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_logprobs_match_teacher_forcing(generator, temperature, top_p):
    """Batched, left-padded, KV-cached sampling reports what an unpadded forward gives."""
    rows = generator.generate(PROMPTS, 2, temperature=temperature, top_p=top_p, max_new_tokens=8, seed=2)
    for prompt, row in zip(PROMPTS, rows):
        for c in row:
            ref = teacher_forced(generator.model, prompt, c.token_ids, temperature, top_p)
            assert torch.allclose(torch.tensor(c.logprobs, dtype=torch.float64), ref, atol=1e-4)


def test_greedy_is_argmax_and_padding_invariant(generator):
    batched = generator.generate(PROMPTS, 1, temperature=0.0, top_p=1.0, max_new_tokens=6)
    for prompt, row in zip(PROMPTS, batched):
        alone = generator.generate([prompt], 1, temperature=0.0, top_p=1.0, max_new_tokens=6)[0][0]
        assert alone.token_ids == row[0].token_ids
        with torch.no_grad():
            logits = generator.model(input_ids=torch.tensor([prompt + alone.token_ids])).logits[0, len(prompt) - 1 : -1]
        assert alone.token_ids == logits.argmax(-1).tolist()


def eos_prone_generator(tiny_model_dir) -> HFGenerator:
    """A sharpened head whose EOS row is 1.5 × the row of a token greedy decoding picks,
    so decoding stops (the random tiny model is nearly uniform and rarely emits EOS)."""
    gen = HFGenerator.load(str(tiny_model_dir), dtype="fp32", device="cpu")
    head = gen.model.get_output_embeddings().weight
    with torch.no_grad():
        head.mul_(30.0)
    chosen = gen.generate([PROMPTS[0]], 1, temperature=0.0, top_p=1.0, max_new_tokens=4)[0][0].token_ids[3]
    with torch.no_grad():
        head[gen.tokenizer.eos_token_id] = 1.5 * head[chosen]
    return gen


def test_stops_at_eos(tiny_model_dir):
    gen = eos_prone_generator(tiny_model_dir)
    eos = gen.tokenizer.eos_token_id
    rows = gen.generate(PROMPTS, 4, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=0)
    completions = [c for row in rows for c in row]
    stopped = [c for c in completions if c.finish_reason == "stop"]
    assert stopped, "the EOS-prone model never stopped"
    for c in completions:
        assert eos not in c.token_ids[:-1]
        assert (c.token_ids[-1] == eos) == (c.finish_reason == "stop")
        if c.finish_reason == "length":
            assert len(c.token_ids) == 10
    greedy = gen.generate([PROMPTS[0]], 1, temperature=0.0, top_p=1.0, max_new_tokens=10)[0][0]
    assert greedy.finish_reason == "stop" and len(greedy.token_ids) <= 4


def test_update_weights_copies_in_place(tiny_model_dir, generator):
    own = HFGenerator.load(str(tiny_model_dir), dtype="fp32", device="cpu")
    before = own.generate(PROMPTS, 1, temperature=0.0, top_p=1.0, max_new_tokens=6)
    new = {name: p.detach() * 1.5 + 0.01 for name, p in own.model.named_parameters()}
    param_ids = [id(p) for p in own.model.parameters()]
    own.update_weights(new.items(), version=4)
    assert own.policy_version == 4
    assert param_ids == [id(p) for p in own.model.parameters()]
    for name, p in own.model.named_parameters():
        assert torch.equal(p, new[name])
    assert own.generate(PROMPTS, 1, temperature=0.0, top_p=1.0, max_new_tokens=6) != before
    with pytest.raises(KeyError, match="not_a_weight"):
        own.update_weights([("not_a_weight", torch.zeros(1))], version=5)


def test_shared_module_update_is_version_bump_and_restores_train_mode(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).train()
    gen = HFGenerator.from_module(model, tiny_tokenizer)
    weights_before = [p.detach().clone() for p in model.parameters()]
    gen.update_weights(((n, torch.zeros_like(p)) for n, p in model.named_parameters()), version=2)
    assert gen.policy_version == 2
    assert all(torch.equal(a, b) for a, b in zip(weights_before, model.parameters()))
    gen.generate(PROMPTS[:1], 1, temperature=1.0, top_p=1.0, max_new_tokens=2, seed=0)
    assert model.training


def test_make_generator(tiny_model_dir):
    gen = make_generator("hf", str(tiny_model_dir), dtype="fp32", device="cpu", seed=0, max_model_len=64)
    assert isinstance(gen, HFGenerator) and gen.policy_version == 0
    with pytest.raises(ConfigError, match="rollout.generator"):
        make_generator("tgi", str(tiny_model_dir), dtype="fp32", device="cpu", seed=0, max_model_len=64)
    with pytest.raises(ConfigError, match="model.dtype"):
        make_generator("hf", str(tiny_model_dir), dtype="fp64", device="cpu", seed=0, max_model_len=64)
    with pytest.raises(ConfigError, match="top_p"):
        gen.generate(PROMPTS, 1, temperature=1.0, top_p=0.0, max_new_tokens=2)


# --- vLLM: one engine, all checks in one subprocess (tests/_vllm_checks.py) ---------------


@pytest.fixture(scope="module")
def vllm_results(tiny_model_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("vllm") / "results.json"
    script = Path(__file__).with_name("_vllm_checks.py")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=850,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.vllm
@requires_vllm
def test_vllm_greedy_equals_hf_after_weight_update(vllm_results):
    initial, updated = vllm_results["greedy_initial"], vllm_results["greedy_updated"]
    assert initial["vllm"] == initial["hf"]
    assert updated["vllm"] == updated["hf"]
    assert updated["vllm"] != initial["vllm"], "the weight update had no effect on vLLM"
    assert vllm_results["policy_version"] == 1


@pytest.mark.slow
@pytest.mark.vllm
@requires_vllm
@pytest.mark.parametrize("case", ["logprobs_T1", "logprobs_T1_updated", "logprobs_T07_p09_updated"])
def test_vllm_logprobs_match_hf(vllm_results, case):
    r = vllm_results[case]
    assert r["max_abs_gap"] < 1e-3
    assert r["finite"] and r["lengths_match"] and r["seeded_repeat_equal"] and r["samples_differ"]
    assert r["shape"] == [3, [4, 4, 4]]


@pytest.mark.slow
@pytest.mark.vllm
@requires_vllm
def test_vllm_logprobs_are_of_the_sampling_distribution(vllm_results):
    """At T = 0.7, top_p = 0.9 they are neither raw nor un-renormalised log-probs."""
    r = vllm_results["logprobs_T07_p09_updated"]
    assert r["gap_without_nucleus"] > 1e-2
    assert r["gap_raw"] > 1e-2


@pytest.mark.slow
@pytest.mark.vllm
@requires_vllm
def test_vllm_stops_at_eos(vllm_results):
    finish = vllm_results["finish"]
    assert any(f["reason"] == "stop" for f in finish)
    for f in finish:
        assert not f["eos_inside"]
        assert f["ends_with_eos"] == (f["reason"] == "stop")
        assert f["reason"] == "stop" or f["n_tokens"] == 12
