"""The audit log's chain, pure: records, the canonical encoding, the hash, verification.

See :mod:`scheduler.core.audit` for what is recorded and the encoding, described
for an auditor. This module imports nothing of the scheduler, so the store's
writer (which gives each record its seq and hash in commit order) can use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

GENESIS = "0" * 64  #: the ``prev_hash`` of the first record


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    ts_us: int
    identity: str
    action: str
    target: str
    outcome: str
    detail: str
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """What verifying the chain found: ``ok``, or the first broken record and why."""

    ok: bool
    records: int  # records read
    first_broken: int = 0  # seq of the first broken record (0: none)
    why: str = ""
    head_seq: int = 0  # the last record read and its hash
    head_hash: str = GENESIS


def _netstring(text: str) -> bytes:
    raw = text.encode()
    return b"%d:%s," % (len(raw), raw)


def canonical(
    seq: int, ts_us: int, identity: str, action: str, target: str, outcome: str, detail: str, prev_hash: str
) -> bytes:
    """The bytes a record's hash is taken over (see the module docstring)."""
    fields = (str(seq), str(ts_us), identity, action, target, outcome, detail, prev_hash)
    return b"".join(_netstring(f) for f in fields)


def chain_hash(
    seq: int, ts_us: int, identity: str, action: str, target: str, outcome: str, detail: str, prev_hash: str
) -> str:
    return hashlib.sha256(canonical(seq, ts_us, identity, action, target, outcome, detail, prev_hash)).hexdigest()


class Chain:
    """The head of the chain (last seq and hash), advanced as records are written.

    Owned by the store's writer thread; :meth:`mark` and :meth:`rewind` follow its
    transactions and savepoints, so a rolled-back record gives its seq back.
    """

    __slots__ = ("committed", "hash", "seq")

    def __init__(self, seq: int = 0, hash: str = GENESIS) -> None:
        self.seq, self.hash = seq, hash
        self.committed = (seq, hash)  # the head as of the last commit (read by other threads)

    def append(self, ts_us: int, identity: str, action: str, target: str, outcome: str, detail: str) -> AuditRecord:
        seq = self.seq + 1
        h = chain_hash(seq, ts_us, identity, action, target, outcome, detail, self.hash)
        rec = AuditRecord(seq, ts_us, identity, action, target, outcome, detail, self.hash, h)
        self.seq, self.hash = seq, h
        return rec

    def mark(self) -> tuple[int, str]:
        return self.seq, self.hash

    def rewind(self, mark: tuple[int, str]) -> None:
        self.seq, self.hash = mark

    def commit(self) -> None:
        self.committed = (self.seq, self.hash)


def verify(rows: Iterable[AuditRecord], head: tuple[int, str] | None = None) -> Verdict:
    """Recompute the chain over stored ``rows`` (in seq order); the first broken record, if any.

    ``head``: the (seq, hash) the chain must reach (what the writer committed), to tell a
    tail that was cut off from an intact one.
    """
    seq, prev, n = 0, GENESIS, 0
    for r in rows:
        n += 1
        if r.seq != seq + 1:
            why = "a record before it is missing" if r.seq > seq + 1 else "out of order (seq repeats or goes back)"
            return Verdict(False, n, r.seq, f"expected seq {seq + 1}, found {r.seq}: {why}", seq, prev)
        if r.prev_hash != prev:
            return Verdict(False, n, r.seq, "prev_hash does not match the previous record's hash", seq, prev)
        h = chain_hash(r.seq, r.ts_us, r.identity, r.action, r.target, r.outcome, r.detail, r.prev_hash)
        if h != r.hash:
            return Verdict(False, n, r.seq, "hash does not match the record's fields (a field was changed)", seq, prev)
        seq, prev = r.seq, r.hash
    if head is not None and head[0] > seq:
        return Verdict(False, n, seq + 1, f"records {seq + 1}..{head[0]} are missing from the end", seq, prev)
    if head is not None and head[0] == seq and head[1] != prev and seq:
        return Verdict(False, n, seq, "the last record differs from the one the scheduler wrote", seq, prev)
    return Verdict(True, n, head_seq=seq, head_hash=prev)
