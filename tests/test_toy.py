"""The toy task of the quick start: problems, (flawed) demonstrations, splits, tokenizer, base model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import pytest
from helpers import subprocess_env

from srft_openrlhf.data import toy
from srft_openrlhf.reward import math_reward

# A fast variant for tests: same problems and demonstrations, a base model built in a second.
TINY = dataclasses.replace(
    toy.TASK, hidden_size=64, intermediate_size=64, num_heads=2, num_layers=1, pretrain_steps=3, pretrain_batch=4
)


def operands(prompt: str) -> tuple[int, int]:
    a, b = prompt.removesuffix("=?").split("+")
    return int(a), int(b)


def test_worked_solution_by_hand():
    lines, answer = toy.column_steps(347, 285)
    assert lines == ["7+5=12", "4+8+1=13", "3+2+1=6"] and answer == 632
    assert toy.solution_text(lines, "632") == "<think>\n7+5=12\n4+8+1=13\n3+2+1=6\n</think> \\boxed{632}"
    # the teacher's bug: the chained carry into the hundreds is dropped, the answer follows from it
    assert toy.column_steps(347, 285, forget={2}) == (["7+5=12", "4+8+1=13", "3+2=5"], 532)
    assert toy.column_steps(999, 999) == (["9+9=18", "9+9+1=19", "9+9+1=19"], 1998)


def test_column_steps_match_integer_addition():
    for a in range(100, 1000, 37):
        for b in range(100, 1000, 41):
            assert toy.column_steps(a, b)[1] == a + b
            dropped = toy.column_steps(a, b, forget={2} if toy.chained_carry(a, b) else set())[1]
            assert dropped == (a + b - 100 if toy.chained_carry(a, b) else a + b)


def test_student_forgets_carries_at_its_rate():
    """The base's pre-training text: every carry written at carry_rate 1, none at 0, and at
    0.15 about 15% of the carries into the tens."""
    import random

    rng = random.Random(0)
    assert toy.student_solution(347, 285, rng, 1.0) == toy.solution_text(*toy._correct(347, 285))
    assert toy.student_solution(347, 285, rng, 0.0) == toy.solution_text(["7+5=12", "4+8=12", "3+2=5"], "522")
    assert toy.student_solution(341, 225, rng, 0.0) == toy.solution_text(*toy._correct(341, 225))  # no carry
    written = [toy.student_solution(358, 226, rng, 0.15).count("+1=") for _ in range(4000)]  # only the tens can carry
    assert 0.12 < sum(written) / len(written) < 0.18


def test_chained_carry_definition():
    assert toy.chained_carry(347, 285)  # 7+5 carries, 4+8+1 carries
    assert not toy.chained_carry(341, 285)  # units do not carry
    assert not toy.chained_carry(317, 215)  # tens with the carry: 1+1+1 = 3
    assert toy.chained_carry(191, 109)  # 1+9 = 10, 9+0+1 = 10


def test_demonstrations_graded_by_math_reward():
    """Correct demonstrations earn reward 1; both kinds of flawed ones earn 0."""
    examples = toy.examples("train")
    rng_kinds = []
    import random

    rng = random.Random(toy.TASK.seed + 1)
    for ex in examples[:300]:
        a, b = operands(ex.prompt)
        text, kind = toy.demonstration(a, b, rng)
        assert text == ex.demonstration
        assert text.startswith("<think>\n") and "</think> \\boxed{" in text
        assert math_reward(text, ex.answer) == (1.0 if kind == "correct" else 0.0), (kind, text)
        rng_kinds.append(kind)
    assert {"correct", "wrong_step", "wrong_answer"} == set(rng_kinds)


def test_flaw_shares_are_as_documented():
    counts = toy.flaw_counts()
    total = sum(counts.values())
    assert total == toy.TASK.train_size
    chained = sum(toy.chained_carry(*operands(e.prompt)) for e in toy.examples("train"))
    assert 0.20 < chained / total < 0.32  # chained carries: about a quarter of problems
    assert 0.45 < counts["wrong_step"] / chained < 0.55  # half of them with the bug
    others = total - chained
    assert 0.08 < counts["wrong_answer"] / others < 0.12  # typo_rate 10%


def test_wrong_answer_flaw_keeps_the_steps_right():
    import random

    rng = random.Random(0)
    task = dataclasses.replace(toy.TASK, typo_rate=1.0)
    text, kind = toy.demonstration(341, 285, rng, task)
    assert kind == "wrong_answer"
    assert text.startswith("<think>\n1+5=6\n4+8=12\n3+2+1=6\n</think>")
    boxed = text.split("\\boxed{")[1].rstrip("}")
    assert boxed != "626" and len(boxed) == 3 and sum(x != y for x, y in zip(boxed, "626")) == 1


def test_heldout_disjoint_from_training_and_graded_correct():
    heldout, train = toy.examples("heldout"), toy.examples("train")
    assert len(heldout) == toy.TASK.heldout_size and len(train) == toy.TASK.train_size
    pairs = {tuple(sorted(operands(e.prompt))) for e in heldout}
    assert len(pairs) == len(heldout)
    assert not pairs & {tuple(sorted(operands(e.prompt))) for e in train}
    assert all(math_reward(e.demonstration, e.answer) == 1.0 for e in heldout)
    groups = [toy.problem_group(e.prompt) for e in heldout]
    assert 0.15 < groups.count("chained_carry") / len(groups) < 0.35


def test_examples_are_deterministic():
    assert toy.examples("train")[:50] == toy.examples("train")[:50]
    with pytest.raises(ValueError):
        toy.examples("test")


# ----------------------------------------------------------------------------- validation split


def assert_disjoint(splits: dict[str, list[tuple[int, int]]]) -> None:
    """No problem (as an unordered pair, 347+285 = 285+347) in two of ``splits``, none twice in one."""
    keys = {name: [tuple(sorted(p)) for p in pairs] for name, pairs in splits.items()}
    for name, ks in keys.items():
        assert len(set(ks)) == len(ks), f"{name} repeats a problem"
    names = list(keys)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared = set(keys[first]) & set(keys[second])
            assert not shared, f"{first} and {second} share {sorted(shared)[:3]}"


def toy_splits() -> dict[str, list[tuple[int, int]]]:
    return {
        split: [operands(e.prompt) for e in toy.examples(split)] for split in ("heldout", "train", "validation")
    } | {"base pre-training": sorted(toy.pretrain_problems())}


def test_validation_split_is_disjoint_and_graded_like_heldout():
    """200 problems drawn like the training ones (uniform operands: the chained-carry share of
    the training split), graded like the held-out ones (the true sum, correct demonstrations),
    sharing no problem with the held-out, training or base pre-training problems."""
    splits = toy_splits()
    validation = toy.examples("validation")
    assert len(validation) == toy.TASK.validation_size == 200
    assert_disjoint(splits)
    assert all(e.source == "toy:validation" and e.answer == str(sum(operands(e.prompt))) for e in validation)
    assert all(math_reward(e.demonstration, e.answer) == 1.0 for e in validation)
    assert [e.row for e in validation] == list(range(200))
    share = {s: sum(toy.chained_carry(*p) for p in splits[s]) / len(splits[s]) for s in ("train", "validation")}
    assert 0.15 < share["validation"] < 0.35 and abs(share["validation"] - share["train"]) < 0.06


def test_a_planted_overlap_is_caught(monkeypatch):
    """The disjointness check above can fail: a held-out problem planted into the validation
    split with its operands swapped, and a validation draw that forgets its exclusions."""
    splits = toy_splits()
    a, b = splits["heldout"][7]
    planted = dict(splits, validation=[*splits["validation"][:-1], (b, a)])
    with pytest.raises(AssertionError, match="heldout and validation share"):
        assert_disjoint(planted)

    real = toy._pairs
    size = toy.TASK.validation_size
    monkeypatch.setattr(
        toy, "_pairs", lambda rng, count, exclude: real(rng, count, set() if count == size else exclude)
    )
    toy._validation_pairs.cache_clear()
    try:
        with pytest.raises(AssertionError, match="share"):
            assert_disjoint(toy_splits())
    finally:
        toy._validation_pairs.cache_clear()


def test_validation_split_leaves_train_heldout_and_base_model_as_they_were():
    """Hashes of the training and held-out examples and the base model's cache key, computed
    with the code of commit 6cb6dd2, BEFORE the validation split was added (the quick start's
    results and every toy test depend on them): drawing the validation problems after both
    splits, with validation_size kept out of the base model's key, changes none of them."""
    digest = lambda split: hashlib.sha256(  # noqa: E731
        json.dumps([dataclasses.asdict(e) for e in toy.examples(split)], sort_keys=True).encode()
    ).hexdigest()
    assert digest("train") == "c0bdd62126331e189b1fecda2e8a1ec7c7844156296fedde74af114e9704d4a4"
    assert digest("heldout") == "da86a0f70cc0caded41bf12041395f4570f062eec755a6ddac0007fa534d363f"
    assert toy.TASK.key() == "ba154424bb0edcc9"
    assert dataclasses.replace(toy.TASK, validation_size=50).key() == toy.TASK.key()


def test_pretrain_problems_are_the_ones_the_base_is_trained_on(tmp_path, monkeypatch):
    """``pretrain_problems`` replays the base pre-training's draws: the problems the real
    pre-training loop draws (recorded from ``_pairs``) are exactly those."""
    drawn: list[tuple[int, int]] = []
    real = toy._pairs

    def recording(rng, count, exclude):
        out = real(rng, count, exclude)
        if count == TINY.pretrain_batch:
            drawn.extend(out)
        return out

    monkeypatch.setattr(toy, "_pairs", recording)
    monkeypatch.setattr(
        toy,
        "base_stats",
        lambda *a, **k: {k: 0.0 for k in ("greedy_heldout", "greedy_heldout_chained_carry", "sampled_train")},
    )
    toy.pretrain_base_model(TINY, tmp_path, log=lambda m: None)
    monkeypatch.undo()
    assert len(drawn) == TINY.pretrain_steps * TINY.pretrain_batch
    assert toy.pretrain_problems(TINY) == {tuple(sorted(p)) for p in drawn}
    assert toy.pretrain_problems(dataclasses.replace(TINY, seed=TINY.seed + 1)) != toy.pretrain_problems(TINY)


def test_toy_validation_is_an_eval_source_only():
    from srft_openrlhf.config import DataConfig
    from srft_openrlhf.data.example import TOY_VALIDATION
    from srft_openrlhf.data.sources import config_examples
    from srft_openrlhf.errors import ConfigError

    assert config_examples(TOY_VALIDATION, DataConfig(), heldout=True) == toy.examples("validation")
    assert len(config_examples(TOY_VALIDATION, DataConfig(max_eval_rows=30), heldout=True)) == 30
    with pytest.raises(ConfigError, match="use it as data.eval"):
        config_examples(TOY_VALIDATION, DataConfig(train=TOY_VALIDATION))


# what a fresh interpreter makes of the toy task: the data and the tokenizer's ids
_TOY_DIGEST = """
import dataclasses, hashlib, json
from srft_openrlhf.data import toy
tok = toy.build_tokenizer()
data = [dataclasses.asdict(e) for split in ("train", "heldout", "validation") for e in toy.examples(split)]
text = "347+285=?<think>\\n7+5=12\\n4+8+1=13\\n3+2+1=6\\n</think> \\\\boxed{632}"
parts = {"data": data, "vocab": sorted(tok.get_vocab().items()), "ids": tok(text)["input_ids"]}
print(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest())
"""


def test_toy_data_and_tokenizer_are_the_same_in_every_process():
    """Two interpreters with different hash seeds (str hashes, set order) build the same toy
    examples and the same token ids, and so does this one."""
    digests = []
    for hash_seed in ("1", "2"):
        env = {**subprocess_env(), "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", _TOY_DIGEST], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        digests.append(out.stdout.strip())
    here = {}
    exec(_TOY_DIGEST.replace("print(", "here['digest'] = ("), {"here": here})
    assert len(digests[0]) == 64 and digests == [here["digest"]] * 2


def test_tokenizer_round_trip_one_token_per_character():
    tok = toy.build_tokenizer()
    text = "347+285=?<think>\n7+5=12\n4+8+1=13\n3+2+1=6\n</think> \\boxed{632}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[:9] == list("347+285=?") and pieces[9] == "<think>" and "\\boxed{" in pieces
    assert len(ids) == len(text) - len("<think></think>\\boxed{") + 3  # one token per character
    assert all(len(tok.convert_ids_to_tokens([i])[0]) == 1 for i in tok("0123456789")["input_ids"])
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == text
    other = "Héllo, wörld \\frac{1}{2}\n\n  x"  # any text: every byte has a token
    assert tok.decode(tok(other, add_special_tokens=False)["input_ids"]) == other


def test_saved_tokenizer_reloads_identically_by_path(tmp_path):
    """A folder with a Qwen2 config makes AutoTokenizer rebuild the tokenizer as Qwen2Tokenizer
    from its vocabulary; it must encode the training texts exactly as the in-memory one
    (a character-level tokenizer saved there lost every space and newline)."""
    from transformers import AutoTokenizer, Qwen2Config

    tok = toy.build_tokenizer()
    tok.save_pretrained(tmp_path)
    Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        num_hidden_layers=1,
    ).save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = [t for ex in toy.examples("train")[:50] for t in (ex.prompt, ex.demonstration)]
    for text in texts + ["<eos>", " \n\n 1 "]:
        assert loaded(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert (loaded.eos_token_id, loaded.pad_token_id, len(loaded)) == (tok.eos_token_id, tok.pad_token_id, len(tok))


def test_base_model_built_once_cached_by_settings(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logs = []
    path = toy.base_model_path(TINY, cache_dir=tmp_path, log=logs.append)
    assert path.name == f"toy-base-{TINY.key()}" and (path / "config.json").is_file()
    assert json.loads((path / "toy_task.json").read_text())["pretrain_steps"] == 3
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary folder left
    built = len(logs)
    assert toy.base_model_path(TINY, cache_dir=tmp_path, log=logs.append) == path and len(logs) == built
    assert dataclasses.replace(TINY, pretrain_steps=4).key() != TINY.key()
    assert dataclasses.replace(TINY, typo_rate=0.3).key() == TINY.key()  # demonstrations only

    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    text = toy.examples("train")[0].demonstration
    assert tok(text)["input_ids"] == toy.build_tokenizer()(text)["input_ids"]  # the cached base reloads by path
    stats = json.loads((path / toy.BASE_STATS_FILE).read_text())
    assert set(stats) == {"greedy_heldout", "greedy_heldout_chained_carry", "sampled_train"}
    assert any("sampled accuracy" in line for line in logs)  # printed at build
    assert model.config.num_attention_heads * 32 == model.config.hidden_size  # head_dim 32 (vLLM CPU)
    ids = tok("347+285=?", return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 3)


def test_interrupted_build_leaves_no_cache_entry(tmp_path, monkeypatch):
    def crash(task, out, log):
        (out / "config.json").write_text("{}")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(toy, "pretrain_base_model", crash)
    with pytest.raises(KeyboardInterrupt):
        toy.base_model_path(TINY, cache_dir=tmp_path, log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []
