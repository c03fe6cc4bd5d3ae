"""One attempt running on this agent, and why the agent stopped it.

Kept apart from the runner and the supervisor, which both read and write a
:class:`Stage`: the runner sets :attr:`StopReason.TIMEOUT` itself, the supervisor
every other reason. The lifecycle these values move through is drawn in
:mod:`agent.supervisor`.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
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
    #: A newer attempt of the task arrived here: this one's lease is gone (invariant 3:
    #: at most one attempt of a task runs at a time, so the new one waits until it is dead).
    SUPERSEDED = "a newer attempt of the task arrived"
    #: The agent is draining (SIGTERM, a preemption notice, ``outrider drain``): the stage
    #: was asked to checkpoint and stop; its lease is released (outcome ``released``) once
    #: its checkpoint is reported, unless it finished with a result first.
    DRAINING = "agent draining"
    #: The scheduler revoked this agent (``outrider revoke agent``): every stage is stopped
    #: (SIGTERM, SIGKILL after the kill grace) and none is reported; the scheduler has
    #: requeued their tasks already, and the agent exits (``agent.daemon.EXIT_REVOKED``).
    REVOKED = "agent revoked"

    @property
    def reports_result(self) -> bool:
        """Whether the stage's result is still reported (and its lease still renewed)
        after this stop. A timeout's is (the scheduler is waiting for it), and a drained
        stage's (its release, after its checkpoint); for every other reason the
        scheduler has moved on, or will, and would refuse a report."""
        return self is StopReason.TIMEOUT or self is StopReason.DRAINING

    @property
    def lease_gone(self) -> bool:
        """Whether the attempt's lease is gone (another attempt may be running or about to,
        here or elsewhere): the stage is killed at once, with no grace to checkpoint in."""
        return self in _LEASE_GONE


_LEASE_GONE = frozenset(
    {StopReason.LEASE_LOST, StopReason.LEASE_UNKNOWN, StopReason.LEASE_EXPIRED, StopReason.SUPERSEDED}
)


class AgentFault(Exception):
    """Raised when the agent itself cannot run a stage: it cannot make a work dir, cannot
    start a process, or its disk is full while preparing or publishing (issue 7, fault 7).

    Not the task's fault: the attempt is released (outcome ``released``, no retry spent)
    and the agent reports itself unhealthy, taking no work until its self-check passes.
    """


@dataclass(eq=False)
class Stage:
    """One attempt running on this agent."""

    assignment: agent_pb2.Assignment
    #: Monotonic time the lease was last known renewed (the supervisor's clock).
    last_renewed: float = field(default_factory=time.monotonic)
    #: Monotonic time the assignment arrived (the supervisor's clock); 0 for one taken over.
    #: While ``last_renewed`` is no later, no heartbeat has renewed the lease yet.
    assigned_at: float = 0.0
    #: Its process (group leader), once started; 0 before.
    pid: int = 0
    #: Resolves to (exit code (negative: signal), whether the keeper stopped it for its lease).
    exited: asyncio.Future[tuple[int, bool]] | None = None
    #: Its work dir, once it has one.
    workdir: Path | None = None
    #: Wall time the attempt started here (kept across an agent restart).
    started_at: float = 0.0
    #: The work dir a previous agent process ran this attempt in (its process is gone): the
    #: newest complete checkpoint there is where it resumes.
    resume_dir: Path | None = None
    #: Why the agent stopped it; None while it runs on its own.
    stop_reason: StopReason | None = None
    #: Its output files were empty when it ended (its work dir may be recycled as it is).
    output_empty: bool = False
    task: asyncio.Task[Any] | None = None
    _dirs: tuple[Path, Path] | None = field(default=None, repr=False)

    @property
    def outrider_dir(self) -> Path:
        """``WORKDIR/.outrider`` (inputs, outputs, checkpoint, the output files)."""
        return self._paths()[0]

    @property
    def checkpoint_dir(self) -> Path:
        """``$OUTRIDER_CHECKPOINT_DIR``."""
        return self._paths()[1]

    def _paths(self) -> tuple[Path, Path]:
        if self._dirs is None:
            assert self.workdir is not None
            o = self.workdir / ".outrider"
            self._dirs = (o, o / "checkpoint")
        return self._dirs

    @property
    def lease(self) -> common_pb2.LeaseRef:
        return self.assignment.lease

    @functools.cached_property
    def key(self) -> StageKey:
        ref = self.assignment.lease
        return (ref.run_id, ref.task, ref.epoch)

    @functools.cached_property
    def key_text(self) -> str:
        """The key as one string (how the keeper and the journal name the attempt)."""
        return key_text(self.key)


def key_text(key: StageKey) -> str:
    """``RUN\\tTASK\\tEPOCH``: a stage key as one string."""
    return f"{key[0]}\t{key[1]}\t{key[2]}"


def parse_key_text(text: str) -> StageKey | None:
    """The inverse of :func:`key_text`; None for anything else."""
    parts = text.split("\t")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return (parts[0], parts[1], int(parts[2]))
