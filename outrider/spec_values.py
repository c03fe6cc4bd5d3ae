"""Reading plain spec values, with every problem located: the base of ``SpecReader``.

Spec data is plain data: strings, numbers, booleans, lists and mappings, from a YAML
document (with a ``Source`` that knows every line) or from the SDK's arguments.
``ValueReader`` reads the kinds of value that every part of the schema uses (strings as
written, mappings, name lists, string maps, sizes, durations, label expressions) and keeps
the problems it finds by field path, each with its file and line. A value that cannot be
read is reported once: its path is silenced (``fail``) for the reader and the validator.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from outrider.config import parse_bytes, parse_duration
from outrider.labels import describe_value, parse_label_expr
from outrider.spec import FieldPath
from outrider.spec_problems import Problem, Source, field_text
from outrider.v1 import common_pb2

__all__ = ["ValueReader", "is_int", "is_number"]

_INT64_MAX = 2**63 - 1


def is_number(value: Any) -> bool:
    """Real numbers only: YAML booleans are ints in Python, and must not pass as counts."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    """Whole numbers only (not booleans, not 2.0)."""
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------- reading values


class ValueReader:
    """Problems, by field path, and the readers of plain values that every field uses.

    Every problem goes through ``add``, which attaches the file and line. A field reported
    by ``fail`` (its value was dropped) gets no further problems, from the reader or the
    validator. Paths are numbered in the order they are read (``visit``): the validator's
    problems are merged into that order.
    """

    def __init__(self, file: str, source: Source | None, base_dir: Path) -> None:
        self.file = file
        self.source = source
        self.base_dir = base_dir
        self.found: list[tuple[FieldPath, Problem]] = []
        self.silenced: set[FieldPath] = set(source.refused) if source else set()
        # Fields whose reader problem stands in for the validator's (a name that is no string).
        self.replaced: set[FieldPath] = set()
        self.positions: dict[FieldPath, int] = {}

    def visit(self, path: FieldPath) -> FieldPath:
        self.positions.setdefault(path, len(self.positions))
        return path

    def is_silenced(self, path: FieldPath) -> bool:
        return any(path[:i] in self.silenced for i in range(len(path) + 1))

    def problem(self, path: FieldPath, message: str) -> Problem:
        return Problem(self.file, self.source.line(path) if self.source else 0, field_text(path), message)

    def add(self, path: FieldPath, message: str) -> None:
        if self.is_silenced(path):
            return
        self.found.append((self.visit(path), self.problem(path, message)))

    def fail(self, path: FieldPath, message: str) -> None:
        self.add(path, message)
        self.silenced.add(path)

    def kind(self, value: Any, path: FieldPath) -> str:
        raw = self.source.raw.get(path) if self.source else None
        if raw is not None and isinstance(value, bool):
            return f"{raw} (a boolean)"
        return describe_value(value)

    def unknown_keys(self, spec: dict[Any, Any], path: FieldPath, allowed: Sequence[str]) -> None:
        for key in spec:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.fail(path + (key,), f"unknown key {key!r} (allowed: {', '.join(allowed)}){hint}")

    def text(self, value: Any, path: FieldPath) -> str | None:
        """A string field. Plain YAML scalars are taken as written (``10``, ``0.10``, ``yes``);
        from the SDK, ints and floats are converted with ``str`` but booleans and None refused.
        """
        self.visit(path)
        if isinstance(value, str):
            return value
        raw = self.source.raw.get(path) if self.source else None
        if raw is not None:
            return raw
        if is_number(value):
            return str(value)
        self.fail(path, f"expected a string, got {self.kind(value, path)}")
        return None

    def mapping(self, value: Any, path: FieldPath, what: str) -> dict[Any, Any] | None:
        if isinstance(value, dict):
            return value
        self.fail(path, f"expected {what}, got {self.kind(value, path)}")
        return None

    def names(self, value: Any, path: FieldPath, what: str) -> list[str]:
        if not isinstance(value, list):
            self.fail(path, f"expected {what}, got {self.kind(value, path)}")
            return []
        # Keep a placeholder for a bad item so later indices (and their lines) stay right;
        # the item's path is silenced, so the placeholder draws no second message.
        return [self.text(item, path + (i,)) or "" for i, item in enumerate(value)]

    def string_map(
        self, value: Any, path: FieldPath, what: str, key_problem: Callable[[Any], str | None]
    ) -> dict[str, str]:
        spec = self.mapping(value, path, what)
        result: dict[str, str] = {}
        for key, item in (spec or {}).items():
            item_path = self.visit(path + (key,))
            if not isinstance(key, str):  # from the SDK only (YAML keys are text); no wire form
                self.add(item_path, key_problem(key) or "")
            elif key_problem(key):
                # The validator reports this key; its value, whatever it is, adds nothing.
                result[key] = ""
            else:
                text = self.text(item, item_path)
                if text is not None:
                    result[key] = text
        return result

    def size(self, value: Any, path: FieldPath) -> int:
        try:
            size = parse_bytes(value)
        except (ValueError, OverflowError) as exc:  # OverflowError: .inf
            self.fail(path, str(exc) if not isinstance(exc, OverflowError) else f"expected a size, got {value!r}")
            return 0
        if size > _INT64_MAX:
            self.fail(path, f"size {size} bytes is too large")
            return 0
        return size

    def duration(self, value: Any, path: FieldPath, default: float) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.fail(path, str(exc))
            return default
        if not math.isfinite(seconds):  # .inf and .nan are YAML floats and pass parse_duration
            self.fail(path, f"expected a finite duration, got {value!r}")
            return default
        return seconds

    def label_expr(self, value: Any, path: FieldPath) -> common_pb2.LabelExpr:
        """A label expression; an empty placeholder (its path silenced) if it cannot be read."""
        if value is None or isinstance(value, (list, dict)):
            self.fail(path, f"expected a label expression such as 'tier = edge', got {self.kind(value, path)}")
            return common_pb2.LabelExpr()
        text = self.text(value, path)
        if text is None:
            return common_pb2.LabelExpr()
        try:
            return parse_label_expr(text)
        except ValueError as exc:
            self.fail(path, str(exc))
            return common_pb2.LabelExpr()
