"""The session: heartbeats carry capabilities only when they changed, and a heartbeat
reply feeds the link's round-trip time. Unit level: no scheduler."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers.agents import make_agent, put_blob

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

