"""OAT-style normalising answer grader: our second opinion next to math-verify.

In the spirit of the graders of OAT / Dr. GRPO (itself derived from Hendrycks' MATH
normaliser and PRM800K's sympy check), written here from scratch:

1. ``normalize`` rewrites both answers into one canonical LaTeX spelling (no ``\\left``,
   units, ``\\text{}``, spaces, degrees, ``\\$``, trailing dots, ``\\dfrac``; ``\\frac12``
   and ``\\sqrt2`` shorthands braced; thousands separators dropped; ``x = 5`` -> ``5``).
2. Equal strings are equal. Otherwise the gold's structure drives the comparison:
   ``\\cup`` unions, matrices, intervals / tuples (same brackets, same length, element by
   element, in order), bare comma lists (element by element, in order: unlike
   math-verify, which treats them as sets), equations (sides compared up to sign).
3. Elements are parsed by a small LaTeX parser written here into sympy objects (built
   through sympy's API, never ``eval``: the text comes from the model) and compared:
   numbers with a relative tolerance (integers exactly; ``50%`` equals ``0.5`` and ``50``),
   expressions by evaluation at fixed pseudo-random points.

Anything the parser does not understand is compared as a normalised string only, so the
grader errs towards "wrong". Answers longer than ``MAX_ANSWER_CHARS`` and powers that
would build numbers of more than ``MAX_DIGITS`` digits are never handed to sympy.
"""

from __future__ import annotations

import math
import re

import sympy

from srft_openrlhf.reward.latex import MAX_ANSWER_CHARS, parse_latex

NUMBER_REL_TOL = 1e-4  # as OAT/Qwen's numeric check; integers are matched exactly
EXPRESSION_REL_TOL = 1e-9  # at 30 digits, equal expressions agree far beyond this
EVALUATION_NOISE = 1e-20  # |x| below this counts as 0 when evaluating at sample points
# Irrational-looking values in (0.5, 2): away from the roots and poles answers tend to have.
_SAMPLE_POINTS = (0.5772156649, 1.3247179572, 1.1560939428)

# ---------------------------------------------------------------- normalisation

_DOLLAR = re.compile(r"\\\$|(?<!\\)\$")
_TEXT_UNIT_AT_END = re.compile(r"(?<=[\d}])\s*\\(?:text|mbox|mathrm|textrm)\s*\{[A-Za-z~ .]*\}(?:\^\{?\d\}?)?\s*$")
_PLAIN_UNIT_AT_END = re.compile(
    r"(?<=[\d}])\s+(?:square\s+|sq\.?\s*|cubic\s+)?"
    r"(?:units?|degrees?|cm|mm|km|meters?|metres?|inches|inch|feet|foot|ft|miles?|"
    r"cents?|dollars?|hours?|minutes?|seconds?|days?|weeks?|years?|mph|pounds?|points?)"
    r"(?:\^\{?\d\}?)?\s*$"
)
_TEXT_COMMAND = re.compile(
    r"\\(?:text|textbf|textit|textrm|texttt|mbox|mathrm|mathbf|mathit|mathsf|boldsymbol|"
    r"operatorname)\s*\{([^{}]*)\}"
)
_INVISIBLE_DELIMITER = re.compile(r"\\(?:left|right)\.")
_SIZING = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![A-Za-z])")
_SPACING = re.compile(r"(?<!\\)\\[,;:! ]|\\q?quad(?![A-Za-z])|~|\\displaystyle(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])")
_FRAC_VARIANT = re.compile(r"\\[dt]frac(?![A-Za-z])")
_FRAC_TWO_CHARS = re.compile(r"\\frac(\w)(\w)")
_FRAC_CHAR_THEN_GROUP = re.compile(r"\\frac(\w)\{")
_FRAC_GROUP_THEN_CHAR = re.compile(r"(\\frac\{[^{}]*\})(\w)")
_SQRT_CHAR = re.compile(r"\\sqrt(\w)")
_LEADING_DOT = re.compile(r"(?<![\w}.])\.(\d)")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_ASSIGNMENT = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[\w\\]+\}?)?(?:\([A-Za-z]\))?(?:=|\\in(?![A-Za-z]))(?!=)")
_LETTER_IN_PARENS = re.compile(r"^\(([A-Z])\)$")


def _strip_units(s: str) -> str:
    """``864 \\mbox{ inches}^2`` -> ``864``; only after a number (or a closing brace)."""
    for pattern in (_TEXT_UNIT_AT_END, _PLAIN_UNIT_AT_END):
        stripped = pattern.sub("", s)
        if stripped.strip():
            s = stripped
    return s


def _unwrap_text_commands(s: str) -> str:
    """``\\text{Evelyn}`` -> ``Evelyn``, innermost first (bounded: no pathological loops)."""
    for _ in range(10):
        unwrapped = _TEXT_COMMAND.sub(r"\1", s)
        if unwrapped == s:
            break
        s = unwrapped
    return s


def _strip_outer_braces(s: str) -> str:
    """``{{5}}`` -> ``5``: drop brace pairs that wrap the whole string (one pass)."""
    closing, stack = {}, []
    for i, c in enumerate(s):
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            closing[stack.pop()] = i
    depth = 0
    while depth < len(s) - 1 - depth and s[depth] == "{" and closing.get(depth) == len(s) - 1 - depth:
        depth += 1
    return s[depth : len(s) - depth]


def strip_assignment(s: str) -> str:
    """``x=5`` -> ``5``, ``f(x)=2x`` -> ``2x``, ``x\\in[-2,7]`` -> ``[-2,7]`` (spaces removed)."""
    match = _ASSIGNMENT.match(s)
    if match is None or not s[match.end() :]:
        return s
    return s[match.end() :]


def normalize(answer: str) -> str:
    """One canonical spelling of an answer (see the module docstring)."""
    s = _DOLLAR.sub("", answer.strip())
    s = _strip_units(s)
    s = _unwrap_text_commands(s)
    s = _INVISIBLE_DELIMITER.sub("", s)
    s = _SIZING.sub("", s)
    s = _SPACING.sub(" ", s)
    s = _DEGREES.sub("", s)
    s = _FRAC_VARIANT.sub(r"\\frac", s)
    s = s.replace("\\%", "%").replace("{,}", ",")
    s = re.sub(r"\s+", "", s).rstrip(".")
    s = _FRAC_TWO_CHARS.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_CHAR_THEN_GROUP.sub(r"\\frac{\1}{", s)
    s = _FRAC_GROUP_THEN_CHAR.sub(r"\1{\2}", s)
    s = _SQRT_CHAR.sub(r"\\sqrt{\1}", s)
    s = _LEADING_DOT.sub(r"0.\1", s)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    s = _strip_outer_braces(s)
    s = strip_assignment(s)
    letter = _LETTER_IN_PARENS.match(s)
    return letter.group(1) if letter else s


# ---------------------------------------------------------------- structure

_OPENERS = "([{"
_CLOSERS = ")]}"


def _closing_index(s: str, start: int) -> int:
    """Index of the bracket closing ``s[start]`` (any bracket type closes any), or -1."""
    depth = 0
    for i in range(start, len(s)):
        if s[i] in _OPENERS:
            depth += 1
        elif s[i] in _CLOSERS:
            depth -= 1
            if depth == 0:
                return i
    return -1


def split_top_level(s: str, separator: str = ",") -> list[str]:
    """Split on ``separator`` outside any brackets (``\\{``, ``\\}`` count as brackets)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in _OPENERS:
            depth += 1
        elif c in _CLOSERS:
            depth -= 1
        elif depth == 0 and s.startswith(separator, i):
            parts.append(s[start:i])
            i += len(separator)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _wrapping_brackets(s: str) -> tuple[str, str, str] | None:
    """``(a,b]`` -> ``("(", "a,b", "]")`` when one bracket pair wraps the whole string.
    Escaped set braces ``\\{...\\}`` are reported as ``"\\{"`` / ``"\\}"``."""
    if s.startswith("\\{") and s.endswith("\\}") and len(s) >= 4:
        inner = s[2:-2]
        if _closing_index("{" + inner + "}", 0) == len(inner) + 1:
            return "\\{", inner, "\\}"
        return None
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _closing_index(s, 0) == len(s) - 1:
        return s[0], s[1:-1], s[-1]
    return None


_MATRIX = re.compile(r"^\\begin\{([pbvBV]?matrix)\}(.*)\\end\{\1\}$", re.S)


def _matrix_cells(s: str) -> list[list[str]] | None:
    match = _MATRIX.match(s)
    if match is None:
        return None
    rows = [r for r in match.group(2).split("\\\\") if r]
    return [row.split("&") for row in rows]


def oat_equal(prediction: str, gold: str) -> bool:
    """OAT-style equivalence of two answer strings (not symmetric: ``gold`` drives the
    structure). Never raises for string inputs; ``False`` when unsure."""
    pred, ref = normalize(prediction), normalize(gold)
    if not pred or not ref:
        return False
    if pred == ref:
        return True
    if len(pred) > MAX_ANSWER_CHARS or len(ref) > MAX_ANSWER_CHARS:
        return False
    return _structured_equal(pred, ref)


def _structured_equal(pred: str, ref: str) -> bool:
    pred, ref = strip_assignment(pred), strip_assignment(ref)
    if pred == ref:
        return True
    for separator in ("\\cup", ","):
        ref_parts = split_top_level(ref, separator)
        if len(ref_parts) > 1:
            pred_parts = split_top_level(pred, separator)
            return len(pred_parts) == len(ref_parts) and all(
                _structured_equal(p, r) for p, r in zip(pred_parts, ref_parts)
            )
    ref_matrix = _matrix_cells(ref)
    if ref_matrix is not None:
        pred_matrix = _matrix_cells(pred)
        return (
            pred_matrix is not None
            and [len(r) for r in pred_matrix] == [len(r) for r in ref_matrix]
            and all(_element_equal(p, r) for pr, rr in zip(pred_matrix, ref_matrix) for p, r in zip(pr, rr))
        )
    ref_wrapped = _wrapping_brackets(ref)
    if ref_wrapped is not None and len(split_top_level(ref_wrapped[1])) > 1:
        pred_wrapped = _wrapping_brackets(pred)
        if pred_wrapped is None or (pred_wrapped[0], pred_wrapped[2]) != (ref_wrapped[0], ref_wrapped[2]):
            return False
        pred_items, ref_items = split_top_level(pred_wrapped[1]), split_top_level(ref_wrapped[1])
        return len(pred_items) == len(ref_items) and all(_structured_equal(p, r) for p, r in zip(pred_items, ref_items))
    return _element_equal(pred, ref)


def _is_word(s: str) -> bool:
    return len(s) >= 3 and s.isalpha()


def _element_equal(pred: str, ref: str) -> bool:
    """Equality of two single answers (no top-level commas)."""
    pred, ref = strip_assignment(pred), strip_assignment(ref)
    if pred == ref:
        return True
    if _is_word(pred) or _is_word(ref):
        # Multi-letter words ("Evelyn", "even") are names, not products of symbols.
        return pred.casefold() == ref.casefold()
    if pred.count("=") == 1 and ref.count("=") == 1:
        return _equation_equal(pred, ref)
    if "=" in pred or "=" in ref:
        return False
    if pred.endswith("%") or ref.endswith("%"):
        return _percent_equal(pred, ref)
    a, b = parse_latex(pred), parse_latex(ref)
    return a is not None and b is not None and sympy_equal(a, b)


def _equation_equal(pred: str, ref: str) -> bool:
    """``a = b`` vs ``c = d``: equal when a - b = ±(c - d)."""
    parsed = [parse_latex(side) for side in pred.split("=") + ref.split("=")]
    sides = [side for side in parsed if side is not None]
    if len(sides) != len(parsed):
        return False
    left, right = sides[0] - sides[1], sides[2] - sides[3]
    return sympy_equal(left, right) or sympy_equal(left, -right)


def _percent_equal(pred: str, ref: str) -> bool:
    """``50%`` equals ``0.5`` and ``50``; two plain numbers are never rescaled."""
    candidates = []
    for text in (pred, ref):
        value = parse_latex(text.rstrip("%"))
        if value is None:
            return False
        candidates.append([value, value / 100] if text.endswith("%") else [value])
    return any(sympy_equal(a, b) for a in candidates[0] for b in candidates[1])


# ---------------------------------------------------------------- sympy comparison


def _as_complex(value: sympy.Expr) -> complex | None:
    try:
        number = complex(sympy.N(value, 30))
    except (TypeError, ValueError, ArithmeticError):
        return None
    if math.isnan(number.real) or math.isnan(number.imag):
        return None
    return number


def _close(a: complex, b: complex, rel_tol: float, abs_tol: float) -> bool:
    if math.isinf(abs(a)) or math.isinf(abs(b)):
        return a == b
    return abs(a - b) <= max(rel_tol * max(abs(a), abs(b)), abs_tol)


def sympy_equal(a: sympy.Expr, b: sympy.Expr) -> bool:
    """Numbers: within NUMBER_REL_TOL (two integers: exactly). Expressions with symbols:
    equal values at fixed pseudo-random points (a handful of evaluations instead of
    ``simplify``, which can take minutes)."""
    try:
        if a == b:
            return True
        if a.is_Integer and b.is_Integer:
            return False
        symbols = sorted(a.free_symbols | b.free_symbols, key=str)
        if not symbols:
            # An integer on either side (AIME-style answers) must match exactly.
            rel_tol = EXPRESSION_REL_TOL if a.is_Integer or b.is_Integer else NUMBER_REL_TOL
            va, vb = _as_complex(a), _as_complex(b)
            # Purely relative: Minerva's answers go down to 1e-27.
            return va is not None and vb is not None and _close(va, vb, rel_tol, 0.0)
        agreeing = 0
        for k, offset in enumerate(_SAMPLE_POINTS):
            point = {s: sympy.Float(offset + 0.37 * j + 0.11 * k) for j, s in enumerate(symbols)}
            va, vb = _as_complex(a.subs(point)), _as_complex(b.subs(point))
            if va is None or vb is None:
                continue
            if not _close(va, vb, EXPRESSION_REL_TOL, EVALUATION_NOISE):
                return False
            agreeing += 1
        return agreeing >= 2
    except Exception:  # an expression sympy cannot evaluate is not proven equal
        return False
