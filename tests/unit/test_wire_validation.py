"""The edge refuses what no agent or client may send (issue 7, fault 1).

Every number from the wire is finite and in range, every name and label bounded,
every repeated field counted; a bad message is refused with INVALID_ARGUMENT that
names the field, and free-text errors are cut rather than refused.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from outrider.errors import InvalidArgument
from outrider.v1 import agent_pb2, common_pb2
from scheduler.api import bounds, wire

D = "a" * 64
NAN, INF = math.nan, math.inf


def _lease(**kw: Any) -> common_pb2.LeaseRef:
    return common_pb2.LeaseRef(**{"run_id": "run-1", "task": "t", "epoch": 1, **kw})


def _completion(**kw: Any) -> agent_pb2.Completion:
    return agent_pb2.Completion(**{"lease": _lease(), "outcome": "succeeded", **kw})


def _caps(**kw: Any) -> common_pb2.Capabilities:
    return common_pb2.Capabilities(**{"cpu_cores": 2, "slots": 1, **kw})


BAD: list[tuple[str, Callable[[], object], str]] = [
    # completions
    ("started_at NaN", lambda: wire.completion_from_proto(_completion(started_at=NAN)), "completion.started_at"),
    ("started_at inf", lambda: wire.completion_from_proto(_completion(started_at=INF)), "completion.started_at"),
    ("finished_at -inf", lambda: wire.completion_from_proto(_completion(finished_at=-INF)), "completion.finished_at"),
    ("negative time", lambda: wire.completion_from_proto(_completion(started_at=-5.0)), "completion.started_at"),
    ("absurd time", lambda: wire.completion_from_proto(_completion(finished_at=1e300)), "completion.finished_at"),
    ("negative epoch", lambda: wire.completion_from_proto(_completion(lease=_lease(epoch=-1))), "completion.lease.epoch"),
    ("long run id", lambda: wire.completion_from_proto(_completion(lease=_lease(run_id="r" * 300))),
     "completion.lease.run_id"),
    ("negative output size", lambda: wire.completion_from_proto(
        _completion(outputs=[common_pb2.ArtifactRef(name="o", digest=D, size=-1, kind="file")])),
     "completion.outputs[0].size"),
    ("long output digest", lambda: wire.completion_from_proto(
        _completion(outputs=[common_pb2.ArtifactRef(name="o", digest="x" * 10_000, kind="file")])),
     "completion.outputs[0].digest"),
    ("too many outputs", lambda: wire.completion_from_proto(
        _completion(outputs=[common_pb2.ArtifactRef(name=f"o{i}") for i in range(bounds.MAX_OUTPUTS + 1)])),
     "completion.outputs"),
    ("bad outcome", lambda: wire.completion_from_proto(_completion(outcome="x" * 1000)), "completion.outcome"),
    # clocks
    ("offset NaN", lambda: wire.clocks_from_proto([common_pb2.ClockSample(offset_s=NAN)]), "clock[0].offset_s"),
    ("offset inf", lambda: wire.clocks_from_proto([common_pb2.ClockSample(offset_s=-INF)]), "clock[0].offset_s"),
    ("uncertainty negative", lambda: wire.clocks_from_proto([common_pb2.ClockSample(uncertainty_s=-1)]),
     "clock[0].uncertainty_s"),
    ("measured_at NaN", lambda: wire.clocks_from_proto([common_pb2.ClockSample(measured_at=NAN)]),
     "clock[0].measured_at"),
    ("long source", lambda: wire.clocks_from_proto([common_pb2.ClockSample(source="s" * 300)]), "clock[0].source"),
    ("too many samples", lambda: wire.clocks_from_proto([common_pb2.ClockSample()] * 65), "clock"),
    # capabilities
    ("negative memory", lambda: wire.capabilities_from_proto(_caps(memory_bytes=-1)), "capabilities.memory_bytes"),
    ("negative cores", lambda: wire.capabilities_from_proto(_caps(cpu_cores=-4)), "capabilities.cpu_cores"),
    ("negative slots", lambda: wire.capabilities_from_proto(_caps(slots=-1)), "capabilities.slots"),
    ("absurd slots", lambda: wire.capabilities_from_proto(_caps(slots=2**30)), "capabilities.slots"),
    ("bandwidth NaN", lambda: wire.capabilities_from_proto(_caps(bandwidth_bps=NAN)), "capabilities.bandwidth_bps"),
    ("rtt inf", lambda: wire.capabilities_from_proto(_caps(rtt_s=INF)), "capabilities.rtt_s"),
    ("battery NaN", lambda: wire.capabilities_from_proto(_caps(power=common_pb2.Power(battery_percent=NAN))),
     "capabilities.power.battery_percent"),
    ("long label value", lambda: wire.capabilities_from_proto(_caps(labels={"k": "v" * 5000})),
     "capabilities.labels[k]"),
    ("long label key", lambda: wire.capabilities_from_proto(_caps(labels={"k" * 300: "v"})), "capabilities.labels key"),
    ("long hostname", lambda: wire.capabilities_from_proto(_caps(hostname="h" * 5000)), "capabilities.hostname"),
    ("gpu memory negative", lambda: wire.capabilities_from_proto(_caps(gpus=[common_pb2.Gpu(memory_bytes=-1)])),
     "capabilities.gpus[0].memory_bytes"),
    ("cached bad digest", lambda: wire.capabilities_from_proto(_caps(cached=[common_pb2.ArtifactRef(digest="zz")])),
     "capabilities.cached[0].digest"),
    ("cached negative size", lambda: wire.capabilities_from_proto(
        _caps(cached=[common_pb2.ArtifactRef(digest=D, size=-2)])), "capabilities.cached[0].size"),
    ("long zone", lambda: wire.capabilities_from_proto(_caps(zones=["z" * 300])), "capabilities.zones[0]"),
    # leases and logs
    ("lease negative epoch", lambda: wire.leases_from_proto([_lease(epoch=-3)]), "leases[0].epoch"),
    ("lease long task", lambda: wire.leases_from_proto([_lease(task="t" * 300)]), "leases[0].task"),
    ("log ts NaN", lambda: wire.logs_from_proto([agent_pb2.LogChunk(lease=_lease(), stream="stdout", ts=NAN)]),
     "logs[0].ts"),
    ("log bad stream", lambda: wire.logs_from_proto([agent_pb2.LogChunk(lease=_lease(), stream="x" * 100)]),
     "logs[0].stream"),
    ("log chunk too big", lambda: wire.logs_from_proto(
        [agent_pb2.LogChunk(lease=_lease(), stream="stderr", data=b"x" * (bounds.MAX_LOG_CHUNK_BYTES + 1))]),
     "logs[0].data"),
    # pipeline names become file names
    ("long task name", lambda: wire.check_pipeline(common_pb2.PipelineSpec(
        name="p", tasks=[common_pb2.TaskSpec(name="t" * 200, argv=["true"])])), "tasks[0].name"),
]


@pytest.mark.parametrize(("what", "call", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_values_are_refused_naming_the_field(what: str, call: Callable[[], object], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        call()
    assert field in str(info.value), str(info.value)


def test_a_long_error_message_is_cut_not_refused() -> None:
    c = wire.completion_from_proto(_completion(outcome="failed", error="e" * 100_000))
    assert len(c.error) < bounds.MAX_ERROR + 100
    assert c.error.startswith("e" * 100) and "more characters cut" in c.error


def test_ordinary_reports_pass() -> None:
    now = 1_700_000_000.0
    c = wire.completion_from_proto(_completion(
        started_at=now, finished_at=now + 1, exit_code=-15,
        outputs=[common_pb2.ArtifactRef(name="o", digest=D, size=5, kind="file")]))
    assert c.started_at == now and c.exit_code == -15
    (s,) = wire.clocks_from_proto([common_pb2.ClockSample(offset_s=-3600.5, uncertainty_s=0.01, source="ntp:a",
                                                          measured_at=now)])
    assert s.offset_s == -3600.5
    caps = wire.capabilities_from_proto(_caps(
        memory_bytes=2**40, bandwidth_bps=1e9, rtt_s=0.2, labels={"site": "lab"}, zones=["eu"],
        gpus=[common_pb2.Gpu(index=0, model="H100", memory_bytes=80 * 2**30)],
        cached=[common_pb2.ArtifactRef(digest=D, size=1)], power=common_pb2.Power(battery_percent=55.0)))
    assert caps.labels == {"site": "lab"}
    assert wire.leases_from_proto([_lease(epoch=0)])[0].epoch == 0


def test_stored_capabilities_are_decoded_without_the_checks() -> None:
    """What was stored before the bounds existed still loads (a restart never fails on it)."""
    blob = _caps(bandwidth_bps=NAN).SerializeToString()
    assert math.isnan(wire.decode_capabilities(blob).bandwidth_bps)


def test_a_spec_with_many_problems_lists_the_first_and_counts_the_rest() -> None:
    """Issue 8, item 7: the problem list is bounded, so the client gets the real error."""
    spec = common_pb2.PipelineSpec(name="p", tasks=[common_pb2.TaskSpec(name=f"bad name {i}", argv=["true"])
                                                    for i in range(500)])
    with pytest.raises(InvalidArgument) as info:
        wire.check_pipeline(spec)
    text = str(info.value)
    assert len(text) <= 1024, len(text)
    assert "tasks[bad name 0].name" in text and "more problem" in text, text


def test_a_heartbeat_on_the_stream_goes_through_the_register_checks() -> None:
    """Issue 8, item 7: the stream's heartbeat and credits are checked like Register's
    capabilities; a bad one is refused naming the field (the servicer ends the stream)."""
    from scheduler.api.agent import check_stream_message

    hb = agent_pb2.HeartbeatRequest(capabilities=_caps(slots=-7))
    with pytest.raises(InvalidArgument, match=r"heartbeat\.capabilities\.slots"):
        check_stream_message(agent_pb2.AgentMessage(heartbeat=hb))
    with pytest.raises(InvalidArgument, match="credits"):
        check_stream_message(agent_pb2.AgentMessage(credits=-5))
    with pytest.raises(InvalidArgument, match="credits"):
        check_stream_message(agent_pb2.AgentMessage(credits=2**31 - 1))
    check_stream_message(agent_pb2.AgentMessage(credits=3, heartbeat=agent_pb2.HeartbeatRequest(
        capabilities=_caps(slots=4))))
