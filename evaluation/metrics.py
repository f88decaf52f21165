"""Scores of one benchmark from graded samples: avg@k, pass@1, unbiased pass@k, lengths.

The paper reports avg@32 on AIME24 and AMC (the mean accuracy over 32 samples per problem)
and pass@1 with one sample elsewhere; both are the same estimator, the mean of c_i / n_i over
problems. pass@k for k > 1 uses the unbiased estimator of Chen et al. (2021).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """What the metrics need from one graded sample."""

    correct: bool
    n_tokens: int | None = None  # None: unknown (generations graded with evaluation.grade)
    truncated: bool | None = None
    math_verify: bool | None = None
    oat: bool | None = None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem (Chen et al. 2021, Eq. 1): 1 - C(n-c, k) / C(n, k).

    Evaluated as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which avoids the huge binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def avg_at_k(correct: Sequence[Sequence[bool]]) -> float:
    """avg@k: the mean over problems of the fraction of correct samples (= pass@1)."""
    if not correct:
        raise ValueError("avg@k of no problems")
    return sum(sum(c) / len(c) for c in correct) / len(correct)


def mean_pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k averaged over problems; every problem needs at least k samples."""
    return sum(pass_at_k(len(c), sum(c), k) for c in correct) / len(correct)


def report_ks(n_min: int) -> list[int]:
    """The k of the reported pass@k: powers of two up to the smallest sample count, and it."""
    ks = [k for k in (2**i for i in range(n_min.bit_length())) if k <= n_min]
    return ks + ([n_min] if n_min not in ks else [])


def _mean_known(samples: Sequence[Sample], field: str) -> float | None:
    """Mean of a field over the samples that have it, None if none has."""
    values = [getattr(s, field) for s in samples if getattr(s, field) is not None]
    return sum(values) / len(values) if values else None


def _grader_accuracy(samples: Sequence[Sample], field: str) -> float:
    """Accuracy by one grader alone; a sample it did not accept (False, or None: no answer
    found, timed out) counts as wrong."""
    return sum(getattr(s, field) is True for s in samples) / len(samples)


def benchmark_metrics(problems: Mapping[str, Sequence[Sample]], math: bool = True) -> dict:
    """Metrics of one benchmark; ``problems`` maps a problem id to its samples.

    ``score`` is avg@k with k the samples per problem (the number Table 2 shows); for a math
    benchmark, ``math_verify`` / ``oat`` are the accuracies either grader alone would give.
    """
    groups = [list(s) for s in problems.values() if s]
    if not groups:
        raise ValueError("no graded samples")
    correct = [[s.correct for s in g] for g in groups]
    flat = [s for g in groups for s in g]
    n_min, n_max = min(map(len, groups)), max(map(len, groups))
    return {
        "problems": len(groups),
        "samples": len(flat),
        "samples_per_problem": n_min if n_min == n_max else [n_min, n_max],
        "score": avg_at_k(correct),
        "metric": f"avg@{n_min}" if n_min == n_max and n_min > 1 else "pass@1",
        "pass_at_k": {str(k): mean_pass_at_k(correct, k) for k in report_ks(n_min)},
        "mean_tokens": _mean_known(flat, "n_tokens"),
        "truncation_rate": _mean_known(flat, "truncated"),
        "math_verify": _grader_accuracy(flat, "math_verify") if math else None,
        "oat": _grader_accuracy(flat, "oat") if math else None,
    }


def group_average(scores: Mapping[str, float], members: Sequence[str]) -> float | None:
    """The Avg. column of Table 2: the plain mean over its benchmarks, None unless all are present
    (an average over a subset would not be comparable with the paper's)."""
    if not all(m in scores for m in members):
        return None
    return sum(scores[m] for m in members) / len(members)
