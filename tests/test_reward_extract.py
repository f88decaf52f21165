"""Final-answer extraction: </think>, last box, braces, fallbacks, garbage."""

from __future__ import annotations

import time

import pytest

from srft_openrlhf.reward import extract_answer, math_reward
from srft_openrlhf.reward.extract import boxed_spans, last_boxed, solution_part

# Not a speed target (benchmarks/bench_reward.py measures speed): a scan that is super-linear in
# these megabyte inputs takes minutes to hours, so this bound only catches that, on a busy machine too.
SUPERLINEAR_S = 30.0


@pytest.mark.parametrize(
    "response, expected",
    [
        # only the solution after the last </think> counts
        ("<think>maybe \\boxed{1}</think> so \\boxed{2}", "2"),
        ("<think>try \\boxed{1}</think> I do not know", None),
        ("<think>a</think> \\boxed{1} </think> \\boxed{3}", "3"),
        ("no think tags, \\boxed{4}", "4"),
        ("<think>the answer is 5</think> hmm", None),
        ("... \\boxed{5}</think>", None),
        # the last complete box wins
        ("\\boxed{1} first, then \\boxed{2}", "2"),
        ("\\boxed{1} and then a truncated \\boxed{2", "1"),
        ("the template says \\boxed{} but we found \\boxed{9} then \\boxed{}", "9"),
        # braces
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{{{5}}}", "{{5}}"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed{\\boxed{7}}", "7"),
        ("$\\boxed{5}$.", "5"),
        ("\\boxed{ 12 }", "12"),
        # other box forms
        ("\\boxed 5", "5"),
        ("so \\boxed 5.", "5."),
        ("\\fbox{3}", "3"),
        ("\\boxed\n{5}", None),  # a line break is not how anyone boxes
        ("\\boxedx{5}", None),  # another command, not a box
        # fallbacks without a box
        ("The answer is $12$.", "12"),
        ("Final answer: 42", "42"),
        ("so the answer is 7. Done.", "7"),
        ("**Answer:** 3", "3"),
        ("The answer is \\(\\frac{1}{2}\\) as shown", "\\frac{1}{2}"),
        ("I think it is 5, or 6", None),  # no last-number fallback (conservative)
        ("", None),
        # a box beats a later phrase
        ("\\boxed{5}. The answer is 6", "5"),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_solution_part():
    assert solution_part("a</think>b</think>c") == "c"
    assert solution_part("abc") == "abc"


def test_boxed_spans_positions():
    text = "x \\boxed{1} y \\fbox{{2}} z \\boxed 3"
    spans = boxed_spans(text)
    assert [content for *_, content in spans] == ["1", "{2}", "3"]
    assert [text[s:e] for s, e, _ in spans] == ["\\boxed{1}", "\\fbox{{2}}", "\\boxed 3"]


def test_deep_nesting_is_linear_and_exact():
    depth = 2000
    inner = "{" * depth + "5" + "}" * depth
    response = "\\boxed{" + inner + "}"
    start = time.perf_counter()
    assert extract_answer(response) == inner
    assert time.perf_counter() - start < SUPERLINEAR_S
    assert math_reward(response, "5", mode="oat") == 1.0  # outer braces are noise


GARBAGE = [
    None,
    "",
    b"\xff\xfe\x00\\boxed{1}",
    bytearray(b"\\boxed{2}"),
    12345,
    "x" * 1_000_000,
    "\\boxed{" * 150_000,  # a megabyte of unclosed boxes
    "{" * 500_000 + "}" * 10,
    "}" * 100_000 + "\\boxed{1}",
    "answer" + " " * 1_000_000 + "is",  # long whitespace after an anchor
    "\\boxed{\\frac{1}{" + "\\sqrt{" * 2000,
    "\x00\x01\x02" * 1000,
    "</think>" * 10_000,
]


@pytest.mark.parametrize("garbage", GARBAGE, ids=lambda g: repr(g)[:30])
def test_garbage_never_raises_and_is_fast(garbage):
    start = time.perf_counter()
    answer = extract_answer(garbage)
    assert answer is None or isinstance(answer, str)
    assert time.perf_counter() - start < SUPERLINEAR_S


def test_bytes_are_decoded():
    assert extract_answer(b"so \\boxed{42}") == "42"
    assert last_boxed("\\boxed{a}\\boxed{b}") == "b"
