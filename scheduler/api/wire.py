"""Conversions between the wire (``outrider.v1`` protobuf) and the core's domain types.

The one place the scheduler turns messages into values and back: the servicers
call these on the way in and out, and the store uses the ``encode_*``/``decode_*``
pair to keep specs and capabilities in their wire encoding. Everything coming in
has been through the spec validator or the bounds of :mod:`scheduler.api.bounds`
(finite numbers in sane ranges, bounded strings and counts), so the core, and the
store behind it, receive only well-formed values; a malformed message is refused
with ``INVALID_ARGUMENT`` naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from outrider.errors import InvalidArgument, OutriderError
from outrider.protocol import OUTCOMES, Outcome
from outrider.spec import parse_ref, validate_proto
from outrider.v1 import agent_pb2, common_pb2, control_pb2
from scheduler.api import bounds, stagemetrics
from scheduler.api.figures import figures_from_proto
from scheduler.core.channel import Outbound
from scheduler.core.events import placement_score
from scheduler.core.messages import (
    Ack,
    ArtifactRef,
    Assignment,
    Capabilities,
    Checkpoint,
    CheckpointAck,
    ClockSample,
    Completion,
    Gpu,
    Heartbeat,
    HeartbeatReply,
    LeaseRef,
    LogChunk,
    Power,
)
from scheduler.core.model import Attempt, Output
from scheduler.core.revocation import RevokeOutcome
from scheduler.core.spec import Affinity, Expr, InputRef, Needs, PipelineSpec, TaskSpec
from scheduler.core.views import AgentInfo, Explanation, LogLine, RunEvent, RunStatus, TaskPlan


def _status_number(exc: OutriderError) -> int:
    from scheduler.api.status import status_number  # grpc: only where acks are built

    return status_number(exc)


# --------------------------------------------------------------------------- pipeline specs


def check_pipeline(msg: common_pb2.PipelineSpec) -> PipelineSpec:
    """Validate a submitted spec with the one spec validator, then convert it. The problems
    are listed as far as they fit in an error message, then counted."""
    problems = validate_proto(msg)
    if problems:
        raise InvalidArgument(bounds.listing("invalid pipeline:", problems))
    return pipeline_from_proto(msg)


def _input_ref(text: str) -> InputRef:
    parsed = parse_ref(text)
    if parsed is None:  # only a spec that skipped validation gets here (the store holds validated ones)
        raise InvalidArgument(f"expected 'task.output', got {text!r}")
    return InputRef(*parsed)


def _expr(e: common_pb2.LabelExpr) -> Expr:
    return Expr(e.key, e.op, tuple(e.values))


#: Requirements already converted, by their encoding: tasks alike share one Needs object
#: (less memory for deep queues, and conversion of a big pipeline costs a lookup per task).
_needs_seen: dict[bytes, Needs] = {}


def needs_from_proto(req: common_pb2.Requirements) -> Needs:
    key = req.SerializeToString(deterministic=True)
    needs = _needs_seen.get(key)
    if needs is None:
        needs = Needs(
            cpus=req.cpus,
            memory=req.memory_bytes,
            disk=req.disk_bytes,
            gpus=req.gpus,
            labels=tuple(sorted(req.labels.items())),
            gpu_memory=req.gpu_memory_bytes,
            gpu_model=req.gpu_model,
            exprs=tuple(_expr(e) for e in req.expressions),
            residency=frozenset(req.residency) if req.residency else None,
            max_clock_skew=req.max_clock_skew_s,
        )
        if len(_needs_seen) >= 10_000:
            _needs_seen.clear()
        _needs_seen[key] = needs
    return needs


def task_from_proto(ts: common_pb2.TaskSpec) -> TaskSpec:
    return TaskSpec(
        name=ts.name,
        argv=tuple(ts.argv),
        shell=ts.shell,
        inputs=tuple((name, _input_ref(ref)) for name, ref in ts.inputs.items()),
        outputs=tuple(ts.outputs),
        after=tuple(ts.after),
        requires=needs_from_proto(ts.requires),
        affinities=tuple(Affinity(_expr(a.expr), a.weight) for a in ts.affinities),
        max_attempts=ts.max_attempts,
        backoff_s=ts.backoff_s,
        timeout_s=ts.timeout_s,
        env=tuple(ts.env.items()),
        secret_env=tuple(ts.secret_env.items()),
    )


def pipeline_from_proto(msg: common_pb2.PipelineSpec, encoded: bytes = b"") -> PipelineSpec:
    """The domain spec of ``msg``; ``encoded``, its wire encoding as received, is kept for the store."""
    return PipelineSpec(
        name=msg.name,
        tasks=tuple(task_from_proto(ts) for ts in msg.tasks),
        code_digest=msg.code_digest,
        priority=msg.priority,
        concurrency=msg.concurrency,
        tenant=msg.tenant,
        encoded=encoded or msg.SerializeToString(),
    )


def _expr_proto(e: Expr) -> common_pb2.LabelExpr:
    return common_pb2.LabelExpr(key=e.key, op=e.op, values=e.values)


def task_to_proto(ts: TaskSpec) -> common_pb2.TaskSpec:
    """A task's spec as sent in every assignment. Empty maps and lists are left out of the
    constructor's arguments (the message is the same: proto3 has no empty container on the
    wire): building an empty one costs as much as a full one, and most tasks have several
    (half the time of this function for a task that is only a command)."""
    req = ts.requires
    requires = common_pb2.Requirements(
        cpus=req.cpus,
        memory_bytes=req.memory,
        disk_bytes=req.disk,
        gpus=req.gpus,
        gpu_memory_bytes=req.gpu_memory,
        gpu_model=req.gpu_model,
        max_clock_skew_s=req.max_clock_skew,
    )
    if req.labels:
        requires.labels.update(req.labels)
    if req.exprs:
        requires.expressions.extend(_expr_proto(e) for e in req.exprs)
    if req.residency:
        requires.residency.extend(sorted(req.residency))
    msg = common_pb2.TaskSpec(
        name=ts.name,
        argv=ts.argv,
        shell=ts.shell,
        requires=requires,
        max_attempts=ts.max_attempts,
        backoff_s=ts.backoff_s,
        timeout_s=ts.timeout_s,
    )
    if ts.inputs:
        msg.inputs.update((name, str(ref)) for name, ref in ts.inputs)
    if ts.outputs:
        msg.outputs.extend(ts.outputs)
    if ts.after:
        msg.after.extend(ts.after)
    if ts.env:
        msg.env.update(ts.env)
    if ts.secret_env:
        msg.secret_env.update(ts.secret_env)
    if ts.affinities:
        msg.affinities.extend(common_pb2.Affinity(expr=_expr_proto(a.expr), weight=a.weight) for a in ts.affinities)
    return msg


def pipeline_to_proto(spec: PipelineSpec) -> common_pb2.PipelineSpec:
    return common_pb2.PipelineSpec(
        name=spec.name,
        code_digest=spec.code_digest,
        tasks=[task_to_proto(ts) for ts in spec.tasks],
        priority=spec.priority,
        concurrency=spec.concurrency,
        tenant=spec.tenant,
    )


def encode_pipeline(spec: PipelineSpec) -> bytes:
    """A spec's wire encoding: as it was submitted where known."""
    return spec.encoded or pipeline_to_proto(spec).SerializeToString(deterministic=True)


def decode_pipeline(blob: bytes) -> PipelineSpec:
    return pipeline_from_proto(common_pb2.PipelineSpec.FromString(blob), blob)


# --------------------------------------------------------------------------- agents


def capabilities_from_proto(c: common_pb2.Capabilities, field: str = "capabilities") -> Capabilities:
    """An agent's capabilities as it reports them, checked against the bounds."""
    bounds.check_capabilities(field, c)
    return _capabilities(c)


def _capabilities(c: common_pb2.Capabilities) -> Capabilities:
    return Capabilities(
        cpu_cores=c.cpu_cores,
        arch=c.arch,
        cpu_model=c.cpu_model,
        memory_bytes=c.memory_bytes,
        disk_bytes=c.disk_bytes,
        disk_free_bytes=c.disk_free_bytes,
        gpus=tuple(
            Gpu(g.index, g.model, g.memory_bytes, g.memory_free_bytes, g.driver, g.uuid, g.compute_capability)
            for g in c.gpus
        ),
        os=c.os,
        os_release=c.os_release,
        python_version=c.python_version,
        hostname=c.hostname,
        labels=dict(c.labels),
        slots=c.slots,
        agent_version=c.agent_version,
        gpu_probe=c.gpu_probe,
        zones=tuple(c.zones),
        bandwidth_bps=c.bandwidth_bps,
        rtt_s=c.rtt_s,
        cached=tuple(ArtifactRef(a.name, a.digest, a.size, a.kind) for a in c.cached),
        power=Power(c.power.has_battery, c.power.on_battery, c.power.battery_percent),
        queued_jobs=c.queued_jobs,
    )


def capabilities_to_proto(c: Capabilities) -> common_pb2.Capabilities:
    return common_pb2.Capabilities(
        cpu_cores=c.cpu_cores,
        arch=c.arch,
        cpu_model=c.cpu_model,
        memory_bytes=c.memory_bytes,
        disk_bytes=c.disk_bytes,
        disk_free_bytes=c.disk_free_bytes,
        gpus=[
            common_pb2.Gpu(
                index=g.index,
                model=g.model,
                memory_bytes=g.memory_bytes,
                memory_free_bytes=g.memory_free_bytes,
                driver=g.driver,
                uuid=g.uuid,
                compute_capability=g.compute_capability,
            )
            for g in c.gpus
        ],
        os=c.os,
        os_release=c.os_release,
        python_version=c.python_version,
        hostname=c.hostname,
        labels=c.labels,
        slots=c.slots,
        agent_version=c.agent_version,
        gpu_probe=c.gpu_probe,
        zones=c.zones,
        bandwidth_bps=c.bandwidth_bps,
        rtt_s=c.rtt_s,
        cached=[ref_to_proto(a) for a in c.cached],
        power=common_pb2.Power(
            has_battery=c.power.has_battery, on_battery=c.power.on_battery, battery_percent=c.power.battery_percent
        ),
        queued_jobs=c.queued_jobs,
    )


def encode_capabilities(c: Capabilities) -> bytes:
    return capabilities_to_proto(c).SerializeToString(deterministic=True)


def decode_capabilities(blob: bytes) -> Capabilities:
    return _capabilities(common_pb2.Capabilities.FromString(blob))  # checked when it was received


def clocks_from_proto(samples: Sequence[common_pb2.ClockSample], field: str = "clock") -> tuple[ClockSample, ...]:
    bounds.check_clock(field, samples)
    return tuple(ClockSample(s.offset_s, s.uncertainty_s, s.source, s.measured_at) for s in samples)


def clocks_to_proto(samples: Iterable[ClockSample]) -> list[common_pb2.ClockSample]:
    return [
        common_pb2.ClockSample(
            offset_s=s.offset_s, uncertainty_s=s.uncertainty_s, source=s.source, measured_at=s.measured_at
        )
        for s in samples
    ]


def lease_from_proto(r: common_pb2.LeaseRef, field: str = "lease") -> LeaseRef:
    bounds.check_lease(field, r)
    return LeaseRef(r.run_id, r.task, r.epoch)


def ack_lease(r: common_pb2.LeaseRef) -> LeaseRef:
    """The lease an answer names: as received, cut to the bounds (it may be what was refused)."""
    return LeaseRef(r.run_id[: bounds.MAX_NAME], r.task[: bounds.MAX_NAME], r.epoch)


def leases_from_proto(refs: Sequence[common_pb2.LeaseRef], field: str = "leases") -> list[LeaseRef]:
    bounds.check_leases(field, refs)
    return [LeaseRef(r.run_id, r.task, r.epoch) for r in refs]


def lease_to_proto(r: LeaseRef) -> common_pb2.LeaseRef:
    return common_pb2.LeaseRef(run_id=r.run_id, task=r.task, epoch=r.epoch)


def completion_from_proto(c: agent_pb2.Completion, field: str = "completion") -> Completion:
    if c.outcome not in OUTCOMES:
        raise InvalidArgument(f"{field}.outcome must be one of {sorted(OUTCOMES)}, got {c.outcome[:40]!r}")
    bounds.check_completion(field, c)
    return Completion(
        lease=LeaseRef(c.lease.run_id, c.lease.task, c.lease.epoch),
        outcome=Outcome(c.outcome),
        exit_code=c.exit_code,
        error=bounds.clip(c.error, bounds.MAX_ERROR),
        outputs=tuple(ArtifactRef(o.name, o.digest, o.size, o.kind) for o in c.outputs),
        started_at=c.started_at,
        finished_at=c.finished_at,
        fetched_at=c.fetched_at,
        exec_started_at=c.exec_started_at,
        exec_exited_at=c.exec_exited_at,
        upload_started_at=c.upload_started_at,
        **stagemetrics.completion_fields(c, field),
    )


def logs_from_proto(chunks: Sequence[agent_pb2.LogChunk], field: str = "logs") -> list[LogChunk]:
    bounds.count(field, chunks, bounds.MAX_LOG_CHUNKS)
    for i, c in enumerate(chunks):
        bounds.check_log_chunk(f"{field}[{i}]", c)
    return [LogChunk(LeaseRef(c.lease.run_id, c.lease.task, c.lease.epoch), c.stream, c.data, c.ts) for c in chunks]


def checkpoint_from_proto(cp: common_pb2.Checkpoint, field: str = "checkpoint") -> Checkpoint:
    bounds.check_checkpoint(field, cp)
    return Checkpoint(
        LeaseRef(cp.lease.run_id, cp.lease.task, cp.lease.epoch), cp.digest, cp.size, cp.kind, cp.seq, cp.created_at
    )


def checkpoint_to_proto(cp: Checkpoint) -> common_pb2.Checkpoint:
    return common_pb2.Checkpoint(
        lease=lease_to_proto(cp.lease),
        digest=cp.digest,
        size=cp.size,
        kind=cp.kind,
        seq=cp.seq,
        created_at=cp.created_at,
    )


def checkpoint_ack_to_proto(ack: CheckpointAck) -> agent_pb2.CheckpointAck:
    code = 0 if ack.error is None else _status_number(ack.error)
    message = ack.message if ack.error is None else str(ack.error)
    return agent_pb2.CheckpointAck(lease=lease_to_proto(ack.lease), seq=ack.seq, code=code, message=message)


def assignment_to_proto(a: Assignment) -> agent_pb2.Assignment:
    msg = agent_pb2.Assignment(
        lease=lease_to_proto(a.lease),
        spec=task_to_proto(a.spec),
        code_digest=a.code_digest,
        pipeline=a.pipeline,
        traceparent=a.traceparent,
        lease_ttl_s=a.lease_ttl_s,
    )
    if a.inputs:  # (an empty list costs as much to pass as a full one: see task_to_proto)
        msg.inputs.extend(ref_to_proto(i) for i in a.inputs)
    if a.resume_from is not None:
        msg.resume_from.CopyFrom(checkpoint_to_proto(a.resume_from))
    return msg


def ack_to_proto(ack: Ack) -> agent_pb2.CompletionAck:
    if ack.error is None:
        return agent_pb2.CompletionAck(lease=lease_to_proto(ack.lease), code=0)
    return agent_pb2.CompletionAck(
        lease=lease_to_proto(ack.lease), code=_status_number(ack.error), message=str(ack.error)
    )


def heartbeat_from_proto(hb: agent_pb2.HeartbeatRequest, field: str = "") -> Heartbeat:
    """A heartbeat, its capabilities checked exactly as Register's; ``field`` names it where
    it is part of a bigger message (``heartbeat`` on the work stream)."""
    at = f"{field}." if field else ""
    bounds.number(f"{at}client_time", hb.client_time)
    bounds.integer(f"{at}free_slots", hb.free_slots, 0, bounds.MAX_SLOTS)
    return Heartbeat(
        leases=tuple(leases_from_proto(hb.leases, f"{at}leases")),
        clocks=clocks_from_proto(hb.clock, f"{at}clock"),
        caps=capabilities_from_proto(hb.capabilities, f"{at}capabilities") if hb.HasField("capabilities") else None,
        unhealthy=bounds.clip(hb.unhealthy, bounds.MAX_REASON),
        draining=hb.draining,
        client_time=hb.client_time,
        figures=figures_from_proto(hb.figures, f"{at}figures") if hb.HasField("figures") else None,
    )


def heartbeat_to_proto(h: HeartbeatReply) -> agent_pb2.HeartbeatResponse:
    return agent_pb2.HeartbeatResponse(
        server_time=h.server_time,
        lost=[lease_to_proto(r) for r in h.lost],
        lease_ttl_s=h.lease_ttl_s,
        client_time=h.client_time,
    )


def scheduler_message(out: Outbound) -> agent_pb2.SchedulerMessage:
    msg = agent_pb2.SchedulerMessage(drain=out.drain)
    # Only what the message carries (most carry an assignment and an ack, nothing else).
    if out.assignments:
        msg.assignments.extend(assignment_to_proto(a) for a in out.assignments)
    if out.acks:
        msg.acks.extend(ack_to_proto(a) for a in out.acks)
    if out.cancel:
        msg.cancel.extend(lease_to_proto(r) for r in out.cancel)
    if out.checkpoint_acks:
        msg.checkpoint_acks.extend(checkpoint_ack_to_proto(a) for a in out.checkpoint_acks)
    if out.heartbeat is not None:
        msg.heartbeat.CopyFrom(heartbeat_to_proto(out.heartbeat))
    return msg


# --------------------------------------------------------------------------- what clients read


def ref_to_proto(a: ArtifactRef | Output) -> common_pb2.ArtifactRef:
    """An artifact reference (an input, an output, a cached or lineage artifact) on the wire."""
    return common_pb2.ArtifactRef(name=a.name, digest=a.digest, size=a.size, kind=a.kind)


#: Repeated fields of big answers are filled this many at a time: one C call that copies
#: 100,000 messages holds the GIL (and so the event loop) for half a second.
EXTEND_CHUNK = 1000


def extend(field: Any, items: Iterable[Any]) -> None:
    """``field.extend(items)``, a chunk at a time (see :data:`EXTEND_CHUNK`)."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= EXTEND_CHUNK:
            field.extend(chunk)
            chunk = []
    field.extend(chunk)


def run_status_to_proto(s: RunStatus) -> control_pb2.RunStatus:
    msg = control_pb2.RunStatus(
        run_id=s.run_id,
        pipeline=s.pipeline,
        state=s.state,
        created_at=s.created_at,
        finished_at=s.finished_at,
        submitter=s.submitter,
        code_digest=s.code_digest,
    )
    extend(
        msg.tasks,
        (
            control_pb2.TaskStatus(
                name=t.name,
                state=t.state,
                attempts=t.attempts,
                agent=t.agent,
                outputs=[ref_to_proto(o) for o in t.outputs],
                error=t.error,
                exit_code=t.exit_code,
                started_at=t.started_at,
                finished_at=t.finished_at,
                not_before=t.not_before,
                history=[_attempt_proto(a) for a in t.history],
                checkpoint=None if t.checkpoint is None else checkpoint_to_proto(t.checkpoint),
                resumed_from=None if t.resumed_from is None else checkpoint_to_proto(t.resumed_from),
            )
            for t in s.tasks
        ),
    )
    return msg


def _attempt_proto(a: Attempt) -> control_pb2.AttemptStatus:
    return control_pb2.AttemptStatus(
        attempt=a.attempt,
        agent=a.agent,
        state=a.state.value,
        started_at=a.started_at,
        finished_at=a.finished_at,
        exit_code=a.exit_code,
        error=a.error,
    )


def run_event_to_proto(ev: RunEvent) -> control_pb2.RunEvent:
    msg = control_pb2.RunEvent(
        run_id=ev.run_id,
        task=ev.task,
        state=ev.state,
        attempt=ev.attempt,
        agent=ev.agent,
        message=ev.message,
        ts=ev.ts,
        warnings=ev.warnings,
        seq=ev.seq,
        score=placement_score(ev.state, ev.message),
    )
    if ev.snapshot is not None:
        msg.snapshot.CopyFrom(run_status_to_proto(ev.snapshot))
    return msg


def task_plan_to_proto(p: TaskPlan) -> control_pb2.TaskPlan:
    return control_pb2.TaskPlan(
        task=p.task,
        agents_considered=p.agents_considered,
        feasible_agents=p.feasible_agents,
        rejections=p.rejections,
        rejection_counts=p.rejection_counts,
        candidates=[control_pb2.Candidate(agent=c.agent, score=c.score, breakdown=c.breakdown) for c in p.candidates],
        suggestions=p.suggestions,
        residency=p.residency,
        residency_conflicts=p.residency_conflicts,
        passing=p.passing,
    )


def explanation_to_proto(e: Explanation) -> control_pb2.ExplainResponse:
    return control_pb2.ExplainResponse(
        run_id=e.run_id,
        task=e.task,
        state=e.state,
        reason=e.reason,
        message=e.message,
        until=e.until,
        agent=e.agent,
        plan=task_plan_to_proto(e.plan),
    )


def agent_info_to_proto(a: AgentInfo) -> control_pb2.AgentInfo:
    return control_pb2.AgentInfo(
        name=a.name,
        identity=a.identity,
        state=a.state,
        capabilities=capabilities_to_proto(a.capabilities),
        clock=clocks_to_proto(a.clock),
        last_seen=a.last_seen,
        running=a.running,
        free_slots=a.free_slots,
        registered_at=a.registered_at,
        clock_suspect=a.clock_suspect,
        clock_skew_s=a.clock_skew_s,
        draining=a.draining,
        unhealthy=a.unhealthy,
        instance_id=a.instance_id,
        revoked=a.revoked,
        revoked_at=a.revoked_at,
        revoked_by=a.revoked_by,
        transfers=[
            common_pb2.TransferProgress(
                digest=t.digest, direction=t.direction, done_bytes=t.done_bytes, total_bytes=t.total_bytes
            )
            for t in a.transfers
        ],
    )


def log_line_to_proto(line: LogLine) -> control_pb2.LogLine:
    return control_pb2.LogLine(attempt=line.attempt, stream=line.stream, data=line.data, ts=line.ts)


def revoke_outcome_to_proto(done: RevokeOutcome) -> control_pb2.RevokeAgentResponse:
    r = done.revocation
    return control_pb2.RevokeAgentResponse(
        agent=r.name,
        already_revoked=done.already,
        revoked_at=r.revoked_at,
        revoked_by=r.revoked_by,
        reason=r.reason,
        leases_requeued=len(done.requeued),
        known=done.known,
    )
