"""``srft analyze trajectory`` (paper Fig. 3, Appendix E): the reference distance, its
behaviour under weight interpolation, and the command on run folders (a real two-step
`srft train` run and a toy-layout run with the default toy references)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from helpers import analyze, build_tiny_model, naive_logprobs, ref, save_model, srft_train, tiny_run_config, toy_prompts

from srft_openrlhf.analysis import scoring, sources, trajectory
from srft_openrlhf.data import toy


def interpolate(a: torch.nn.Module, b: torch.nn.Module, alpha: float, tokenizer) -> torch.nn.Module:
    """(1 − alpha)·θ_a + alpha·θ_b, every parameter."""
    out = build_tiny_model(tokenizer)
    sa, sb = a.state_dict(), b.state_dict()
    out.load_state_dict({k: (1 - alpha) * sa[k] + alpha * sb[k] for k in sa})
    return out


def distances_along(tmp_path, tokenizer, start, end, alphas, responses, reference_lp) -> list[float]:
    out = []
    for alpha in alphas:
        folder = save_model(tmp_path / f"m-{alpha}", tokenizer, model=interpolate(start, end, alpha, tokenizer))
        lp = scoring.score_responses(ref(folder), responses, pad_id=tokenizer.pad_token_id, cache_dir=tmp_path)
        out.append(trajectory.reference_distance(lp, reference_lp))
    return out


def test_distance_is_zero_to_itself_and_grows_as_weights_move_away(tmp_path, toy_tokenizer):
    reference = build_tiny_model(toy_tokenizer, seed=3)
    ref_dir = save_model(tmp_path / "reference", toy_tokenizer, model=reference)
    responses = scoring.generate_responses(
        ref(ref_dir), toy_tokenizer, toy_prompts(6), cache_dir=tmp_path, temperature=0.0, max_new_tokens=8
    )
    own = scoring.score_responses(ref(ref_dir), responses, pad_id=toy_tokenizer.pad_token_id, cache_dir=tmp_path)
    assert trajectory.reference_distance(own, own) == 0.0
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]

    # towards the same network with a zero LM head: logits scale by (1 − alpha), so the
    # probability of each greedy (argmax) token falls monotonically: d must rise strictly
    flat = build_tiny_model(toy_tokenizer)
    flat.load_state_dict(reference.state_dict())
    torch.nn.init.zeros_(flat.lm_head.weight)
    d = distances_along(tmp_path / "flat", toy_tokenizer, reference, flat, alphas, responses, own)
    assert d[0] == 0.0  # the same weights in another folder: bit-identical scores
    assert all(x < y for x, y in zip(d, d[1:])), d
    uniform = 1.0 / len(toy_tokenizer)
    expected_end = np.mean([np.mean(np.exp(lp) - uniform) for lp in own])  # p_M = 1/V everywhere
    assert d[-1] == pytest.approx(expected_end, rel=1e-5)

    # towards an independently initialised network (every weight moves)
    other = build_tiny_model(toy_tokenizer, seed=4)
    d = distances_along(tmp_path / "other", toy_tokenizer, reference, other, alphas, responses, own)
    assert d[0] == 0.0 and all(x < y for x, y in zip(d, d[1:])), d


def test_text_reference_distance_against_a_direct_computation(tmp_path, toy_models, toy_tokenizer):
    prompts = toy_prompts(4, split="train")
    texts = sources.reference_texts(sources.DEMOS, prompts)
    responses = scoring.text_responses(toy_tokenizer, prompts, texts)
    lp = scoring.score_responses(
        ref(toy_models["other"]), responses, pad_id=toy_tokenizer.pad_token_id, cache_dir=tmp_path
    )
    by_hand = np.mean([np.mean(1.0 - np.exp(naive_logprobs(toy_models["other"], r))) for r in responses])
    assert trajectory.reference_distance(lp, None) == pytest.approx(by_hand, abs=1e-6)
    groups = ["x", "y", "x", "y"]
    per = trajectory.grouped_distances(lp, None, groups)
    assert per["x"] == pytest.approx(trajectory.reference_distance([lp[0], lp[2]], None))


def test_toy_references_differ_where_the_teacher_errs():
    prompts = sources.load_prompts(
        ["toy"], template="none", tokenizer=None, limit=40, toy_split="train", toy_balanced=True
    )
    groups = [toy.problem_group(p.question) for p in prompts]
    assert groups.count("chained_carry") == 20
    teacher = sources.reference_texts(sources.DEMOS, prompts)
    solver = sources.reference_texts(sources.TOY_SOLVER, prompts)
    differ = [g for t, s, g in zip(teacher, solver, groups) if t != s]
    assert differ and differ.count("chained_carry") > 0
    # the solver's answer is the sum, whatever the carries
    sums = [sum(map(int, p.question.removesuffix("=?").split("+"))) for p in prompts]
    assert [s.rpartition("\\boxed{")[2] for s in solver] == [f"{n}}}" for n in sums]
    # the worked text, by hand: units column first, each carry written into the next column
    by_hand = {
        "57+68=?": "<think>\n7+8=15\n5+6+1=12\n</think> \\boxed{125}",
        "457+168=?": "<think>\n7+8=15\n5+6+1=12\n4+1+1=6\n</think> \\boxed{625}",
        "12+35=?": "<think>\n2+5=7\n1+3=4\n</think> \\boxed{47}",
    }
    hand_prompts = [sources.Prompt(sources.TOY, str(k), q, "", None, q) for k, q in enumerate(by_hand)]
    assert sources.reference_texts(sources.TOY_SOLVER, hand_prompts) == list(by_hand.values())


def test_trajectory_of_a_real_run(tmp_path, tiny_model_dir, monkeypatch):
    """`srft train` (2 steps, a checkpoint per step, held-out eval before and after), then the
    trajectory of its checkpoints against the base and the data's demonstrations."""
    config = tiny_run_config(tmp_path, tiny_model_dir)
    assert srft_train("--config", config) == 0
    run_dir, out = tmp_path / "run", tmp_path / "traj"
    args = [
        "trajectory",
        "--refs",
        f"base={tiny_model_dir}",
        "teacher=demos",
        "--runs",
        f"srft={run_dir}",
        "--data",
        tmp_path / "train.jsonl",
        "--template",
        "none",
        "--limit",
        4,
        "--max-new-tokens",
        6,
        "--out",
        out,
    ]
    assert analyze(*args) == 0
    report = json.loads((out / "trajectory.json").read_text())
    assert (out / "trajectory.png").stat().st_size > 1000
    points = report["runs"]["srft"]["points"]
    assert [p["step"] for p in points] == [0, 1, 2] and points[0]["initial"]
    acc = json.loads((run_dir / "summary.json").read_text())
    assert points[0]["accuracy"] == acc["accuracy_before"] and points[2]["accuracy"] == acc["accuracy_after"]
    assert points[1]["accuracy"] is None  # no evaluation at step 1
    assert points[0]["distances"]["base"] == 0.0  # step 0 is the base model itself
    assert points[2]["distances"]["base"] > 0.0
    assert report["reference_points"]["base"]["distances"]["base"] == 0.0
    assert report["references"]["teacher"]["kind"] == "text" and report["references"]["teacher"]["responses"] == 4
    for p in points:
        assert 0.0 <= p["distances"]["teacher"] <= 1.0

    def forbidden(*a, **k):
        raise AssertionError("everything is cached: no model may be loaded")

    monkeypatch.setattr(scoring, "load_model", forbidden)
    assert analyze(*args) == 0  # a second run reads the cache
    assert json.loads((out / "trajectory.json").read_text())["runs"] == report["runs"]


def test_toy_default_references(tmp_path, toy_tokenizer, monkeypatch):
    """--data toy without --refs: base (the toy base model), teacher (flawed demonstrations),
    solver (correct solutions); a run folder in the local backend's layout."""
    monkeypatch.setenv("SRFT_CACHE", str(tmp_path / "cache"))
    base = save_model(tmp_path / "cache" / f"toy-base-{toy.TASK.key()}", toy_tokenizer, seed=0)
    assert toy.base_model_path() == base
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": {"path": "toy"}}))
    for step, seed in ((100, 1), (200, 2)):
        save_model(run_dir / "checkpoints" / f"step-{step:06d}", toy_tokenizer, seed=seed)
    (run_dir / "checkpoints" / "latest").write_text("step-000200\n")
    (run_dir / "eval").mkdir()
    for step, correct in ((0, [1, 0, 0, 0]), (200, [1, 1, 1, 0])):
        (run_dir / "eval" / f"step-{step:06d}.jsonl").write_text(
            "".join(json.dumps({"correct": bool(c)}) + "\n" for c in correct)
        )
    out = tmp_path / "out"
    assert (
        analyze(
            "trajectory",
            "--runs",
            run_dir,
            "--models",
            f"final={run_dir}",
            "--data",
            "toy",
            "--limit",
            4,
            "--max-new-tokens",
            6,
            "--out",
            out,
        )
        == 0
    )
    report = json.loads((out / "trajectory.json").read_text())
    assert list(report["references"]) == ["base", "teacher", "solver"]
    points = report["runs"]["run"]["points"]
    assert [(p["step"], p["accuracy"]) for p in points] == [(0, 0.25), (100, None), (200, 0.75)]
    assert points[0]["distances"]["base"] == 0.0
    assert set(points[1]["group_distances"]["teacher"]) == {"chained_carry", "other"}
    assert report["models"]["final"]["distances"] == points[2]["distances"]
    assert (out / "trajectory.png").stat().st_size > 1000
