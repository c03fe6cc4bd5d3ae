"""The audit service (admin only, :mod:`scheduler.auth`): list the audit log, verify its chain.

Thin, as the other servicers: bounds on the request, one call into the core component
(:class:`scheduler.core.audit.AuditTrail`), the answer converted. Both read what is
durable (they wait for the engine's barrier) and recompute nothing from memory:
``VerifyAudit`` rehashes every stored record.

:func:`caller_id` is how the engine learns who asked for the action it records: the
authenticated caller of the RPC being served, or ``scheduler`` outside any RPC.
"""

from __future__ import annotations

from typing import Any

from outrider.v1 import audit_pb2, audit_pb2_grpc
from scheduler.api import bounds
from scheduler.api.status import unary
from scheduler.auth import current_identity
from scheduler.core.audit import SCHEDULER, AuditRecord, Verdict
from scheduler.core.engine import Engine

#: A page's size when the request names none, and the most one page holds.
DEFAULT_PAGE = 500
MAX_PAGE = 5000


def caller_id() -> str:
    """The SPIFFE ID of the RPC being served; ``scheduler`` outside one (a tick, a dispatch pass)."""
    try:
        return current_identity().spiffe_id
    except LookupError:
        return SCHEDULER


def record_to_proto(r: AuditRecord) -> audit_pb2.AuditRecord:
    return audit_pb2.AuditRecord(
        seq=r.seq,
        ts_us=r.ts_us,
        identity=r.identity,
        action=r.action,
        target=r.target,
        outcome=r.outcome,
        detail=r.detail,
        prev_hash=r.prev_hash,
        hash=r.hash,
    )


def verdict_to_proto(v: Verdict) -> audit_pb2.VerifyAuditResponse:
    return audit_pb2.VerifyAuditResponse(
        ok=v.ok,
        records=v.records,
        first_broken_seq=v.first_broken,
        reason=v.why,
        head_seq=v.head_seq,
        head_hash=v.head_hash,
    )


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @unary
    async def ListAudit(self, request: audit_pb2.ListAuditRequest, context: Any) -> audit_pb2.ListAuditResponse:
        after = bounds.integer("after_seq", request.after_seq, 0, bounds.MAX_SEQ)
        since = bounds.integer("since_ts_us", request.since_ts_us, 0, bounds.MAX_SEQ)
        identity = bounds.text("identity", request.identity, bounds.MAX_SHORT_TEXT)
        limit = bounds.integer("limit", request.limit, 0, MAX_PAGE) or DEFAULT_PAGE
        records = await self.engine.audit.list(after, since, identity, limit)
        return audit_pb2.ListAuditResponse(
            records=[record_to_proto(r) for r in records],
            next_after_seq=records[-1].seq if len(records) == limit else 0,
        )

    @unary
    async def VerifyAudit(self, request: audit_pb2.VerifyAuditRequest, context: Any) -> audit_pb2.VerifyAuditResponse:
        return verdict_to_proto(await self.engine.audit.verify())
