"""The agent's wiring and lifecycle: what importing it loads, and SIGTERM's drain."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from agent.stage import StopReason
from outrider.v1 import agent_pb2
from tests.helpers.agents import FakeRunner, assignment, make_agent

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_daemon_stays_light() -> None:
    """The idle agent's RSS budget: what only start-up or a transfer needs is imported
    when used, not with the daemon (ssl is kept out as agent.main does)."""
    code = (
        "import sys; sys.modules['ssl'] = None; import agent.daemon; "
        "heavy = ('pynvml', 'ntplib', 'argparse', 'tarfile', 'ctypes', 'platform', 'outrider.artifacts'); "
        "print(','.join(sorted(m for m in sys.modules if m in heavy or m.split('.')[0] in heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_sigterm_drains_and_a_second_one_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch)
        runner = FakeRunner()
        runner.hold_kills = True  # the stage takes its time to checkpoint
        agent.supervisor.runner = runner
        stage = agent.supervisor.start(assignment("a"))
        agent.on_sigterm()
        assert agent.supervisor.draining and not agent.session.stopped
        assert stage.stop_reason is StopReason.DRAINING  # asked to checkpoint and stop
        agent.on_sigterm()
        assert agent.session.stopped
        assert stage.stop_reason is StopReason.AGENT_STOPPED
        runner.exit(stage.key)
        await stage.task

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_sigterm_with_nothing_running_stops_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch)
        agent.on_sigterm()
        assert agent.session.stopped and not agent.supervisor.draining

    asyncio.run(scenario())


def test_a_finished_drain_stops_the_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch)
        runner = FakeRunner()
        agent.supervisor.runner = runner
        stage = agent.supervisor.start(assignment("a"))
        agent.on_sigterm()
        runner.exit(stage.key)
        await stage.task
        assert not agent.session.stopped  # its result is not acknowledged yet
        stopped = asyncio.Event()
        monkeypatch.setattr(agent.session, "stop", stopped.set)
        agent.session.on_message(agent_pb2.SchedulerMessage(acks=[agent_pb2.CompletionAck(lease=stage.lease)]))
        await asyncio.wait_for(stopped.wait(), 5)

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_drain_from_the_scheduler_keeps_the_agent_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch)
        runner = FakeRunner()
        agent.supervisor.runner = runner
        stage = agent.supervisor.start(assignment("a"))
        agent.session.on_message(agent_pb2.SchedulerMessage(drain=True))
        assert agent.supervisor.draining and stage.stop_reason is StopReason.DRAINING
        await stage.task
        agent.session.on_message(agent_pb2.SchedulerMessage(acks=[agent_pb2.CompletionAck(lease=stage.lease)]))
        await asyncio.sleep(0.05)
        assert not agent.session.stopped  # drained, and still there: it takes no work
        hb = agent.session.make_heartbeat()
        assert hb.draining and hb.unhealthy == ""

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_preemption_notice_drains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.daemon as daemon_mod

    monkeypatch.setattr(daemon_mod, "PREEMPTION_POLL_S", 0.01)
    notice = tmp_path / "notice"

    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch, preemption_file=str(notice))
        watch = asyncio.ensure_future(agent._preemption_loop(notice))
        await asyncio.sleep(0.05)
        assert not agent.supervisor.draining
        notice.touch()
        await asyncio.wait_for(watch, 5)
        assert agent.supervisor.draining and not agent.session.stopped

    asyncio.run(asyncio.wait_for(scenario(), 10))
