"""Label expressions: the text form (``"site in (a, b)"``) and the wire form (``LabelExpr``).

``requires.match``, ``prefer`` and ``avoid`` hold label expressions. ``parse_label_expr``
reads one into a ``common_pb2.LabelExpr``; ``format_label_expr`` prints one back;
``label_expr_problem`` says why a ``LabelExpr`` (from text or from the wire) is not valid.
The spec validator (``outrider.spec``), the YAML front end, the scheduler and the CLI all
use these, so every road accepts exactly the same expressions.

This module needs nothing but the wire stubs: no PyYAML, no spec machinery.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from outrider.v1 import common_pb2

__all__ = [
    "LABEL_KEY_PATTERN",
    "LABEL_OPS",
    "describe_value",
    "format_label_expr",
    "label_expr_problem",
    "parse_label_expr",
]

#: Label keys that label expressions can name (``requires.match``, ``prefer``, ``avoid``).
LABEL_KEY_PATTERN = r"[A-Za-z0-9._/-]+"
_LABEL_KEY_RE = re.compile(LABEL_KEY_PATTERN)

#: The operators of a label expression, as stored in ``LabelExpr.op``.
LABEL_OPS = ("=", "!=", "in", "not in", "exists", "not exists", ">=", "<=")
_ONE_VALUE_OPS = ("=", "!=", ">=", "<=")
_LIST_OPS = ("in", "not in")
_NO_VALUE_OPS = ("exists", "not exists")
_NUMERIC_OPS = (">=", "<=")
_OPS_TEXT = "=, !=, in, not in, exists, not exists, >=, <="
# A plain (unquoted) word: a key, a keyword or a value. Anything else in a value is quoted.
_WORD_RE = re.compile(r"""[^\s(),'"=!<>]+""")
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Likely slips, mapped to the operator meant.
_OP_HINTS = {"==": "=", "<>": "!=", "=>": ">=", "=<": "<=", ">": ">=", "<": "<=", "!": "!=", "!==": "!="}


def describe_value(value: Any) -> str:
    """A short description of a value for messages: ``'two'``, ``true (a boolean)``, ``a list``.

    Shared by the spec modules, so that every "got ..." in a message reads the same.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------- text -> tokens


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "text" (a quoted value), "sym" (an operator run) or one of "(", ")", ","
    value: str


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "(),":
            tokens.append(_Token(ch, ch))
            i += 1
        elif ch in "=!<>":
            j = i
            while j < len(text) and text[j] in "=!<>":
                j += 1
            tokens.append(_Token("sym", text[i:j]))
            i = j
        elif ch in "'\"":
            # A quoted value; a backslash takes the next character literally (\" and \\).
            value: list[str] = []
            j = i + 1
            while j < len(text) and text[j] != ch:
                if text[j] == "\\" and j + 1 < len(text):
                    j += 1
                value.append(text[j])
                j += 1
            if j >= len(text):
                raise ValueError(f"unterminated quoted value starting at {text[i : i + 12]!r}")
            tokens.append(_Token("text", "".join(value)))
            i = j + 1
        else:
            match = _WORD_RE.match(text, i)
            assert match is not None  # every other character starts a word
            tokens.append(_Token("word", match.group()))
            i = match.end()
    return tokens


def _shown(token: _Token) -> str:
    return repr(token.value) if token.kind in ("word", "text", "sym") else f"'{token.value}'"


# --------------------------------------------------------------------------- tokens -> (key, op, values)


def _parse_expr_tokens(tokens: list[_Token]) -> tuple[str, str, list[str]]:
    """``(key, op, values)`` from the tokens of one expression; ValueError naming the slip."""
    if not tokens:
        raise ValueError("the expression is empty")
    first = tokens[0]
    if first.kind != "word":
        raise ValueError(f"expected a label key first, got {_shown(first)}")
    key, rest = first.value, tokens[1:]
    if not rest:
        raise ValueError(f"the key {key!r} needs an operator: one of {_OPS_TEXT}")
    op_token = rest[0]
    if op_token.kind == "sym":
        return key, op_token.value, _parse_one_value(op_token.value, rest[1:])
    if op_token.kind != "word":
        raise ValueError(f"expected an operator after {key!r} (one of {_OPS_TEXT}), got {_shown(op_token)}")
    word = op_token.value.lower()
    rest = rest[1:]
    if word == "not":
        if not rest or rest[0].kind != "word" or rest[0].value.lower() not in ("in", "exists"):
            got = _shown(rest[0]) if rest else "nothing"
            raise ValueError(f"'not' must be followed by 'in' or 'exists', got {got}")
        word = "not " + rest[0].value.lower()
        rest = rest[1:]
    if word in _NO_VALUE_OPS:
        if rest:
            raise ValueError(f"{word!r} takes no value, got {_shown(rest[0])}")
        return key, word, []
    if word in _LIST_OPS:
        return key, word, _parse_value_list(word, rest)
    spaced_key = bool(rest) and (rest[0].kind == "sym" or rest[0].value.lower() in ("in", "not", "exists"))
    raise ValueError(
        f"unknown operator {op_token.value!r} (use {_OPS_TEXT})"
        + ("; label keys cannot contain spaces" if spaced_key else "")
    )


def _parse_one_value(op: str, values: list[_Token]) -> list[str]:
    """The single value after a symbolic operator (``=``, ``!=``, ``>=``, ``<=``)."""
    if op not in _ONE_VALUE_OPS:
        hint = f"; did you mean {_OP_HINTS[op]!r}?" if op in _OP_HINTS else ""
        raise ValueError(f"unknown operator {op!r} (use {_OPS_TEXT}){hint}")
    if not values:
        raise ValueError(f"{op!r} needs a value after it")
    if values[0].kind not in ("word", "text"):
        raise ValueError(f"expected a value after {op!r}, got {_shown(values[0])}")
    if len(values) > 1:
        spaced = op not in _NUMERIC_OPS and values[1].kind in ("word", "text")
        hints = ["quote a value that has spaces"] if spaced else []
        if op in ("=", "!="):
            hints.append(f"for several values use 'KEY {'in' if op == '=' else 'not in'} (A, B)'")
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise ValueError(f"{op!r} takes one value, got more after {values[0].value!r}{hint}")
    return [values[0].value]


def _parse_value_list(op: str, tokens: list[_Token]) -> list[str]:
    if not tokens or tokens[0].kind != "(":
        raise ValueError(f"{op!r} needs a list of values in parentheses, like 'KEY {op} (A, B)'")
    values: list[str] = []
    i = 1
    while True:
        if i >= len(tokens):
            raise ValueError("missing ')' at the end of the list")
        token = tokens[i]
        if token.kind == ")" and not values:
            raise ValueError(f"{op!r} needs at least one value in its list")
        if token.kind not in ("word", "text"):
            after = f"after {values[-1]!r}" if values else "after '('"
            raise ValueError(f"expected a value {after}, got {_shown(token)}")
        values.append(token.value)
        i += 1
        if i >= len(tokens):
            raise ValueError("missing ')' at the end of the list")
        if tokens[i].kind == ")":
            i += 1
            break
        if tokens[i].kind != ",":
            raise ValueError(
                f"expected ',' or ')' after {values[-1]!r}, got {_shown(tokens[i])}"
                + ("; quote a value that has spaces" if tokens[i].kind == "word" else "")
            )
        i += 1
    if i < len(tokens):
        raise ValueError(f"unexpected {_shown(tokens[i])} after the list")
    return values


# --------------------------------------------------------------------------- the public API


def label_expr_problem(key: str, op: str, values: Sequence[str]) -> str | None:
    """Why ``(key, op, values)`` is not a valid label expression, or None.

    The one definition of a valid expression: ``parse_label_expr`` applies it to what it
    parsed, and the spec validator to every ``LabelExpr`` that arrives on the wire.
    """
    if not key:
        return "the label key must not be empty"
    if not _LABEL_KEY_RE.fullmatch(key):
        return f"invalid label key {key!r}: use letters, digits, '.', '_', '/' and '-' (pattern {LABEL_KEY_PATTERN})"
    if op not in LABEL_OPS:
        hint = f"; did you mean {_OP_HINTS[op]!r}?" if op in _OP_HINTS else ""
        return f"unknown operator {op!r} (use {_OPS_TEXT}){hint}"
    if op in _NO_VALUE_OPS:
        if values:
            return f"{op!r} takes no value, got {len(values)}"
        return None
    if op in _LIST_OPS:
        if not values:
            return f"{op!r} needs at least one value"
    elif len(values) != 1:
        return f"{op!r} takes exactly one value, got {len(values)}"
    for value in values:
        if "\0" in value:
            return "values must not contain NUL characters"
    if op in _NUMERIC_OPS and not (_NUMBER_RE.fullmatch(values[0]) and math.isfinite(float(values[0]))):
        return f"{op!r} compares numbers, got {values[0]!r} (write a number such as 12.1 or -3)"
    return None


def parse_label_expr(text: str) -> common_pb2.LabelExpr:
    """Parse one label expression into a ``LabelExpr``; raise ``ValueError`` naming the text.

    The syntax (keywords are case-insensitive; spaces around operators are optional)::

        tier = edge              tier != edge
        site in (plant-7, plant-9)    site not in (lab)
        gpu exists               gpu not exists
        cuda >= 12.1             mem_gb <= 64     (numbers only)

    Keys match ``[A-Za-z0-9._/-]+``. A value is a word without spaces, quotes, commas,
    parentheses or ``=!<>``, or a quoted string (``"NVIDIA H100"``, ``''``; inside quotes a
    backslash takes the next character literally). ``format_label_expr`` is the inverse.
    """
    if not isinstance(text, str):
        raise ValueError(f"a label expression must be a string, got {describe_value(text)}")
    try:
        if "\0" in text:
            raise ValueError("must not contain NUL characters")
        key, op, values = _parse_expr_tokens(_tokenize(text))
        problem = label_expr_problem(key, op, values)
        if problem:
            raise ValueError(problem)
    except ValueError as exc:
        raise ValueError(f"invalid label expression {text!r}: {exc}") from None
    return common_pb2.LabelExpr(key=key, op=op, values=values)


def _format_value(value: str) -> str:
    if _WORD_RE.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_label_expr(expr: common_pb2.LabelExpr) -> str:
    """The text of a ``LabelExpr``, as ``parse_label_expr`` reads it (for ``plan``/``explain``).

    ``parse_label_expr(format_label_expr(e)) == e`` for every valid ``e``. Never raises: an
    invalid expression (from the wire) is still printed as faithfully as possible.
    """
    key, op, values = expr.key, expr.op, [_format_value(v) for v in expr.values]
    if op in _NO_VALUE_OPS and not values:
        return f"{key} {op}"
    if len(values) == 1 and op not in _LIST_OPS and op not in _NO_VALUE_OPS:
        return f"{key} {op or '?'} {values[0]}"
    return f"{key} {op or '?'} ({', '.join(values)})"
