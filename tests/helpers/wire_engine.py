"""The engine as the servicers drive it: protobuf in, protobuf out.

Unit tests of the core build requests as the wire carries them (``outrider.v1``
messages) and read answers the same way; :class:`WireEngine` converts both ways
with :mod:`scheduler.api.wire`, exactly as ``scheduler.api`` does, so a test also
covers the conversion and the validation at the edge. Everything else (``runs``,
``agents``, ``tick``, ``cancel`` ...) is the engine itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from outrider.v1 import agent_pb2, common_pb2, control_pb2
from scheduler.api import wire
from scheduler.core.channel import Channel
from scheduler.core.engine import Engine


class WireEngine:
    def __init__(self, engine: Engine) -> None:
        self.core = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)

    def register(self, name: str, identity: str, caps: common_pb2.Capabilities,
                 clocks: Iterable[common_pb2.ClockSample], leases: Iterable[common_pb2.LeaseRef]) -> list[Any]:
        lost = self.core.register(name, identity, wire.capabilities_from_proto(caps), wire.clocks_from_proto(clocks),
                                  wire.leases_from_proto(leases))
        return [wire.lease_to_proto(r) for r in lost]

    def heartbeat(self, name: str, leases: Iterable[common_pb2.LeaseRef], clocks: Iterable[common_pb2.ClockSample],
                  caps: common_pb2.Capabilities | None = None) -> list[Any]:
        lost = self.core.heartbeat(name, wire.leases_from_proto(leases), wire.clocks_from_proto(clocks),
                                   None if caps is None else wire.capabilities_from_proto(caps))
        return [wire.lease_to_proto(r) for r in lost]

    def complete(self, name: str, c: agent_pb2.Completion) -> Any:
        return self.core.complete(name, wire.completion_from_proto(c))

    def append_logs(self, name: str, chunks: Iterable[agent_pb2.LogChunk]) -> None:
        self.core.append_logs(name, wire.logs_from_proto(chunks))

    async def submit(self, spec: common_pb2.PipelineSpec, submitter: str, strict: bool = False,
                     request_id: str = "") -> tuple[str, list[str]]:
        return await self.core.submit(wire.check_pipeline(spec), submitter, strict, request_id)

    def plan(self, spec: common_pb2.PipelineSpec) -> list[control_pb2.TaskPlan]:
        return [wire.task_plan_to_proto(p) for p in self.core.plan(wire.check_pipeline(spec))]

    def explain(self, run_id: str, task: str) -> control_pb2.ExplainResponse:
        return wire.explanation_to_proto(self.core.explain(run_id, task))


def take(ch: Channel) -> agent_pb2.SchedulerMessage:
    """What a channel would send down the wire now."""
    return wire.scheduler_message(ch.take())
