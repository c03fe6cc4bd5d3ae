"""Problems located in what the user wrote: ``Problem``, ``SpecError`` and ``Source``.

The validator (``outrider.spec``) speaks of wire fields; the front ends (``outrider.spec_reader``
for spec data, ``outrider.spec_yaml`` for YAML text) report each problem as
``FILE:LINE: field.path: message``, using a ``Source`` (the line of every field of a YAML
document) to find the line. This module needs neither PyYAML nor the wire stubs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from outrider.errors import InvalidArgument

__all__ = ["Problem", "Source", "SpecError", "field_text"]

# A path in the spec as written: keys of mappings (str) and indices of lists (int).
_Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec.

    ``line`` is 1-based; 0 means unknown (SDK and proto specs have no lines). ``field`` is a
    dotted path such as ``tasks.train.requires.memory`` (empty for the document itself).
    """

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        parts = [f"{self.file}:{self.line}" if self.line else self.file]
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


class SpecError(InvalidArgument):
    """A pipeline spec is invalid; ``problems`` lists every problem found, not just the first.

    ``str(error)`` is all of them, one per line, as ``FILE:LINE: field: message``.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the structured problems across pickling (multiprocessing, test runners).
        return (type(self), (self.problems,))


def field_text(path: _Path) -> str:
    """``("tasks", "train", "run", 1)`` -> ``tasks.train.run[1]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (("." if text else "") + str(part))
    return text


@dataclass
class Source:
    """Where each value of a composed document came from, by field path (YAML only)."""

    key_lines: dict[_Path, int] = field(default_factory=dict)
    value_lines: dict[_Path, int] = field(default_factory=dict)
    # Source text of plain scalars that YAML turned into non-strings (10, 0.10, yes, 2024-01-01):
    # where a string is expected, the text as written is what the user meant.
    raw: dict[_Path, str] = field(default_factory=dict)
    # Paths already reported while composing (refused tags): no further problems there.
    refused: set[_Path] = field(default_factory=set)

    def line(self, path: _Path) -> int:
        """Line of a field: its key, else its value, else its nearest present parent."""
        while path:
            found = self.key_lines.get(path) or self.value_lines.get(path)
            if found:
                return found
            path = path[:-1]
        return self.value_lines.get((), 1)
