"""evaluation.metrics against hand-computed cases and a brute-force pass@k."""

from __future__ import annotations

import itertools
from fractions import Fraction
from math import comb

import pytest

from evaluation.metrics import (
    Sample,
    avg_at_k,
    benchmark_metrics,
    group_average,
    mean_pass_at_k,
    pass_at_k,
    report_ks,
)
from srft_openrlhf.data.benchmarks import IN_DISTRIBUTION


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Fraction of all k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration_over_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), abs=1e-12)


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (2, 1, 1, 0.5),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (10, 3, 1, 0.3),  # pass@1 = c/n
        (32, 0, 8, 0.0),
        (32, 25, 8, 1.0),  # fewer than k wrong samples: every subset has a correct one
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_large_n_is_stable():
    # The binomials overflow float64 here; the product form must match exact rationals.
    n, c, k = 1200, 7, 300
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, 1, 5), (4, 1, 0), (4, -1, 1)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_avg_at_k_is_mean_of_per_problem_accuracy():
    # problem 1: 2 of 4 right, problem 2: 4 of 4, problem 3: 1 of 4 -> (0.5 + 1 + 0.25) / 3
    correct = [[True, False, False, True], [True] * 4, [False, False, True, False]]
    assert avg_at_k(correct) == pytest.approx(1.75 / 3)
    assert mean_pass_at_k(correct, 1) == pytest.approx(avg_at_k(correct))
    # pass@2: 1 - C(2,2)/C(4,2) = 5/6, 1, 1 - C(3,2)/C(4,2) = 1/2
    assert mean_pass_at_k(correct, 2) == pytest.approx((5 / 6 + 1 + 0.5) / 3)


def test_report_ks():
    assert report_ks(1) == [1]
    assert report_ks(5) == [1, 2, 4, 5]
    assert report_ks(32) == [1, 2, 4, 8, 16, 32]


def test_benchmark_metrics_hand_computed():
    problems = {
        "a": [Sample(True, 10, False, True, False), Sample(False, 30, True, False, False)],
        "b": [Sample(True, 20, False, True, True), Sample(True, 40, False, None, True)],
    }
    m = benchmark_metrics(problems)
    assert m["problems"] == 2 and m["samples"] == 4 and m["samples_per_problem"] == 2
    assert m["metric"] == "avg@2"
    assert m["score"] == pytest.approx(0.75)
    assert m["pass_at_k"] == {"1": pytest.approx(0.75), "2": pytest.approx(1.0)}
    assert m["mean_tokens"] == pytest.approx(25.0)
    assert m["truncation_rate"] == pytest.approx(0.25)
    assert m["math_verify"] == pytest.approx(0.5)  # an undecided (None) verdict counts as wrong
    assert m["oat"] == pytest.approx(0.5)


def test_benchmark_metrics_single_sample_is_pass_at_1_and_choice_has_no_math_graders():
    problems = {str(i): [Sample(i % 3 == 0, 5, False)] for i in range(6)}
    m = benchmark_metrics(problems, math=False)
    assert m["metric"] == "pass@1" and m["score"] == pytest.approx(2 / 6)
    assert m["math_verify"] is None and m["oat"] is None
    assert benchmark_metrics(problems)["math_verify"] == 0.0  # math: no verdict at all is wrong


def test_benchmark_metrics_unequal_sample_counts_use_the_smallest_for_pass_at_k():
    m = benchmark_metrics({"a": [Sample(True)] * 4, "b": [Sample(False)] * 2})
    assert m["samples_per_problem"] == [2, 4]
    assert list(m["pass_at_k"]) == ["1", "2"]
    assert m["mean_tokens"] is None


def test_group_average_needs_every_member():
    scores = {name: 0.1 * (i + 1) for i, name in enumerate(IN_DISTRIBUTION)}
    assert group_average(scores, IN_DISTRIBUTION) == pytest.approx(0.3)
    del scores["minerva"]
    assert group_average(scores, IN_DISTRIBUTION) is None
