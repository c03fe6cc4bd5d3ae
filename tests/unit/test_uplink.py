"""The uplink: what goes up the work stream is batched, and logs are bounded."""

from __future__ import annotations

import asyncio

from agent.uplink import Uplink
from outrider.v1 import agent_pb2, common_pb2

LEASE = common_pb2.LeaseRef(run_id="r1", task="a", epoch=1)


def test_everything_pending_leaves_in_one_message() -> None:
    up = Uplink()
    assert up.take() is None
    up.credit()
    up.credit(2)
    up.complete(agent_pb2.Completion(lease=LEASE, outcome="succeeded"))
    up.log(LEASE, "stdout", b"hello\n")
    up.heartbeat(agent_pb2.HeartbeatRequest(free_slots=1))
    up.heartbeat(agent_pb2.HeartbeatRequest(free_slots=2))  # the newer one replaces it
    assert up.unsent_heartbeat is not None and up.unsent_heartbeat.free_slots == 2
    msg = up.take()
    assert msg is not None
    assert msg.credits == 3 and len(msg.completions) == 1 and msg.heartbeat.free_slots == 2
    assert [(c.stream, c.data) for c in msg.logs] == [("stdout", b"hello\n")]
    assert up.take() is None and up.unsent_heartbeat is None


def test_logs_are_bounded_oldest_first() -> None:
    up = Uplink(max_log_bytes=10)
    for i in range(5):
        up.log(LEASE, "stderr", bytes([48 + i]) * 4)
    msg = up.take()
    assert msg is not None and [c.data for c in msg.logs] == [b"3333", b"4444"]
    up.log(LEASE, "stderr", b"x" * 100)  # one chunk over the bound is still kept
    msg = up.take()
    assert msg is not None and [len(c.data) for c in msg.logs] == [100]


def test_a_fresh_stream_keeps_logs_but_not_credits_or_heartbeats() -> None:
    up = Uplink()
    up.credit(5)
    up.log(LEASE, "stdout", b"while disconnected\n")
    up.heartbeat(agent_pb2.HeartbeatRequest())
    kept = agent_pb2.AgentMessage(
        completions=[agent_pb2.Completion(lease=LEASE)],
        logs=[agent_pb2.LogChunk(lease=LEASE, stream="stderr", data=b"last words\n")],
    )
    ckpt = common_pb2.Checkpoint(lease=LEASE, digest="d" * 64, seq=3)
    up.restart(2, [kept], [ckpt])
    msg = up.take()
    assert msg is not None
    assert msg.credits == 2 and len(msg.completions) == 1 and not msg.HasField("heartbeat")
    # The result's own last output comes with it (the outbox kept both); buffered logs stay.
    assert [c.data for c in msg.logs] == [b"while disconnected\n", b"last words\n"]
    assert [c.seq for c in msg.checkpoints] == [3]


def test_a_result_takes_its_stages_unsent_output_with_it() -> None:
    up = Uplink()
    other = common_pb2.LeaseRef(run_id="r1", task="b", epoch=1)
    up.log(LEASE, "stdout", b"mine\n")
    up.log(other, "stdout", b"theirs\n")
    mine = up.take_logs(LEASE)
    assert [c.data for c in mine] == [b"mine\n"] and up.take_logs(LEASE) == []
    up.complete(agent_pb2.Completion(lease=LEASE), mine)
    msg = up.take()
    assert msg is not None and [c.data for c in msg.logs] == [b"theirs\n", b"mine\n"]


def test_pump_writes_what_is_pending() -> None:
    class Call:
        def __init__(self) -> None:
            self.written: list[agent_pb2.AgentMessage] = []
            self.wrote = asyncio.Event()

        async def write(self, msg: agent_pb2.AgentMessage) -> None:
            self.written.append(msg)
            self.wrote.set()

    async def scenario() -> None:
        up, call = Uplink(), Call()
        up.credit(1)
        pump = asyncio.ensure_future(up.pump(call))
        try:
            await asyncio.wait_for(call.wrote.wait(), 5)
            call.wrote.clear()
            up.complete(agent_pb2.Completion(lease=LEASE))
            await asyncio.wait_for(call.wrote.wait(), 5)
        finally:
            pump.cancel()
        assert [(m.credits, len(m.completions)) for m in call.written] == [(1, 0), (0, 1)]

    asyncio.run(scenario())
