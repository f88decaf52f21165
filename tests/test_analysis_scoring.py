"""Responses and teacher-forced token scores of ``srft analyze`` (analysis/scoring.py).

Tiny Qwen2 models (conftest.build_tiny_model) with the toy task's tokenizer; every score is
checked against a plain Hugging Face forward pass over one unpadded sequence at a time.
Helpers shared by the test_analysis_* files are in helpers.py, fixtures in conftest.py.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from helpers import mixed_responses, naive_logprobs, ref, toy_prompts

from srft_openrlhf.analysis import scoring, sources

# ----------------------------------------------------------------------------- tests


def test_scores_match_an_independent_forward(tmp_path, toy_models, toy_tokenizer):
    responses = mixed_responses(toy_tokenizer)
    assert len({len(r.token_ids) for r in responses}) == len(responses)
    got = scoring.score_responses(
        ref(toy_models["other"]), responses, pad_id=toy_tokenizer.pad_token_id, cache_dir=tmp_path, max_batch_tokens=60
    )  # several padded batches
    assert len(scoring.length_batches([len(r.prompt_ids) + len(r.token_ids) for r in responses], 60)) > 1
    for r, lp in zip(responses, got):
        assert lp.shape == (len(r.token_ids),)
        np.testing.assert_allclose(lp, naive_logprobs(toy_models["other"], r), atol=2e-5)


def test_text_response_is_tokenised_like_a_demonstration(toy_tokenizer):
    p = toy_prompts(1)[0]
    text = sources.toy_solver_text(p.question)
    r = scoring.encode_text_response(toy_tokenizer, p, text)
    assert list(r.prompt_ids) == toy_tokenizer(p.text, add_special_tokens=False)["input_ids"]
    eos = toy_tokenizer.eos_token_id
    assert list(r.token_ids) == toy_tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    assert scoring.encode_text_response(toy_tokenizer, p, text, ends=False).token_ids == r.token_ids[:-1]


def test_scores_are_cached_and_resume_after_a_torn_line(tmp_path, toy_models, toy_tokenizer, monkeypatch):
    responses = mixed_responses(toy_tokenizer)
    model = ref(toy_models["base"])
    kwargs = dict(pad_id=toy_tokenizer.pad_token_id, cache_dir=tmp_path, max_batch_tokens=60)
    first = scoring.score_responses(model, responses, **kwargs)
    (cache_file,) = (tmp_path / "scores").glob("*.jsonl")
    lines = cache_file.read_text().splitlines(keepends=True)  # one per batch
    last_batch = len(json.loads(lines[-1])["keys"])
    assert len(lines) > 1 and last_batch > 1
    cache_file.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-write

    scored = []
    real = scoring.teacher_forced_logprobs
    monkeypatch.setattr(scoring, "teacher_forced_logprobs", lambda m, rs, pad: scored.extend(rs) or real(m, rs, pad))
    again = scoring.score_responses(model, responses, **kwargs)
    assert len(scored) == last_batch  # only the torn batch is scored again, as the same batch
    for a, b in zip(first, again):
        assert np.array_equal(a, b)
    assert len(cache_file.read_text().splitlines()) == len(lines)

    def forbidden(*args, **kw):
        raise AssertionError("a fully cached model must not be loaded")

    monkeypatch.setattr(scoring, "load_model", forbidden)
    for a, b in zip(first, scoring.score_responses(model, responses, **kwargs)):
        assert np.array_equal(a, b)


def test_generated_responses_are_greedy_cached_and_reused(tmp_path, toy_models, toy_tokenizer, monkeypatch):
    prompts = toy_prompts(5)
    kwargs = dict(cache_dir=tmp_path, temperature=0.0, max_new_tokens=6, batch_size=2)
    responses = scoring.generate_responses(ref(toy_models["base"]), toy_tokenizer, prompts, **kwargs)
    assert [(r.benchmark, r.prompt_id) for r in responses] == [(p.benchmark, p.id) for p in prompts]
    # greedy: every token is the argmax of the model's own next-token distribution
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(toy_models["base"]).eval()
    r = responses[0]
    ids = torch.tensor([list(r.prompt_ids) + list(r.token_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    start = len(r.prompt_ids) - 1
    assert logits[start : start + len(r.token_ids)].argmax(-1).tolist() == list(r.token_ids)

    monkeypatch.setattr(scoring, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    assert scoring.generate_responses(ref(toy_models["base"]), toy_tokenizer, prompts, **kwargs) == responses


def test_samples_file_of_the_evaluation_harness(tmp_path, toy_tokenizer):
    path = tmp_path / "samples.jsonl"
    records = [
        {
            "benchmark": b,
            "id": str(i),
            "sample": s,
            "prompt": f"{100 + i}+{200 + i}=?",
            "response": "<think>\n1+2=3\n</think> \\boxed{3}",
            "truncated": i == 1,
            "correct": False,
        }
        for b in ("math500", "amc")
        for i in range(3)
        for s in range(2)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    prompts, responses = scoring.samples_file_responses(path, toy_tokenizer, limit=2)
    assert [(p.benchmark, p.id) for p in prompts] == [("math500", "0"), ("math500", "1"), ("amc", "0"), ("amc", "1")]
    assert len(responses) == 8
    eos = toy_tokenizer.eos_token_id
    ends = {(r.benchmark, r.prompt_id): r.token_ids[-1] == eos for r in responses}
    assert ends == {("math500", "0"): True, ("math500", "1"): False, ("amc", "0"): True, ("amc", "1"): False}
