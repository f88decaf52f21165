"""Find the final answer in a model response (the input of the reward, Eq. A2).

Rules, in order:
1. Only the text after the last ``</think>`` is graded when the response has one: the
   reasoning may try and discard many candidate answers before the solution section.
2. The last complete ``\\boxed{...}`` / ``\\fbox{...}`` wins (balanced braces, nesting,
   ``\\boxed 5`` without braces). A box left open by truncation is skipped in favour of the
   previous complete one; empty boxes (the template's own ``\\boxed{}``) are skipped.
3. Without a box, the last "answer is X" / "Answer: X" phrase is used. There is
   deliberately no "last number in the text" fallback: it would reward responses that
   never commit to an answer, which RL then learns to exploit.

Everything here is linear in the response length (one pass over the braces), so 1 MB
responses and 2000 nested braces cost milliseconds, never a recursion error.
"""

from __future__ import annotations

import re

THINK_END = "</think>"

# `\boxed` / `\fbox` not followed by another letter (so `\boxedx` is not a box), then spaces.
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])[ \t]*")
# `\boxed 5`: LaTeX takes the next token; we take the next run of chars other than
# spaces, `$` and braces.
_BRACELESS_ARGUMENT = re.compile(r"[^\s${}]+")
_BRACE = re.compile(r"[{}]")
_ANSWER_PHRASE = re.compile(r"(?i:\banswer)\s*(?:is|:|=)\s*:?[ \t]*\**[ \t]*(?P<rest>[^\n]*)")
_INLINE_MATH = re.compile(r"^\$+(?P<m>[^$]+)\$+|^\\\((?P<p>.+?)\\\)|^\\\[(?P<b>.+?)\\\]")
# A fallback answer longer than this is prose, not an answer.
_MAX_PHRASE_ANSWER_CHARS = 200


def as_text(value: object) -> str:
    """Coerce any input (None, bytes, numbers) to str without raising."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    try:
        return str(value)
    except Exception:
        return ""


def solution_part(response: str) -> str:
    """The text after the last ``</think>``, or the whole response when there is none."""
    cut = response.rfind(THINK_END)
    return response if cut < 0 else response[cut + len(THINK_END) :]


def _matching_braces(text: str, wanted: set[int]) -> dict[int, int]:
    """For each opening-brace index in ``wanted``, the index of its closing brace.

    One stack pass over all braces; escaped ``\\{`` / ``\\}`` (set braces) are not
    structural. An unbalanced opening brace is simply absent from the result.
    """
    closing: dict[int, int] = {}
    stack: list[int] = []
    for match in _BRACE.finditer(text):
        pos = match.start()
        if pos > 0 and text[pos - 1] == "\\" and not (pos > 1 and text[pos - 2] == "\\"):
            continue
        if text[pos] == "{":
            stack.append(pos)
        elif stack:
            opened = stack.pop()
            if opened in wanted:
                closing[opened] = pos
    return closing


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """All complete boxes as ``(start, end, content)`` in text order; ``text[start:end]``
    is the whole box command and ``content`` its stripped argument."""
    commands = list(_BOX_COMMAND.finditer(text))
    if not commands:
        return []
    opening = {m.end() for m in commands if text.startswith("{", m.end())}
    closing = _matching_braces(text, opening)
    spans: list[tuple[int, int, str]] = []
    for m in commands:
        if m.end() in opening:
            if m.end() in closing:
                end = closing[m.end()] + 1
                spans.append((m.start(), end, text[m.end() + 1 : end - 1].strip()))
            continue
        arg = _BRACELESS_ARGUMENT.match(text, m.end())
        if arg is not None:
            spans.append((m.start(), arg.end(), arg.group()))
    return spans


def _unwrap_nested_box(content: str) -> str:
    """``\\boxed{\\boxed{5}}`` -> ``5`` (only when the whole content is one box)."""
    while True:
        spans = boxed_spans(content)
        if not spans or spans[0][0] != 0 or spans[0][1] != len(content):
            return content
        content = spans[0][2]


def last_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty box in ``text``."""
    for _, _, content in reversed(boxed_spans(text)):
        content = _unwrap_nested_box(content).strip()
        if content:
            return content
    return None


def _answer_phrase(text: str) -> str | None:
    """The X of the last "answer is X" / "Answer: X" (first math span or first sentence)."""
    matches = list(_ANSWER_PHRASE.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    rest = last.group("rest").strip()
    math = _INLINE_MATH.match(rest)
    if math is not None:
        rest = next(g for g in math.groups() if g is not None)
    else:
        rest = re.split(r"\.\s|\*\*|;|$", rest, maxsplit=1)[0]
    rest = rest.strip().rstrip(".").strip()
    if not rest or len(rest) > _MAX_PHRASE_ANSWER_CHARS:
        return None
    return rest


def extract_answer(response: str) -> str | None:
    """The final answer of a response (after the last ``</think>``), or None.

    Last complete ``\\boxed{}``/``\\fbox{}`` first, else the last "answer is X" phrase.
    Never raises: None, bytes and other garbage give None or a string.
    """
    text = solution_part(as_text(response))
    answer = last_boxed(text)
    if answer is None:
        answer = _answer_phrase(text)
    if answer is None:
        return None
    answer = answer.strip().strip("$").strip()
    return answer or None
