"""``srft analyze token-shift`` (paper Fig. 2 / A1): Δp per token, its histogram and shares,
the figures, on tiny models with the toy task's tokenizer."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers import analyze, mixed_responses, naive_logprobs, ref

from srft_openrlhf.analysis import scoring, token_shift


def test_shift_of_a_model_against_itself_is_exactly_zero(tmp_path, toy_models, toy_tokenizer):
    responses = mixed_responses(toy_tokenizer)
    kwargs = dict(pad_id=toy_tokenizer.pad_token_id, cache_dir=tmp_path, max_batch_tokens=60)
    base = scoring.score_responses(ref(toy_models["base"]), responses, **kwargs)
    same = scoring.score_responses(ref(toy_models["copy"]), responses, **kwargs)  # another folder, own cache
    deltas = token_shift.token_probability_shift(same, base)
    assert all((d == 0.0).all() for d in deltas)
    summary = token_shift.shift_summary(deltas)
    assert summary["mean_abs_delta"] == 0.0 and set(summary["share_abs_delta_gt"].values()) == {0.0}
    middle = len(summary["histogram"]) // 2
    assert summary["histogram"][middle] == summary["tokens"] == sum(len(r.token_ids) for r in responses)


def test_histogram_and_shares_against_a_direct_count():
    rng = np.random.default_rng(0)
    deltas = [rng.uniform(-1, 1, size=n) for n in (5, 17, 1, 40)]
    deltas[0][:3] = [-1.0, 1.0, 0.0]  # the ends of the range and zero
    summary = token_shift.shift_summary(deltas)
    flat = [x for d in deltas for x in d]
    assert summary["tokens"] == len(flat) == sum(summary["histogram"])
    assert summary["responses"] == 4
    for t in token_shift.SHARE_THRESHOLDS:
        assert summary["share_abs_delta_gt"][str(t)] == pytest.approx(sum(abs(x) > t for x in flat) / len(flat))
    assert summary["mean_abs_delta"] == pytest.approx(sum(abs(x) for x in flat) / len(flat))
    assert summary["mean_delta"] == pytest.approx(sum(flat) / len(flat))
    edges = token_shift.HISTOGRAM_EDGES
    for x in flat:  # each value counted in the bin that contains it
        assert edges[0] <= x <= edges[-1]
    by_hand = [sum(lo <= x < hi for x in flat) for lo, hi in zip(edges[:-1], edges[1:])]
    assert summary["histogram"] == by_hand


def test_report_per_benchmark_adds_up():
    deltas = [np.array([0.2, -0.4]), np.array([0.0]), np.array([0.6, 0.6, 0.0])]
    report = token_shift.shift_report(deltas, ["a", "b", "a"])
    assert set(report["benchmarks"]) == {"a", "b"}
    assert report["benchmarks"]["a"]["tokens"] == 5 and report["benchmarks"]["b"]["tokens"] == 1
    assert report["all"]["tokens"] == 6
    assert "benchmarks" not in token_shift.shift_report(deltas, ["a", "a", "a"])


def test_token_shift_command_end_to_end(tmp_path, toy_models, toy_tokenizer, capsys):
    out = tmp_path / "out"
    assert (
        analyze(
            "token-shift",
            "--base",
            toy_models["base"],
            "--models",
            f"same={toy_models['copy']}",
            f"other={toy_models['other']}",
            "--data",
            "toy",
            "--limit",
            5,
            "--max-new-tokens",
            10,
            "--heatmap",
            2,
            "--out",
            out,
        )
        == 0
    )
    report = json.loads((out / "token_shift.json").read_text())
    for name in ("token_shift.png", "token_shift_heatmap.png", "token_shift_heatmap.html"):
        assert (out / name).stat().st_size > 1000, name
    assert report["responses"] == 5 and report["responses_from"] == "base"
    tokens = report["tokens"]
    same, other = report["models"]["same"]["all"], report["models"]["other"]["all"]
    assert same["mean_abs_delta"] == 0.0 and same["histogram"][20] == tokens
    assert sum(other["histogram"]) == other["tokens"] == tokens

    # independent computation: the cached greedy responses, scored by plain forward passes
    (cache,) = (out / "cache" / "responses").glob("*.jsonl")
    generated = [r for line in cache.read_text().splitlines() for r in json.loads(line)["responses"]]
    from srft_openrlhf.data import toy

    questions = {str(ex.row): ex.prompt for ex in toy.examples("heldout")[:5]}
    deltas = []
    for r in generated:
        resp = scoring.Response(
            "toy",
            r["prompt_id"],
            0,
            tuple(toy_tokenizer(questions[r["prompt_id"]], add_special_tokens=False)["input_ids"]),
            tuple(r["token_ids"]),
        )
        p_other = np.exp(naive_logprobs(toy_models["other"], resp))
        deltas.append(p_other - np.exp(naive_logprobs(toy_models["base"], resp)))
    flat = np.concatenate(deltas)
    assert flat.size == tokens
    assert other["mean_abs_delta"] == pytest.approx(np.abs(flat).mean(), abs=1e-6)
    assert other["mean_delta"] == pytest.approx(flat.mean(), abs=1e-6)

    html = (out / "token_shift_heatmap.html").read_text()
    heat_tokens = sum(len(r["token_ids"]) for r in generated[:2])
    assert len(re.findall(r"class='tok'", html)) == 2 * heat_tokens  # two models, two responses
    assert "other" in capsys.readouterr().out


def test_per_benchmark_files_and_text_responses(tmp_path, toy_models):
    from srft_openrlhf.data import toy

    files = []
    for name, rows in (("first", toy.examples("heldout")[:3]), ("second", toy.examples("heldout")[3:5])):
        path = tmp_path / f"{name}.jsonl"
        path.write_text(
            "".join(
                json.dumps({"prompt": ex.prompt, "answer": ex.answer, "demonstration": ex.demonstration}) + "\n"
                for ex in rows
            )
        )
        files.append(path)
    out = tmp_path / "out"
    assert (
        analyze(
            "token-shift",
            "--base",
            toy_models["base"],
            "--models",
            toy_models["other"],
            "--data",
            *files,
            "--tokenizer",
            "toy",
            "--template",
            "none",
            "--responses-from",
            "demos",
            "--out",
            out,
        )
        == 0
    )
    report = json.loads((out / "token_shift.json").read_text())
    per = report["models"]["other"]["benchmarks"]
    assert set(per) == {"first", "second"} and per["first"]["responses"] == 3 and per["second"]["responses"] == 2
    assert per["first"]["tokens"] + per["second"]["tokens"] == report["models"]["other"]["all"]["tokens"]
    assert report["responses_from"] == "demos"


def test_responses_from_an_evaluation_samples_file(tmp_path, toy_models):
    from srft_openrlhf.data import toy

    samples = tmp_path / "eval" / "samples.jsonl"
    samples.parent.mkdir()
    samples.write_text(
        "".join(
            json.dumps(
                {
                    "benchmark": bench,
                    "id": str(ex.row),
                    "sample": 0,
                    "prompt": ex.prompt,
                    "response": ex.demonstration,
                    "answer": ex.answer,
                    "correct": True,
                    "truncated": False,
                }
            )
            + "\n"
            for bench, rows in (("math500", toy.examples("heldout")[:2]), ("amc", toy.examples("heldout")[2:5]))
            for ex in rows
        )
    )
    out = tmp_path / "out"
    args = [
        "token-shift",
        "--base",
        toy_models["base"],
        "--models",
        f"same={toy_models['copy']}",
        "--responses-from",
        samples,
        "--tokenizer",
        "toy",
        "--out",
        out,
    ]
    assert analyze(*args, "--data", "toy") == 2  # the samples bring their own prompts
    assert analyze(*args) == 0
    report = json.loads((out / "token_shift.json").read_text())
    per = report["models"]["same"]["benchmarks"]
    assert {b: s["responses"] for b, s in per.items()} == {"math500": 2, "amc": 3}
    assert report["models"]["same"]["all"]["mean_abs_delta"] == 0.0
