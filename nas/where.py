"""A tiny, safe filter language for ``--where`` (layer L0: standard library only).

Examples::

    energy_per_sample_j < 0.002 and weight_bits <= 8
    attention == "linear" or attention in ("local", "lowrank")
    not is_estimate and 0.8 <= accuracy < 0.95

Grammar (keywords are case-insensitive)::

    expr       := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | comparison
    comparison := operand ((OP operand)+ | ["not"] "in" list)?      OP: < <= > >= == !=
    operand    := NUMBER | STRING | "true" | "false" | NAME | "(" expr ")"
    list       := ("(" | "[") [literal ("," literal)* [","]] (")" | "]")

Nothing is ever evaluated as Python: the text is tokenised and parsed by hand into a small tree, which is
walked against a dict of values. Chained comparisons read as in Python (``a < b < c`` is
``a < b and b < c``). Any comparison that involves a missing value (``None``, NaN) or values of
incomparable types is False. A bare name is true when its value is truthy.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nas.errors import ConfigError

__all__ = ["MAX_EXPR_CHARS", "MAX_DEPTH", "Predicate", "compile_where", "names_read"]

#: Longest expression accepted, in characters.
MAX_EXPR_CHARS = 500
#: Deepest nesting of parentheses and ``not`` accepted.
MAX_DEPTH = 32

_KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false"})
_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|==|!=|<|>)
  | (?P<punct>[(),\[\]])
  | (?P<sign>[-+])
    """,
    re.VERBOSE,
)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, name, keyword, op, punct, sign, end
    text: str
    col: int  # 1-based column of the first character
    value: Any = None


# --- syntax tree ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Literal:
    value: Any


@dataclass(frozen=True)
class _Name:
    name: str


@dataclass(frozen=True)
class _Compare:
    operands: tuple[_Node, ...]
    ops: tuple[str, ...]


@dataclass(frozen=True)
class _In:
    operand: _Node
    options: tuple[Any, ...]
    negated: bool


@dataclass(frozen=True)
class _Not:
    operand: _Node


@dataclass(frozen=True)
class _BoolOp:
    op: str  # "and" | "or"
    operands: tuple[_Node, ...]


_Node = _Literal | _Name | _Compare | _In | _Not | _BoolOp


def _syntax_error(expr: str, col: int, message: str) -> ConfigError:
    caret = " " * (col - 1) + "^"
    return ConfigError(
        f"syntax error at column {col}: {message}\n  {expr}\n  {caret}",
        field="--where",
        fix='write comparisons joined by and/or/not, e.g. energy_per_sample_j < 0.002 and attention == "linear"',
    )


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", r"\1", body)


def _tokenize(expr: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if m is None:
            ch = expr[pos]
            hint = " (attribute access is not allowed)" if ch == "." else ""
            raise _syntax_error(expr, pos + 1, f"unexpected character {ch!r}{hint}")
        kind = m.lastgroup or ""
        text = m.group()
        col = pos + 1
        pos = m.end()
        if kind == "ws":
            continue
        if kind == "number":
            tokens.append(_Token("number", text, col, float(text) if any(c in text for c in ".eE") else int(text)))
        elif kind == "string":
            tokens.append(_Token("string", text, col, _unescape(text[1:-1])))
        elif kind == "name":
            low = text.lower()
            if low in _KEYWORDS:
                tokens.append(_Token("keyword", low, col))
            else:
                tokens.append(_Token("name", text, col))
        else:
            tokens.append(_Token(kind, text, col))
    tokens.append(_Token("end", "", len(expr) + 1))
    return tokens


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = _tokenize(expr)
        self.i = 0
        self.depth = 0

    # -- helpers
    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def _advance(self) -> _Token:
        t = self.tokens[self.i]
        self.i += 1
        return t

    def _is(self, kind: str, text: str | None = None) -> bool:
        t = self.tok
        return t.kind == kind and (text is None or t.text == text)

    def _describe(self, t: _Token) -> str:
        return "the end of the expression" if t.kind == "end" else repr(t.text)

    def _error(self, message: str, t: _Token | None = None) -> ConfigError:
        t = t or self.tok
        return _syntax_error(self.expr, t.col, message)

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self._error(f"nesting deeper than {MAX_DEPTH} levels")

    # -- grammar
    def parse(self) -> _Node:
        if self.tok.kind == "end":
            raise self._error("the expression is empty")
        node = self._or()
        if self.tok.kind != "end":
            raise self._error(f"unexpected {self._describe(self.tok)}; expected and, or, or the end")
        return node

    def _or(self) -> _Node:
        parts = [self._and()]
        while self._is("keyword", "or"):
            self._advance()
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else _BoolOp("or", tuple(parts))

    def _and(self) -> _Node:
        parts = [self._not()]
        while self._is("keyword", "and"):
            self._advance()
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else _BoolOp("and", tuple(parts))

    def _not(self) -> _Node:
        if self._is("keyword", "not"):
            self._advance()
            self._enter()
            node = _Not(self._not())
            self.depth -= 1
            return node
        return self._comparison()

    def _comparison(self) -> _Node:
        left = self._operand()
        if self._is("keyword", "in") or (
            self._is("keyword", "not") and self.tokens[self.i + 1].kind == "keyword"
            and self.tokens[self.i + 1].text == "in"
        ):
            negated = self._advance().text == "not"
            if negated:
                self._advance()
            return _In(left, self._list(), negated)
        operands = [left]
        ops: list[str] = []
        while self._is("op"):
            ops.append(self._advance().text)
            operands.append(self._operand())
        if not ops:
            return left
        return _Compare(tuple(operands), tuple(ops))

    def _literal(self) -> Any:
        t = self.tok
        if t.kind == "sign":
            self._advance()
            num = self.tok
            if num.kind != "number":
                raise self._error(f"expected a number after {t.text!r}, got {self._describe(num)}")
            self._advance()
            return -num.value if t.text == "-" else num.value
        if t.kind in ("number", "string"):
            self._advance()
            return t.value
        if t.kind == "keyword" and t.text in ("true", "false"):
            self._advance()
            return t.text == "true"
        raise self._error(f"expected a number, a quoted string, true or false, got {self._describe(t)}")

    def _operand(self) -> _Node:
        t = self.tok
        if t.kind == "name":
            self._advance()
            if self._is("punct", "("):
                raise self._error(f"{t.text!r} is not a function; calls are not allowed")
            return _Name(t.text)
        if t.kind == "punct" and t.text == "(":
            self._advance()
            self._enter()
            node = self._or()
            self.depth -= 1
            if not self._is("punct", ")"):
                raise self._error(f"expected ')' to close the '(' at column {t.col}, got {self._describe(self.tok)}")
            self._advance()
            return node
        return _Literal(self._literal())

    def _list(self) -> tuple[Any, ...]:
        opener = self.tok
        if not (opener.kind == "punct" and opener.text in ("(", "[")):
            raise self._error(f'expected a list after in, like ("local", "lowrank"); got {self._describe(opener)}')
        closer = ")" if opener.text == "(" else "]"
        self._advance()
        items: list[Any] = []
        while not self._is("punct", closer):
            items.append(self._literal())
            if self._is("punct", ","):
                self._advance()
            elif not self._is("punct", closer):
                raise self._error(f"expected ',' or {closer!r} in the list, got {self._describe(self.tok)}")
        self._advance()
        return tuple(items)


def _names(node: _Node) -> set[str]:
    if isinstance(node, _Name):
        return {node.name}
    if isinstance(node, _Literal):
        return set()
    if isinstance(node, _Compare):
        return set().union(*(_names(o) for o in node.operands))
    if isinstance(node, _In):
        return _names(node.operand)
    if isinstance(node, _Not):
        return _names(node.operand)
    return set().union(*(_names(o) for o in node.operands))


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _compare(op: str, a: Any, b: Any) -> bool:
    if _missing(a) or _missing(b):
        return False
    # bool is an int in Python; keep true/false apart from numbers except against each other.
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    try:
        return bool(_OPS[op](a, b))
    except TypeError:
        return False


def _value(node: _Node, values: Mapping[str, Any]) -> Any:
    if isinstance(node, _Literal):
        return node.value
    if isinstance(node, _Name):
        return values.get(node.name)
    return _truth(node, values)


def _truth(node: _Node, values: Mapping[str, Any]) -> bool:
    if isinstance(node, _BoolOp):
        if node.op == "and":
            return all(_truth(o, values) for o in node.operands)
        return any(_truth(o, values) for o in node.operands)
    if isinstance(node, _Not):
        return not _truth(node.operand, values)
    if isinstance(node, _Compare):
        left = _value(node.operands[0], values)
        for op, right_node in zip(node.ops, node.operands[1:], strict=True):
            right = _value(right_node, values)
            if not _compare(op, left, right):
                return False
            left = right
        return True
    if isinstance(node, _In):
        v = _value(node.operand, values)
        if _missing(v):
            return False
        found = any(_compare("==", v, option) for option in node.options)
        return not found if node.negated else found
    v = _value(node, values)
    return False if _missing(v) else bool(v)


@dataclass(frozen=True)
class Predicate:
    """A compiled ``--where`` expression: call it with a dict of values to get a bool.

    Attributes:
        expr: The source text.
        names: The value names the expression reads.
    """

    expr: str
    names: frozenset[str]
    _tree: _Node

    def __call__(self, values: Mapping[str, Any]) -> bool:
        """Whether ``values`` satisfy the expression (missing values: see the module doc)."""
        return _truth(self._tree, values)


def compile_where(expr: str, allowed_names: Iterable[str]) -> Predicate:
    """Parse ``expr`` into a :class:`Predicate` that reads only ``allowed_names``.

    Args:
        expr: The filter, e.g. ``'energy_per_sample_j < 0.002 and attention == "linear"'``.
        allowed_names: The value names a filter may use.

    Raises:
        ConfigError: On a syntax error (with its column), an unknown name (listing the allowed names),
            or an expression longer than :data:`MAX_EXPR_CHARS`.
    """
    if not isinstance(expr, str):
        raise ConfigError("the filter must be text", field="--where", value=expr)
    if len(expr) > MAX_EXPR_CHARS:
        raise ConfigError(
            f"the filter is {len(expr)} characters long; at most {MAX_EXPR_CHARS} are accepted",
            field="--where",
            fix="shorten the expression",
        )
    tree = _Parser(expr).parse()
    allowed = frozenset(allowed_names)
    used = _names(tree)
    unknown = sorted(used - allowed)
    if unknown:
        bad = unknown[0]
        close = difflib.get_close_matches(bad, sorted(allowed), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown name {bad!r}; {hint}allowed names: {', '.join(sorted(allowed))}",
            field="--where",
            fix="use one of the allowed names; quote text values, e.g. attention == \"linear\"",
        )
    return Predicate(expr=expr, names=frozenset(used), _tree=tree)


def names_read(expr: str) -> frozenset[str]:
    """The value names ``expr`` reads, parsed but not checked against any list of allowed names.

    Raises:
        ConfigError: On a syntax error (with its column).
    """
    return frozenset(_names(_Parser(expr).parse()))
