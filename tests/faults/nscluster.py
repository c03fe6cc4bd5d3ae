"""The real Outrider daemons as hosts of a ``NetLab``: the scheduler on one host, agents on others.

What ``outrider.localcluster.LocalCluster`` is for loopback, this is for the lab: the same
daemons (``python -m scheduler.main`` / ``agent.main`` from the venv), a real CA made with
the ``outrider pki`` command, mTLS over the lab's links, and handles to break them:
SIGKILL, SIGSTOP/SIGCONT, restart, a partition, a shifted clock (an NTP responder inside
the lab that serves a configurable offset; agents take ``--ntp-servers``).

The test process stays in the root namespace. It reads the scheduler's state two ways:

* the SDK (and CLI) over mTLS, through a loopback port that this module proxies into the
  scheduler's namespace (so a partition of an *agent* never blinds the test, and no
  interface or route is added to the root namespace);
* the scheduler's SQLite ``events`` table, read-only, straight from its state dir.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from outrider.client import Client
from outrider.errors import OutriderError
from tests.faults.netlab import LabProcess, NetLab, call_in_netns
from tests.helpers.ntp_responder import NtpResponder

SCHED_PORT = 7443
TRUST_DOMAIN = "faults.test"


class ClusterDown(RuntimeError):
    """A daemon exited when it should be running; the message holds its log tail."""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- the control path


class NetnsProxy:
    """``127.0.0.1:PORT`` here → TCP ``target`` inside namespace ``ns``: the test's window on the scheduler.

    Loopback in the root namespace, because the scheduler's certificate is valid for
    127.0.0.1 (a Unix socket's authority would be its path, which no certificate names).
    Each accepted connection gets a TCP connection made by a thread that entered the
    namespace (the socket stays there), and two threads copy bytes until either side ends.
    """

    def __init__(self, ns: str, target: tuple[str, int]) -> None:
        self.ns, self.target = ns, target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="faults-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = call_in_netns(self.ns, socket.create_connection, self.target, 5.0)
        except OSError:
            client.close()  # the scheduler is down: the client sees the connection fail, as it would
            return
        with self._lock:
            if self._stop.is_set():
                client.close()
                upstream.close()
                return
            self._open |= {client, upstream}
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with self._lock:
                    self._open.discard(s)
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(5)
        with self._lock:
            for s in list(self._open):
                with contextlib.suppress(OSError):
                    s.close()
            self._open.clear()


# --------------------------------------------------------------------------- daemons


@dataclass
class Agent:
    """One agent daemon on a lab host; ``proc`` is replaced on restart."""

    name: str
    host: str
    argv: list[str]
    log_path: Path
    state_dir: Path
    proc: LabProcess


class NsCluster:
    """A scheduler and agents as daemons on the hosts of ``lab``; every file under ``root``.

    Short leases by default (``lease_ttl``/``heartbeat``) so that the fault scenarios end in
    seconds. ``close()`` (also on ``with`` exit) stops everything it started; the lab's own
    ``close()`` then kills whatever is left in the namespaces.
    """

    def __init__(
        self,
        lab: NetLab,
        root: Path,
        *,
        sched_host: str = "sched",
        lease_ttl: str = "3s",
        heartbeat: str = "0.5s",
        log_level: str = "info",
        python: str = sys.executable,
    ) -> None:
        self.lab = lab
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.sched_host = sched_host
        self.lease_ttl = lease_ttl
        self.heartbeat = heartbeat
        self.log_level = log_level
        self.python = python
        self.pki = self.root / "pki"
        self.state_dir = self.root / "scheduler"
        self.logs = self.root / "logs"
        self.records = self.root / "records"
        self.records.mkdir(exist_ok=True)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.scheduler: LabProcess | None = None
        self.agents: dict[str, Agent] = {}
        self.ntp: list[NtpResponder] = []
        self.proxy: NetnsProxy | None = None
        self._clients: list[Client] = []
        self._outrider(["pki", "init", str(self.pki), "--trust-domain", TRUST_DOMAIN, "--san", self.sched_ip])
        self._issue("submitter", "tester")

    # ----- PKI, with the real command line

    def _outrider(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> str:
        proc = subprocess.run(
            [self.python, "-m", "outrider.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(env) if env is not None else self.env,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"outrider {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def _issue(self, role: str, name: str) -> None:
        if not (self.pki / f"{name}.crt").exists():
            self._outrider(["pki", "issue", str(self.pki), role, name])

    # ----- the scheduler

    @property
    def sched_ip(self) -> str:
        return self.lab.ip(self.sched_host)

    @property
    def address(self) -> str:
        """Where agents dial the scheduler."""
        return f"{self.sched_ip}:{SCHED_PORT}"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "outrider.db"

    def scheduler_argv(
        self, state_dir: Path | None = None, listen: str = f"0.0.0.0:{SCHED_PORT}", ready: Path | None = None
    ) -> list[str]:
        return [
            self.python, "-m", "scheduler.main",
            "--listen", listen,
            "--state-dir", str(state_dir or self.state_dir),
            "--pki-dir", str(self.pki),
            "--ready-file", str(ready or self.root / "scheduler.ready"),
            "--lease-ttl", self.lease_ttl,
            "--heartbeat-interval", self.heartbeat,
            "--log-level", self.log_level,
        ]  # fmt: skip

    def start_scheduler(self, timeout: float = 30.0) -> LabProcess:
        """Start (or restart) the scheduler and wait until it serves."""
        if self.scheduler is not None and self.scheduler.alive():
            raise RuntimeError("the scheduler is already running")
        ready = self.root / "scheduler.ready"
        ready.unlink(missing_ok=True)
        proc = self.lab.spawn(
            self.sched_host, self.scheduler_argv(), name="scheduler", log_path=self.logs / "scheduler.log", env=self.env
        )
        self.scheduler = proc

        def serving() -> bool:
            if not proc.alive():
                raise ClusterDown(f"the scheduler exited with {proc.proc.returncode}:\n{proc.tail()}")
            return ready.exists()

        wait_until(serving, timeout, "the scheduler's ready file")
        for c in self._clients:  # a fresh channel: an old one may sit in gRPC's reconnect backoff
            c.close()
        self._clients.clear()
        if self.proxy is None:
            self.proxy = NetnsProxy(self.lab.netns(self.sched_host), ("127.0.0.1", SCHED_PORT))
        return proc

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        self.scheduler.kill()

    # ----- agents

    def agent_argv(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None,
        slots: int,
        state_dir: Path,
        ntp: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> list[str]:
        argv = [
            self.python, "-m", "agent.main",
            "--scheduler", self.address,
            "--pki-dir", str(self.pki),
            "--name", name,
            "--slots", str(slots),
            "--state-dir", str(state_dir),
            "--kill-grace", "1s",
            "--bandwidth-probe-bytes", "0",  # 4 MiB at start-up would take minutes on a 256 kbit/s link
            "--log-level", self.log_level,
        ]  # fmt: skip
        if labels:
            argv += ["--labels", ",".join(f"{k}={v}" for k, v in labels.items())]
        if ntp:
            argv += ["--ntp-servers", ",".join(ntp)]
        return argv + list(extra)

    def add_agent(
        self,
        name: str,
        host: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        slots: int = 2,
        ntp: Sequence[str] = (),
        extra: Sequence[str] = (),
        state_dir: Path | None = None,
    ) -> Agent:
        """Start agent ``name`` on lab host ``host`` (default: the host of the same name)."""
        host = host or name
        self._issue("agent", name)
        state = state_dir or self.root / "agents" / name
        argv = self.agent_argv(name, labels=labels, slots=slots, state_dir=state, ntp=ntp, extra=extra)
        log = self.logs / f"agent-{name}.log"
        proc = self.lab.spawn(host, argv, name=f"agent {name}", log_path=log, env=self.env)
        agent = Agent(name, host, argv, log, state, proc)
        self.agents[name] = agent
        return agent

    def restart_agent(self, name: str) -> Agent:
        """SIGKILL agent ``name`` if it still runs, and start it again with the same flags and state."""
        a = self.agents[name]
        a.proc.kill()
        a.proc = self.lab.spawn(a.host, a.argv, name=f"agent {name}", log_path=a.log_path, env=self.env)
        return a

    def wait_agents(self, names: Iterable[str], timeout: float = 30.0, state: str = "ready") -> None:
        want = set(names)

        def ready() -> bool:
            for n in want:
                a = self.agents.get(n)
                if a is not None and not a.proc.alive():
                    raise ClusterDown(f"agent {n} exited with {a.proc.proc.returncode}:\n{a.proc.tail()}")
            try:
                agents = self.client().list_agents()
            except OutriderError:
                return False
            return want <= {a.name for a in agents if a.state == state}

        wait_until(ready, timeout, f"agents {sorted(want)} to be {state}", interval=0.1)

    def ntp_server(self, host: str, offset: float) -> NtpResponder:
        """An NTP responder on ``host`` serving this machine's time + ``offset`` seconds (started)."""
        ip = self.lab.ip(host)
        ntp = call_in_netns(self.lab.netns(host), lambda: NtpResponder(offset, host=ip))
        self.ntp.append(ntp)
        return ntp.start()

    # ----- reading the scheduler's state

    def client(self) -> Client:
        """An SDK client (mTLS, role submitter) through the control proxy; closed with the cluster."""
        if not self._clients:
            ca, cert, key = (str(self.pki / f) for f in ("ca.crt", "tester.crt", "tester.key"))
            assert self.proxy is not None, "start the scheduler first"
            self._clients.append(Client(self.proxy.address, ca, cert, key, timeout=10.0))
        return self._clients[0]

    def cli(self, *args: str) -> str:
        """Run the ``outrider`` command line against this cluster; its stdout."""
        assert self.proxy is not None
        env = {
            **self.env,
            "OUTRIDER_SCHEDULER": self.proxy.address,
            "OUTRIDER_CA": str(self.pki / "ca.crt"),
            "OUTRIDER_CERT": str(self.pki / "tester.crt"),
            "OUTRIDER_KEY": str(self.pki / "tester.key"),
        }
        return self._outrider(args, env=env)

    def events(self, run_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Rows of the scheduler's ``events`` table (read-only connection), oldest first."""
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        con.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in con.execute("SELECT * FROM events ORDER BY seq")]
        finally:
            con.close()
        if run_ids is not None:
            wanted = set(run_ids)
            rows = [r for r in rows if r["run_id"] in wanted]
        return rows

    def integrity_check(self) -> str:
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            return str(con.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            con.close()

    # ----- teardown

    def daemons(self) -> list[LabProcess]:
        return [p for p in [self.scheduler, *(a.proc for a in self.agents.values())] if p is not None]

    def logs_tail(self, lines: int = 60) -> str:
        out = []
        for p in self.daemons():
            out.append(f"----- {p.name} (pid {p.pid}, {'alive' if p.alive() else 'exited'}) -----\n{p.tail(lines)}")
        return "\n".join(out)

    def close(self) -> None:
        for c in self._clients:
            c.close()
        self._clients.clear()
        for a in self.agents.values():
            a.proc.terminate(timeout=5, sig=2)  # SIGINT: stop now, killing stages (SIGTERM drains)
        if self.scheduler is not None:
            self.scheduler.terminate(timeout=5)
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        for ntp in self.ntp:
            ntp.stop()  # its socket holds the namespace: close it before the lab deletes it
        self.ntp.clear()

    def __enter__(self) -> NsCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
