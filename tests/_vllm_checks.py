"""All vLLM generator checks in one process, sharing one engine (start-up is ~30 s on CPU).

Run by tests/test_local_generation.py as ``python tests/_vllm_checks.py MODEL_DIR OUT_JSON``;
vLLM spawns processes, so the engine is created under ``if __name__ == "__main__"``.
The script only measures; the test asserts on the JSON it writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srft_openrlhf.generation import HFGenerator, VLLMGenerator, sampling_logprobs  # noqa: E402

PROMPTS = [[19, 358, 21], [323, 333, 288, 28, 377, 284, 278, 373, 272, 310, 33], [40, 41, 42, 43, 44, 45]]
MAX_NEW = 12


def greedy(gen, prompts=PROMPTS) -> list[list[int]]:
    return [row[0].token_ids for row in gen.generate(prompts, 1, temperature=0.0, top_p=1.0, max_new_tokens=MAX_NEW)]


@torch.no_grad()
def teacher_forced_logprobs(
    model, prompt: list[int], tokens: list[int], temperature: float, top_p: float
) -> list[float]:
    """HF log-probs of ``tokens`` after ``prompt`` under the sampling distribution, in fp64 logits."""
    ids = torch.tensor([prompt + tokens])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double()
    logp = sampling_logprobs(logits, temperature, top_p)
    return logp.gather(1, torch.tensor(tokens)[:, None]).squeeze(1).tolist()


def perturb(model) -> None:
    """New weights that make greedy decoding differ and keep clear argmax margins."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        # Sharper logits: near-ties would make greedy equality depend on rounding.
        model.lm_head.weight.mul_(30.0)


def make_eos_likely(hf: HFGenerator, eos: int) -> None:
    """EOS row := 1.5 × the row of a token greedy decoding picks, so completions do stop."""
    chosen = greedy(hf)[0][3]
    with torch.no_grad():
        hf.model.lm_head.weight[eos] = 1.5 * hf.model.lm_head.weight[chosen]


def logprob_gap(vllm_gen, model, temperature: float, top_p: float, seed: int) -> dict:
    """vLLM's log-probs of its own samples vs HF teacher forcing under three readings:
    the sampling distribution (temperature + renormalised nucleus, what we claim), plain
    log softmax(z/T) (no nucleus) and raw log softmax(z)."""
    rows = vllm_gen.generate(PROMPTS, 4, temperature=temperature, top_p=top_p, max_new_tokens=MAX_NEW, seed=seed)
    gaps = {"max_abs_gap": 0.0, "gap_without_nucleus": 0.0, "gap_raw": 0.0}
    readings = {"max_abs_gap": (temperature, top_p), "gap_without_nucleus": (temperature, 1.0), "gap_raw": (1.0, 1.0)}
    finite = True
    for prompt, row in zip(PROMPTS, rows):
        for c in row:
            finite &= all(abs(x) != float("inf") for x in c.logprobs)
            for key, (t, p) in readings.items():
                ref = teacher_forced_logprobs(model, prompt, c.token_ids, t, p)
                gaps[key] = max(gaps[key], max(abs(a - b) for a, b in zip(c.logprobs, ref)))
    tokens = [[c.token_ids for c in row] for row in rows]
    again = vllm_gen.generate(PROMPTS, 4, temperature=temperature, top_p=top_p, max_new_tokens=MAX_NEW, seed=seed)
    return {
        **gaps,
        "finite": finite,
        "seeded_repeat_equal": tokens == [[c.token_ids for c in row] for row in again],
        "samples_differ": any(len({tuple(t) for t in row}) > 1 for row in tokens),
        "shape": [len(rows), [len(r) for r in rows]],
        "lengths_match": all(len(c.token_ids) == len(c.logprobs) for row in rows for c in row),
    }


def main(model_dir: str, out_path: str) -> None:
    hf = HFGenerator.load(model_dir, dtype="fp32", device="cpu")
    vllm_gen = VLLMGenerator(model_dir, dtype="fp32", seed=0, gpu_memory_utilization=0.5, max_model_len=128)
    eos = hf.eos_ids
    result: dict = {}
    try:
        result["greedy_initial"] = {"vllm": greedy(vllm_gen), "hf": greedy(hf)}
        result["logprobs_T1"] = logprob_gap(vllm_gen, hf.model, 1.0, 1.0, seed=7)

        perturb(hf.model)
        make_eos_likely(hf, hf.tokenizer.eos_token_id)
        vllm_gen.update_weights(hf.model.named_parameters(), version=1)
        result["policy_version"] = vllm_gen.policy_version
        result["greedy_updated"] = {"vllm": greedy(vllm_gen), "hf": greedy(hf)}
        result["logprobs_T1_updated"] = logprob_gap(vllm_gen, hf.model, 1.0, 1.0, seed=7)
        result["logprobs_T07_p09_updated"] = logprob_gap(vllm_gen, hf.model, 0.7, 0.9, seed=8)

        rows = vllm_gen.generate(PROMPTS, 8, temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW, seed=3)
        result["finish"] = [
            {
                "reason": c.finish_reason,
                "ends_with_eos": bool(c.token_ids) and c.token_ids[-1] in eos,
                "eos_inside": any(t in eos for t in c.token_ids[:-1]),
                "n_tokens": len(c.token_ids),
            }
            for row in rows
            for c in row
        ]
    finally:
        vllm_gen.close()
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
