"""What the scheduler sends an agent carries every field it was given: a task's spec read from
the wire and written back is the same message, and a SchedulerMessage holds each kind of
entry its Outbound had (the builders leave empty maps and lists out: they must leave
nothing else out)."""

from __future__ import annotations

from outrider.v1 import common_pb2
from scheduler.api import wire
from scheduler.core.channel import Outbound
from scheduler.core.messages import Ack, ArtifactRef, Assignment, LeaseRef

D = "d" * 64


def _rich_task() -> common_pb2.TaskSpec:
    """A task with every field of TaskSpec and Requirements set to something not default."""
    return common_pb2.TaskSpec(
        name="train",
        argv=["python", "train.py", "--fast"],
        inputs={"data": "prep.out", "vocab": "prep.vocab"},
        outputs=["model", "metrics"],
        after=["prep"],
        requires=common_pb2.Requirements(
            cpus=2.5,
            memory_bytes=3 << 30,
            disk_bytes=5 << 30,
            gpus=1,
            labels={"zone": "eu", "pool": "a"},
            gpu_memory_bytes=16 << 30,
            gpu_model="H100",
            expressions=[common_pb2.LabelExpr(key="arch", op="in", values=["x86_64", "arm64"])],
            residency=["ch", "eu"],
            max_clock_skew_s=0.5,
        ),
        max_attempts=4,
        backoff_s=2.0,
        timeout_s=60.0,
        env={"A": "1", "B": "two"},
        secret_env={"TOKEN": "s3cret-value-long"},
        affinities=[
            common_pb2.Affinity(expr=common_pb2.LabelExpr(key="zone", op="=", values=["eu"]), weight=1.0),
            common_pb2.Affinity(expr=common_pb2.LabelExpr(key="pool", op="in", values=["x", "y"]), weight=-1.0),
        ],
    )


def test_a_rich_task_spec_comes_back_whole() -> None:
    msg = _rich_task()
    back = wire.task_to_proto(wire.task_from_proto(msg))
    assert back == msg
    # Every field but shell is set (so no field can pass by being left at its default):
    assert {f.name for f, _ in back.ListFields()} == {f.name for f in common_pb2.TaskSpec.DESCRIPTOR.fields} - {"shell"}


def test_a_plain_task_spec_comes_back_whole() -> None:
    msg = common_pb2.TaskSpec(name="t", argv=["true"], requires=common_pb2.Requirements(cpus=1.0), max_attempts=1)
    back = wire.task_to_proto(wire.task_from_proto(msg))
    assert back == msg
    assert back.HasField("requires")
    assert not back.env and not back.inputs and not back.outputs and not back.affinities


def test_a_scheduler_message_carries_each_kind_of_entry() -> None:
    spec = wire.task_from_proto(_rich_task())
    lease = LeaseRef("run-1", "train", 2)
    plain = Assignment(LeaseRef("run-1", "prep", 1), spec, (), "", "p", "", 15.0)
    full = Assignment(lease, spec, (ArtifactRef("data", D, 7, "file"),), "c" * 64, "p", "00-tp-01", 15.0)
    out = Outbound(assignments=[plain, full], acks=[Ack(lease)], cancel=[LeaseRef("run-2", "x", 3)], drain=True)
    msg = wire.scheduler_message(out)
    assert [a.lease.task for a in msg.assignments] == ["prep", "train"]
    assert not msg.assignments[0].inputs
    assert [(i.name, i.digest, i.size, i.kind) for i in msg.assignments[1].inputs] == [("data", D, 7, "file")]
    assert msg.assignments[1].code_digest == "c" * 64 and msg.assignments[1].traceparent == "00-tp-01"
    assert msg.assignments[1].spec == _rich_task()
    assert [(a.lease.task, a.code) for a in msg.acks] == [("train", 0)]
    assert [(r.run_id, r.task, r.epoch) for r in msg.cancel] == [("run-2", "x", 3)]
    assert msg.drain and not msg.checkpoint_acks and not msg.HasField("heartbeat")
    assert wire.scheduler_message(Outbound()) == type(msg)()
