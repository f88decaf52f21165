"""Multiple-choice letters: formats, last occurrence, </think>, numbered golds, garbage."""

from __future__ import annotations

import time

import pytest

from srft_openrlhf.reward import choice_reward, extract_choice
from srft_openrlhf.reward.choice import gold_to_letter

# Not a speed target (benchmarks/bench_reward.py measures speed): a scan that is super-linear in
# these megabyte inputs takes minutes to hours, so this bound only catches that, on a busy machine too.
SUPERLINEAR_S = 30.0


@pytest.mark.parametrize(
    "response, expected",
    [
        ("so \\boxed{C}", "C"),
        ("so \\boxed{\\text{C}}", "C"),
        ("so \\boxed{\\textbf{(C)}}", "C"),
        ("so \\boxed{(C)}", "C"),
        ("so \\boxed{C) 10^-4 eV}", "C"),
        ("so \\boxed{C. Planetary days}", "C"),
        ("$\\boxed{D}$", "D"),
        ("ANSWER: C", "C"),
        ("ANSWER: $C$", "C"),  # GPQA's prompt asks for 'ANSWER: $LETTER'
        ("Answer: C", "C"),
        ("The answer is (C).", "C"),
        ("the answer is C.", "C"),
        ("**Answer:** B", "B"),
        ("Final answer: \\textbf{D}", "D"),
        ("The correct answer is option B", "B"),
        ("\\boxed{J}", "J"),  # MMLU-Pro has ten options
        # last occurrence wins, across formats
        ("Answer: A ... on reflection \\boxed{B}", "B"),
        ("\\boxed{B} hmm, no. ANSWER: D", "D"),
        ("The answer is (A). The answer is (C).", "C"),
        # only the solution after </think>
        ("<think>Answer: A</think> ANSWER: C", "C"),
        ("<think>\\boxed{A}</think> no idea", None),
        # not choices
        ("\\boxed{A + B}", None),
        ("the answer is a function of x", None),
        ("\\boxed{42}", None),
        ("\\boxed{K}", None),
        ("nothing here", None),
        ("", None),
    ],
)
def test_extract_choice(response, expected):
    assert extract_choice(response) == expected


def test_numbered_options_read_digits_only_when_asked():
    assert extract_choice("\\boxed{2}", numbered=True) == "B"
    assert extract_choice("ANSWER: 4", numbered=True) == "D"
    assert extract_choice("\\boxed{10}", numbered=True) == "J"
    assert extract_choice("\\boxed{2}") is None
    assert extract_choice("\\boxed{1.5}", numbered=True) is None  # a number, not option 1
    assert extract_choice("the answer is 10^5", numbered=True) is None


@pytest.mark.parametrize(
    "gold, letter",
    [
        ("C", "C"),
        ("c", "C"),
        ("(C)", "C"),
        ("C.", "C"),
        (" B ", "B"),
        ("1", "A"),
        ("4", "D"),
        ("10", "J"),
        ("Z", None),
        ("11", None),
        ("", None),
        (None, None),
    ],
)
def test_gold_letter(gold, letter):
    assert gold_to_letter(gold) == letter


@pytest.mark.parametrize(
    "response, gold, reward",
    [
        ("\\boxed{C}", "C", 1.0),
        ("\\boxed{C}", "B", 0.0),
        ("\\boxed{C}", "3", 1.0),  # ARC rows with numbered options: 3 -> C
        ("\\boxed{3}", "3", 1.0),  # ... and the model may answer with the number
        ("\\boxed{2}", "3", 0.0),
        ("\\boxed{3}", "C", 0.0),  # a letter gold does not read digits
        ("\\boxed{C}", "Z", 0.0),  # unreadable gold: 0, never an exception
        ("<think>\\boxed{C}</think>", "C", 0.0),
    ],
)
def test_choice_reward(response, gold, reward):
    assert choice_reward(response, gold) == reward


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        b"\xff\\boxed{A}",
        7,
        "A" * 1_000_000,
        "answer" + " " * 1_000_000 + "C",
        "Answer:" * 100_000,
        "\\boxed{" * 100_000,
        "\\boxed{" + "{" * 2000 + "A" + "}" * 2000 + "}",
    ],
    ids=lambda g: repr(g)[:30],
)
def test_garbage_never_raises_and_is_fast(garbage):
    start = time.perf_counter()
    assert choice_reward(garbage, "A") in (0.0, 1.0)
    assert time.perf_counter() - start < SUPERLINEAR_S
