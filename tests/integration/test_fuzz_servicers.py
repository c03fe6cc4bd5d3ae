"""Fuzz every servicer of a real scheduler over real mTLS, then check it is still whole.

Every RPC in ``scheduler.auth.RULES`` (so an RPC added there is fuzzed with no change
here) is called in turn with raw bytes, as an admin, a submitter, an agent (registered,
holding leases) and a caller without a certificate on the enrolment port, mostly as a role
the RPC serves: (a) random bytes, (b) valid messages of the RPC's request type built from
its descriptor with hostile values, (b') sensible requests naming real runs, tasks, an
artifact and a join token with a few fields made hostile, (c) bit and byte mutations of
those (:mod:`tests.helpers.protofuzz`), and (d) a valid message of another RPC's request
type. Any status is an acceptable answer except ``UNKNOWN`` and ``INTERNAL`` (a servicer
raised what nobody raised on purpose: a bug), a message over 1024 characters, or one that
shows a server path or a Python class name. The scheduler must never die, answer health
within 5 s after each RPC's examples, and log no traceback. After the run it answers
health ``SERVING`` within a second and its database passes ``PRAGMA integrity_check``.

Reproducible by default (``derandomize``). To fuzz longer or elsewhere locally:
``OUTRIDER_FUZZ_EXAMPLES=2000 OUTRIDER_FUZZ_SEED=7 .venv/bin/python -m pytest -q -s
tests/integration/test_fuzz_servicers.py`` (examples per RPC; ``-s`` prints the statuses seen).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import scheduler
from outrider.localcluster import LocalCluster, wait_for
from outrider.tls import DEFAULT_CHANNEL_OPTIONS, channel_credentials
from outrider.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    artifact_pb2,
    common_pb2,
    control_pb2,
    identity_pb2,
    identity_pb2_grpc,
)
from scheduler.auth import RULES
from tests.helpers.protofuzz import Method, messages, method_of, mutated, seeded

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

#: Examples per RPC (each one call, as one of the three identities).
EXAMPLES = int(os.environ.get("OUTRIDER_FUZZ_EXAMPLES", "300"))
SEED = os.environ.get("OUTRIDER_FUZZ_SEED")
#: Per call: a unary call's deadline; a stream is read for its first message, then cancelled.
UNARY_TIMEOUT_S = 5.0
STREAM_TIMEOUT_S = 2.0
#: After each RPC's examples health must answer within this (after the whole run: within 1 s).
STALL_S = 5.0
MAX_MESSAGE = 1024
IDENTITIES = (("fuzz-admin", "admin"), ("fuzz-user", "submitter"), ("fuzz-agent", "agent"))
#: RPCs fuzzed after all others (they end the fuzzing identities' calls).
LAST = frozenset({"/outrider.v1.ControlService/RevokeAgent"})
#: A caller on the enrolment port, with no certificate (the role name RULES gives it).
ENROLLING = "enrolling"
BUG_CODES = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
CLASS_NAME = re.compile(r"<class '|\bTraceback\b|\b[A-Z][A-Za-z0-9_]*(?:Error|Exception|Exit)\b")
REPO = str(Path(scheduler.__file__).resolve().parents[1])
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", re.M)
#: Log records with a traceback that are gRPC's, not a servicer's: the client left a server stream
#: (we cancel after its first message) while the next write was in flight, before gRPC saw it leave.
TOLERATED = ("ERROR grpc._cython.cygrpc: ExecuteBatchError raised in core by servicer method",)


def _call(channel: grpc.Channel, m: Method, payloads: list[bytes]) -> tuple[grpc.StatusCode, str]:
    """Send ``payloads`` (one, unless the RPC streams requests) as raw bytes; the status it ends with."""
    kw: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}
    try:
        if not m.client_streaming and not m.server_streaming:
            channel.unary_unary(m.path, **kw)(payloads[0], timeout=UNARY_TIMEOUT_S)
            return grpc.StatusCode.OK, ""
        if not m.server_streaming:
            channel.stream_unary(m.path, **kw)(iter(payloads), timeout=UNARY_TIMEOUT_S)
            return grpc.StatusCode.OK, ""
        if m.client_streaming:
            call = channel.stream_stream(m.path, **kw)(iter(payloads), timeout=STREAM_TIMEOUT_S)
        else:
            call = channel.unary_stream(m.path, **kw)(payloads[0], timeout=STREAM_TIMEOUT_S)
        try:
            next(call, None)  # the first answer (or the end) says the server took the request
        finally:
            call.cancel()
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def _problem(code: grpc.StatusCode, details: str, sent: list[bytes], root: Path) -> str | None:
    """What is wrong with this answer, or None."""
    if code in BUG_CODES:
        return f"{code.name}: a servicer failed unexpectedly: {details[:300]!r}"
    if len(details) > MAX_MESSAGE:
        return f"{code.name}: a message of {len(details)} characters: {details[:200]!r}..."
    echoed = b"".join(sent).decode("utf-8", "ignore")
    for path in (str(root), REPO, "site-packages"):
        if path in details and path not in echoed:
            return f"{code.name}: the message shows a server path ({path}): {details[:300]!r}"
    for text in CLASS_NAME.findall(details):
        if text not in echoed:
            return f"{code.name}: the message shows a Python class name: {details[:300]!r}"
    return None


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


_PIPELINE = common_pb2.PipelineSpec(
    name="fuzzed",
    tasks=[
        common_pb2.TaskSpec(name="a", argv=["true"], outputs=["out"], requires=common_pb2.Requirements(cpus=1)),
        common_pb2.TaskSpec(name="b", argv=["true"], inputs={"x": "a.out"}, env={"K": "v"}, max_attempts=2),
    ],
)
_CAPS = common_pb2.Capabilities(cpu_cores=2, memory_bytes=2**30, slots=2, labels={"tier": "fuzz"}, zones=["eu"])
#: A sensible request per request type, for :func:`seeded` to start from (the others start empty).
SEEDS: dict[str, Any] = {
    "outrider.v1.PlanRequest": control_pb2.PlanRequest(pipeline=_PIPELINE),
    "outrider.v1.SubmitRequest": control_pb2.SubmitRequest(pipeline=_PIPELINE),
    "outrider.v1.SubmitAndWatchRequest": control_pb2.SubmitAndWatchRequest(pipeline=_PIPELINE),
    "outrider.v1.RegisterRequest": agent_pb2.RegisterRequest(capabilities=_CAPS, client_time=1.7e9, instance_id="i1"),
    "outrider.v1.HeartbeatRequest": agent_pb2.HeartbeatRequest(free_slots=1, client_time=1.7e9, capabilities=_CAPS),
    "outrider.v1.PollRequest": agent_pb2.PollRequest(free_slots=1, wait_s=0.1),
    "outrider.v1.AgentMessage": agent_pb2.AgentMessage(credits=1),
    "outrider.v1.RenewCertificateRequest": identity_pb2.RenewCertificateRequest(csr_pem=_csr()),
    "outrider.v1.EnrollRequest": identity_pb2.EnrollRequest(name="fuzz-new", csr_pem=_csr()),
    "outrider.v1.CreateTokenRequest": identity_pb2.CreateTokenRequest(labels={"tier": "fuzz"}, uses=3),
    "outrider.v1.UploadChunk": artifact_pb2.UploadChunk(
        header=artifact_pb2.ArtifactHeader(digest=hashlib.sha256(b"x" * 10).hexdigest(), size=10, kind="file"),
        data=b"x" * 10,
    ),
}


def _reports(run_id: str, digest: str) -> dict[str, Any]:
    """Seeds for what an agent reports on a lease (attempt 1 of task ``a`` of ``run_id``, which
    the fuzzing agent may hold: it registers and polls before each agent RPC is fuzzed)."""
    lease = common_pb2.LeaseRef(run_id=run_id, task="a", epoch=1)
    out = common_pb2.ArtifactRef(name="out", digest=digest, size=400, kind="file")
    done = agent_pb2.Completion(lease=lease, outcome="succeeded", outputs=[out], started_at=1.7e9, finished_at=1.7e9)
    checkpoint = common_pb2.Checkpoint(lease=lease, digest=digest, size=400, kind="file", seq=1, created_at=1.7e9)
    logs = agent_pb2.LogChunk(lease=lease, stream="stdout", data=b"hi\n", ts=1.7e9)
    return {
        "outrider.v1.CompleteRequest": agent_pb2.CompleteRequest(completion=done),
        "outrider.v1.ReportCheckpointRequest": agent_pb2.ReportCheckpointRequest(checkpoint=checkpoint),
        "outrider.v1.ReportLogsRequest": agent_pb2.ReportLogsRequest(logs=[logs]),
        "outrider.v1.AgentMessage": agent_pb2.AgentMessage(
            credits=1, completions=[done], logs=[logs], checkpoints=[checkpoint]
        ),
        "outrider.v1.PollRequest": agent_pb2.PollRequest(free_slots=1, wait_s=0.1, completions=[done]),
    }


def _as_agent(channel: grpc.Channel) -> None:
    """Register the fuzzing agent (its instance ``i1``) over its channel, and take what work it gets:
    each agent RPC is then fuzzed from a registered agent that holds leases."""
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    with contextlib.suppress(grpc.RpcError):  # refused once RevokeAgent revoked it: fine
        stub.Register(SEEDS["outrider.v1.RegisterRequest"], timeout=10)
        stub.PollTasks(agent_pb2.PollRequest(free_slots=2, wait_s=0.2), timeout=10)


def _known(cluster: LocalCluster) -> dict[str, list[str]]:
    """Values that name real things: runs (a submitter's, an admin's), their tasks, an artifact,
    the fuzzing agent; :func:`seeded` puts them in fields of these names."""
    runs = []
    for name, role in (("fuzz-user", "submitter"), ("fuzz-admin", "admin")):
        with cluster.client(name, role) as client:
            runs.append(client.submit(_PIPELINE).run_id)
    blob = cluster.root / "blob.bin"
    blob.write_bytes(b"fuzz" * 100)
    with cluster.client("fuzz-user") as client:
        digest = client.upload_file(blob).digest
    with cluster.client("fuzz-admin", "admin") as client:  # a token good for many enrolments
        stub = identity_pb2_grpc.IdentityServiceStub(client._channel)
        token = stub.CreateToken(identity_pb2.CreateTokenRequest(uses=100_000, ttl_s=3600), timeout=10).token
    return {
        "token": [token],
        "token_id": [token.partition(".")[0]],
        "run_id": runs,
        "task": ["a", "b"],
        "agent": ["fuzz-agent"],
        "name": ["fuzz-agent", "a"],
        "digest": [digest],
        "instance_id": ["i1"],
    }


@pytest.fixture
def fuzz_cluster(cluster: LocalCluster) -> LocalCluster:
    """The scheduler, with its enrolment port (TLS without a client certificate) open."""
    cluster.start_scheduler(["--enroll-listen", "127.0.0.1:0"])
    return cluster


def _enroll_address(cluster: LocalCluster) -> str:
    log = cluster.root / "logs" / "scheduler.log"

    def address() -> str | None:
        found = re.findall(r"enrolment serving on (\S+)", log.read_text())
        return found[-1] if found else None

    return str(wait_for(address, 20, "the enrolment port"))


def test_every_servicer_survives_random_and_mutated_messages(fuzz_cluster: LocalCluster) -> None:
    cluster = fuzz_cluster
    sched = cluster.scheduler
    assert sched is not None
    # Revoking the fuzzing agent ends its calls for good (UNAUTHENTICATED): so that one goes last.
    methods = [method_of(path) for path in sorted(RULES, key=lambda path: (path in LAST, path))]
    channels = {}
    for name, role in IDENTITIES:
        ca, cert, key = cluster.issue(role, name)
        channels[role] = grpc.secure_channel(
            cluster.address, channel_credentials(ca, cert, key), options=DEFAULT_CHANNEL_OPTIONS
        )
    # The enrolment port: TLS that asks for no client certificate.
    ca_pem = (cluster.pki / "ca.crt").read_bytes()
    channels[ENROLLING] = grpc.secure_channel(
        _enroll_address(cluster),
        grpc.ssl_channel_credentials(root_certificates=ca_pem),
        options=DEFAULT_CHANNEL_OPTIONS,
    )
    seen: Counter[tuple[str, str]] = Counter()

    known = _known(cluster)
    seeds = {**SEEDS, **_reports(known["run_id"][0], known["digest"][0])}

    @st.composite
    def payload(draw: Any, m: Method) -> bytes:
        kind = draw(st.sampled_from(("random", "valid", "seeded", "mutated", "other")))
        if kind == "random":
            return bytes(draw(st.binary(max_size=512)))
        if kind == "other":
            other = draw(st.sampled_from(methods))
            return bytes(draw(messages(other.request)).SerializeToString())
        if kind == "seeded" or draw(st.booleans()):
            base = seeds.get(m.request.full_name) or message_factory.GetMessageClass(m.request)()
            valid = bytes(draw(seeded(base, known)).SerializeToString())
        else:
            valid = bytes(draw(messages(m.request)).SerializeToString())
        return valid if kind in ("valid", "seeded") else bytes(draw(mutated(valid)))

    @st.composite
    def calls(draw: Any, m: Method) -> tuple[str, list[bytes]]:
        allowed = sorted(RULES[m.path].roles & set(channels))
        if allowed and draw(st.integers(0, 4)):  # mostly a caller it serves, to get past the role check
            role = draw(st.sampled_from(allowed))
        else:
            role = draw(st.sampled_from(sorted(channels)))
        count = draw(st.integers(1, 3)) if m.client_streaming else 1
        return role, [draw(payload(m)) for _ in range(count)]

    config = settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=SEED is None,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )

    def fuzz(m: Method) -> None:
        @config
        @given(calls(m))
        def one(case: tuple[str, list[bytes]]) -> None:
            role, sent = case
            code, details = _call(channels[role], m, sent)
            seen[(m.path, code.name)] += 1
            assert sched.alive(), f"the scheduler died on {m.path} as {role}:\n{sched.tail(60)}"
            problem = _problem(code, details, sent, cluster.root)
            assert problem is None, f"{m.path} as {role}: {problem}"

        if m.path.startswith(("/outrider.v1.AgentService/", "/outrider.v1.ArtifactService/")):
            _as_agent(channels["agent"])
        (seed(int(SEED))(one) if SEED is not None else one)()
        # No request stalls the scheduler: right after each RPC's run, health answers promptly.
        health = health_pb2_grpc.HealthStub(channels["submitter"])
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=STALL_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, m.path

    started = time.monotonic()
    try:
        for m in methods:  # each RPC in turn, so none goes unfuzzed and a failure names it
            fuzz(m)
    finally:
        for ch in channels.values():
            ch.close()
    took = time.monotonic() - started
    print(f"\nfuzzed {sum(seen.values())} calls in {took:.1f}s; by RPC and status:")
    for (path, code), n in sorted(seen.items()):
        print(f"  {path} {code}: {n}")

    # Nothing failed unexpectedly inside the scheduler, even where the caller got a fair answer.
    log = (cluster.root / "logs" / "scheduler.log").read_text(errors="replace")
    records = LOG_RECORD.split(log)
    tracebacks = [r[:800] for r in records if "Traceback" in r and not r.startswith(TOLERATED)]
    assert not tracebacks, f"{len(tracebacks)} tracebacks in the scheduler's log; the first:\n{tracebacks[0]}"

    # Still whole: alive, health answers SERVING within a second, the database intact.
    assert sched.alive(), sched.tail(60)
    with cluster.client("fuzz-check") as client:
        stub = health_pb2_grpc.HealthStub(client._channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    db = cluster.root / "scheduler" / "outrider.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
