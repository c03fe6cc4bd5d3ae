"""Hypothesis strategies for fuzzing gRPC services from their protobuf descriptors.

* :func:`messages`: valid messages of any type, built from its descriptor with hostile
  values: odd unicode and strings of huge lengths, NaN/inf/negative/huge numbers, enum
  numbers no one declared, repeated and map fields of odd sizes, nested messages;
* :func:`seeded`: a sensible request with meaningful values (a real run id) and a few
  fields made hostile, to get past the first checks;
* :func:`mutated`: bit and byte mutations of such a message's bytes;
* :func:`method_of`: an RPC path (``/pkg.Service/Method``) resolved to its request type and
  its streaming shape, from the descriptors every generated module registered.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import pkgutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

F = FieldDescriptor

_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
_EDGE_INTS = (0, 1, -1, 2, 255, 256, 1023, 1024, 2**31 - 1, -(2**31), 2**32 - 1, 2**53, 2**53 + 1, 2**63 - 1, -(2**63))
_EDGE_FLOATS = (math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, -1e308, 5e-324, 1e11, 1e20, -1.0, 3.4e38)
#: Strings that have meant something to someone: paths, format strings, SPIFFE IDs, a digest.
_SPECIAL_TEXT = (
    "",
    "\x00",
    " ",
    "../../../../etc/passwd",
    "/",
    "%s%n%x",
    "{0}{1}",
    "spiffe://outrider.local/admin/root",
    "a.b",
    "run-0-000000",
    "0" * 64,
    "\u202e\u0301\ufeff",
    "\U0001f4a5",
    "NaN",
    "-1",
    "*",
)
#: Lengths past the bounds the scheduler checks (256, 1024, ...), up to a few MiB.
_HUGE = (255, 256, 257, 1023, 1024, 1025, 4097, 65537, 1 << 20, 4 << 20)
_REPEATS = (0, 1, 2, 3, 7, 17, 256, 1001, 10_000)

# Any code point but surrogates (protobuf strings are UTF-8): control characters, NUL, RTL
# marks, combining marks, astral emoji.
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


def _ints(ftype: int) -> st.SearchStrategy[int]:
    lo, hi = _INT_RANGES[ftype]
    return st.one_of(st.sampled_from([v for v in _EDGE_INTS if lo <= v <= hi]), st.integers(lo, hi))


def _floats(width: int) -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(_EDGE_FLOATS), st.floats(width=width))


@st.composite
def _text(draw: Any) -> str:
    pick = draw(st.integers(0, 9))
    if pick == 0:
        return str(draw(st.sampled_from(("a", "é", "\U0001f4a5", "\x00", "/", "%")))) * draw(st.sampled_from(_HUGE))
    if pick <= 2:
        return str(draw(st.sampled_from(_SPECIAL_TEXT)))
    return str(draw(_TEXT))


@st.composite
def _bytes(draw: Any) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return bytes(draw(st.sampled_from((b"\x00", b"\xff", b"a")))) * draw(st.sampled_from(_HUGE))
    return bytes(draw(st.binary(max_size=64)))


def _scalar(draw: Any, field: FieldDescriptor) -> Any:
    t = field.type
    if t in _INT_RANGES:
        return draw(_ints(t))
    if t == F.TYPE_DOUBLE:
        return draw(_floats(64))
    if t == F.TYPE_FLOAT:
        return draw(_floats(32))
    if t == F.TYPE_BOOL:
        return draw(st.booleans())
    if t == F.TYPE_STRING:
        return draw(_text())
    if t == F.TYPE_BYTES:
        return draw(_bytes())
    if t == F.TYPE_ENUM:
        declared = [v.number for v in field.enum_type.values]
        return draw(st.one_of(st.sampled_from(declared), st.integers(-3, 1000)))
    raise AssertionError(f"field type {t} of {field.full_name}")


#: A value a field's type cannot hold (a closed enum's unknown number, a float out of range): skipped.
_UNHOLDABLE = contextlib.suppress(ValueError, TypeError, OverflowError)

#: What replicating a drawn item may add to one message, at most.
_BUDGET = 8 << 20


def _count(draw: Any, top: bool) -> int:
    """How many items a repeated or map field gets: mostly 0-3; at the top level sometimes many."""
    if top and draw(st.integers(0, 5)) == 0:
        return int(draw(st.sampled_from(_REPEATS)))
    return int(draw(st.integers(0, 3)))


def _capped(n: int, item_size: int) -> int:
    """``n``, cut so that ``n`` items of ``item_size`` bytes stay within :data:`_BUDGET`."""
    return min(n, max(3, _BUDGET // max(1, item_size)))


def _size(value: Any) -> int:
    if isinstance(value, (str, bytes)):
        return len(value) * 4
    return value.ByteSize() if hasattr(value, "ByteSize") else 8


def _fill(draw: Any, msg: Any, depth: int, top: bool) -> None:
    for field in msg.DESCRIPTOR.fields:
        if not draw(st.booleans()):
            continue
        with _UNHOLDABLE:
            _set(draw, msg, field, depth, top)


def _set(draw: Any, msg: Any, field: FieldDescriptor, depth: int, top: bool) -> None:
    name = field.name
    is_message = field.type == F.TYPE_MESSAGE
    if is_message and depth <= 0:
        return
    n = _count(draw, top) if field.is_repeated else 1
    if field.is_repeated and is_message and field.message_type.GetOptions().map_entry:
        key_f, value_f = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        if value_f.type == F.TYPE_MESSAGE:
            values = [draw(messages(value_f.message_type, depth - 1)) for _ in range(min(n, 3))]
        else:
            values = [_scalar(draw, value_f) for _ in range(min(n, 3))]
        keys = [_scalar(draw, key_f) for _ in range(min(n, 3))]
        if values:
            n = _capped(n, max(_size(v) for v in values))
            keys += [_nth_key(key_f, i) for i in range(n - len(keys))]
        entries = getattr(msg, name)
        for i, key in enumerate(keys):
            if value_f.type == F.TYPE_MESSAGE:
                entries[key].CopyFrom(values[i % len(values)])
            else:
                entries[key] = values[i % len(values)]
        return
    if field.is_repeated:
        if is_message:
            items = [draw(messages(field.message_type, depth - 1)) for _ in range(min(n, 3))]
        else:
            items = [_scalar(draw, field) for _ in range(min(n, 3))]
        if not items:
            return
        n = _capped(n, max(_size(v) for v in items))
        target = getattr(msg, name)
        if is_message:
            for i in range(n):
                target.add().CopyFrom(items[i % len(items)])
        else:
            target.extend(items[i % len(items)] for i in range(n))
        return
    if is_message:
        getattr(msg, name).CopyFrom(draw(messages(field.message_type, depth - 1)))
        return
    setattr(msg, name, _scalar(draw, field))


def _nth_key(field: FieldDescriptor, i: int) -> Any:
    if field.type == F.TYPE_STRING:
        return f"k{i}"
    if field.type == F.TYPE_BOOL:
        return bool(i % 2)
    return i


@st.composite
def messages(draw: Any, descriptor: Descriptor, depth: int = 3) -> Any:
    """A message of ``descriptor``'s type, each field set or not, with hostile values."""
    msg = message_factory.GetMessageClass(descriptor)()
    _fill(draw, msg, depth, top=depth >= 3)
    return msg


def _slots(msg: Any, depth: int = 4) -> Iterator[tuple[Any, FieldDescriptor]]:
    """(message, field) for every field of ``msg`` and of the sub-messages set in it."""
    for field in msg.DESCRIPTOR.fields:
        yield msg, field
        if depth <= 0 or field.type != F.TYPE_MESSAGE:
            continue
        if not field.is_repeated:
            if msg.HasField(field.name):
                yield from _slots(getattr(msg, field.name), depth - 1)
        elif not field.message_type.GetOptions().map_entry:
            for item in list(getattr(msg, field.name))[:3]:
                yield from _slots(item, depth - 1)


@st.composite
def seeded(draw: Any, base: Any, known: Mapping[str, Sequence[str]]) -> Any:
    """``base`` (a sensible request), its string fields named in ``known`` (anywhere in it) set
    to meaningful values (a real run id), then up to three of its fields given hostile values:
    a request that passes the first checks and reaches deeper ones."""
    msg = type(base)()
    msg.CopyFrom(base)
    slots = list(_slots(msg))
    for parent, field in slots:
        if field.name in known and field.type == F.TYPE_STRING and not field.is_repeated and draw(st.booleans()):
            setattr(parent, field.name, draw(st.sampled_from(list(known[field.name]))))
    for _ in range(draw(st.integers(0, 3)) if slots else 0):
        parent, field = draw(st.sampled_from(slots))
        parent.ClearField(field.name)
        with _UNHOLDABLE:
            _set(draw, parent, field, 2, False)
    return msg


@st.composite
def mutated(draw: Any, data: bytes) -> bytes:
    """``data`` after 1 to 8 mutations: bits flipped, bytes set, inserted, deleted, cut, repeated."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.integers(0, 5))
        pos = draw(st.integers(0, len(out)))
        if op == 0 and out:
            i = min(pos, len(out) - 1)
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and out:
            out[min(pos, len(out) - 1)] = draw(st.integers(0, 255))
        elif op == 2:
            out[pos:pos] = draw(st.sampled_from((b"\xff" * 10, b"\x80", b"\x0a\xff\xff\xff\xff\x0f", b"\x00")))
        elif op == 3:
            del out[pos : pos + draw(st.integers(1, 16))]
        elif op == 4:
            del out[pos:]
        else:
            out[pos:pos] = out[max(0, pos - 32) : pos]
    return bytes(out)


@dataclass(frozen=True)
class Method:
    path: str
    request: Descriptor
    client_streaming: bool
    server_streaming: bool


_loaded = False


def _load_descriptors() -> None:
    """Import every generated module, so each service is in the default descriptor pool."""
    global _loaded
    if _loaded:
        return
    import outrider.v1

    for info in pkgutil.iter_modules(outrider.v1.__path__):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"outrider.v1.{info.name}")
    importlib.import_module("grpc_health.v1.health_pb2")
    importlib.import_module("grpc_reflection.v1alpha.reflection_pb2")
    _loaded = True


def method_of(path: str) -> Method:
    """``/pkg.Service/Method`` -> its request type and streaming shape."""
    _load_descriptors()
    service, _, name = path.strip("/").rpartition("/")
    m = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name)
    return Method(path, m.input_type, m.client_streaming, m.server_streaming)
