"""Multiple-choice grading (ARC-C, GPQA-Diamond, MMLU-Pro): read the chosen letter.

Read from the text after the last ``</think>``; the occurrence that comes last in the
text wins among: ``\\boxed{C}`` (also ``\\boxed{\\text{C}}``, ``\\boxed{(C)}``,
``\\boxed{C) ...}``), ``ANSWER: C``, ``Answer: $C$``, ``The answer is (C)``,
``the final answer is **C**``. Letters are A–J (MMLU-Pro has ten options) and must be
capitals: "the answer is a function" is not a choice.

Gold answers may be letters or, as in 22 ARC-Challenge rows whose options are numbered
``1)``…``4)``, digits ``"1"``–``"10"`` (1 -> A). For a digit gold the response may answer
with the letter or with the digit.
"""

from __future__ import annotations

import re

from srft_openrlhf.reward.extract import as_text, boxed_spans, solution_part

LETTERS = "ABCDEFGHIJ"

_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm)\s*\{([^{}]*)\}")
_CHOICE = r"(?P<c>[A-J]|10|[1-9])"
# Box content: the choice alone, or followed by ")" / "." / ":" and the option text.
# "A + B" (an expression) and "1.5" (a number) are not choices.
_BOX_CHOICE = re.compile(r"^[\s(\[*]*" + _CHOICE + r"(?:[*\s]*$|\s*[)\]](?:.*)$|\s*[.:](?!\d).*$)", re.S)
# Bounded repetitions: a megabyte of spaces after "answer" must not backtrack quadratically.
_PHRASE_CHOICE = re.compile(
    r"(?i:\banswer)(?:\s{1,10}is)?[\s:*$({\[]{0,20}(?:(?i:option|choice)\s{1,5})?"
    r"(?:\\text(?:bf)?\{)?\(?" + _CHOICE + r"(?![A-Za-z0-9]|[.,/^]\d)"
)


def _as_letter(token: str, numbered: bool) -> str | None:
    if len(token) == 1 and token in LETTERS:
        return token
    if numbered and token.isdigit() and 1 <= int(token) <= len(LETTERS):
        return LETTERS[int(token) - 1]
    return None


def _candidates(text: str, numbered: bool) -> list[tuple[int, str]]:
    found = []
    for start, _, content in boxed_spans(text):
        content = _TEXT_WRAPPER.sub(r"\1", content).replace("$", "")
        match = _BOX_CHOICE.match(content)
        letter = match and _as_letter(match.group("c"), numbered)
        if letter:
            found.append((start, letter))
    for match in _PHRASE_CHOICE.finditer(text):
        letter = _as_letter(match.group("c"), numbered)
        if letter:
            found.append((match.start(), letter))
    return found


def extract_choice(response: object, numbered: bool = False) -> str | None:
    """The chosen letter "A".."J" (last occurrence wins), or None. With ``numbered``,
    answers "1".."10" are read too and returned as letters (1 -> A)."""
    candidates = _candidates(solution_part(as_text(response)), numbered)
    return max(candidates)[1] if candidates else None


def gold_to_letter(gold: object) -> str | None:
    """Dataset gold -> letter: "C", "c", "(C)", "C." -> "C"; "1".."10" -> "A".."J"."""
    token = as_text(gold).strip().strip("().:").strip().upper()
    return _as_letter(token, numbered=True)


def choice_reward(response: object, gold_letter: object) -> float:
    """1.0 if the response chose the gold option, else 0.0 (also for an unreadable gold).
    ``gold_letter``: "C", or "1".."10" for numbered options (then "\\boxed{3}" counts too)."""
    letter = gold_to_letter(gold_letter)
    if letter is None:
        return 0.0
    numbered = as_text(gold_letter).strip().isdigit()
    return 1.0 if extract_choice(response, numbered=numbered) == letter else 0.0
