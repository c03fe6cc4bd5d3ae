"""The Python SDK: talk to a scheduler over mutually-authenticated gRPC.

    from outrider.client import Client
    from outrider.pipeline import load_pipeline

    with Client.from_env() as client:           # OUTRIDER_SCHEDULER, _CA, _CERT, _KEY
        run_id = client.submit(load_pipeline("pipeline.yaml")).run_id
        status = client.wait(run_id)
        print(status.state)

Connection settings come from explicit arguments, then the environment
(``OUTRIDER_SCHEDULER``, ``OUTRIDER_CA``, ``OUTRIDER_CERT``, ``OUTRIDER_KEY``),
then a TOML config file (``OUTRIDER_CONFIG``, else ``~/.config/outrider/client.toml``)
with keys ``scheduler``, ``ca``, ``cert``, ``key`` or ``pki_dir`` + ``name``.
gRPC errors become :mod:`outrider.errors` exceptions, mapped here in one place.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from outrider import errors
from outrider.artifacts import Receiver, pack_dir, upload_chunks
from outrider.certdates import check_dates
from outrider.config import load_toml
from outrider.reconnect import Reconnects
from outrider.targets import Targets, leader_hint
from outrider.tls import DEFAULT_CHANNEL_OPTIONS, channel_credentials, pki_paths
from outrider.v1 import (
    artifact_pb2,
    artifact_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    control_pb2,
    control_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
)

ENV_KEYS = {"scheduler": "OUTRIDER_SCHEDULER", "ca": "OUTRIDER_CA", "cert": "OUTRIDER_CERT", "key": "OUTRIDER_KEY"}
TERMINAL_RUN_STATES = frozenset({"succeeded", "failed", "cancelled"})

_CODE_TO_ERROR: dict[grpc.StatusCode, type[errors.OutriderError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ABORTED: errors.StaleEpoch,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.DATA_LOSS: errors.DataLoss,
}


class ConnectionFailed(errors.OutriderError):
    """Raised when the scheduler cannot be reached or refuses our certificate."""

    code = "UNAVAILABLE"

    def __init__(self, message: str, status: str = "UNAVAILABLE") -> None:
        super().__init__(message)
        #: The gRPC status it ended with: UNAVAILABLE (worth retrying), UNAUTHENTICATED, DEADLINE_EXCEEDED.
        self.status = status
        self.code = status


#: A watch that lost its connection tries again for this long before it gives up.
RECONNECT_FOR_S = 300.0
#: How long a unary call keeps trying the scheduler addresses while none is the leader (a failover).
FAILOVER_FOR_S = 30.0


def _translate(exc: grpc.RpcError) -> errors.OutriderError:
    """The OutriderError for a failed call; its ``code`` is the status the call ended with."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    cls = _CODE_TO_ERROR.get(code)
    if cls is not None:
        return cls(details)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ConnectionFailed(f"{code.name}: {details}", code.name)
    err = errors.OutriderError(f"{code.name}: {details}")
    err.code = code.name  # UNKNOWN, INTERNAL, UNIMPLEMENTED, CANCELLED, ALREADY_EXISTS, OUT_OF_RANGE
    return err


def _stub_method_name(method: Any) -> str:
    """The name of a stub's method (``Submit``) from its multi-callable."""
    full = getattr(method, "_method", b"")
    text = full.decode() if isinstance(full, bytes) else str(full)
    return text.rpartition("/")[2]


def _unavailable(exc: errors.OutriderError) -> bool:
    return isinstance(exc, ConnectionFailed) and exc.status == "UNAVAILABLE"


@dataclass(frozen=True)
class Connection:
    scheduler: str
    ca: str
    cert: str
    key: str


def default_config_path() -> Path:
    env = os.environ.get("OUTRIDER_CONFIG")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "outrider" / "client.toml"


def resolve_connection(
    scheduler: str | None = None,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    config: str | os.PathLike[str] | None = None,
) -> Connection:
    """Resolve connection settings: arguments, then environment, then config file."""
    given = {"scheduler": scheduler, "ca": ca, "cert": cert, "key": key}
    values = {k: v or os.environ.get(ENV_KEYS[k]) for k, v in given.items()}
    path = Path(config) if config else default_config_path()
    if not all(values.values()) and (config or path.exists()):
        file_values = load_toml(path)
        unknown = set(file_values) - {"scheduler", "ca", "cert", "key", "pki_dir", "name"}
        if unknown:
            raise errors.ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
        if file_values.get("pki_dir") and file_values.get("name"):
            for field, path in zip(
                ("ca", "cert", "key"), pki_paths(file_values["pki_dir"], file_values["name"]), strict=True
            ):
                file_values.setdefault(field, str(path))
        for k in values:
            values[k] = values[k] or file_values.get(k)
    missing = [k for k, v in values.items() if not v]
    if missing:
        raise errors.ConfigError(
            "no "
            + ", ".join(missing)
            + " given: use --scheduler/--ca/--cert/--key, the environment ("
            + ", ".join(ENV_KEYS[k] for k in missing)
            + f") or a config file ({path})"
        )
    return Connection(**values)  # type: ignore[arg-type]


@dataclass
class SubmitResult:
    run_id: str
    warnings: list[str]


class Client:
    """A connection to one scheduler. Thread-safe; close it (or use ``with``) when done."""

    def __init__(self, scheduler: str, ca: str, cert: str, key: str, *, timeout: float = 60.0) -> None:
        try:
            #: ``HOST:PORT`` or several, comma-separated (high availability: docs/ha.md)
            self.targets = Targets(scheduler)
        except ValueError as exc:
            raise errors.ConfigError(f"scheduler: {exc}") from None
        self.target = self.targets.current
        self.timeout = timeout
        self._creds = channel_credentials(ca, cert, key)
        # An expired (or not yet valid) certificate: say so now, not "UNAVAILABLE" at the first call.
        check_dates(
            cert,
            whose=f"your certificate ({cert})",
            expired_hint="ask an admin for a new one (`outrider pki issue DIR ROLE NAME --force`)",
            early_hint="this machine's clock is probably wrong (check NTP / time sync)",
        )
        self._open(self.target)

    def _open(self, target: str) -> None:
        self.target = target
        self._channel = grpc.secure_channel(target, self._creds, options=DEFAULT_CHANNEL_OPTIONS)
        self.control = control_pb2_grpc.ControlServiceStub(self._channel)
        self.artifacts = artifact_pb2_grpc.ArtifactServiceStub(self._channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self._channel)
        self.identity = identity_pb2_grpc.IdentityServiceStub(self._channel)

    def _fail_over(self, exc: grpc.RpcError) -> bool:
        """After ``UNAVAILABLE``: move to the leader a standby named, else (with several
        addresses) to the next one. Whether the target changed (the call may be tried again)."""
        if not isinstance(exc, grpc.Call):
            return False
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and self.targets.several:
            # No answer in time (a paused leader keeps its connections open): the next call goes
            # elsewhere; this one is not tried again (it may have been carried out).
            self._switch(self.targets.fail(silent=True))
            return False
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            return False
        return self._switch(self.targets.fail(leader_hint(exc.trailing_metadata())))

    def _switch(self, target: str) -> bool:
        if target == self.target:
            return False
        old = self._channel
        self._open(target)
        old.close()
        return True

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        conn = resolve_connection(**{k: kwargs.pop(k, None) for k in ("scheduler", "ca", "cert", "key", "config")})
        return cls(conn.scheduler, conn.ca, conn.cert, conn.key, **kwargs)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        """One unary call. With several scheduler addresses (or a standby naming the leader), an
        ``UNAVAILABLE`` moves to the next (or the named) one and tries again, with a short
        backoff once every address was tried, for up to :data:`FAILOVER_FOR_S`."""
        give_up = time.monotonic() + FAILOVER_FOR_S
        tried = 0
        while True:
            try:
                answer = method(request, timeout=timeout or self.timeout)
                self.targets.ok()
                return answer
            except grpc.RpcError as exc:
                moved = self._fail_over(exc)
                if not moved or time.monotonic() >= give_up:
                    raise _translate(exc) from None
                name = _stub_method_name(method)
                method = next(getattr(s, name) for s in self._stubs() if hasattr(s, name))
                tried += 1
                if tried % len(self.targets.addresses) == 0:
                    time.sleep(min(1.0, 0.1 * tried))

    def _stubs(self) -> tuple[Any, ...]:
        return (self.control, self.artifacts, self.audit, self.identity)

    def _stream(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Iterator[Any]:
        """Iterate a server stream so that Ctrl-C still works.

        A blocking gRPC iteration waits inside C code, where Python cannot deliver
        KeyboardInterrupt; so a thread reads the stream and this generator waits on a
        queue in short steps. Closing the generator (or an interrupt) cancels the call.
        """
        call = method(request, timeout=timeout)
        q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1024)

        def pump() -> None:
            try:
                for item in call:
                    q.put(("item", item))
                q.put(("end", None))
            except grpc.RpcError as exc:
                q.put(("error", exc))

        reader = threading.Thread(target=pump, name="outrider-stream", daemon=True)
        reader.start()
        try:
            while True:
                try:
                    kind, value = q.get(timeout=0.25)
                except queue.Empty:
                    continue
                if kind == "item":
                    yield value
                elif kind == "end":
                    return
                else:
                    if value.code() == grpc.StatusCode.CANCELLED:
                        return
                    self._fail_over(value)  # the next call (a resumed watch) goes to the leader
                    raise _translate(value) from None
        finally:
            call.cancel()

    # -- pipelines and runs --

    def _spec(self, pipeline: Any) -> common_pb2.PipelineSpec:
        """Turn a Pipeline (uploading its code bundle) or a PipelineSpec into a spec."""
        if isinstance(pipeline, common_pb2.PipelineSpec):
            return pipeline
        pipeline.validate()
        code_digest = ""
        if pipeline.code_dir is not None:
            code_digest = self.upload_dir(pipeline.code_dir).digest
        return pipeline.to_proto(code_digest=code_digest)

    def plan(self, pipeline: Any) -> control_pb2.PlanResponse:
        return self._call(self.control.Plan, control_pb2.PlanRequest(pipeline=self._spec(pipeline)))

    def submit(self, pipeline: Any, strict: bool = False) -> SubmitResult:
        """Submit; ``strict`` refuses a pipeline with a task no registered agent can run."""
        # One request id per submission, the same on every failover retry of it: a retry whose first try
        # was committed before its answer was lost finds that run instead of starting a second one.
        req = control_pb2.SubmitRequest(pipeline=self._spec(pipeline), strict=strict, request_id=uuid.uuid4().hex)
        resp = self._call(self.control.Submit, req)
        return SubmitResult(resp.run_id, list(resp.warnings))

    def submit_and_watch(
        self,
        pipeline: Any,
        run_only: bool = False,
        timeout: float | None = None,
        strict: bool = False,
        reconnect_for: float = 0.0,
        on_reconnect: Callable[[int, errors.OutriderError], None] | None = None,
    ) -> Iterator[control_pb2.RunEvent]:
        """Submit and follow in one call: the first event (the run's snapshot, with
        ``warnings``) is the durable acknowledgement; events follow until the run ends.

        With ``reconnect_for`` > 0, a connection lost after the acknowledgement is resumed
        as :meth:`follow` does, and one lost before it is submitted again with the same
        request id (so the scheduler answers with the run if the first try made one)."""
        req = control_pb2.SubmitAndWatchRequest(
            pipeline=self._spec(pipeline), run_only=run_only, strict=strict, request_id=uuid.uuid4().hex
        )
        if reconnect_for <= 0:
            return self._stream(self.control.SubmitAndWatch, req, timeout)
        events = _until_acknowledged(self, req, timeout, reconnect_for, on_reconnect)
        return self._resumed(events, run_only, reconnect_for, on_reconnect)

    def _resumed(
        self,
        events: Iterator[control_pb2.RunEvent],
        run_only: bool,
        reconnect_for: float,
        on_reconnect: Callable[[int, errors.OutriderError], None] | None,
    ) -> Iterator[control_pb2.RunEvent]:
        run_id, last, ended = "", 0, False
        try:
            for ev in events:
                run_id, last = ev.run_id, max(last, ev.seq)
                if not ev.task:
                    ended = ev.state in TERMINAL_RUN_STATES
                yield ev
            if ended:
                return
            exc: errors.OutriderError = ConnectionFailed("the watch ended before the run did", "UNAVAILABLE")
        except errors.OutriderError as lost:
            if not run_id or not _unavailable(lost):
                raise
            exc = lost
        if on_reconnect is not None:
            on_reconnect(1, exc)
        yield from self.follow(run_id, run_only, last, reconnect_for, on_reconnect)

    def run(self, pipeline: Any, timeout: float | None = None) -> control_pb2.RunStatus:
        """Submit a pipeline and block until its run ends; return the final status."""
        return self._final(self.submit_and_watch(pipeline, run_only=True, timeout=timeout))

    def _final(self, events: Iterator[control_pb2.RunEvent]) -> control_pb2.RunStatus:
        last = None
        run_id = ""
        for ev in events:
            run_id = ev.run_id
            if ev.HasField("snapshot"):
                last = ev.snapshot
            if not ev.task and ev.state in TERMINAL_RUN_STATES:
                return ev.snapshot if ev.HasField("snapshot") else self.get_run(run_id)
        return last if last is not None else self.get_run(run_id)

    def get_run(self, run_id: str) -> control_pb2.RunStatus:
        return self._call(self.control.GetRun, control_pb2.GetRunRequest(run_id=run_id))

    def list_runs(self, limit: int = 50, state: str = "") -> list[control_pb2.RunStatus]:
        """The caller's runs (an admin's: everyone's), newest first, without their tasks."""
        return self.list_runs_counted(limit, state)[0]

    def list_runs_counted(self, limit: int = 50, state: str = "") -> tuple[list[control_pb2.RunStatus], int]:
        """(the runs :meth:`list_runs` returns, how many runs of other submitters were not shown)."""
        resp = self._call(self.control.ListRuns, control_pb2.ListRunsRequest(limit=limit, state=state))
        return list(resp.runs), resp.others

    def watch(
        self, run_id: str, run_only: bool = False, timeout: float | None = None, after_seq: int = 0
    ) -> Iterator[control_pb2.RunEvent]:
        """The run's snapshot (``seq`` 0), then its recorded history after ``after_seq``, then
        its events as they happen, each once and in ``seq`` order, until it ends."""
        req = control_pb2.WatchRunRequest(run_id=run_id, run_only=run_only, after_seq=after_seq)
        return self._stream(self.control.WatchRun, req, timeout)

    def follow(
        self,
        run_id: str,
        run_only: bool = False,
        after_seq: int = 0,
        reconnect_for: float = RECONNECT_FOR_S,
        on_reconnect: Callable[[int, errors.OutriderError], None] | None = None,
    ) -> Iterator[control_pb2.RunEvent]:
        """:meth:`watch` that survives a lost connection (a scheduler restart, a network blip).

        On UNAVAILABLE it reconnects, with a backoff from 0.2 s doubling to 5 s (jittered),
        and resumes after the last event it yielded: no event twice, none missed. Each
        connection opens with a snapshot (``seq`` 0). It gives up (raising the last error)
        once ``reconnect_for`` seconds pass without a connection; ``on_reconnect(tries,
        error)`` is called before each try.
        """
        last = after_seq
        backoff = Reconnects(reconnect_for, on_reconnect, _unavailable)
        while True:
            try:
                ended = False  # what this connection last said of the run
                for ev in self.watch(run_id, run_only, after_seq=last):
                    if ev.seq and ev.seq <= last:
                        continue  # already shown (the scheduler never sends these; belt and braces)
                    backoff.connected()
                    last = max(last, ev.seq)
                    if not ev.task:
                        ended = ev.state in TERMINAL_RUN_STATES
                    yield ev
                if ended:
                    return
                # The stream ended before the run did: the server went away (a graceful stop
                # cancels its streams). Resume like after any lost connection.
                raise ConnectionFailed("the watch ended before the run did", "UNAVAILABLE")
            except errors.OutriderError as exc:
                backoff.lost(exc)

    def wait(self, run_id: str, timeout: float | None = None) -> control_pb2.RunStatus:
        """Block until the run ends; return its final status."""
        return self._final(self.watch(run_id, run_only=True, timeout=timeout))

    def cancel(self, run_id: str) -> control_pb2.RunStatus:
        return self._call(self.control.CancelRun, control_pb2.CancelRunRequest(run_id=run_id))

    def retry(self, run_id: str) -> control_pb2.RunStatus:
        return self._call(self.control.RetryRun, control_pb2.RetryRunRequest(run_id=run_id))

    def explain(self, run_id: str, task: str) -> control_pb2.ExplainResponse:
        """Why a task is pending (and until when), or why it runs where it does."""
        return self._call(self.control.Explain, control_pb2.ExplainRequest(run_id=run_id, task=task))

    def list_agents(self) -> list[control_pb2.AgentInfo]:
        return list(self._call(self.control.ListAgents, control_pb2.ListAgentsRequest()).agents)

    def drain(self, agent: str) -> control_pb2.AgentInfo:
        """Ask an agent to drain (admin): no new work; its stages checkpoint and are released."""
        return self._call(self.control.DrainAgent, control_pb2.DrainAgentRequest(agent=agent))

    def revoke_agent(self, agent: str, reason: str = "") -> control_pb2.RevokeAgentResponse:
        """Revoke an agent for good (admin): every call with its certificate is refused, its leases
        are cancelled and their tasks requeued. Idempotent (``already_revoked``); a name never seen
        (``known`` false) may be revoked too."""
        return self._call(self.control.RevokeAgent, control_pb2.RevokeAgentRequest(agent=agent, reason=reason))

    def stage_metrics(self, run_ids: list[str]) -> list[control_pb2.RunStageMetrics]:
        """What the stages of these runs recorded (:mod:`outrider.metrics`), in the order asked."""
        resp = self._call(self.control.GetStageMetrics, control_pb2.GetStageMetricsRequest(run_ids=run_ids))
        return list(resp.runs)

    def create_token(
        self, labels: dict[str, str], zones: list[str] | None, ttl_s: float, uses: int
    ) -> identity_pb2.CreateTokenResponse:
        """Make a join token (admin); its ``token`` is shown only in this answer."""
        req = identity_pb2.CreateTokenRequest(labels=labels, zones=zones or [], ttl_s=ttl_s, uses=uses)
        return self._call(self.identity.CreateToken, req)

    def list_tokens(self) -> list[identity_pb2.TokenInfo]:
        return list(self._call(self.identity.ListTokens, identity_pb2.ListTokensRequest()).tokens)

    def revoke_token(self, token_id: str) -> identity_pb2.TokenInfo:
        return self._call(self.identity.RevokeToken, identity_pb2.RevokeTokenRequest(token_id=token_id)).info

    def list_audit(
        self, after_seq: int = 0, since_ts: float = 0.0, identity: str = "", limit: int = 0, page: int = 500
    ) -> Iterator[audit_pb2.AuditRecord]:
        """The audit log (admin), oldest first: records after ``after_seq``, at or after the wall
        time ``since_ts`` (seconds), by ``identity`` if given; at most ``limit`` (0: all), fetched
        ``page`` at a time."""
        since_us, left = int(since_ts * 1_000_000), limit
        while True:
            size = min(page, left) if limit else page
            req = audit_pb2.ListAuditRequest(after_seq=after_seq, since_ts_us=since_us, identity=identity, limit=size)
            resp = self._call(self.audit.ListAudit, req)
            yield from resp.records
            left -= len(resp.records)
            if not resp.next_after_seq or (limit and left <= 0):
                return
            after_seq = resp.next_after_seq

    def verify_audit(self) -> audit_pb2.VerifyAuditResponse:
        """Recompute the audit log's hash chain on the scheduler (admin): ``ok``, or the first
        broken record (``first_broken_seq``) and ``reason``."""
        return self._call(self.audit.VerifyAudit, audit_pb2.VerifyAuditRequest())

    def logs(self, run_id: str, task: str, attempt: int = 0, follow: bool = False) -> Iterator[control_pb2.LogLine]:
        req = control_pb2.GetLogsRequest(run_id=run_id, task=task, attempt=attempt, follow=follow)
        return self._stream(self.control.GetLogs, req)

    # -- artifacts --

    def upload_file(
        self, path: str | os.PathLike[str], kind: str = "file", digest: str | None = None, size: int | None = None
    ) -> common_pb2.ArtifactRef:
        from outrider.artifacts import hash_file

        if digest is None or size is None:
            digest, size = hash_file(path)
        info = self._call(self.artifacts.Stat, artifact_pb2.StatRequest(digest=digest))
        if not info.exists:
            try:
                self.artifacts.Upload(upload_chunks(path, digest, size, kind), timeout=None)
            except grpc.RpcError as exc:
                raise _translate(exc) from None
        return common_pb2.ArtifactRef(digest=digest, size=size, kind=kind)

    def upload_dir(self, path: str | os.PathLike[str]) -> common_pb2.ArtifactRef:
        """Upload a directory as a deterministic tar (a content-addressed bundle)."""
        with tempfile.TemporaryDirectory(prefix="outrider-") as tmp:
            archive = Path(tmp) / "bundle.tar"
            digest, size = pack_dir(path, archive)
            return self.upload_file(archive, kind="dir", digest=digest, size=size)

    def download(
        self, digest: str, dest: str | os.PathLike[str], progress: Callable[[int, int], None] | None = None
    ) -> Path:
        """Download an artifact to ``dest``, verified against its digest."""
        recv = Receiver(digest, dest)
        total = 0
        try:
            for chunk in self._stream(self.artifacts.Download, artifact_pb2.DownloadRequest(digest=digest)):
                if chunk.HasField("info"):
                    total = chunk.info.size
                recv.write(chunk.data)
                if progress is not None:
                    progress(recv.size, total)
            return recv.finish()
        except BaseException:
            recv.abort()
            raise


def _until_acknowledged(
    client: Client,
    req: control_pb2.SubmitAndWatchRequest,
    timeout: float | None,
    reconnect_for: float,
    on_reconnect: Callable[[int, errors.OutriderError], None] | None,
) -> Iterator[control_pb2.RunEvent]:
    """SubmitAndWatch, tried again (same request id) while no acknowledgement came and the
    scheduler is unreachable, for up to ``reconnect_for`` seconds."""
    backoff = Reconnects(reconnect_for, on_reconnect, _unavailable)
    while True:
        acked = False
        try:
            for ev in client._stream(client.control.SubmitAndWatch, req, timeout):
                acked = True
                yield ev
            return
        except errors.OutriderError as exc:
            if acked:  # past the acknowledgement: the caller resumes it as a watch
                raise
            backoff.lost(exc)
