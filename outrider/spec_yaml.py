"""The YAML front end: YAML text -> plain data with the line of every field -> the wire form.

``read_yaml`` composes the text with a ``SafeLoader`` subclass into a node tree and walks it
itself (``_Composer``), so that it keeps every line (``Source``), sees duplicate keys (which
``safe_load`` silently merges) and refuses YAML tags beyond plain data. The data then goes
through ``SpecReader``, which builds the wire form and runs the one validator
(``outrider.spec``) on it; every problem comes back as ``FILE:LINE: field: message``,
ordered by line.

Only this module imports PyYAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from outrider.spec import FieldPath
from outrider.spec_problems import Problem, Source, field_text
from outrider.spec_reader import SpecReader
from outrider.v1 import common_pb2

__all__ = ["read_yaml"]

# YAML tags a spec may use. Anything else (python/*, !!set, !!binary, local !tags) is
# refused outright: a pipeline spec is plain data, and it comes from users.
_YAML = "tag:yaml.org,2002:"
_MAP_TAG = _YAML + "map"
_SEQ_TAG = _YAML + "seq"
_SCALAR_TAGS = {_YAML + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
# ``<<`` and ``=`` are resolved to these tags by PyYAML, which cannot construct them as
# values (``yaml.safe_load("a: =")`` fails); as values they are just text.
_TEXT_TAGS = {_YAML + "merge", _YAML + "value"}
_MERGE_TAG = _YAML + "merge"

# An upper bound on nodes visited after alias expansion: a "billion laughs" document is
# tiny as text but explodes when walked path by path, as this loader must.
_MAX_NODES = 100_000


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader used only to compose nodes and to build scalars with the safe constructors.

    Collections are never constructed by PyYAML: ``_Composer`` walks them itself to keep
    every line number and to see duplicate keys, which ``safe_load`` silently merges.
    """


class _TooLarge(Exception):
    """The document expands into more than ``_MAX_NODES`` nodes."""


class _Composer:
    """Turns a composed node tree into plain data, recording lines and problems by path."""

    def __init__(self, loader: _SpecLoader, file: str, problems: list[Problem]) -> None:
        self.loader = loader
        self.file = file
        self.problems = problems
        self.source = Source()
        self.count = 0
        self.active: set[int] = set()  # collection nodes on the current walk: a cyclic alias guard

    def problem(self, line: int, path: FieldPath, message: str) -> None:
        self.problems.append(Problem(self.file, line, field_text(path), message))

    def refuse(self, node: Node, path: FieldPath, what: str) -> None:
        self.problem(
            node.start_mark.line + 1,
            path,
            f"YAML tag {_short_tag(node.tag)} is not allowed on {what}: a pipeline spec is plain "
            f"data (strings, numbers, booleans, lists, mappings)",
        )
        self.source.refused.add(path)

    def convert(self, node: Node, path: FieldPath) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise _TooLarge
        self.source.value_lines[path] = node.start_mark.line + 1
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            self.problem(node.start_mark.line + 1, path, "recursive YAML alias (a value that contains itself)")
            self.source.refused.add(path)
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ_TAG:
                    self.refuse(node, path, "a list")
                    return None
                return [self.convert(child, path + (i,)) for i, child in enumerate(node.value)]
            if isinstance(node, MappingNode):
                if node.tag != _MAP_TAG:
                    self.refuse(node, path, "a mapping")
                    return None
                return self.mapping(node, path)
            raise AssertionError(f"unexpected YAML node {node!r}")  # pragma: no cover - PyYAML has 3 kinds
        finally:
            self.active.discard(id(node))

    def scalar(self, node: ScalarNode, path: FieldPath) -> Any:
        if node.tag in _TEXT_TAGS:
            return node.value
        if node.tag not in _SCALAR_TAGS:
            self.refuse(node, path, "a value")
            return None
        try:
            value = self.loader.construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError):
            # e.g. 2024-13-45 matches the timestamp pattern but is no date: safe_load crashes
            # with ValueError; the text as written is the only sensible reading.
            return node.value
        if node.style is None and not isinstance(value, str) and value is not None:
            self.source.raw[path] = node.value
        return value

    def mapping(self, node: MappingNode, path: FieldPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        explicit: list[tuple[Node, Node]] = []
        sources: list[Node] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE_TAG:
                # ``<<: *defaults`` (or a list of them), as safe_load supports.
                items = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                if all(isinstance(item, MappingNode) for item in items):
                    sources.extend(items)
                else:
                    self.problem(
                        key_node.start_mark.line + 1, path, "a merge key '<<' takes a mapping or a list of mappings"
                    )
            else:
                explicit.append((key_node, value_node))
        # Earlier merge sources win over later ones, and explicit keys over all: apply in reverse.
        for source in reversed(sources):
            merged = self.convert(source, path)
            if isinstance(merged, dict):
                result.update(merged)
        self.source.value_lines[path] = node.start_mark.line + 1
        first_line: dict[str, int] = {}
        for key_node, value_node in explicit:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode):
                self.problem(line, path, "mapping keys must be plain text, not lists or mappings")
                continue
            if key_node.tag not in _SCALAR_TAGS and key_node.tag not in _TEXT_TAGS:
                self.refuse(key_node, path, "a key")
                continue
            # Keys are the text as written: a task named ``on`` or ``1`` is "on" and "1", not a bool or int.
            key = key_node.value
            if key in first_line:
                self.problem(line, path + (key,), f"duplicate key {key!r} (first on line {first_line[key]})")
                continue
            first_line[key] = line
            self.source.key_lines[path + (key,)] = line
            result[key] = self.convert(value_node, path + (key,))
        return result


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_YAML) :] if tag.startswith(_YAML) else tag


def _compose(text: str, file: str, problems: list[Problem]) -> tuple[Any, Source] | None:
    """Compose ``text`` into plain data and its ``Source``; None (with a problem) if it is not YAML."""
    loader: _SpecLoader | None = None
    try:
        loader = _SpecLoader(text)  # the reader checks for unprintable characters right here
        node = loader.get_single_node()
        composer = _Composer(loader, file, problems)
        doc = composer.convert(node, ()) if node is not None else None
        return doc, composer.source
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = "; ".join(filter(None, [exc.context, exc.problem]))
        problems.append(Problem(file, mark.line + 1 if mark else 0, "", f"invalid YAML: {reason}"))
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1 if isinstance(text, str) else 0
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        problems.append(Problem(file, line, "", f"invalid YAML: {exc.reason} (character {char})"))
    except yaml.YAMLError as exc:
        problems.append(Problem(file, 0, "", f"invalid YAML: {exc}"))
    except _TooLarge:
        problems.append(
            Problem(file, 0, "", f"document too large: more than {_MAX_NODES} values once aliases are expanded")
        )
    except RecursionError:
        problems.append(Problem(file, 0, "", "document nested too deeply"))
    finally:
        if loader is not None:
            loader.dispose()
    return None


def read_yaml(
    text: str, filename: str, base_dir: Path
) -> tuple[SpecReader | None, common_pb2.PipelineSpec | None, list[Problem]]:
    """Read a YAML spec into its wire form: ``(reader, spec, problems)``.

    ``problems`` is every problem found, in line order (empty if the spec is valid); the
    reader holds what the wire form cannot (``code_dir``, each task's ``TaskOrigin``).
    ``reader`` and ``spec`` are None when the text is not YAML or not a mapping.
    """
    problems: list[Problem] = []
    composed = _compose(text, filename, problems)
    if composed is None:  # not even YAML: nothing further can be checked
        return None, None, problems
    doc, source = composed
    reader = SpecReader(filename, source, base_dir)
    spec = reader.pipeline(doc)
    problems.extend(reader.finish(spec))
    # Compiler order: by line. The sort is stable, so same-line problems keep the reading order.
    return reader, spec, sorted(problems, key=lambda p: p.line)
