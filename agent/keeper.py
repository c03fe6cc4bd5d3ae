"""The stage keeper: one small process per agent that starts its stages, outlives it, and
stops any stage whose lease lapsed.

Why a separate process. Stages must survive an agent restart within their lease (a crash,
``systemctl restart``, an upgrade) and be picked up again by the next agent process, with
their exit codes; yet a stage whose agent died and did not come back must stop by itself
within one lease lifetime, instead of running on, unsupervised, beside the attempt the
scheduler starts elsewhere. Only a stage's parent learns its exit code, so the parent must
outlive the agent: the keeper starts every stage (it is their parent and reaper), and it
kills a stage whose lease the agent stopped renewing, whether the agent is dead, frozen
(SIGSTOP) or cut off. ``PR_SET_PDEATHSIG`` cannot do this: it kills at once, so no stage
would survive a restart.

Lifecycle::

    agent starts its first stage ──▶ keeper started (own session, cwd = state dir)
                                        │ serves one agent at a time on STATE/keeper.sock
    agent dies ─────────────────────────┤ stages run on; exit codes are kept
                                        │ each lease lapses at renewed + ttl: SIGTERM,
                                        │ SIGKILL after the grace
    next agent connects ────────────────┤ "hello": the stages (running, or exited with code)
                                        │ are handed over; renewals resume
    no agent and nothing running ───────┴▶ exits (exit codes are kept until their lease lapses)

The protocol is one JSON object per line on a Unix socket that only the agent's user can
open (it starts programs). Agent → keeper: ``hello`` {env, grace, user} (answered with
``stages``), ``spawn`` {key, argv, env, cwd, stdout, stderr, renewed, ttl} (answered with
``failed`` {errno, filename, error} if it cannot start, and with ``spawned`` {pid} only if
it asks, ``reply``, or once it has run a while; it may carry ``forget`` too), ``renew``
{keys, renewed, ttl}, ``kill`` {key, sig}, ``forget`` {keys} (their exits are dealt with).
Keeper → agent: ``exited`` {key, pid, code, expired}. A short stage costs one message
each way.
Times are ``time.monotonic()`` values: one clock for every process of a boot.

Stages as another user. ``hello``'s ``user`` is ``[uid, gid]`` when the agent has a
``stage_user`` (:mod:`agent.stageuser`), null when not (absent: unchanged). ``posix_spawn``
cannot change ids, so such a stage is started with ``subprocess.Popen(user=, group=,
extra_groups=[])``: setgroups, setgid, setuid between fork and exec. The keeper still reaps
it itself (``waitpid(-1)``); it keeps the ``Popen`` until then, and marks it reaped, so that
``subprocess`` never reaps a stage behind its back. Without a user, nothing of this runs.

Standard library only, run as a script (``python -I -S keeper.py STATE_DIR``): it must
start fast and stay small beside the stages.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any

SOCKET_NAME = "keeper.sock"
LOCK_NAME = "keeper.lock"
LOG_NAME = "keeper.log"
_ENCODER = json.JSONEncoder(separators=(",", ":"))
#: How often the keeper looks at lease deadlines when nothing else wakes it.
TICK_S = 0.25
#: A stage still running this long after its start has its pid told to the agent (a
#: shorter one never needs it: one message fewer per stage).
ANNOUNCE_AFTER_S = 0.25
#: A keeper no agent connected to within this long after its start exits.
FIRST_CONNECT_S = 60.0
#: Unsent messages to an agent that does not read them (frozen): past this it is dropped
#: (it gets the whole state again with its next ``hello``).
MAX_OUT_BYTES = 4 << 20


class Entry:
    """One stage the keeper started."""

    __slots__ = (
        "announced",
        "code",
        "expired",
        "key",
        "killed",
        "pid",
        "renewed",
        "started",
        "stopped",
        "term_at",
        "ttl",
    )

    def __init__(self, key: str, pid: int, renewed: float, ttl: float) -> None:
        self.key = key
        self.pid = pid
        self.renewed = renewed
        self.ttl = ttl
        self.code: int | None = None  # exit code once reaped (negative: signal)
        self.expired = False  # the keeper stopped it: its lease lapsed
        self.term_at = 0.0
        self.killed = False
        self.started = time.monotonic()
        self.announced = False  # its pid told to the agent
        self.stopped = False  # the agent had it signalled: its exit is not its own

    def view(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "pid": self.pid,
            "code": self.code,
            "expired": self.expired,
            "stopped": self.stopped,
            "renewed": self.renewed,
            "ttl": self.ttl,
        }


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _drop_ambient_caps() -> None:
    """Clear this process's ambient capabilities (a non-root agent's CAP_SETUID and co.,
    given by systemd's AmbientCapabilities=): a stage started as another user would keep
    them through its exec, and could switch back. The keeper keeps its permitted ones."""
    import ctypes

    pr_cap_ambient, pr_cap_ambient_clear_all = 47, 4
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_cap_ambient, pr_cap_ambient_clear_all, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot clear the keeper's ambient capabilities: {os.strerror(err)}")


class Keeper:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.entries: dict[str, Entry] = {}
        self.by_pid: dict[int, Entry] = {}
        self.env: dict[str, str] = dict(os.environ)
        self.grace = 5.0
        self.client: socket.socket | None = None
        self._buf = b""
        self._out = bytearray()
        self._want_write = False
        self.sel = selectors.DefaultSelector()
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._paths: dict[tuple[str, str | None], str] = {}
        #: (uid, gid) stages run as; None: the keeper's own.
        self.user: tuple[int, int] | None = None
        self._popens: dict[int, Any] = {}  # pid -> subprocess.Popen of a stage started as ``user``
        self._caps_dropped = False

    # ------------------------------------------------------------------ the loop

    def serve(self) -> int:
        lock = os.open(os.path.join(self.state_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another keeper serves this state dir
        os.ftruncate(lock, 0)
        os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
        path = os.path.join(self.state_dir, SOCKET_NAME)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        listener.listen(4)
        listener.setblocking(False)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        # Handlers, not SIG_IGN: an ignored signal stays ignored in every stage started
        # (exec resets only handled ones), and a stage must be able to die of SIGTERM.
        # The keeper itself lives on through SIGTERM and SIGINT: its stages need it.
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        self.sel.register(listener, selectors.EVENT_READ, "accept")
        self.sel.register(wake_r, selectors.EVENT_READ, "signal")
        served = False
        started = time.monotonic()
        next_watch = started
        while True:
            signalled = False
            for sk, events in self.sel.select(TICK_S):
                if sk.data == "accept":
                    self._accept(listener)
                    served = True
                elif sk.data == "signal":
                    signalled = True
                    with contextlib.suppress(BlockingIOError):
                        while os.read(wake_r, 512):
                            pass
                elif sk.data == "client":
                    if events & selectors.EVENT_WRITE:
                        self._flush()
                    if events & selectors.EVENT_READ and self.client is not None:
                        self._read()
            if signalled:
                self._reap()
            now = time.monotonic()
            if now >= next_watch:  # leases are looked at every TICK_S, not on every message
                next_watch = now + TICK_S
                self._watch(now)
            if self.client is None and not self._keeping() and (served or now > started + FIRST_CONNECT_S):
                break
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return 0

    def _keeping(self) -> bool:
        """Whether anything needs the keeper: a stage running, or an exit code whose lease
        has not lapsed (the next agent may still report it)."""
        now = time.monotonic()
        return any(e.code is None or now <= e.renewed + e.ttl for e in self.entries.values())

    # ------------------------------------------------------------------ the agent

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        if self.client is not None:  # the new agent process replaces the old one
            self._drop_client()
        conn.setblocking(False)
        self.client = conn
        self._buf = b""
        self._out.clear()
        self.sel.register(conn, selectors.EVENT_READ, "client")

    def _drop_client(self) -> None:
        if self.client is not None:
            self.sel.unregister(self.client)
            self.client.close()
            self.client = None
            self._out.clear()
            self._want_write = False

    def _read(self) -> None:
        assert self.client is not None
        try:
            data = self.client.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_client()
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if line:
                self._handle(json.loads(line))

    def _send(self, msg: dict[str, Any]) -> None:
        """Queue a message for the agent; never blocks (a frozen agent must not stop the
        keeper from stopping stages whose lease lapsed)."""
        if self.client is None:
            return
        pending = bool(self._out)
        self._out += _ENCODER.encode(msg).encode() + b"\n"
        if len(self._out) > MAX_OUT_BYTES:
            self._drop_client()
        elif not pending:
            self._flush()

    def _flush(self) -> None:
        if self.client is None:
            return
        try:
            sent = self.client.send(self._out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop_client()
            return
        del self._out[:sent]
        want = bool(self._out)
        if want != self._want_write:
            self._want_write = want
            self.sel.modify(self.client, selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0), "client")

    def _handle(self, m: dict[str, Any]) -> None:
        op = m.get("op")
        if op == "spawn":
            self._spawn(m)
        elif op == "renew":
            for key in m["keys"]:
                e = self.entries.get(key)
                if e is not None:
                    e.renewed = max(e.renewed, m["renewed"])
                    e.ttl = m["ttl"]
        elif op == "kill":
            e = self.entries.get(m["key"])
            if e is not None and e.code is None:
                e.stopped = True
                _killpg(e.pid, int(m["sig"]))
        elif op == "forget":
            self._forget(m.get("keys") or [])
        elif op == "hello":
            self.env = dict(m.get("env") or self.env)
            self.grace = float(m.get("grace", self.grace))
            if "user" in m:
                self.user = (int(m["user"][0]), int(m["user"][1])) if m["user"] else None
            self._send({"op": "stages", "stages": [e.view() for e in self.entries.values()]})

    def _forget(self, keys: list[str]) -> None:
        for key in keys:
            e = self.entries.get(key)
            if e is not None and e.code is not None:
                del self.entries[key]

    def _spawn(self, m: dict[str, Any]) -> None:
        self._forget(m.get("forget") or [])
        key = m["key"]
        env = {**self.env, **m["env"]} if m.get("env") else self.env
        argv = list(m["argv"])
        try:
            try:
                pid = self._launch(argv, env, m["cwd"], m["stdout"], m["stderr"])
            except ValueError as exc:  # a NUL byte in a path: never the end of the keeper
                raise OSError(errno.EINVAL, str(exc)) from None
        except OSError as exc:
            self._send(
                {
                    "op": "failed",
                    "key": key,
                    "errno": exc.errno or 0,
                    "filename": str(exc.filename or ""),
                    "error": exc.strerror or str(exc),
                }
            )
            return
        entry = Entry(key, pid, float(m.get("renewed") or time.monotonic()), float(m.get("ttl") or 0))
        old = self.entries.get(key)
        if old is not None:
            self.by_pid.pop(old.pid, None)
        self.entries[key] = entry
        self.by_pid[pid] = entry
        if m.get("reply"):  # only when asked (else once it has run ANNOUNCE_AFTER_S)
            entry.announced = True
            self._send({"op": "spawned", "key": key, "pid": pid})

    def _launch(self, argv: list[str], env: dict[str, str], cwd: str, stdout: str, stderr: str) -> int:
        """Start ``argv`` in ``cwd`` in a new session, output to the two files; its pid.

        ``posix_spawn`` (vfork underneath) costs a fraction of ``subprocess.Popen``; it has
        no working directory argument, so the keeper (single-threaded) steps into ``cwd``
        for the call and stays there until the next one (it names every other path in
        full). OSError names what failed: the work dir, an output file, or the program as
        the stage named it (exit 127/126 material: the task's fault); a program or
        environment the OS cannot take (a NUL byte, a name with "=") is EINVAL.
        """
        # O_NOFOLLOW: a stage run as another user owns its work dir; the keeper must not
        # append to wherever a link it left there points.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        out = os.open(stdout, flags, 0o644)
        try:
            err = os.open(stderr, flags, 0o644)
            try:
                os.chdir(cwd)  # (a relative program, or PATH entry, is the stage's: relative to its cwd)
                program = self._resolve(argv[0], env.get("PATH"))
                try:
                    if self.user is not None:
                        return self._spawn_as(self.user, program, argv, env, out, err)
                    return os.posix_spawn(
                        program,
                        argv,
                        env,
                        file_actions=[
                            (os.POSIX_SPAWN_DUP2, self._devnull, 0),
                            (os.POSIX_SPAWN_DUP2, out, 1),
                            (os.POSIX_SPAWN_DUP2, err, 2),
                        ],
                        setsid=True,  # its own session and process group: it and its children stop together
                    )
                except OSError as exc:
                    if exc.filename == program:
                        exc.filename = argv[0]
                    if exc.errno == errno.ENOENT:
                        self._paths.clear()  # a cached path may be stale
                    raise
                except ValueError as exc:
                    raise OSError(errno.EINVAL, str(exc), argv[0]) from None
            finally:
                os.close(err)
        finally:
            os.close(out)

    def _spawn_as(
        self, user: tuple[int, int], program: str, argv: list[str], env: dict[str, str], out: int, err: int
    ) -> int:
        """Start a stage as ``user`` (uid, gid), with no supplementary groups; its pid."""
        import subprocess  # only a keeper with a stage user pays for it

        if not self._caps_dropped:  # (a failure is the agent's: the spawn fails, the keeper lives)
            if os.geteuid() != 0:
                _drop_ambient_caps()
            self._caps_dropped = True
        p = subprocess.Popen(
            argv,
            executable=program,
            stdin=self._devnull,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
            user=user[0],
            group=user[1],
            extra_groups=[],
        )
        self._popens[p.pid] = p
        return p.pid

    def _resolve(self, name: str, path: str | None) -> str:
        """The program a name means, searched in the stage's PATH as a shell would (cached)."""
        if "/" in name:
            return name
        cached = self._paths.get((name, path))
        if cached is not None:
            return cached
        dirs = (path if path is not None else os.defpath).split(os.pathsep)
        for d in dirs:
            candidate = os.path.join(d or ".", name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                if all(os.path.isabs(x) for x in dirs):  # (a relative entry depends on the stage's cwd)
                    self._paths[(name, path)] = candidate
                return candidate
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)

    # ------------------------------------------------------------------ stages

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            popen = self._popens.pop(pid, None) if self._popens else None
            if popen is not None:
                popen.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by subprocess
            entry = self.by_pid.pop(pid, None)
            if entry is None:
                continue
            entry.code = os.waitstatus_to_exitcode(status)
            _killpg(entry.pid, signal.SIGKILL)  # children it left behind die with it
            self._send(
                {"op": "exited", "key": entry.key, "pid": entry.pid, "code": entry.code, "expired": entry.expired}
            )

    def _watch(self, now: float) -> None:
        """Stop every stage whose lease lapsed (renewed + ttl): SIGTERM, SIGKILL after the grace;
        forget exit codes nobody can report any more."""
        for e in list(self.entries.values()):
            if e.code is not None:
                if self.client is None and now > e.renewed + e.ttl:
                    del self.entries[e.key]
                continue
            if not e.announced and now - e.started >= ANNOUNCE_AFTER_S:
                e.announced = True  # a stage that lasts: the agent writes its pid down
                self._send({"op": "spawned", "key": e.key, "pid": e.pid})
            if not e.ttl or now <= e.renewed + e.ttl:
                continue
            if not e.expired:
                e.expired, e.term_at = True, now
                print(f"keeper: lease of {e.key} lapsed; stopping pid {e.pid}", file=sys.stderr, flush=True)
                _killpg(e.pid, signal.SIGTERM)
            elif not e.killed and now > e.term_at + self.grace:
                e.killed = True
                _killpg(e.pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: keeper.py STATE_DIR", file=sys.stderr)
        return 2
    return Keeper(argv[1]).serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
