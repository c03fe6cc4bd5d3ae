"""Pipeline specs: the YAML parser/validator, the domain model and the Python SDK builder.

A pipeline reaches the scheduler by one of three roads, and all of them meet the same checks:

* a YAML file (``load_pipeline`` / ``parse_pipeline``): composed with a ``SafeLoader``
  subclass into a node tree, so that every problem names ``FILE:LINE: field.path``;
* the SDK (``Pipeline("digits").task(...)``): keyword arguments are turned into the very
  dict the YAML would have produced and go through the same checker (file ``<sdk>``);
* the wire (``validate_proto`` / ``Pipeline.from_proto``): any gRPC client may send a
  ``PipelineSpec``, so the scheduler re-checks names, references and cycles there too.

The graph checks (names of outputs and inputs, references, self dependencies, duplicate
outputs, cycles) are written once, in ``_graph_problems``, and shared by all three roads;
so is the label-expression check (``_label_expr_problem``). ``parse_label_expr`` and
``format_label_expr`` turn the text form of a label expression (``"site in (a, b)"``,
used by ``requires.match``, ``prefer`` and ``avoid``) into a ``LabelExpr`` and back; the
scheduler and the CLI use them too.

See docs/pipeline.md for the schema, every field, the defaults and the error format.
"""
from __future__ import annotations

import difflib
import heapq
import math
import os
import re
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, Union

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from outrider.config import parse_bytes, parse_duration
from outrider.errors import InvalidArgument
from outrider.v1 import common_pb2

__all__ = [
    "LABEL_KEY_PATTERN",
    "LABEL_OPS",
    "NAME_PATTERN",
    "Pipeline",
    "Problem",
    "SpecError",
    "TENANT_PATTERN",
    "Task",
    "ZONE_PATTERN",
    "format_label_expr",
    "load_pipeline",
    "parse_label_expr",
    "parse_pipeline",
    "validate_proto",
]

#: Task, output, input and pipeline names. No dots, so ``task.output`` is unambiguous.
NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_-]*"
_NAME_RE = re.compile(NAME_PATTERN)
#: Environment variable names: what every shell accepts (no '-', no '=').
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
#: Label keys that label expressions can name (``requires.match``, ``prefer``, ``avoid``).
LABEL_KEY_PATTERN = r"[A-Za-z0-9._/-]+"
_LABEL_KEY_RE = re.compile(LABEL_KEY_PATTERN)
#: Data-residency zone names (``requires.residency``).
ZONE_PATTERN = r"[A-Za-z0-9._-]+"
_ZONE_RE = re.compile(ZONE_PATTERN)
#: Fair-share tenant names: plain names, ``user@host``, or a SPIFFE ID such as
#: ``spiffe://acme.ml/submitter/alice`` (the default tenant is the submitter's identity).
TENANT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,252}"
_TENANT_RE = re.compile(TENANT_PATTERN)

# Proto field ranges, checked up front so that ``to_proto`` never fails on a valid spec.
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_INT32_MIN = -(2**31)

# The keys allowed at each level, in the order the docs list them.
# New keys are appended, so that the start of each "allowed:" list never changes.
_TOP_KEYS = ("name", "code", "tasks", "priority", "concurrency", "tenant")
_TASK_KEYS = ("run", "inputs", "outputs", "after", "requires", "retries", "timeout", "env", "prefer", "avoid")
_REQUIRES_KEYS = ("cpus", "memory", "gpus", "disk", "labels", "match", "gpu_memory", "gpu_model", "residency",
                  "max_clock_skew")
_RETRIES_KEYS = ("max", "backoff")
_AFFINITY_KEYS = ("match", "weight")

# Defaults of the optional task fields (also the defaults of ``Task``).
DEFAULT_CPUS = 1.0
DEFAULT_BACKOFF_S = 1.0
DEFAULT_AFFINITY_WEIGHT = 1.0

#: Pseudo file names used where a problem has no YAML file behind it.
SDK_FILE = "<sdk>"
PROTO_FILE = "<proto>"

# A field path: keys of mappings (str) and indices of lists (int), from the document root.
_Path = tuple[Union[str, int], ...]

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


# --------------------------------------------------------------------------- problems


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


# --------------------------------------------------------------------------- label expressions

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


@dataclass(frozen=True)
class _Token:
    kind: str   # "word", "text" (a quoted value), "sym" (an operator run) or one of "(", ")", ","
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
                raise ValueError(f"unterminated quoted value starting at {text[i:i + 12]!r}")
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
        op = op_token.value
        if op not in _ONE_VALUE_OPS:
            hint = f"; did you mean {_OP_HINTS[op]!r}?" if op in _OP_HINTS else ""
            raise ValueError(f"unknown operator {op!r} (use {_OPS_TEXT}){hint}")
        values = rest[1:]
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
        return key, op, [values[0].value]
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
    raise ValueError(f"unknown operator {op_token.value!r} (use {_OPS_TEXT})"
                     + ("; label keys cannot contain spaces" if spaced_key else ""))


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
            raise ValueError(f"expected ',' or ')' after {values[-1]!r}, got {_shown(tokens[i])}"
                             + ("; quote a value that has spaces" if tokens[i].kind == "word" else ""))
        i += 1
    if i < len(tokens):
        raise ValueError(f"unexpected {_shown(tokens[i])} after the list")
    return values


def _label_expr_problem(key: str, op: str, values: Sequence[str]) -> str | None:
    """Why ``(key, op, values)`` is not a valid label expression, or None. Shared by
    ``parse_label_expr`` and ``validate_proto``, so both roads accept exactly the same.
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
        raise ValueError(f"a label expression must be a string, got {_kind(text)}")
    try:
        if "\0" in text:
            raise ValueError("must not contain NUL characters")
        key, op, values = _parse_expr_tokens(_tokenize(text))
        problem = _label_expr_problem(key, op, values)
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


def _copy_expr(expr: common_pb2.LabelExpr) -> common_pb2.LabelExpr:
    return common_pb2.LabelExpr(key=expr.key, op=expr.op, values=list(expr.values))


def _copy_affinity(affinity: common_pb2.Affinity) -> common_pb2.Affinity:
    copy = common_pb2.Affinity()
    copy.CopyFrom(affinity)
    return copy



# --------------------------------------------------------------------------- domain model


@dataclass
class Task:
    """One task of a pipeline, with every default applied (the YAML and the SDK build these).

    ``inputs`` maps an input name to ``"task.output"``; ``after`` lists ordering-only
    upstreams. ``shell`` means ``argv`` holds one string run under ``/bin/sh -c``.
    ``max_attempts`` is 1 + retries; ``timeout_s`` 0 means no timeout.

    Placement: ``labels`` (equality) and ``expressions`` (``requires.match``) must all hold
    on the agent; ``residency`` lists the zones the task may run in (empty: anywhere);
    ``max_clock_skew_s`` 0 means no bound. ``affinities`` are soft: weight > 0 from
    ``prefer``, < 0 from ``avoid``.
    """

    name: str
    argv: list[str] = field(default_factory=list)
    shell: bool = False
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    cpus: float = DEFAULT_CPUS
    memory_bytes: int = 0
    disk_bytes: int = 0
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    max_attempts: int = 1
    backoff_s: float = DEFAULT_BACKOFF_S
    timeout_s: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    gpu_memory_bytes: int = 0
    gpu_model: str = ""
    expressions: list[common_pb2.LabelExpr] = field(default_factory=list)
    residency: list[str] = field(default_factory=list)
    max_clock_skew_s: float = 0.0
    affinities: list[common_pb2.Affinity] = field(default_factory=list)

    @property
    def retries(self) -> int:
        """Retries after the first attempt (``max_attempts - 1``)."""
        return max(0, self.max_attempts - 1)

    def output(self, name: str) -> str:
        """The ``"task.output"`` reference to one of this task's outputs, for SDK ``inputs=``."""
        if name not in self.outputs:
            declared = ", ".join(self.outputs) or "none"
            raise SpecError([Problem(SDK_FILE, 0, f"tasks.{self.name}.outputs",
                                     f"task {self.name!r} has no output {name!r} (declared: {declared})")])
        return f"{self.name}.{name}"

    def input_refs(self) -> dict[str, tuple[str, str]]:
        """``inputs`` split into ``(task, output)`` pairs."""
        refs: dict[str, tuple[str, str]] = {}
        for key, ref in self.inputs.items():
            task, _, out = ref.partition(".")
            refs[key] = (task, out)
        return refs

    def upstreams(self) -> set[str]:
        """Names of the tasks this one needs to finish first (inputs' tasks and ``after``)."""
        return set(_upstream_names(self))

    def to_dict(self) -> dict[str, Any]:
        """The YAML form of this task (only the keys that differ from the defaults)."""
        spec: dict[str, Any] = {"run": self.argv[0] if self.shell and self.argv else list(self.argv)}
        if self.inputs:
            spec["inputs"] = dict(self.inputs)
        if self.outputs:
            spec["outputs"] = list(self.outputs)
        if self.after:
            spec["after"] = list(self.after)
        requires: dict[str, Any] = {}
        if self.cpus != DEFAULT_CPUS:
            requires["cpus"] = self.cpus
        if self.memory_bytes:
            requires["memory"] = self.memory_bytes
        if self.gpus:
            requires["gpus"] = self.gpus
        if self.disk_bytes:
            requires["disk"] = self.disk_bytes
        if self.labels:
            requires["labels"] = dict(self.labels)
        if self.expressions:
            requires["match"] = [format_label_expr(expr) for expr in self.expressions]
        if self.gpu_memory_bytes:
            requires["gpu_memory"] = self.gpu_memory_bytes
        if self.gpu_model:
            requires["gpu_model"] = self.gpu_model
        if self.residency:
            requires["residency"] = list(self.residency)
        if self.max_clock_skew_s:
            requires["max_clock_skew"] = self.max_clock_skew_s
        if requires:
            spec["requires"] = requires
        if self.backoff_s != DEFAULT_BACKOFF_S:
            spec["retries"] = {"max": self.max_attempts - 1, "backoff": self.backoff_s}
        elif self.max_attempts != 1:
            spec["retries"] = self.max_attempts - 1
        if self.timeout_s:
            spec["timeout"] = self.timeout_s
        if self.env:
            spec["env"] = dict(self.env)
        prefer: list[Any] = []
        avoid: list[Any] = []
        for affinity in self.affinities:
            # A weight that is neither > 0 nor < 0 (0, NaN) lands in prefer as is, for the checker to report.
            side, weight = (avoid, -affinity.weight) if affinity.weight < 0 else (prefer, affinity.weight)
            text = format_label_expr(affinity.expr)
            side.append(text if weight == DEFAULT_AFFINITY_WEIGHT else {"match": text, "weight": weight})
        if prefer:
            spec["prefer"] = prefer
        if avoid:
            spec["avoid"] = avoid
        return spec

    def to_proto(self) -> common_pb2.TaskSpec:
        """The wire form of this task."""
        return common_pb2.TaskSpec(
            name=self.name,
            argv=list(self.argv),
            shell=self.shell,
            inputs=dict(self.inputs),
            outputs=list(self.outputs),
            after=list(self.after),
            requires=common_pb2.Requirements(
                cpus=self.cpus,
                memory_bytes=self.memory_bytes,
                disk_bytes=self.disk_bytes,
                gpus=self.gpus,
                labels=dict(self.labels),
                gpu_memory_bytes=self.gpu_memory_bytes,
                gpu_model=self.gpu_model,
                expressions=[_copy_expr(expr) for expr in self.expressions],
                residency=list(self.residency),
                max_clock_skew_s=self.max_clock_skew_s,
            ),
            max_attempts=self.max_attempts,
            backoff_s=self.backoff_s,
            timeout_s=self.timeout_s,
            env=dict(self.env),
            affinities=[_copy_affinity(a) for a in self.affinities],
        )

    @classmethod
    def from_proto(cls, msg: common_pb2.TaskSpec) -> Task:
        """A task from its wire form, as is (no checks; see ``validate_proto``).

        ``max_attempts`` 0 reads as 1 (the proto's documented meaning). Without a
        ``requires`` message the task gets the YAML defaults (1 cpu); with one, its values
        are taken literally, so ``cpus: 0`` stays 0.
        """
        task = cls(
            name=msg.name,
            argv=list(msg.argv),
            shell=msg.shell,
            inputs=dict(msg.inputs),
            outputs=list(msg.outputs),
            after=list(msg.after),
            max_attempts=msg.max_attempts or 1,
            backoff_s=msg.backoff_s,
            timeout_s=msg.timeout_s,
            env=dict(msg.env),
            affinities=[_copy_affinity(a) for a in msg.affinities],
        )
        if msg.HasField("requires"):
            req = msg.requires
            task.cpus = req.cpus
            task.memory_bytes = req.memory_bytes
            task.disk_bytes = req.disk_bytes
            task.gpus = req.gpus
            task.labels = dict(req.labels)
            task.gpu_memory_bytes = req.gpu_memory_bytes
            task.gpu_model = req.gpu_model
            task.expressions = [_copy_expr(expr) for expr in req.expressions]
            task.residency = list(req.residency)
            task.max_clock_skew_s = req.max_clock_skew_s
        return task


@dataclass
class Pipeline:
    """A pipeline: a name, tasks in file order, and the code directory shipped to every task.

    Also the SDK builder::

        p = Pipeline("digits", code="./stages")        # code: relative to the current directory
        ingest = p.task("ingest", run="python ingest.py", outputs=["raw"])
        p.task("train", run=["python", "train.py"], inputs={"raw": ingest.output("raw")})
        p.validate()                                    # SpecError listing every problem

    ``code`` (constructor only) sets ``code_dir`` to its absolute path at construction
    time, so a later ``chdir`` changes nothing. ``code_digest`` is the digest of the code
    bundle once uploaded (kept by ``from_proto``; empty otherwise).

    ``priority`` (higher runs first, may be negative), ``concurrency`` (at most this many of
    the run's tasks at once; None: no limit) and ``tenant`` (fair-share name; empty: the
    submitter's identity) are the YAML's top-level keys: ``Pipeline("p", priority=5)``.
    """

    name: str
    tasks: dict[str, Task] = field(default_factory=dict)
    code_dir: Path | None = None
    code_digest: str = ""
    code: InitVar[str | os.PathLike[str] | None] = None
    priority: int = 0
    concurrency: int | None = None
    tenant: str = ""

    def __post_init__(self, code: str | os.PathLike[str] | None) -> None:
        if code is not None:
            self.code_dir = Path(os.path.abspath(os.fspath(code)))
        elif self.code_dir is not None and not isinstance(self.code_dir, Path):
            self.code_dir = Path(self.code_dir)

    # ----------------------------------------------------------------- SDK builder

    def task(
        self,
        name: str,
        run: str | Sequence[str] | None,
        *,
        inputs: Mapping[str, str] | None = None,
        outputs: Sequence[str] | None = None,
        after: Sequence[str | Task] | None = None,
        requires: Mapping[str, Any] | None = None,
        retries: int | Mapping[str, Any] | None = None,
        timeout: str | float | None = None,
        env: Mapping[str, Any] | None = None,
        prefer: Sequence[str | Mapping[str, Any]] | None = None,
        avoid: Sequence[str | Mapping[str, Any]] | None = None,
    ) -> Task:
        """Add a task; the keywords are the YAML keys and take the same values.

        Problems confined to this call (bad name, duplicate name, bad ``run``, quantities,
        durations, unknown ``requires`` keys...) raise ``SpecError`` right here, so the
        traceback points at the faulty line. Problems between tasks (references, cycles)
        can only be seen once every task is added: ``validate()`` reports those.
        """
        given: dict[str, Any] = {
            "run": run, "inputs": inputs, "outputs": outputs, "requires": requires,
            "retries": retries, "timeout": timeout, "env": env, "prefer": prefer, "avoid": avoid,
            # Task objects are accepted in ``after`` for convenience; the spec holds names.
            "after": None if after is None else [a.name if isinstance(a, Task) else a for a in after],
        }
        spec = {key: _plain(value) for key, value in given.items() if value is not None}
        checker = _Checker(SDK_FILE, None, Path.cwd())
        path: _Path = ("tasks", name)
        name_problem = _name_problem(name, "task name")
        if name_problem:
            checker.add(path, name_problem)
        elif name in self.tasks:
            checker.add(path, f"a task named {name!r} already exists")
        task = checker.task(name, spec, path)
        if checker.problems:
            raise SpecError(checker.problems)
        self.tasks[name] = task
        return task

    def validate(self) -> None:
        """Check the whole pipeline as the YAML path would; raise ``SpecError`` listing every problem.

        The pipeline is turned into its YAML dict (``to_dict``) and run through the same
        checker as a file, so SDK and YAML pipelines obey exactly the same rules.
        """
        checker = _Checker(SDK_FILE, None, Path.cwd())
        checker.pipeline(self.to_dict())
        # What the dict form cannot express, checked on the model itself.
        for key, task in self.tasks.items():
            if task.name != key:
                checker.add(("tasks", key), f"is keyed {key!r} but the task is named {task.name!r}")
            if task.shell and len(task.argv) > 1:
                checker.add(("tasks", key, "run"),
                            f"a shell task holds exactly one command string, got {len(task.argv)}")
        if checker.problems:
            raise SpecError(checker.problems)

    # ----------------------------------------------------------------- conversions

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (``yaml.safe_dump(p.to_dict())`` writes a loadable spec)."""
        doc: dict[str, Any] = {"name": self.name}
        if self.code_dir is not None:
            doc["code"] = str(self.code_dir)
        if self.priority != 0 or not _is_int(self.priority):
            doc["priority"] = self.priority
        if self.concurrency is not None:
            doc["concurrency"] = self.concurrency
        if self.tenant != "":
            doc["tenant"] = self.tenant
        doc["tasks"] = {key: task.to_dict() for key, task in self.tasks.items()}
        return doc

    def to_proto(self, code_digest: str = "") -> common_pb2.PipelineSpec:
        """The wire form; ``code_digest`` (the uploaded code bundle) defaults to ``self.code_digest``."""
        return common_pb2.PipelineSpec(
            name=self.name,
            code_digest=code_digest or self.code_digest,
            tasks=[task.to_proto() for task in self.tasks.values()],
            priority=self.priority,
            concurrency=self.concurrency or 0,
            tenant=self.tenant,
        )

    @classmethod
    def from_proto(cls, msg: common_pb2.PipelineSpec, validate: bool = True) -> Pipeline:
        """A pipeline from its wire form; with ``validate`` (the default) ``validate_proto``
        runs first and its problems raise ``SpecError`` (file ``<proto>``).
        """
        if validate:
            problems = _proto_problems(msg)
            if problems:
                raise SpecError([Problem(PROTO_FILE, 0, fld, message) for fld, message in problems])
        tasks: dict[str, Task] = {}
        for spec in msg.tasks:
            tasks.setdefault(spec.name, Task.from_proto(spec))
        return cls(name=msg.name, tasks=tasks, code_dir=None, code_digest=msg.code_digest,
                   priority=msg.priority, concurrency=msg.concurrency or None, tenant=msg.tenant)

    # ----------------------------------------------------------------- graph

    def upstreams(self, task_name: str) -> set[str]:
        """Tasks that ``task_name`` waits for: its inputs' tasks and its ``after`` list."""
        return self._task(task_name).upstreams()

    def downstreams(self, task_name: str) -> set[str]:
        """Tasks that wait for ``task_name`` directly (the inverse of ``upstreams``)."""
        self._task(task_name)
        return {name for name, task in self.tasks.items() if task_name in _upstream_names(task)}

    def topological_order(self) -> list[str]:
        """Task names, every task after its upstreams; ties keep file order (deterministic).

        References to unknown tasks are ignored (``validate`` reports them); a cycle
        raises ``SpecError`` naming it.
        """
        names = list(self.tasks)
        index = {name: i for i, name in enumerate(names)}
        deps = {name: [u for u in _upstream_names(task) if u in index] for name, task in self.tasks.items()}
        waiting = {name: len(ups) for name, ups in deps.items()}
        dependents: dict[str, list[str]] = {name: [] for name in names}
        for name, ups in deps.items():
            for up in ups:
                dependents[up].append(name)
        ready = [index[name] for name, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            name = names[heapq.heappop(ready)]
            order.append(name)
            for child in dependents[name]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, index[child])
        if len(order) < len(names):
            raise SpecError([Problem("<pipeline>", 0, "tasks", f"dependency cycle: {' -> '.join(cycle)}")
                             for cycle in _find_cycles(names, deps)])
        return order

    def _task(self, name: str) -> Task:
        try:
            return self.tasks[name]
        except KeyError:
            raise KeyError(f"pipeline {self.name!r} has no task {name!r}") from None


# --------------------------------------------------------------------------- entry points


def load_pipeline(path: str | os.PathLike[str]) -> Pipeline:
    """Read and check a YAML spec; ``code:`` is relative to the file's directory.

    Raises ``SpecError`` listing every problem as ``FILE:LINE: field: message``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([Problem(str(p), 0, "", f"cannot read pipeline file: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(str(p), 0, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]) from None
    return parse_pipeline(text, filename=str(p), base_dir=p.parent)


def parse_pipeline(
    text: str, filename: str = "<string>", base_dir: str | os.PathLike[str] | None = None
) -> Pipeline:
    """Parse and check a YAML spec from text; ``code:`` is relative to ``base_dir`` (default: cwd).

    Raises ``SpecError`` listing every problem as ``FILE:LINE: field: message``.
    """
    problems: list[Problem] = []
    composed = _compose(text, filename, problems)
    if composed is None:  # not even YAML: nothing further can be checked
        raise SpecError(problems)
    doc, source = composed
    checker = _Checker(filename, source, Path(base_dir) if base_dir is not None else Path.cwd())
    pipeline = checker.pipeline(doc)
    problems.extend(checker.problems)
    if problems or pipeline is None:
        # Compiler order: by line. The sort is stable, so same-line problems keep the walk order.
        raise SpecError(sorted(problems, key=lambda p: p.line))
    return pipeline


def validate_proto(spec: common_pb2.PipelineSpec) -> list[str]:
    """Check a wire ``PipelineSpec``; return ``"field.path: message"`` strings (empty if valid).

    The scheduler calls this on every Submit/Plan: RPC input can come from any client, not
    just from our SDK. Paths name tasks in brackets: ``tasks[train].inputs.features``.
    """
    return [f"{fld}: {message}" if fld else message for fld, message in _proto_problems(spec)]


# --------------------------------------------------------------------------- shared checks


class _GraphTask(Protocol):
    """What the graph checks read: satisfied by ``Task`` and by ``common_pb2.TaskSpec``."""

    name: str

    @property
    def inputs(self) -> Mapping[str, str]: ...

    @property
    def outputs(self) -> Sequence[str]: ...

    @property
    def after(self) -> Sequence[str]: ...


def _name_problem(name: Any, what: str) -> str | None:
    """Why ``name`` is not a valid task/output/input/pipeline name, or None."""
    if not isinstance(name, str):
        return f"{what} must be a string, got {_kind(name)}"
    if not name:
        return f"{what} must not be empty"
    if not _NAME_RE.fullmatch(name):
        return (f"invalid {what} {name!r}: use letters, digits, '_' and '-', "
                f"not starting with a digit or '-' (pattern {NAME_PATTERN})")
    return None


def _upstream_names(task: _GraphTask) -> list[str]:
    """Upstream task names of a task, without duplicates, in declaration order."""
    names = [ref.partition(".")[0] for ref in task.inputs.values()]
    names.extend(task.after)
    return list(dict.fromkeys(names))


def _suggest(word: str, choices: Iterable[str], known: str = "known") -> str:
    """A "did you mean" hint, or a list of what exists when nothing is close."""
    options = sorted({c for c in choices if c})
    close = difflib.get_close_matches(word, options, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    if not options:
        return ""
    shown = ", ".join(options[:10]) + (", ..." if len(options) > 10 else "")
    return f" ({known}: {shown})"


def _find_cycles(names: Sequence[str], deps: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Dependency cycles, each as names in data-flow order (upstream first), starting and
    ending at its member that comes first in ``names``: ``[a, b, a]`` means b consumes a
    and a consumes b. One cycle per DFS back edge, so every tangle yields at least one
    (listing all elementary cycles can take exponential time); a self-dependency is ``[a, a]``.

    ``deps`` maps a task to its upstreams; names missing from ``names`` are ignored. The
    DFS is iterative so that a long chain cannot hit Python's recursion limit.
    """
    index = {name: i for i, name in enumerate(names)}
    state = dict.fromkeys(names, 0)  # 0: unvisited, 1: on the DFS path, 2: done
    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for root in names:
        if state[root]:
            continue
        state[root] = 1
        path = [root]
        stack = [iter(deps.get(root, ()))]
        while stack:
            for up in stack[-1]:
                if up not in state:
                    continue
                if state[up] == 0:
                    state[up] = 1
                    path.append(up)
                    stack.append(iter(deps.get(up, ())))
                    break
                if state[up] == 1:
                    # path[k:] = [up, x1, ..., node]: each depends on the next, and node on up.
                    # Reversed, that is the data flow: node -> ... -> x1 -> up -> node.
                    flow = path[path.index(up):][::-1]
                    start = min(range(len(flow)), key=lambda i: index[flow[i]])
                    flow = flow[start:] + flow[:start]
                    if tuple(flow) not in seen:
                        seen.add(tuple(flow))
                        cycles.append(flow + [flow[0]])
            else:
                state[path.pop()] = 2
                stack.pop()
    return cycles


def _graph_problems(entries: Sequence[tuple[str | int, _GraphTask]]) -> list[tuple[_Path, str]]:
    """The checks between tasks, shared by the YAML, SDK and proto roads.

    ``entries`` pairs each task with the path element that names it (its name, or its
    index for proto tasks whose name is empty or duplicated). Checks: output and input
    names, duplicate outputs, ``task.output`` references (task exists, output declared,
    not the task itself), ``after`` references, and dependency cycles.
    """
    problems: list[tuple[_Path, str]] = []
    first: dict[str, tuple[str | int, _GraphTask]] = {}
    for elem, task in entries:
        first.setdefault(task.name, (elem, task))
    deps: dict[str, list[str]] = {}
    edge_paths: dict[tuple[str, str], _Path] = {}  # (task, upstream) -> field declaring that edge
    for elem, task in entries:
        base: _Path = ("tasks", elem)
        is_first = first[task.name][0] == elem
        seen_outputs: dict[str, int] = {}
        for i, out in enumerate(task.outputs):
            problem = _name_problem(out, "output name")
            if problem:
                problems.append((base + ("outputs", i), problem))
            elif out in seen_outputs:
                problems.append((base + ("outputs", i), f"duplicate output {out!r} (also outputs[{seen_outputs[out]}])"))
            seen_outputs.setdefault(out, i)
        ups: list[str] = []
        for key, ref in task.inputs.items():
            path = base + ("inputs", key)
            problem = _name_problem(key, "input name")
            if problem:
                problems.append((path, problem))
            up, dot, out = ref.partition(".")
            if not dot or _name_problem(up, "") or _name_problem(out, ""):
                problems.append((path, f"expected 'task.output', got {ref!r}"))
                continue
            if up == task.name:
                problems.append((path, f"task {task.name!r} cannot consume its own output {out!r}"))
                continue
            if up not in first:
                problems.append((path, f"no task named {up!r}{_suggest(up, first)}"))
                continue
            declared = first[up][1].outputs
            if out not in declared:
                hint = _suggest(out, declared, "declared") if declared else " (it declares no outputs)"
                problems.append((path, f"task {up!r} has no output {out!r}{hint}"))
            ups.append(up)  # still an edge: the dependency is meant even if the output is misnamed
            edge_paths.setdefault((task.name, up), path)
        seen_after: dict[str, int] = {}
        for i, up in enumerate(task.after):
            path = base + ("after", i)
            if up == task.name:
                problems.append((path, f"task {task.name!r} cannot run after itself"))
            elif up not in first:
                problems.append((path, f"no task named {up!r}{_suggest(up, first)}"))
            elif up in seen_after:
                problems.append((path, f"{up!r} is listed twice (also after[{seen_after[up]}])"))
            else:
                ups.append(up)
                edge_paths.setdefault((task.name, up), path)
            seen_after.setdefault(up, i)
        if is_first:
            deps[task.name] = ups
    for cycle in _find_cycles(list(first), deps):
        # Point at the field in the cycle's first task that closes the loop.
        path = edge_paths[(cycle[0], cycle[-2])]
        problems.append((path, f"dependency cycle: {' -> '.join(cycle)}"))
    return problems


def _fmt(path: _Path, proto: bool = False) -> str:
    """``("tasks", "train", "run", 1)`` -> ``tasks.train.run[1]``, or ``tasks[train].run[1]`` for protos."""
    text = ""
    for i, part in enumerate(path):
        bracket = isinstance(part, int) or (proto and i == 1 and path[0] == "tasks")
        text += f"[{part}]" if bracket else (("." if text else "") + str(part))
    return text


def _kind(value: Any) -> str:
    """A short description of a value for messages: ``'two'``, ``true (a boolean)``, ``a list``."""
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


def _is_number(value: Any) -> bool:
    """Real numbers only: YAML booleans are ints in Python, and must not pass as counts."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    """Whole numbers only (not booleans, not 2.0)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """SDK arguments as YAML data: tuples become lists, Mappings dicts, paths strings, and a
    ``LabelExpr`` (from ``parse_label_expr``) its text.
    """
    if isinstance(value, common_pb2.LabelExpr):
        return format_label_expr(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


# --------------------------------------------------------------------------- YAML composition


@dataclass
class _Source:
    """Where each value of a composed document came from, by field path."""

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
        self.source = _Source()
        self.count = 0
        self.active: set[int] = set()  # collection nodes on the current walk: a cyclic alias guard

    def problem(self, line: int, path: _Path, message: str) -> None:
        self.problems.append(Problem(self.file, line, _fmt(path), message))

    def refuse(self, node: Node, path: _Path, what: str) -> None:
        self.problem(node.start_mark.line + 1, path,
                     f"YAML tag {_short_tag(node.tag)} is not allowed on {what}: a pipeline spec is plain "
                     f"data (strings, numbers, booleans, lists, mappings)")
        self.source.refused.add(path)

    def convert(self, node: Node, path: _Path) -> Any:
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

    def scalar(self, node: ScalarNode, path: _Path) -> Any:
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

    def mapping(self, node: MappingNode, path: _Path) -> dict[str, Any]:
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
                    self.problem(key_node.start_mark.line + 1, path,
                                 "a merge key '<<' takes a mapping or a list of mappings")
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
    return "!!" + tag[len(_YAML):] if tag.startswith(_YAML) else tag


def _compose(text: str, file: str, problems: list[Problem]) -> tuple[Any, _Source] | None:
    """Compose ``text`` into plain data and its ``_Source``; None (with a problem) if it is not YAML."""
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
        problems.append(Problem(file, 0, "", f"document too large: more than {_MAX_NODES} values "
                                             f"once aliases are expanded"))
    except RecursionError:
        problems.append(Problem(file, 0, "", "document nested too deeply"))
    finally:
        if loader is not None:
            loader.dispose()
    return None


# --------------------------------------------------------------------------- the checker


class _Checker:
    """Checks a spec dict (from YAML or the SDK) and builds the model, collecting problems.

    Every problem goes through ``add``, which attaches the file and line. A field reported
    by ``fail`` (its value was dropped) gets no further problems, so one mistake is one
    message, not a cascade.
    """

    def __init__(self, file: str, source: _Source | None, base_dir: Path) -> None:
        self.file = file
        self.source = source
        self.base_dir = base_dir
        self.problems: list[Problem] = []
        self.silenced: set[_Path] = set(source.refused) if source else set()

    def add(self, path: _Path, message: str) -> None:
        if any(path[:i] in self.silenced for i in range(len(path) + 1)):
            return
        line = self.source.line(path) if self.source else 0
        self.problems.append(Problem(self.file, line, _fmt(path), message))

    def fail(self, path: _Path, message: str) -> None:
        self.add(path, message)
        self.silenced.add(path)

    def kind(self, value: Any, path: _Path) -> str:
        raw = self.source.raw.get(path) if self.source else None
        if raw is not None and isinstance(value, bool):
            return f"{raw} (a boolean)"
        return _kind(value)

    def unknown_keys(self, spec: dict[Any, Any], path: _Path, allowed: Sequence[str]) -> None:
        for key in spec:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.fail(path + (key,), f"unknown key {key!r} (allowed: {', '.join(allowed)}){hint}")

    def text(self, value: Any, path: _Path) -> str | None:
        """A string field. Plain YAML scalars are taken as written (``10``, ``0.10``, ``yes``);
        from the SDK, ints and floats are converted with ``str`` but booleans and None refused.
        """
        if isinstance(value, str):
            return value
        raw = self.source.raw.get(path) if self.source else None
        if raw is not None:
            return raw
        if _is_number(value):
            return str(value)
        self.fail(path, f"expected a string, got {self.kind(value, path)}")
        return None

    def mapping(self, value: Any, path: _Path, what: str) -> dict[Any, Any] | None:
        if isinstance(value, dict):
            return value
        self.fail(path, f"expected {what}, got {self.kind(value, path)}")
        return None

    # ----------------------------------------------------------------- document

    def pipeline(self, doc: Any) -> Pipeline | None:
        if not isinstance(doc, dict):
            got = "an empty document" if doc is None else self.kind(doc, ())
            self.add((), f"the top level must be a mapping with 'name' and 'tasks', got {got}")
            return None
        # Top-level ``x-`` keys are ignored: a place to define YAML anchors (as in Compose files).
        self.unknown_keys({k: v for k, v in doc.items() if not str(k).startswith("x-")}, (), _TOP_KEYS)
        name = ""
        if "name" not in doc:
            self.add(("name",), "required field is missing")
        else:
            name = self.text(doc["name"], ("name",)) or ""
            problem = _name_problem(name, "pipeline name")
            if problem:  # silenced by ``add`` if ``text`` already reported this field
                self.add(("name",), problem)
        code_dir = self.code(doc.get("code"))
        priority = self.priority(doc.get("priority"))
        concurrency = self.concurrency(doc.get("concurrency"))
        tenant = self.tenant(doc.get("tenant"))
        tasks: dict[str, Task] = {}
        raw_tasks = doc.get("tasks")
        if "tasks" not in doc:
            self.add(("tasks",), "required field is missing")
        elif raw_tasks is None or raw_tasks == {}:
            self.add(("tasks",), "must declare at least one task")
        elif self.mapping(raw_tasks, ("tasks",), "a mapping of task name to task") is not None:
            for task_name, spec in raw_tasks.items():
                path: _Path = ("tasks", task_name)
                problem = _name_problem(task_name, "task name")
                if problem:
                    self.add(path, problem)
                tasks[task_name] = self.task(task_name, spec, path)
            for path, message in _graph_problems(list(tasks.items())):
                self.add(path, message)
        return Pipeline(name=name, tasks=tasks, code_dir=code_dir, priority=priority, concurrency=concurrency,
                        tenant=tenant)

    def code(self, value: Any) -> Path | None:
        if value is None:
            return None
        path: _Path = ("code",)
        text = self.text(value, path)
        if text is None:
            return None
        if not text.strip():
            self.add(path, "must not be empty (leave the key out for no code bundle)")
            return None
        # Relative to the spec file, so that `outrider submit dir/pipeline.yaml` works from anywhere.
        resolved = Path(os.path.abspath(self.base_dir / text))
        if not resolved.exists():
            self.add(path, f"code directory {resolved} does not exist")
        elif not resolved.is_dir():
            self.add(path, f"code directory {resolved} is not a directory")
        return resolved

    def priority(self, value: Any) -> int:
        if value is None:
            return 0
        path: _Path = ("priority",)
        if not _is_int(value):
            self.add(path, f"expected a whole number (higher runs first; may be negative), "
                           f"got {self.kind(value, path)}")
            return 0
        if not _INT32_MIN <= value <= _INT32_MAX:
            self.add(path, f"must be from {_INT32_MIN} to {_INT32_MAX}, got {value}")
            return 0
        return value

    def concurrency(self, value: Any) -> int | None:
        if value is None:
            return None
        path: _Path = ("concurrency",)
        if not (_is_int(value) and 1 <= value <= _INT32_MAX):
            self.add(path, f"expected a whole number of tasks at once, at least 1 (leave the key out for no limit), "
                           f"got {self.kind(value, path)}")
            return None
        return value

    def tenant(self, value: Any) -> str:
        if value is None:
            return ""
        path: _Path = ("tenant",)
        text = self.text(value, path)
        if text is None:
            return ""
        problem = _tenant_problem(text)
        if problem:
            self.add(path, problem)
            return ""
        return text

    # ----------------------------------------------------------------- task

    def task(self, name: Any, spec: Any, path: _Path) -> Task:
        """Check one task and build it; always returns a Task (best effort), so that other
        tasks' references to it resolve and do not add noise to the report.
        """
        task = Task(name=name if isinstance(name, str) else str(name))
        if not isinstance(spec, dict):
            self.fail(path, f"a task must be a mapping with at least 'run', got {self.kind(spec, path)}")
            return task
        self.unknown_keys(spec, path, _TASK_KEYS)
        if "run" not in spec:
            self.add(path + ("run",), "required field is missing")
        else:
            task.argv, task.shell = self.run(spec["run"], path + ("run",))
        if spec.get("inputs") is not None:
            task.inputs = self.inputs(spec["inputs"], path + ("inputs",))
        if spec.get("outputs") is not None:
            task.outputs = self.names(spec["outputs"], path + ("outputs",), "a list of output names")
        if spec.get("after") is not None:
            task.after = self.names(spec["after"], path + ("after",), "a list of task names")
        if spec.get("requires") is not None:
            self.requires(spec["requires"], path + ("requires",), task)
        if spec.get("retries") is not None:
            self.retries(spec["retries"], path + ("retries",), task)
        if spec.get("timeout") is not None:
            task.timeout_s = self.duration(spec["timeout"], path + ("timeout",), task.timeout_s)
        if spec.get("env") is not None:
            task.env = self.string_map(spec["env"], path + ("env",), "a mapping of variable name to value",
                                       _env_key_problem)
        for key, sign in (("prefer", 1.0), ("avoid", -1.0)):
            if spec.get(key) is not None:
                task.affinities.extend(self.affinities(spec[key], path + (key,), sign))
        return task

    def run(self, value: Any, path: _Path) -> tuple[list[str], bool]:
        if isinstance(value, list):
            if not value:
                self.add(path, "must not be an empty list")
                return [], False
            argv = []
            for i, item in enumerate(value):
                arg = self.text(item, path + (i,))
                if arg is not None and "\0" in arg:
                    self.fail(path + (i,), "must not contain NUL characters")
                argv.append(arg if arg is not None else "")
            if not argv[0].strip():
                self.add(path + (0,), "the program (first element) must not be empty")
            return argv, False
        if value is None or isinstance(value, dict):
            self.fail(path, f"expected a command string (run under /bin/sh -c) or a list of arguments "
                            f"(exec'd as is), got {self.kind(value, path)}")
            return [], False
        command = self.text(value, path)
        if command is None:
            return [], True
        if not command.strip():
            self.add(path, "must not be empty")
        elif "\0" in command:
            self.add(path, "must not contain NUL characters")
        return [command], True

    def inputs(self, value: Any, path: _Path) -> dict[str, str]:
        spec = self.mapping(value, path, "a mapping of input name to 'task.output'")
        inputs: dict[str, str] = {}
        for key, ref in (spec or {}).items():
            if ref is None or isinstance(ref, (list, dict)):
                self.fail(path + (key,), f"expected 'task.output', got {self.kind(ref, path + (key,))}")
                continue
            text = self.text(ref, path + (key,))
            if text is not None:
                inputs[str(key)] = text
        return inputs

    def names(self, value: Any, path: _Path, what: str) -> list[str]:
        if not isinstance(value, list):
            self.fail(path, f"expected {what}, got {self.kind(value, path)}")
            return []
        # Keep a placeholder for a bad item so later indices (and their lines) stay right;
        # the item's path is silenced, so the placeholder draws no second message.
        return [self.text(item, path + (i,)) or "" for i, item in enumerate(value)]

    def requires(self, value: Any, path: _Path, task: Task) -> None:
        spec = self.mapping(value, path, f"a mapping with {', '.join(_REQUIRES_KEYS)}")
        if spec is None:
            return
        self.unknown_keys(spec, path, _REQUIRES_KEYS)
        if spec.get("cpus") is not None:
            cpus = spec["cpus"]
            if _is_number(cpus) and math.isfinite(cpus) and cpus >= 0:
                task.cpus = float(cpus)
            else:
                self.add(path + ("cpus",), f"expected a non-negative number of CPUs, got {self.kind(cpus, path + ('cpus',))}")
        if spec.get("gpus") is not None:
            gpus = spec["gpus"]
            if isinstance(gpus, int) and not isinstance(gpus, bool) and 0 <= gpus <= _INT32_MAX:
                task.gpus = gpus
            else:
                self.add(path + ("gpus",), f"expected a non-negative whole number of GPUs, got {self.kind(gpus, path + ('gpus',))}")
        if spec.get("memory") is not None:
            task.memory_bytes = self.size(spec["memory"], path + ("memory",))
        if spec.get("disk") is not None:
            task.disk_bytes = self.size(spec["disk"], path + ("disk",))
        if spec.get("labels") is not None:
            labels = spec["labels"]
            what = "a mapping of label to value"
            if isinstance(labels, list):  # likely expressions: say where they go
                what += " (label expressions such as 'site in (a, b)' go under requires.match)"
            task.labels = self.string_map(labels, path + ("labels",), what, _label_key_problem)
        if spec.get("match") is not None:
            task.expressions = self.expressions(spec["match"], path + ("match",))
        if spec.get("gpu_memory") is not None:
            task.gpu_memory_bytes = self.size(spec["gpu_memory"], path + ("gpu_memory",))
        if spec.get("gpu_model") is not None:
            model_path = path + ("gpu_model",)
            model = self.text(spec["gpu_model"], model_path)
            if model is not None and not model.strip():
                self.add(model_path, "must not be empty (leave the key out to accept any GPU model)")
            elif model is not None and "\0" in model:
                self.add(model_path, "must not contain NUL characters")
            elif model is not None:
                task.gpu_model = model
        if spec.get("residency") is not None:
            task.residency = self.zones(spec["residency"], path + ("residency",))
        if spec.get("max_clock_skew") is not None:
            task.max_clock_skew_s = self.duration(spec["max_clock_skew"], path + ("max_clock_skew",), 0.0)

    def expressions(self, value: Any, path: _Path) -> list[common_pb2.LabelExpr]:
        if not isinstance(value, list):
            self.fail(path, f"expected a list of label expressions such as ['tier = edge', 'gpu exists'], "
                            f"got {self.kind(value, path)}")
            return []
        exprs = []
        for i, item in enumerate(value):
            expr = self.label_expr(item, path + (i,))
            if expr is not None:
                exprs.append(expr)
        return exprs

    def label_expr(self, value: Any, path: _Path) -> common_pb2.LabelExpr | None:
        if value is None or isinstance(value, (list, dict)):
            self.fail(path, f"expected a label expression such as 'tier = edge', got {self.kind(value, path)}")
            return None
        text = self.text(value, path)
        if text is None:
            return None
        try:
            return parse_label_expr(text)
        except ValueError as exc:
            self.add(path, str(exc))
            return None

    def zones(self, value: Any, path: _Path) -> list[str]:
        if not isinstance(value, list):
            self.fail(path, f"expected a list of zone names such as [eu, eu-west], got {self.kind(value, path)}")
            return []
        if not value:
            self.add(path, "must list at least one zone (leave the key out to allow any zone)")
            return []
        zones: list[str] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(value):
            zone = self.text(item, path + (i,))
            if zone is None:
                continue
            problem = _zone_problem(zone)
            if problem:
                self.add(path + (i,), problem)
            elif zone in seen:
                self.add(path + (i,), f"zone {zone!r} is listed twice (also residency[{seen[zone]}])")
            else:
                seen[zone] = i
                zones.append(zone)
        return zones

    def affinities(self, value: Any, path: _Path, sign: float) -> list[common_pb2.Affinity]:
        if not isinstance(value, list):
            self.fail(path, f"expected a list of label expressions (or {{match: EXPR, weight: W}} mappings), "
                            f"got {self.kind(value, path)}")
            return []
        result: list[common_pb2.Affinity] = []
        for i, item in enumerate(value):
            item_path = path + (i,)
            weight = DEFAULT_AFFINITY_WEIGHT
            if isinstance(item, dict):
                self.unknown_keys(item, item_path, _AFFINITY_KEYS)
                if item.get("weight") is not None:
                    weight = self.weight(item["weight"], item_path + ("weight",))
                if item.get("match") is None:
                    self.add(item_path + ("match",), "required field is missing")
                    continue
                expr = self.label_expr(item["match"], item_path + ("match",))
            elif item is None or isinstance(item, list):
                self.fail(item_path, f"expected a label expression such as 'tier = edge' or a mapping "
                                     f"{{match: EXPR, weight: W}}, got {self.kind(item, item_path)}")
                continue
            else:
                expr = self.label_expr(item, item_path)
            if expr is not None and weight is not None:
                result.append(common_pb2.Affinity(expr=expr, weight=sign * weight))
        return result

    def weight(self, value: Any, path: _Path) -> float | None:
        if _is_number(value) and math.isfinite(value) and value > 0:
            return float(value)
        self.add(path, f"expected a number greater than 0, got {self.kind(value, path)}")
        return None

    def retries(self, value: Any, path: _Path, task: Task) -> None:
        # ``retries: N`` and ``retries: {max: N}`` both mean N retries after the first attempt.
        if isinstance(value, dict):
            self.unknown_keys(value, path, _RETRIES_KEYS)
            if value.get("max") is not None:
                task.max_attempts = self.retry_count(value["max"], path + ("max",)) + 1
            if value.get("backoff") is not None:
                task.backoff_s = self.duration(value["backoff"], path + ("backoff",), task.backoff_s)
            return
        if isinstance(value, int) and not isinstance(value, bool):
            task.max_attempts = self.retry_count(value, path) + 1
            return
        self.add(path, f"expected a number of retries or a mapping {{max: N, backoff: 5s}}, "
                       f"got {self.kind(value, path)}")

    def retry_count(self, value: Any, path: _Path) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _INT32_MAX:
            return value
        self.add(path, f"expected a non-negative whole number of retries, got {self.kind(value, path)}")
        return 0

    def size(self, value: Any, path: _Path) -> int:
        try:
            size = parse_bytes(value)
        except (ValueError, OverflowError) as exc:  # OverflowError: .inf
            self.add(path, str(exc) if not isinstance(exc, OverflowError) else f"expected a size, got {value!r}")
            return 0
        if size > _INT64_MAX:
            self.add(path, f"size {size} bytes is too large")
            return 0
        return size

    def duration(self, value: Any, path: _Path, default: float) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.add(path, str(exc))
            return default
        if not math.isfinite(seconds):  # .inf and .nan are YAML floats and pass parse_duration
            self.add(path, f"expected a finite duration, got {value!r}")
            return default
        return seconds

    def string_map(self, value: Any, path: _Path, what: str, key_problem: Callable[[Any], str | None]) -> dict[str, str]:
        spec = self.mapping(value, path, what)
        result: dict[str, str] = {}
        for key, item in (spec or {}).items():
            item_path = path + (key,)
            problem = key_problem(key)
            if problem:
                self.add(item_path, problem)
                continue
            text = self.text(item, item_path)
            if text is None:
                continue
            if "\0" in text:
                self.add(item_path, "must not contain NUL characters")
                continue
            result[key] = text
        return result


def _env_key_problem(key: Any) -> str | None:
    if not isinstance(key, str) or not _ENV_RE.fullmatch(key):
        return f"invalid environment variable name {key!r}: use letters, digits and '_', not starting with a digit"
    return None


def _label_key_problem(key: Any) -> str | None:
    if not isinstance(key, str) or not key.strip():
        return f"label names must be non-empty strings, got {_kind(key)}"
    return None


def _zone_problem(zone: str) -> str | None:
    if not zone:
        return "zone names must not be empty"
    if not _ZONE_RE.fullmatch(zone):
        return f"invalid zone name {zone!r}: use letters, digits, '.', '_' and '-' (pattern {ZONE_PATTERN})"
    return None


def _tenant_problem(tenant: str) -> str | None:
    if not tenant:
        return "must not be empty (leave the key out to use the submitter's identity)"
    if not _TENANT_RE.fullmatch(tenant):
        return (f"invalid tenant {tenant!r}: use letters, digits, '.', '_', '-', ':', '/' and '@', "
                f"starting with a letter or digit, at most 253 characters")
    return None


# --------------------------------------------------------------------------- proto checks


def _proto_problems(spec: common_pb2.PipelineSpec) -> list[tuple[str, str]]:
    """``validate_proto`` as (field, message) pairs; fields like ``tasks[train].argv``."""
    problems: list[tuple[_Path, str]] = []
    problem = _name_problem(spec.name, "pipeline name")
    if problem:
        problems.append((("name",), problem))
    if spec.code_digest and not _DIGEST_RE.fullmatch(spec.code_digest):
        problems.append((("code_digest",), "expected a lowercase sha256 hex digest (64 characters)"))
    if not spec.tasks:
        problems.append((("tasks",), "must declare at least one task"))
    if spec.concurrency < 0:
        problems.append((("concurrency",), f"must not be negative (0 means no limit), got {spec.concurrency}"))
    if spec.tenant:
        problem = _tenant_problem(spec.tenant)
        if problem:
            problems.append((("tenant",), problem))
    counts: dict[str, int] = {}
    for task in spec.tasks:
        counts[task.name] = counts.get(task.name, 0) + 1
    first_index: dict[str, int] = {}
    entries: list[tuple[str | int, _GraphTask]] = []
    for i, task in enumerate(spec.tasks):
        # Name a task by its name where that is unambiguous, else by its index.
        elem: str | int = task.name if task.name and counts[task.name] == 1 else i
        base: _Path = ("tasks", elem)
        entries.append((elem, task))
        problem = _name_problem(task.name, "task name")
        if problem:
            problems.append((base + ("name",), problem))
        elif task.name in first_index:
            problems.append((base + ("name",), f"duplicate task name {task.name!r} (also tasks[{first_index[task.name]}])"))
        first_index.setdefault(task.name, i)
        problems.extend(_proto_task_problems(task, base))
    problems.extend(_graph_problems(entries))
    return [(_fmt(path, proto=True), message) for path, message in problems]


def _proto_task_problems(task: common_pb2.TaskSpec, base: _Path) -> list[tuple[_Path, str]]:
    """The per-task wire checks that the YAML road does while parsing (argv, resources, times)."""
    problems: list[tuple[_Path, str]] = []
    if not task.argv:
        problems.append((base + ("argv",), "must not be empty"))
    elif task.shell and len(task.argv) != 1:
        problems.append((base + ("argv",), f"with shell=true argv holds exactly one command string, got {len(task.argv)}"))
    elif not task.argv[0].strip():
        problems.append((base + ("argv", 0), "the program (first element) must not be empty"))
    for i, arg in enumerate(task.argv):
        if "\0" in arg:
            problems.append((base + ("argv", i), "must not contain NUL characters"))
    req = task.requires
    if not (math.isfinite(req.cpus) and req.cpus >= 0):
        problems.append((base + ("requires", "cpus"), f"must be a non-negative number, got {req.cpus}"))
    for name in ("memory_bytes", "disk_bytes", "gpus"):
        if getattr(req, name) < 0:
            problems.append((base + ("requires", name), f"must not be negative, got {getattr(req, name)}"))
    for key in req.labels:
        problem = _label_key_problem(key)
        if problem:
            problems.append((base + ("requires", "labels"), problem))
    if req.gpu_memory_bytes < 0:
        problems.append((base + ("requires", "gpu_memory_bytes"), f"must not be negative, got {req.gpu_memory_bytes}"))
    if "\0" in req.gpu_model:
        problems.append((base + ("requires", "gpu_model"), "must not contain NUL characters"))
    for i, expr in enumerate(req.expressions):
        problem = _label_expr_problem(expr.key, expr.op, expr.values)
        if problem:
            problems.append((base + ("requires", "expressions", i),
                             f"invalid label expression {format_label_expr(expr)!r}: {problem}"))
    seen_zones: dict[str, int] = {}
    for i, zone in enumerate(req.residency):
        problem = _zone_problem(zone)
        if problem:
            problems.append((base + ("requires", "residency", i), problem))
        elif zone in seen_zones:
            problems.append((base + ("requires", "residency", i),
                             f"zone {zone!r} is listed twice (also residency[{seen_zones[zone]}])"))
        seen_zones.setdefault(zone, i)
    if not (math.isfinite(req.max_clock_skew_s) and req.max_clock_skew_s >= 0):
        problems.append((base + ("requires", "max_clock_skew_s"),
                         f"must be a non-negative number of seconds (0 means no bound), got {req.max_clock_skew_s}"))
    for i, affinity in enumerate(task.affinities):
        expr = affinity.expr
        problem = _label_expr_problem(expr.key, expr.op, expr.values)
        if problem:
            problems.append((base + ("affinities", i, "expr"),
                             f"invalid label expression {format_label_expr(expr)!r}: {problem}"))
        if not (math.isfinite(affinity.weight) and affinity.weight != 0):
            problems.append((base + ("affinities", i, "weight"),
                             f"must be a finite number other than 0 (> 0 prefers, < 0 avoids), got {affinity.weight}"))
    if task.max_attempts < 0:
        problems.append((base + ("max_attempts",), f"must not be negative, got {task.max_attempts}"))
    for name in ("backoff_s", "timeout_s"):
        seconds = getattr(task, name)
        if not (math.isfinite(seconds) and seconds >= 0):
            problems.append((base + (name,), f"must be a non-negative number of seconds, got {seconds}"))
    for key, value in task.env.items():
        problem = _env_key_problem(key)
        if problem:
            problems.append((base + ("env", key), problem))
        elif "\0" in value:
            problems.append((base + ("env", key), "must not contain NUL characters"))
    return problems
