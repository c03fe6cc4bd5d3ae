"""The session: heartbeats carry capabilities only when they changed, and a heartbeat
reply feeds the link's round-trip time and renews leases. Unit level: no scheduler."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.cache import BlobCache
from agent.clock import ClockTracker
from agent.config import AgentConfig
from agent.link import LinkMeter
from agent.session import Session
from agent.stage import StopReason
from agent.supervisor import Supervisor
from agent.transfers import Transfers
from agent.uplink import Uplink
from outrider.v1 import agent_pb2, common_pb2
from tests.helpers.agents import FakeRunner, assignment, make_agent, put_blob
from tests.helpers.fake_clock import FakeClock

MiB = 1 << 20


def test_heartbeats_carry_capabilities_only_when_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    monkeypatch.setattr(psutil, "sensors_battery", lambda: None)

    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch, zones=["eu"])
        agent.session.caps_sent = agent.session.capabilities()  # as Register does
        hb = agent.session.make_heartbeat()
        assert not hb.HasField("capabilities")
        agent.link.observe_transfer(4 * MiB, 0.5)  # the start-up probe measured the link
        hb = agent.session.make_heartbeat()
        assert hb.HasField("capabilities") and hb.capabilities.bandwidth_bps == pytest.approx(8 * MiB)
        assert list(hb.capabilities.zones) == ["eu"]
        # A replaced, unsent heartbeat's capabilities are not lost.
        again = agent.session.make_heartbeat(unsent=hb)
        assert again.HasField("capabilities")
        assert not agent.session.make_heartbeat().HasField("capabilities")
        agent.link.observe_transfer(4 * MiB, 0.52)  # -4 % of full weight: noise
        assert not agent.session.make_heartbeat().HasField("capabilities")
        blob = put_blob(tmp_path / "state" / "cache", b"new", time.time())
        agent.cache.add(blob, 3, "file")
        hb = agent.session.make_heartbeat()
        assert [r.digest for r in hb.capabilities.cached] == [blob]
        agent.cache.max_bytes = 1
        agent.cache.evict()
        hb = agent.session.make_heartbeat()
        assert hb.HasField("capabilities") and list(hb.capabilities.cached) == []
        monkeypatch.setattr(psutil, "sensors_battery",
                            lambda: SimpleNamespace(percent=50, secsleft=100, power_plugged=False))
        hb = agent.session.make_heartbeat()
        assert hb.capabilities.power.on_battery

    asyncio.run(scenario())


def test_heartbeat_reply_feeds_rtt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from outrider.v1 import agent_pb2

    async def scenario() -> None:
        agent = make_agent(tmp_path, monkeypatch)
        sent = time.time() - 0.040
        agent.session.on_message(agent_pb2.SchedulerMessage(heartbeat=agent_pb2.HeartbeatResponse(
            server_time=time.time(), client_time=sent, lease_ttl_s=15)))
        assert 0.039 < agent.link.rtt_s < 1.0

    asyncio.run(scenario())


# --------------------------------------------------------------------------- the work stream, on fake clocks


def make_session(tmp_path: Path) -> tuple[Session, Supervisor, FakeRunner, FakeClock, FakeClock]:
    """A session wired to a supervisor on fake clocks and a fake runner; never dials."""
    mono, wall = FakeClock(500.0), FakeClock(1_700_000_000.0)
    runner = FakeRunner()
    uplink = Uplink()
    sup = Supervisor(runner, uplink, 2, lease_ttl=15.0, monotonic=mono, wall=wall)
    cache = BlobCache(tmp_path / "cache")
    cache.scan()
    link = LinkMeter()
    transfers = Transfers(cache, link, tmp_path, ride_out=lambda: sup.lease_ttl)
    session = Session(
        AgentConfig(scheduler="s:1"),
        supervisor=sup,
        transfers=transfers,
        uplink=uplink,
        clock=ClockTracker(),
        link=link,
        cache=cache,
        caps=common_pb2.Capabilities(slots=2),
        wall=wall,
    )
    return session, sup, runner, mono, wall


def test_messages_down_the_stream_reach_the_supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    monkeypatch.setattr(psutil, "sensors_battery", lambda: None)

    async def scenario() -> None:
        session, sup, runner, mono, wall = make_session(tmp_path)
        a, b = assignment("a"), assignment("b")
        session.on_message(agent_pb2.SchedulerMessage(assignments=[a, b, a]))  # a duplicate delivery too
        assert sorted(sup.stages) == [("r1", "a", 1), ("r1", "b", 1)]
        # A heartbeat reply sent 0.2 s ago renews a's lease, says b's is lost, and sets the TTL.
        sent = wall() - 0.2
        mono.t += 10
        wall.t += 10
        session.on_message(
            agent_pb2.SchedulerMessage(
                heartbeat=agent_pb2.HeartbeatResponse(
                    server_time=wall(), client_time=sent + 10, lease_ttl_s=20, lost=[b.lease]
                )
            )
        )
        stage_a, stage_b = sup.stages[("r1", "a", 1)], sup.stages[("r1", "b", 1)]
        assert sup.lease_ttl == 20
        assert stage_a.last_renewed == pytest.approx(509.8) and stage_a.stop_reason is None
        assert stage_b.stop_reason is StopReason.LEASE_LOST
        assert [r.task for r in session.make_heartbeat().leases] == ["a"]
        # A cancellation stops a; a finished stage's ack empties the outbox.
        session.on_message(agent_pb2.SchedulerMessage(cancel=[a.lease]))
        assert stage_a.stop_reason is StopReason.CANCELLED
        assert session.make_heartbeat().leases == []
        c = assignment("c")
        session.on_message(agent_pb2.SchedulerMessage(assignments=[c]))
        runner.exit(("r1", "c", 1))
        stage_c = sup.stages[("r1", "c", 1)]
        assert stage_c.task is not None
        await stage_c.task
        assert list(sup.outbox.items) == [("r1", "c", 1)]
        session.on_message(agent_pb2.SchedulerMessage(acks=[agent_pb2.CompletionAck(lease=c.lease)]))
        assert sup.outbox.items == {}

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_timed_out_stage_keeps_its_lease_in_heartbeats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    monkeypatch.setattr(psutil, "sensors_battery", lambda: None)

    async def scenario() -> None:
        session, sup, _, _, wall = make_session(tmp_path)
        session.on_message(agent_pb2.SchedulerMessage(assignments=[assignment("slow", timeout_s=1)]))
        sup.stages[("r1", "slow", 1)].stop_reason = StopReason.TIMEOUT  # as the runner sets it
        hb = session.make_heartbeat()
        assert [r.task for r in hb.leases] == ["slow"]
        assert (hb.client_time, hb.free_slots) == (wall(), 1)

    asyncio.run(scenario())


# --------------------------------------------------------------------------- reconnecting (issue 7, fault 3)


def _record_waits(monkeypatch: pytest.MonkeyPatch, session: Session, count: int) -> list[float]:
    """Make the session's reconnect waits return at once, recording how long each would
    have been (the jitter pinned to its low end); stop the session after ``count``."""
    import agent.session as session_mod

    waits: list[float] = []
    monkeypatch.setattr(session_mod.random, "uniform", lambda a, b: a)

    async def no_wait(aw: Any, timeout: float | None = None) -> None:
        if asyncio.iscoroutine(aw):
            aw.close()
        waits.append(float(timeout or 0))
        if len(waits) >= count:
            session.stop()
        raise asyncio.TimeoutError

    monkeypatch.setattr(session_mod.asyncio, "wait_for", no_wait)
    return waits


def test_a_healthy_connection_resets_the_reconnect_delay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault 3: after each healthy connection the agent comes back within the shortest
    delay; before the fix the delay climbed to its 30 s cap (1, 2, 4, 8, 16, 30)."""

    async def scenario() -> None:
        session, _sup, _, _, wall = make_session(tmp_path)
        waits = _record_waits(monkeypatch, session, 6)

        async def healthy_then_broken() -> None:
            # Registered, and the stream worked: a heartbeat reply came back.
            session.on_message(
                agent_pb2.SchedulerMessage(
                    heartbeat=agent_pb2.HeartbeatResponse(server_time=wall(), client_time=wall(), lease_ttl_s=15)
                )
            )
            raise ConnectionError("the scheduler closed the work stream")

        monkeypatch.setattr(session, "_connect", healthy_then_broken)
        await session.run()
        assert waits == [1.0] * 6

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_the_delay_still_grows_while_the_scheduler_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        session, _sup, _, _, _ = make_session(tmp_path)
        waits = _record_waits(monkeypatch, session, 7)

        async def refused() -> None:
            raise ConnectionError("connection refused")

        monkeypatch.setattr(session, "_connect", refused)
        await session.run()
        assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_while_stages_run_the_delay_stays_within_their_leases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        session, sup, _, _, _ = make_session(tmp_path)
        sup.start(assignment("a"))  # a stage runs: its lease (TTL 15 s) must survive the outage
        waits = _record_waits(monkeypatch, session, 5)

        async def refused() -> None:
            raise ConnectionError("connection refused")

        monkeypatch.setattr(session, "_connect", refused)
        await session.run()
        assert waits == [1.0, 2.0, 3.75, 3.75, 3.75]

    asyncio.run(asyncio.wait_for(scenario(), 10))


# --------------------------------------------------------------------------- one instance per name (fault 5)


def test_the_instance_id_is_kept_in_the_state_dir_and_sent_in_register(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil

    from agent.instance import load_or_create

    monkeypatch.setattr(psutil, "sensors_battery", lambda: None)
    first = make_agent(tmp_path, monkeypatch)
    iid = first.session.register_request().instance_id
    assert len(iid) == 32 and (tmp_path / "state" / "instance_id").read_text().strip() == iid
    first.lock.release()
    again = make_agent(tmp_path, monkeypatch)  # a restart of the same instance
    assert again.session.register_request().instance_id == iid
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert load_or_create(other) != iid  # another state dir is another instance


def test_refused_as_another_instance_it_says_so_and_backs_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import grpc

    async def scenario() -> None:
        session, sup, _, _, _ = make_session(tmp_path)
        session.instance_id = "feedbeef"
        waits = _record_waits(monkeypatch, session, 3)

        async def refused() -> None:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="agent 'edge-1' is connected as another instance",
            )

        monkeypatch.setattr(session, "_connect", refused)
        with caplog.at_level("ERROR", logger="agent.session"):
            await session.run()
        assert waits == [1.0, 2.0, 4.0]  # not healthy: the delay grows
        assert sup.stages == {}  # it took no work
        assert "another instance is connected under the name" in caplog.text
        assert "this is instance feedbeef" in caplog.text

    asyncio.run(asyncio.wait_for(scenario(), 10))


# --------------------------------------------------------------------------- revoked by an admin


def test_revoked_it_stops_for_good_and_tells_the_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """UNAUTHENTICATED with the revocation's metadata key ends the session at once (no reconnect
    loop) and hands the refusal to ``on_revoked``; the same code without the key is an ordinary
    refusal, retried with backoff."""
    import grpc

    from agent.session import is_revocation
    from outrider.protocol import REVOKED_METADATA_KEY

    def refusal(key: str) -> grpc.aio.AioRpcError:
        trailing = grpc.aio.Metadata((key, "edge-1"))
        return grpc.aio.AioRpcError(
            grpc.StatusCode.UNAUTHENTICATED, grpc.aio.Metadata(), trailing, details="agent edge-1 was revoked at T by X"
        )

    assert is_revocation(refusal(REVOKED_METADATA_KEY))
    assert not is_revocation(refusal("something-else"))
    other = grpc.aio.AioRpcError(
        grpc.StatusCode.PERMISSION_DENIED, grpc.aio.Metadata(), grpc.aio.Metadata((REVOKED_METADATA_KEY, "x"))
    )
    assert not is_revocation(other)

    async def scenario(key: str) -> tuple[list[str], list[float], Session]:
        session, _sup, _, _, _ = make_session(tmp_path)
        told: list[str] = []
        session.on_revoked = told.append
        waits = _record_waits(monkeypatch, session, 3)

        async def refused() -> None:
            raise refusal(key)

        monkeypatch.setattr(session, "_connect", refused)
        await session.run()
        return told, waits, session

    async def both() -> None:
        told, waits, session = await scenario(REVOKED_METADATA_KEY)
        assert told == ["agent edge-1 was revoked at T by X"] and waits == [] and session.stopped
        assert session.revoked == told[0]
        told, waits, session = await scenario("something-else")
        assert told == [] and waits == [1.0, 2.0, 4.0] and not session.revoked

    asyncio.run(asyncio.wait_for(both(), 10))  # (before _record_waits patches asyncio.wait_for)
