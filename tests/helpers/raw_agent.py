"""A hand-driven agent for integration tests: raw gRPC calls with a real certificate.

Where a test must send what no well-behaved agent would (a NaN, a forged epoch, a
second instance under a live name), it drives the agent service directly through
this: register, long-poll for work, complete, report checkpoints, upload bytes.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from outrider.localcluster import LocalCluster, wait_for
from outrider.tls import channel_credentials
from outrider.v1 import agent_pb2, agent_pb2_grpc, artifact_pb2, artifact_pb2_grpc, common_pb2

RPC_TIMEOUT = 10.0


def code_of(fn: Any, *args: Any, **kwargs: Any) -> grpc.StatusCode:
    """The status code a call ends with (OK when it succeeds)."""
    try:
        fn(*args, timeout=RPC_TIMEOUT, **kwargs)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


class RawAgent:
    def __init__(self, cluster: LocalCluster, name: str, *, labels: dict[str, str] | None = None,
                 slots: int = 1, instance_id: str = "") -> None:
        ca, cert, key = cluster.issue("agent", name)
        self.name = name
        self.instance_id = instance_id
        self.channel = grpc.secure_channel(cluster.address, channel_credentials(ca, cert, key))
        self.stub = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.artifacts = artifact_pb2_grpc.ArtifactServiceStub(self.channel)
        self.caps = common_pb2.Capabilities(cpu_cores=2, memory_bytes=2**30, slots=slots, labels=labels or {})
        self._beats: list[threading.Event] = []

    def close(self) -> None:
        for stop in self._beats:
            stop.set()
        self.channel.close()

    def __enter__(self) -> RawAgent:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def register_request(self, clock: Iterable[common_pb2.ClockSample] = (),
                         leases: Iterable[common_pb2.LeaseRef] = ()) -> agent_pb2.RegisterRequest:
        return agent_pb2.RegisterRequest(capabilities=self.caps, clock=list(clock), leases=list(leases),
                                         client_time=time.time(), instance_id=self.instance_id)

    def register(self, clock: Iterable[common_pb2.ClockSample] = (),
                 leases: Iterable[common_pb2.LeaseRef] = ()) -> agent_pb2.RegisterResponse:
        return self.stub.Register(self.register_request(clock, leases), timeout=RPC_TIMEOUT)

    def poll(self, wait_s: float = 10.0, free_slots: int = 1,
             completions: Iterable[agent_pb2.Completion] = ()) -> agent_pb2.PollResponse:
        req = agent_pb2.PollRequest(free_slots=free_slots, wait_s=wait_s, completions=list(completions))
        return self.stub.PollTasks(req, timeout=wait_s + RPC_TIMEOUT)

    def take_one(self, deadline_s: float = 20.0) -> agent_pb2.Assignment:
        """Long-poll until one assignment comes."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            got = self.poll(wait_s=min(5.0, max(0.1, end - time.monotonic())))
            if got.assignments:
                (a,) = got.assignments
                return a
        raise TimeoutError(f"{self.name}: no assignment within {deadline_s}s")

    def heartbeat(self, leases: Iterable[common_pb2.LeaseRef] = (), **fields: Any) -> agent_pb2.HeartbeatResponse:
        req = agent_pb2.HeartbeatRequest(leases=list(leases), client_time=time.time(), **fields)
        return self.stub.Heartbeat(req, timeout=RPC_TIMEOUT)

    def keep_alive(self, leases: list[common_pb2.LeaseRef], every_s: float = 0.5) -> threading.Event:
        """Heartbeat ``leases`` in the background until the returned event is set (an agent
        that stops renewing them is lost when their TTL runs out)."""
        stop = threading.Event()
        self._beats.append(stop)

        def beat() -> None:
            while not stop.is_set():
                try:
                    code_of(self.stub.Heartbeat, agent_pb2.HeartbeatRequest(leases=leases, client_time=time.time()))
                except ValueError:  # the channel was closed under us
                    return
                stop.wait(every_s)

        threading.Thread(target=beat, daemon=True).start()
        return stop

    def complete(self, lease: common_pb2.LeaseRef, outcome: str = "succeeded", **fields: Any) -> grpc.StatusCode:
        c = agent_pb2.Completion(lease=lease, outcome=outcome, **fields)
        return code_of(self.stub.Complete, agent_pb2.CompleteRequest(completion=c))

    def upload(self, data: bytes, kind: str = "file") -> str:
        digest = hashlib.sha256(data).hexdigest()

        def chunks() -> Iterator[artifact_pb2.UploadChunk]:
            yield artifact_pb2.UploadChunk(header=artifact_pb2.ArtifactHeader(digest=digest, size=len(data),
                                                                              kind=kind))
            yield artifact_pb2.UploadChunk(data=data)

        self.artifacts.Upload(chunks(), timeout=RPC_TIMEOUT)
        return digest


class Stream:
    """A raw agent's work stream: what comes down is collected on a queue."""

    def __init__(self, agent: RawAgent, credits: int = 0) -> None:
        self._up: queue.Queue[agent_pb2.AgentMessage | None] = queue.Queue()
        self.down: queue.Queue[Any] = queue.Queue()
        self._up.put(agent_pb2.AgentMessage(credits=credits))
        self.call = agent.stub.Connect(self._messages())
        threading.Thread(target=self._read, daemon=True).start()

    def _messages(self) -> Iterator[agent_pb2.AgentMessage]:
        while (msg := self._up.get()) is not None:
            yield msg

    def _read(self) -> None:
        try:
            for msg in self.call:
                self.down.put(msg)
            self.down.put("ended")
        except grpc.RpcError as exc:
            self.down.put(exc.code())

    def send(self, msg: agent_pb2.AgentMessage) -> None:
        self._up.put(msg)

    def wait_for(self, predicate: Any, timeout: float = 15) -> Any:
        def got() -> Any:
            try:
                item = self.down.get(timeout=0.1)
            except queue.Empty:
                return None
            return item if predicate(item) else None

        return wait_for(got, timeout, "a message down the stream")

    def close(self) -> None:
        self._up.put(None)
        self.call.cancel()
