"""Bounds on every value that comes in over the wire, checked before it is converted.

No value from the wire reaches the core, let alone the store, unchecked: a NaN
time once reached SQLite's ``NOT NULL`` column, the commit failed and the writer
ended the process (and again after every restart, as the lease was still there).
So :mod:`scheduler.api.wire` runs every incoming message through these checks and
refuses a bad one with ``INVALID_ARGUMENT`` naming the field:

* numbers must be finite (no NaN, no infinity) and within a sane range: times are
  non-negative seconds before :data:`MAX_WALL`, sizes and counts non-negative,
  clock offsets below :data:`MAX_CLOCK_S`;
* names, labels and identifiers have a length bound;
* repeated fields have a count bound;
* free text that only explains something (an error message, an unhealthy reason)
  is truncated to a bound rather than refused: refusing a completion because its
  error is long would lose the result.

The limits are generous (no well-behaved agent or client comes near them); they
are there so that one report can neither poison the store nor cost unbounded work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Sized

from outrider.errors import InvalidArgument
from outrider.protocol import ARTIFACT_KINDS, is_digest
from outrider.v1 import agent_pb2, common_pb2

#: Latest plausible wall time, seconds since the epoch (about the year 5138).
MAX_WALL = 1e11
#: Largest clock offset or uncertainty taken from an agent (about 31 years).
MAX_CLOCK_S = 1e9
#: Largest size in bytes (an artifact, memory, a disk): 2^53, exact as a float.
MAX_BYTES = 2**53
#: Names: run ids, task names, output names, label keys, clock sources, instance ids.
MAX_NAME = 256
#: Short descriptive strings: a label value, a CPU model, an OS release.
MAX_SHORT_TEXT = 1024
#: A completion's error message is truncated to this many characters.
MAX_ERROR = 8192
#: An agent's unhealthy reason is truncated to this many characters.
MAX_REASON = 1024
#: An error message sent to a client (status details travel in gRPC metadata, 16 KiB at most
#: after percent-encoding, where one character can take 12 bytes): see :mod:`scheduler.api.status`.
MAX_MESSAGE = 1024
#: A problem list names at most this many problems, each cut to :data:`MAX_PROBLEM` characters.
MAX_PROBLEMS = 50
MAX_PROBLEM = 240
#: Counts of repeated fields in one message.
MAX_CLOCK_SAMPLES = 64
MAX_LEASES = 10_000
MAX_OUTPUTS = 1024
MAX_GPUS = 1024
MAX_LABELS = 1024
MAX_ZONES = 256
MAX_CACHED = 200_000
MAX_LOG_CHUNKS = 10_000
MAX_CHECKPOINTS = 10_000
#: One log chunk's bytes.
MAX_LOG_CHUNK_BYTES = 4 << 20
#: An agent's slots and cores.
MAX_SLOTS = 100_000
MAX_CPU_CORES = 1_000_000
#: An agent's jobs queued in its batch system (the Slurm executor).
MAX_QUEUED_JOBS = 10_000_000
#: Checkpoint and event sequence numbers.
MAX_SEQ = 2**62


def number(field: str, value: float, lo: float = 0.0, hi: float = MAX_WALL) -> float:
    """A finite number in ``[lo, hi]``; else InvalidArgument naming ``field``."""
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidArgument(f"{field} must be a finite number from {lo:g} to {hi:g}, got {value!r}")
    return value


def integer(field: str, value: int, lo: int = 0, hi: int = MAX_BYTES) -> int:
    """An integer in ``[lo, hi]``; else InvalidArgument naming ``field``."""
    if not lo <= value <= hi:
        raise InvalidArgument(f"{field} must be an integer from {lo} to {hi}, got {value}")
    return value


def text(field: str, value: str, limit: int = MAX_NAME) -> str:
    """A string of at most ``limit`` characters; else InvalidArgument naming ``field``."""
    if len(value) > limit:
        raise InvalidArgument(f"{field} is {len(value)} characters long, over the limit of {limit}: {value[:40]!r}...")
    return value


def clip(value: str, limit: int) -> str:
    """Free text cut to ``limit`` characters, saying how much was cut."""
    if len(value) <= limit:
        return value
    return value[:limit] + f"... ({len(value) - limit} more characters cut)"


def listing(head: str, items: Sequence[str], limit: int = MAX_MESSAGE) -> str:
    """``head`` and one item a line, as many as fit in ``limit`` characters (at most
    :data:`MAX_PROBLEMS`, each cut), then how many more there are."""
    out = head
    for i, item in enumerate(items):
        line = "\n  " + clip(item, MAX_PROBLEM)
        rest = f"\n  ... and {len(items) - i} more problem(s)"
        if i == MAX_PROBLEMS or len(out) + len(line) + len(rest) + 20 > limit:
            return out + rest
        out += line
    return out


def count(field: str, items: Sized, limit: int) -> None:
    """At most ``limit`` items; else InvalidArgument naming ``field``."""
    if len(items) > limit:
        raise InvalidArgument(f"{field} has {len(items)} entries, over the limit of {limit}")


# --------------------------------------------------------------------------- messages from agents
# Each takes the protobuf message as received and raises InvalidArgument naming the
# first field out of bounds; the wire module converts only what passed.


def check_lease(field: str, ref: common_pb2.LeaseRef) -> None:
    text(f"{field}.run_id", ref.run_id)
    text(f"{field}.task", ref.task)
    integer(f"{field}.epoch", ref.epoch, 0, 2**31 - 1)


def check_leases(field: str, refs: Sequence[common_pb2.LeaseRef]) -> None:
    count(field, refs, MAX_LEASES)
    for i, ref in enumerate(refs):
        check_lease(f"{field}[{i}]", ref)


def check_clock(field: str, samples: Sequence[common_pb2.ClockSample]) -> None:
    count(field, samples, MAX_CLOCK_SAMPLES)
    for i, s in enumerate(samples):
        number(f"{field}[{i}].offset_s", s.offset_s, -MAX_CLOCK_S, MAX_CLOCK_S)
        number(f"{field}[{i}].uncertainty_s", s.uncertainty_s, 0.0, MAX_CLOCK_S)
        number(f"{field}[{i}].measured_at", s.measured_at)
        text(f"{field}[{i}].source", s.source)


def check_capabilities(field: str, c: common_pb2.Capabilities) -> None:
    integer(f"{field}.cpu_cores", c.cpu_cores, 0, MAX_CPU_CORES)
    for name in ("memory_bytes", "disk_bytes", "disk_free_bytes"):
        integer(f"{field}.{name}", getattr(c, name))
    for name in ("arch", "cpu_model", "os", "os_release", "python_version", "hostname", "agent_version", "gpu_probe"):
        text(f"{field}.{name}", getattr(c, name), MAX_SHORT_TEXT)
    count(f"{field}.gpus", c.gpus, MAX_GPUS)
    for i, g in enumerate(c.gpus):
        integer(f"{field}.gpus[{i}].index", g.index, 0, MAX_GPUS)
        integer(f"{field}.gpus[{i}].memory_bytes", g.memory_bytes)
        integer(f"{field}.gpus[{i}].memory_free_bytes", g.memory_free_bytes)
        for name in ("model", "driver", "uuid", "compute_capability"):
            text(f"{field}.gpus[{i}].{name}", getattr(g, name), MAX_SHORT_TEXT)
    count(f"{field}.labels", c.labels, MAX_LABELS)
    for key, value in c.labels.items():
        text(f"{field}.labels key", key)
        text(f"{field}.labels[{key}]", value, MAX_SHORT_TEXT)
    integer(f"{field}.slots", c.slots, 0, MAX_SLOTS)
    integer(f"{field}.queued_jobs", c.queued_jobs, 0, MAX_QUEUED_JOBS)
    count(f"{field}.zones", c.zones, MAX_ZONES)
    for i, zone in enumerate(c.zones):
        text(f"{field}.zones[{i}]", zone)
    number(f"{field}.bandwidth_bps", c.bandwidth_bps, 0.0, 1e15)
    number(f"{field}.rtt_s", c.rtt_s, 0.0, 1e6)
    count(f"{field}.cached", c.cached, MAX_CACHED)
    for i, a in enumerate(c.cached):
        if not is_digest(a.digest):
            raise InvalidArgument(
                f"{field}.cached[{i}].digest must be 64 lowercase hex characters, got {a.digest[:80]!r}"
            )
        integer(f"{field}.cached[{i}].size", a.size)
        text(f"{field}.cached[{i}].name", a.name)
        text(f"{field}.cached[{i}].kind", a.kind)
    number(f"{field}.power.battery_percent", c.power.battery_percent, 0.0, 100.0)


def check_completion(field: str, c: agent_pb2.Completion) -> None:
    check_lease(f"{field}.lease", c.lease)
    number(f"{field}.started_at", c.started_at)
    number(f"{field}.finished_at", c.finished_at)
    for name in ("fetched_at", "exec_started_at", "exec_exited_at", "upload_started_at"):
        number(f"{field}.{name}", getattr(c, name))
    count(f"{field}.outputs", c.outputs, MAX_OUTPUTS)
    for i, o in enumerate(c.outputs):
        text(f"{field}.outputs[{i}].name", o.name)
        text(f"{field}.outputs[{i}].digest", o.digest)
        text(f"{field}.outputs[{i}].kind", o.kind)
        integer(f"{field}.outputs[{i}].size", o.size)


def check_log_chunk(field: str, chunk: agent_pb2.LogChunk) -> None:
    check_lease(f"{field}.lease", chunk.lease)
    if chunk.stream not in ("stdout", "stderr"):
        raise InvalidArgument(f"{field}.stream must be 'stdout' or 'stderr', got {chunk.stream[:40]!r}")
    integer(f"{field}.data (bytes)", len(chunk.data), 0, MAX_LOG_CHUNK_BYTES)
    number(f"{field}.ts", chunk.ts)


def check_checkpoint(field: str, cp: common_pb2.Checkpoint) -> None:
    check_lease(f"{field}.lease", cp.lease)
    if not is_digest(cp.digest):
        raise InvalidArgument(f"{field}.digest must be 64 lowercase hex characters, got {cp.digest[:80]!r}")
    integer(f"{field}.size", cp.size)
    if cp.kind not in ARTIFACT_KINDS:
        raise InvalidArgument(f"{field}.kind must be one of {sorted(ARTIFACT_KINDS)}, got {cp.kind[:40]!r}")
    integer(f"{field}.seq", cp.seq, 1, MAX_SEQ)
    number(f"{field}.created_at", cp.created_at)
