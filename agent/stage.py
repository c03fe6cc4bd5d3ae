"""One attempt running on this agent, and why the agent stopped it.

Kept apart from the runner and the supervisor, which both read and write a
:class:`Stage`: the runner sets :attr:`StopReason.TIMEOUT` itself, the supervisor
every other reason. The lifecycle these values move through is drawn in
:mod:`agent.supervisor`.
"""

from __future__ import annotations

import asyncio
import enum
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from outrider.v1 import agent_pb2, common_pb2

#: A stage's identity on this agent: (run id, task, epoch), as its lease names it.
StageKey = tuple[str, str, int]


class StopReason(str, enum.Enum):
    """Why the agent stopped a stage before it exited by itself.

    The values are the human texts that end up in the agent's log and, after
    ``stopped: ``, in ``Completion.error``.
    """

    #: It ran past its spec's ``timeout``; the runner killed it. Its result
    #: (outcome ``timeout``) is still reported, so it keeps its lease until then.
    TIMEOUT = "timeout"
    #: The scheduler cancelled it (the run was cancelled, or the task moved on).
    CANCELLED = "cancelled by the scheduler"
    #: A heartbeat reply listed its lease as lost: the scheduler gave it away.
    LEASE_LOST = "lease lost"
    #: Registering again, the scheduler no longer knew the lease (it expired,
    #: or the scheduler lost it while the agent was away).
    LEASE_UNKNOWN = "scheduler no longer knows this lease"
    #: The agent could not renew the lease within the TTL (the supervisor's
    #: watchdog): another attempt may already run elsewhere.
    LEASE_EXPIRED = "lease expired"
    #: The agent itself is stopping (SIGINT, a second SIGTERM, or the end of a drain).
    AGENT_STOPPED = "agent stopped"

    @property
    def reports_result(self) -> bool:
        """Whether the stage's result is still reported (and its lease still renewed)
        after this stop. Only a timeout is: the scheduler is waiting for that result;
        for every other reason it has moved on, or will, and would refuse a report."""
        return self is StopReason.TIMEOUT


@dataclass(eq=False)
class Stage:
    """One attempt running on this agent."""

    assignment: agent_pb2.Assignment
    #: Monotonic time the lease was last known renewed (the supervisor's clock).
    last_renewed: float = field(default_factory=time.monotonic)
    proc: subprocess.Popen[bytes] | None = None
    exited: asyncio.Future[int] | None = None  # resolves to the exit code (negative: signal)
    #: Why the agent stopped it; None while it runs on its own.
    stop_reason: StopReason | None = None
    task: asyncio.Task[Any] | None = None

    @property
    def lease(self) -> common_pb2.LeaseRef:
        return self.assignment.lease

    @property
    def key(self) -> StageKey:
        ref = self.assignment.lease
        return (ref.run_id, ref.task, ref.epoch)
