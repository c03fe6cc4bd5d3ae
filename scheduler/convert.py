"""Conversions between domain objects and wire messages, in one place."""
from __future__ import annotations

from typing import TYPE_CHECKING

from outrider.v1 import agent_pb2, common_pb2, control_pb2

if TYPE_CHECKING:
    from scheduler.model import Run, Task


def lease_ref(task: Task) -> common_pb2.LeaseRef:
    return common_pb2.LeaseRef(run_id=task.run_id, task=task.name, epoch=task.attempts)


def task_status(task: Task) -> control_pb2.TaskStatus:
    return control_pb2.TaskStatus(
        name=task.name,
        state=task.state.value,
        attempts=task.attempts,
        agent=task.agent,
        outputs=[
            common_pb2.ArtifactRef(name=o.name, digest=o.digest, size=o.size, kind=o.kind)
            for o in task.outputs.values()
        ],
        error=task.error,
        exit_code=task.exit_code,
        started_at=task.started_at,
        finished_at=task.finished_at,
        not_before=task.not_before,
    )


def run_status(run: Run, with_tasks: bool = True) -> control_pb2.RunStatus:
    msg = control_pb2.RunStatus(
        run_id=run.run_id,
        pipeline=run.pipeline,
        state=run.state.value,
        created_at=run.created_at,
        finished_at=run.finished_at,
        submitter=run.submitter,
        code_digest=run.spec.code_digest,
    )
    if with_tasks:
        msg.tasks.extend(task_status(t) for t in run.tasks.values())
    return msg


def assignment(run: Run, task: Task, span_id: str, lease_ttl: float) -> agent_pb2.Assignment:
    inputs = []
    for name, ref in task.spec.inputs.items():
        up, _, out = ref.partition(".")
        o = run.tasks[up].outputs[out]
        inputs.append(common_pb2.ArtifactRef(name=name, digest=o.digest, size=o.size, kind=o.kind))
    return agent_pb2.Assignment(
        lease=lease_ref(task),
        spec=task.spec,
        inputs=inputs,
        code_digest=run.spec.code_digest,
        pipeline=run.pipeline,
        traceparent=f"00-{run.trace_id}-{span_id}-01",
        lease_ttl_s=lease_ttl,
    )
