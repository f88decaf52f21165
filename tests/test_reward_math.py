"""Math answer equivalence: pairs judged equal, pairs judged different, both graders.

Each pair is (prediction, gold, who, reason). ``who`` says which grader must reach the
verdict on its own: "both", "oat" (our normaliser; math-verify may disagree) or "mv"
(math-verify only, e.g. unordered sets where our grader is deliberately ordered). The
default mode ("either") must always give the expected verdict, in both argument orders
for symmetric pairs.
"""

from __future__ import annotations

import pytest

from srft_openrlhf.errors import ConfigError
from srft_openrlhf.reward import MathGrade, grade_math, math_reward
from srft_openrlhf.reward.math_grader import GradingTimeout, clean_ground_truth, time_limit
from srft_openrlhf.reward.oat_grader import normalize, oat_equal, parse_latex

EQUAL = [
    ("\\frac{1}{2}", "0.5", "both", "fraction vs decimal"),
    ("\\dfrac{3}{4}", "\\frac{3}{4}", "both", "\\dfrac is \\frac"),
    ("\\tfrac{3}{4}", "0.75", "both", "\\tfrac vs decimal"),
    ("\\frac12", "\\frac{1}{2}", "both", "\\frac12 shorthand"),
    ("\\frac 59", "\\frac{5}{9}", "both", "spaced shorthand"),
    ("\\frac9{19}", "9/19", "both", "half-braced shorthand vs slash"),
    ("\\sqrt2", "\\sqrt{2}", "both", "\\sqrt2 shorthand"),
    ("11\\sqrt2", "11\\sqrt{2}", "both", "coefficient and shorthand"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", "both", "rationalised denominator"),
    ("\\sqrt{8}", "2\\sqrt{2}", "both", "simplified radical"),
    ("\\sqrt[3]{8}", "2", "both", "cube root"),
    ("50\\%", "0.5", "both", "percent vs fraction of one"),
    ("50\\%", "50", "both", "percent sign dropped"),
    ("62.5", "62.5\\%", "oat", "gold with percent (math-verify: no)"),
    ("0.625", "62.5%", "both", "plain % in gold"),
    ("x = 5", "5", "both", "assignment in prediction"),
    ("5", "x=5", "both", "assignment in gold"),
    ("k=1", "1", "both", "other variable name"),
    ("y = 2x + 3", "2x+3", "both", "line written as y ="),
    ("f(x) = x+1", "x+1", "oat", "function definition"),
    ("1,000", "1000", "both", "thousands separator"),
    ("10{,}080", "10,\\!080", "both", "two thousands spellings"),
    ("10080", "10,\\!080", "both", "separator vs none"),
    ("\\$32,348", "\\$32,\\!348", "both", "dollar sign and thin space"),
    ("\\$ 18.90", "18.90", "both", "dollar sign"),
    ("90^\\circ", "90", "both", "degree sign"),
    ("90^{\\circ}", "90", "both", "braced degree sign"),
    ("30 degrees", "30^\\circ", "oat", "unit word vs degree sign"),
    ("864 \\text{ square inches}", "864 \\mbox{ inches}^2", "both", "text units"),
    ("5.4 \\text{ cents}", "5.4", "both", "unit dropped"),
    ("\\frac{270}{7}", "\\frac{270}7\\text{ degrees}", "both", "shorthand frac plus unit"),
    ("\\text{Evelyn}", "Evelyn", "both", "\\text around a name"),
    ("East", "\\text{east}", "oat", "names compare case-insensitively"),
    ("\\text{(C)}", "C", "both", "letter answer in \\text{(C)}"),
    ("(C)", "\\text{(C)}", "both", "letter in parentheses"),
    ("5.", "5", "both", "trailing period"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi/2)", "both", "\\left/\\right and tuple"),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", "both", "tuple element forms"),
    ("[-2, 7]", "x \\in [-2,7]", "both", "interval with membership"),
    ("(3, 4]", "(3,4]", "both", "half-open interval"),
    ("(-\\infty, 0]", "(-\\infty,0]", "both", "infinite endpoint"),
    ("(0,9) \\cup (9,36)", "(0,9)\\cup(9,36)", "both", "union of intervals"),
    (
        "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
        "\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\\\ \\frac53 \\end{pmatrix}",
        "both",
        "matrix entries",
    ),
    (
        "\\begin{bmatrix} -1 & 0 \\\\ 0 & -1 \\end{bmatrix}",
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
        "both",
        "bmatrix vs pmatrix",
    ),
    ("3, 5, 7", "3,5,7", "both", "list spacing"),
    ("7, 5, 3", "3, 5, 7", "mv", "solution set order (ours is ordered)"),
    ("2x+2", "2(x+1)", "both", "expanded polynomial"),
    ("x^2+2x+1", "(x+1)^2", "both", "square expanded"),
    ("\\frac{x}{2}", "0.5x", "both", "coefficient forms"),
    ("2k+2", "2(k+1)", "both", "another variable"),
    ("6 - 5i", "6-5i", "both", "complex spacing"),
    ("1+2i", "2i+1", "both", "complex order"),
    ("\\pi", "3.14159265358979", "oat", "decimal of pi within tolerance"),
    ("0.333333", "\\frac{1}{3}", "both", "six-digit decimal"),
    ("1.25", "\\frac{5}{4}", "both", "decimal vs fraction"),
    (".0000672", "0.0000672", "both", "leading dot"),
    ("4.5 \\times 10^{33}", "4.5e33", "oat", "Minerva e-notation (math-verify reads e as Euler's e)"),
    ("3.83e35", "3.83\\times10^{35}", "oat", "e-notation vs times (math-verify: no)"),
    ("1e-5", "0.00001", "oat", "negative e-notation exponent (math-verify: no)"),
    ("2^{10}", "1024", "both", "power evaluated"),
    ("10^{-2}", "0.01", "both", "negative power"),
    ("-\\frac{\\pi}{6}", "-\\pi/6", "both", "negative fraction of pi"),
    ("\\frac{-1}{1997}", "-\\frac{1}{1997}", "both", "sign placement"),
    ("-0.875", "-\\frac{7}{8}", "both", "negative decimal"),
    ("e^{t}/3", "\\frac{e^t}{3}", "both", "exponential"),
    ("\\ln 2 + i\\pi/3", "\\ln 2+\\frac{i\\pi}{3}", "both", "complex logarithm"),
    ("\\cos^2 x + \\sin^2 x", "1", "oat", "identity, by evaluation"),
    ("\\left\\lfloor \\frac{7}{2} \\right\\rfloor", "3", "oat", "floor"),
    ("\\binom{5}{2}", "10", "both", "binomial"),
    ("4!", "24", "both", "factorial"),
    ("a=2, a=-6-4\\sqrt{2}", "2,-6-4\\sqrt{2}", "both", "assignments in a list"),
    ("52_8", "52_{8}", "both", "base subscript braces"),
    ("(1,1), (3,2)", "(1,1),(3,2)", "both", "list of pairs"),
]

DIFFERENT = [
    ("0.5", "50", "percent rescaling needs a % sign"),
    ("\\frac{1}{3}", "0.33", "two digits are too coarse"),
    ("204.01", "204", "integers must match exactly"),
    ("205", "204", "off by one"),
    ("11", "12", "integers"),
    ("-1", "1", "sign"),
    ("-5", "5", "sign"),
    ("(3,4)", "(3,4]", "open vs half-open interval"),
    ("[3,4]", "(3,4)", "closed vs open"),
    ("(-\\infty, 0)", "(-\\infty, 0]", "endpoint included"),
    ("(1,2)", "(2,1)", "ordered pair"),
    ("(1,2,3)", "(1,2)", "tuple length"),
    ("1,2", "1,2,3", "list length"),
    ("(1,1),(3,2)", "(1,1),(2,3)", "one pair swapped"),
    ("[1,2]", "[1,3]", "interval endpoint"),
    ("x^2", "2x", "different expressions"),
    ("2n", "2k", "different variables"),
    ("x+1", "x-1", "sign of a term"),
    ("\\frac{x}{2}", "2x", "half vs double"),
    ("\\sin x", "\\cos x", "different functions"),
    ("e^{2t}", "e^{t}", "different exponent"),
    ("2k+2", "2k+1", "constant term"),
    ("\\sqrt{2}", "2", "root vs radicand"),
    ("\\sqrt{2}", "1.41", "three digits are too coarse"),
    ("\\pi", "3.14", "pi to two decimals"),
    ("3\\sqrt{13}", "\\sqrt{39}", "coefficient outside the root"),
    ("\\frac{\\sqrt{3}}{3}", "\\sqrt{3}", "missing denominator"),
    ("\\frac{2}{3}", "\\frac{3}{2}", "inverted fraction"),
    ("\\frac{1}{2}", "\\frac{1}{4}", "different fraction"),
    ("\\frac{7}{4}", "1.74", "close decimal"),
    ("6+5i", "6-5i", "conjugate"),
    ("2+\\sqrt{3}", "2-\\sqrt{3}", "conjugate radical"),
    ("\\text{even}", "\\text{odd}", "different words"),
    ("\\text{Evelyn}", "\\text{Navin}", "different names"),
    ("east", "west", "different directions"),
    ("C", "\\text{(B)}", "different letters"),
    ("A", "B", "different letters, bare"),
    ("1.325e-27", "2.88e-19", "tiny numbers: no absolute tolerance"),
    ("1.3e-27", "1.325e-27", "tiny numbers: relative tolerance"),
    ("\\infty", "-\\infty", "opposite infinities"),
    ("10^{100}", "10^{101}", "big powers"),
    ("2^{1009}", "2^{1008}", "huge integers"),
    ("1.6", "1.7", "decimals"),
    ("4.49", "4.5", "rounding is not equality"),
    ("0.001", "0.0011", "small decimals"),
    ("1000", "100", "magnitude"),
    ("x=5", "x=6", "assignment values"),
    ("y=2x+3", "y=3x+2", "different lines"),
    ("5x-7y+11z+4=0", "5x-7y+11z-4=0", "different planes"),
    ("52_8", "42", "a base-8 numeral is not its decimal value"),
    ("\\ln 2", "\\ln 3", "logarithms"),
    ("\\log_{2} 8", "2", "log base 2 of 8 is 3"),
    ("5!", "24", "factorial"),
    ("\\binom{6}{2}", "\\binom{6}{3}", "binomials"),
    ("50\\%", "5", "percent of a different number"),
    ("12\\pi", "12", "missing pi"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", "vector order"),
    ("\\{1,2\\}", "\\{1,3\\}", "different sets"),
    ("\\frac{4}{9}", "\\frac{4}{7}", "denominator"),
    ("0", "1", "zero vs one"),
    ("3", "\\frac{1}{3}", "reciprocal"),
]


def _ids(pairs):
    return [f"{p} | {g}" for p, g, *_ in pairs]


def boxed(answer: str) -> str:
    return f"<think>\nsome work\n</think>\nThe answer is $\\boxed{{{answer}}}$."


@pytest.mark.parametrize("pred, gold, who, reason", EQUAL, ids=_ids(EQUAL))
def test_equal_pairs(pred, gold, who, reason):
    grade = grade_math(boxed(pred), gold)
    assert grade.correct, reason
    if who in ("both", "oat"):
        assert grade.oat, f"our grader: {reason}"
    if who in ("both", "mv"):
        assert grade.math_verify, f"math-verify: {reason}"
    if who == "both":  # symmetric pairs must hold the other way round too
        assert grade_math(boxed(gold), pred).correct, reason


@pytest.mark.parametrize("pred, gold, reason", DIFFERENT, ids=_ids(DIFFERENT))
def test_different_pairs(pred, gold, reason):
    for response, truth in ((boxed(pred), gold), (boxed(gold), pred)):
        grade = grade_math(response, truth)
        assert not grade.correct, reason
        assert grade.oat is False and grade.math_verify is False, reason


def test_modes_run_only_their_grader():
    assert grade_math(boxed("1/2"), "0.5", mode="oat") == MathGrade(True, "1/2", None, True)
    assert grade_math(boxed("1/2"), "0.5", mode="math_verify") == MathGrade(True, "1/2", True, None)
    # Our grader keeps list order; math-verify reads a set: "either" takes the yes.
    assert math_reward(boxed("7, 5, 3"), "3, 5, 7", mode="oat") == 0.0
    assert math_reward(boxed("7, 5, 3"), "3, 5, 7", mode="math_verify") == 1.0
    assert math_reward(boxed("7, 5, 3"), "3, 5, 7") == 1.0


def test_unknown_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="reward mode 'majority'"):
        math_reward("\\boxed{1}", "1", mode="majority")


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("\\boxed{204}", "204"),  # AIME24 in the hpt files
        ("$\\frac{1}{2 n+2}$", "\\frac{1}{2 n+2}"),  # OlympiadBench keeps $...$
        ("$69$,$84$", "69,84"),
        ("$(-\\infty, 0) \\cup\\{1\\}$.", "(-\\infty, 0) \\cup\\{1\\}"),
        ("\\$32,\\!348", "\\$32,\\!348"),  # an escaped dollar is content
        (7, "7"),  # parquet golds may be numbers
        (None, ""),
    ],
)
def test_clean_ground_truth(raw, clean):
    assert clean_ground_truth(raw) == clean


def test_boxed_ground_truth_grades_like_bare():
    assert math_reward("so \\boxed{204}", "\\boxed{204}") == 1.0
    assert math_reward("so \\boxed{205}", "\\boxed{204}") == 0.0


def test_no_answer_scores_zero_and_reports_none():
    assert grade_math("I am not sure.", "5") == MathGrade(False, None, None, None)
    assert math_reward("\\boxed{5}", "") == 0.0


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("864 \\mbox{ inches}^2", "864"),
        ("\\$32,\\!348", "32348"),
        ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}"),
        ("x \\in [-2,7]", "[-2,7]"),
        (".0000672", "0.0000672"),
        ("11\\sqrt2", "11\\sqrt{2}"),
        ("\\text{(C)}", "C"),
        ("{5}", "5"),
        ("\\frac{37}{4} m", "\\frac{37}{4}m"),  # a bare "m" may be a variable: kept
    ],
)
def test_normalize(raw, normal):
    assert normalize(raw) == normal


def test_parser_refuses_giant_powers_instead_of_hanging():
    assert parse_latex("9^{9^{9^{9}}}") is None
    assert parse_latex("2^{1009}") == 2**1009
    assert not oat_equal("9^{9^{9^{9}}}", "1")


def test_parser_never_evaluates_text():
    # sympy's parse_expr would eval this; our parser only knows LaTeX tokens.
    assert parse_latex("__import__('os').system('true')") is None
    assert not oat_equal("__import__('os')", "1")


def test_time_limit_interrupts_and_restores_outer_timer():
    import signal
    import time

    outer_before = signal.getitimer(signal.ITIMER_REAL)[0]  # pytest-timeout's, if any
    started = time.monotonic()
    with pytest.raises(GradingTimeout):
        with time_limit(0.2):
            time.sleep(2)
    assert time.monotonic() - started < 1.5
    outer_after = signal.getitimer(signal.ITIMER_REAL)[0]
    assert (outer_after > 0) == (outer_before > 0) and outer_after <= outer_before
    # An in-process grading that overruns scores 0 instead of raising.
    grade = grade_math(boxed("9^{9^{9^{9}}}"), "1", mode="math_verify", timeout_s=0.5)
    assert grade == MathGrade(False, "9^{9^{9^{9}}}", None, None)
