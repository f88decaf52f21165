"""A small LaTeX parser for normalised answers, into sympy objects built through sympy's API
(never ``eval``: the text comes from the model). Stage 3 of the OAT-style grader
(``oat_grader``): whatever it does not understand is reported as unreadable (None), and the
grader then compares strings. Numbers and powers of more than ``MAX_DIGITS`` digits and answers
longer than ``MAX_ANSWER_CHARS`` are never handed to sympy."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import sympy

MAX_ANSWER_CHARS = 1000
MAX_DIGITS = 10_000


class _Unparsable(Exception):
    """The parser does not understand the input (compare as strings instead)."""


_TOKEN = re.compile(
    r"(?P<num>\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
    r"|(?P<cmd>\\[A-Za-z]+|\\[{}|])"
    r"|(?P<name>[A-Za-z])"
    r"|(?P<op>[-+*/^_!(){}\[\]|'])"
    r"|(?P<space>\s+)"
)
_GREEK = frozenset(
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu "
    "xi omicron rho varrho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda "
    "Xi Sigma Upsilon Phi Psi Omega hbar ell".split()
)
_FUNCTIONS: dict[str, Callable[[sympy.Expr], sympy.Expr]] = {
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "cot": sympy.cot,
    "sec": sympy.sec,
    "csc": sympy.csc,
    "arcsin": sympy.asin,
    "arccos": sympy.acos,
    "arctan": sympy.atan,
    "sinh": sympy.sinh,
    "cosh": sympy.cosh,
    "tanh": sympy.tanh,
    "ln": sympy.log,
    "exp": sympy.exp,
}
_MULTIPLY = frozenset({"*", "\\cdot", "\\times"})
_DIVIDE = frozenset({"/", "\\div"})


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise _Unparsable(text[pos : pos + 10])
        if match.lastgroup != "space":
            tokens.append(match.group())
        pos = match.end()
    return tokens


def _check_power_size(base: sympy.Expr, exponent: sympy.Expr) -> None:
    """Refuse powers whose exact value would have more than MAX_DIGITS digits: sympy
    computes integer powers eagerly and ``9^{9^{9^9}}`` would never finish."""
    if not (base.is_Number and exponent.is_Number):
        return
    try:
        size = abs(float(exponent)) * abs(math.log10(abs(float(base)))) if base != 0 else 0.0
    except (OverflowError, ValueError, TypeError):
        raise _Unparsable("power too large") from None
    if size > MAX_DIGITS:
        raise _Unparsable("power too large")


class _Parser:
    """Recursive descent over LaTeX tokens: expr := term (± term)*; term := factor
    (op factor | implicit factor)*; factor := ±factor | power; power := postfix (^ exp)?"""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise _Unparsable(f"expected {expected!r}, got {token!r}")
        self.i += 1
        return token

    def parse(self) -> sympy.Expr:
        value = self.expr()
        if self.peek() is not None:
            raise _Unparsable(f"unexpected {self.peek()!r}")
        return value

    def expr(self) -> sympy.Expr:
        value = self.term()
        while self.peek() in ("+", "-"):
            sign = self.take()
            rhs = self.term()
            value = value + rhs if sign == "+" else value - rhs
        return value

    def term(self) -> sympy.Expr:
        value = self.factor()
        while True:
            token = self.peek()
            if token in _MULTIPLY:
                self.take()
                value = value * self.factor()
            elif token in _DIVIDE:
                self.take()
                value = value / self.factor()
            elif self._starts_atom(token):
                value = value * self.power()
            else:
                return value

    def factor(self) -> sympy.Expr:
        if self.peek() in ("+", "-"):
            sign = self.take()
            value = self.factor()
            return -value if sign == "-" else value
        return self.power()

    def power(self) -> sympy.Expr:
        base = self.postfix()
        if self.peek() != "^":
            return base
        self.take("^")
        exponent = self.group() if self.peek() == "{" else self.factor()
        _check_power_size(base, exponent)
        return base**exponent

    def postfix(self) -> sympy.Expr:
        value = self.atom()
        while self.peek() == "!":
            self.take()
            if value.is_Number and abs(float(value)) > 5000:
                raise _Unparsable("factorial too large")
            value = sympy.factorial(value)
        return value

    def group(self) -> sympy.Expr:
        """``{...}`` or a single atom (LaTeX argument)."""
        if self.peek() == "{":
            self.take("{")
            value = self.expr()
            self.take("}")
            return value
        return self.atom()

    def _starts_atom(self, token: str | None) -> bool:
        if token is None:
            return False
        if token in ("(", "{", "["):
            return True
        if token[0].isdigit() or token[0] == "." or (len(token) == 1 and token.isalpha()):
            return True
        return token.startswith("\\") and token not in _MULTIPLY | _DIVIDE | {"\\}", "\\rfloor", "\\rceil"}

    def _subscript(self) -> str:
        """Raw subscript text (``_{max}`` -> ``max``), used only to name a symbol."""
        self.take("_")
        if self.peek() != "{":
            return self.take()
        self.take("{")
        depth = 1
        parts: list[str] = []
        while True:
            token = self.take()
            depth += token == "{"
            depth -= token == "}"
            if depth == 0:
                return "".join(parts)
            parts.append(token)

    def atom(self) -> sympy.Expr:
        token = self.take()
        if token[0].isdigit() or token[0] == ".":
            if self.peek() == "_":  # 52_8: a number in base 8, only equal to itself
                return sympy.Symbol(f"{token}_{self._subscript()}")
            _, _, exponent = token.lower().partition("e")
            if exponent and abs(int(exponent)) > MAX_DIGITS:  # Rational("1e100000000") never finishes
                raise _Unparsable("number too large")
            return sympy.Rational(token)
        if token in ("(", "["):
            value = self.expr()
            self.take(")" if token == "(" else "]")
            return value
        if token == "{":
            value = self.expr()
            self.take("}")
            return value
        if len(token) == 1 and token.isalpha():
            return self._symbol(token)
        if token.startswith("\\"):
            return self._command(token[1:])
        raise _Unparsable(token)

    def _symbol(self, name: str) -> sympy.Expr:
        if self.peek() == "_":
            name = f"{name}_{self._subscript()}"
        while self.peek() == "'":
            name += self.take()
        if name == "e":
            return sympy.E
        if name == "i":
            return sympy.I
        return sympy.Symbol(name)

    def _command(self, name: str) -> sympy.Expr:
        if name == "frac":
            numerator = self.group()
            return numerator / self.group()
        if name == "sqrt":
            if self.peek() == "[":
                self.take("[")
                index = self.expr()
                self.take("]")
                return sympy.root(self.group(), index)
            return sympy.sqrt(self.group())
        if name == "binom":
            top = self.group()
            return sympy.binomial(top, self.group())
        if name == "pi":
            return sympy.pi
        if name == "infty":
            return sympy.oo
        if name in ("lfloor", "lceil"):
            value = self.expr()
            self.take("\\rfloor" if name == "lfloor" else "\\rceil")
            return sympy.floor(value) if name == "lfloor" else sympy.ceiling(value)
        if name == "log":
            base = None
            if self.peek() == "_":
                self.take("_")
                base = self.group()
            argument = self._function_argument()
            return sympy.log(argument) if base is None else sympy.log(argument, base)
        if name in _FUNCTIONS:
            power = None
            if self.peek() == "^":
                self.take("^")
                power = self.group()
            value = _FUNCTIONS[name](self._function_argument())
            return value if power is None else value**power
        if name in _GREEK:
            return self._symbol(name)
        raise _Unparsable("\\" + name)

    def _function_argument(self) -> sympy.Expr:
        if self.peek() in ("(", "{", "["):
            return self.atom()
        return self.power()


def parse_latex(text: str) -> sympy.Expr | None:
    """A sympy expression for a normalised LaTeX answer, or None if we cannot read it."""
    if not text or len(text) > MAX_ANSWER_CHARS:
        return None
    try:
        value = _Parser(_tokenize(text)).parse()
    except Exception:  # sympy raises many types on odd input; unreadable means "compare as strings"
        return None
    return value if isinstance(value, sympy.Expr) else None
