"""Answer extraction and grading: the verifiable reward of the paper (Eq. A2).

- ``math_reward`` / ``grade_math``: math answers, by math-verify and/or our OAT-style
  normalising grader (``mode``: "either" | "math_verify" | "oat").
- ``choice_reward`` / ``extract_choice``: multiple-choice letters.
- ``batch_rewards``: a batch in worker processes with a per-sample timeout; ``grade``: the
  same with a run's ``rollout.*`` settings.

Importing this package does not import math-verify (it loads on first grading).
"""

from srft_openrlhf.reward.batch import BatchRewards, batch_rewards, grade
from srft_openrlhf.reward.choice import choice_reward, extract_choice
from srft_openrlhf.reward.extract import extract_answer
from srft_openrlhf.reward.math_grader import MODES, MathGrade, grade_math, math_reward

__all__ = [
    "MODES",
    "BatchRewards",
    "MathGrade",
    "batch_rewards",
    "choice_reward",
    "extract_answer",
    "extract_choice",
    "grade",
    "grade_math",
    "math_reward",
]
