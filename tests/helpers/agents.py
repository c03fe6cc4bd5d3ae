"""Helpers for the agent's unit tests: blobs in a cache dir, an Agent without a machine
probe, and a stage runner whose stages exit when the test says so."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from agent.stage import Stage, StageKey, StopReason
from outrider.protocol import Outcome
from outrider.v1 import agent_pb2, common_pb2


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_blob(root: Path, data: bytes, mtime: float) -> str:
    """Write ``data`` as a blob under cache root ``root`` with this mtime; returns its digest."""
    d = digest_of(data)
    p = root / "sha256" / d[:2] / d
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.utime(p, (mtime, mtime))
    return d


def make_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **cfg_kw: Any) -> Any:
    """An Agent with probing stubbed out (no scheduler, no GPUs needed)."""
    import agent.daemon as daemon
    import agent.probe as probe
    from agent.config import AgentConfig

    monkeypatch.setattr(
        probe,
        "probe_capabilities",
        lambda labels, slots, state_dir, zones=(): common_pb2.Capabilities(
            slots=slots, labels=labels, zones=list(zones)
        ),
    )
    monkeypatch.setattr(daemon, "reap_orphans", lambda root, keep=(): 0)
    cfg = AgentConfig(scheduler="s:1", state_dir=str(tmp_path / "state"), slots=1, **cfg_kw)
    return daemon.Agent(cfg)


def assignment(task: str, epoch: int = 1, run_id: str = "r1", timeout_s: float = 0.0) -> agent_pb2.Assignment:
    return agent_pb2.Assignment(
        lease=common_pb2.LeaseRef(run_id=run_id, task=task, epoch=epoch),
        spec=common_pb2.TaskSpec(argv=["true"], timeout_s=timeout_s),
    )


class FakeRunner:
    """Runs no process: a stage "runs" until :meth:`exit` (or a kill) ends it.

    The completion it returns says what the real runner would: the outcome of a stop
    (``timeout`` or ``cancelled``), else ``succeeded`` or ``failed`` by exit code.
    """

    def __init__(self) -> None:
        self._exits: dict[StageKey, asyncio.Future[int]] = {}
        #: (stage key, stop reason at the time) of every kill, in order.
        self.kills: list[tuple[StageKey, StopReason | None]] = []
        #: The grace each kill was given (None: the runner's default; 0: SIGKILL at once).
        self.graces: list[float | None] = []
        self.killed = asyncio.Event()
        #: When set, a kill with a grace does not end the stage (it takes its time, as a
        #: checkpointing one does after SIGTERM); a kill without one (SIGKILL) always does.
        self.hold_kills = False
        #: Stages whose process runs now (run() entered, not returned).
        self.running: set[StageKey] = set()
        #: Every time two attempts of one task ran at once: (the one running, the one starting).
        self.overlaps: list[tuple[StageKey, StageKey]] = []
        #: Every stage whose process was started, in order.
        self.started: list[StageKey] = []

    def _exit_of(self, key: StageKey) -> asyncio.Future[int]:
        fut = self._exits.get(key)
        if fut is None:
            fut = self._exits[key] = asyncio.get_running_loop().create_future()
        return fut

    def exit(self, key: StageKey, code: int = 0) -> None:
        """Make the stage ``key`` exit by itself with ``code``."""
        fut = self._exit_of(key)
        if not fut.done():
            fut.set_result(code)

    async def run(self, stage: Stage) -> agent_pb2.Completion:
        key = stage.key
        self.overlaps += [(other, key) for other in self.running if other[:2] == key[:2]]
        self.running.add(key)
        self.started.append(key)
        try:
            rc = await self._exit_of(key)
        finally:
            self.running.discard(key)
        c = agent_pb2.Completion(lease=stage.lease, exit_code=rc)
        if stage.stop_reason is StopReason.TIMEOUT:
            c.outcome = Outcome.TIMEOUT.value
        elif stage.stop_reason is StopReason.DRAINING:
            c.outcome, c.error = Outcome.RELEASED.value, StopReason.DRAINING.value
        elif stage.stop_reason is not None:
            c.outcome, c.error = Outcome.CANCELLED.value, f"stopped: {stage.stop_reason.value}"
        else:
            c.outcome = (Outcome.SUCCEEDED if rc == 0 else Outcome.FAILED).value
        return c

    async def kill(self, stage: Stage, grace: float | None = None) -> int:
        self.kills.append((stage.key, stage.stop_reason))
        self.graces.append(grace)
        self.killed.set()
        if grace == 0:
            self.exit(stage.key, -9)
            return await self._exit_of(stage.key)
        if self.hold_kills:
            return await self._exit_of(stage.key)
        self.exit(stage.key, -15)
        return -15
